"""A class per position (tagging, segmentation): targets (N, *S) with -100 where a position has no label.

Unit tests on plain tensors, against torch's own cross-entropy: kinds, losses and metrics; what an ensemble's
averaged probabilities look like when they reach a task's own metrics and loss_fn, in the layout the model gives;
the preflight's overfit check; refusals.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.ensemble.ensemble_run import Dataset
from orchestrator.errors import TaskError
from worker.check.preflight import check_overfit
from worker.check.validate import refuse_multilabel_shape
from worker.data.kinds import (
    IGNORE_INDEX,
    TargetKind,
    builtin_metrics,
    class_cross_entropy,
    class_dim,
    class_scores,
    default_loss,
    resolve_kind,
)
from worker.data.streams import Stream, scan
from worker.load.ensemble_model import EnsembleModel
from worker.load.objective import _model_outputs, stored_class_dim


def splits_of(train, val, test) -> dict[str, torch.Tensor]:
    return {"train": torch.as_tensor(train), "val": torch.as_tensor(val), "test": torch.as_tensor(test)}


def padded_tags(n: int = 6, t: int = 5, classes: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n, t), generator=g)
    for i in range(n):  # sentences of different lengths, padded with -100
        y[i, 2 + i % (t - 1):] = IGNORE_INDEX
    return y


def test_integer_targets_with_a_class_per_position_are_classification_per_position():
    tags = padded_tags()
    kind = resolve_kind(None, splits_of(tags, tags, tags))
    assert (kind.kind, kind.positions, kind.num_classes) == ("classification", (5,), int(tags.max()) + 1)
    masks = torch.randint(0, 3, (4, 6, 7))
    kind = resolve_kind("classification", splits_of(masks, masks[:2], masks[:1]), classes=5)
    assert kind.positions == (6, 7) and kind.num_classes == 5
    # 0/1 rows are multi-label unless a position holds -100 (padding), or the task declares classification
    binary = torch.tensor([[1, 0, 1], [0, 1, IGNORE_INDEX]])
    assert resolve_kind(None, splits_of(binary, binary, binary)).positions == (3,)
    plain = torch.tensor([[1, 0, 1], [0, 1, 1]])
    assert resolve_kind(None, splits_of(plain, plain, plain)).multilabel


@pytest.mark.parametrize(("train", "val", "message"), [
    ([[0, -1, 2]], [[0, 1, 2]], "train targets include class -1; class indices start at 0, and -100 marks a position "
                                "without a label"),
    ([[0, 1, 2]], [[-100, -100, -100]], "val targets are all -100 (no position has a label)"),
    ([[0, 1, 2]], [[0, 2]], "per-position targets differ in shape across splits"),
])
def test_per_position_targets_that_do_not_fit_are_refused_naming_the_split(train, val, message):
    with pytest.raises(TaskError, match="load_data: ") as caught:
        resolve_kind(None, splits_of(train, val, [[2, 0, 1]]))
    assert message in str(caught.value)


def test_both_layouts_give_the_same_rows_and_the_loss_is_torchs_cross_entropy_over_labelled_positions():
    y = padded_tags()
    kind = resolve_kind(None, splits_of(y, y, y))
    scores = torch.randn(6, 4, 5, dtype=torch.float64)  # (N, C, T): torch's layout
    token_major = scores.movedim(1, -1).contiguous()  # (N, T, C): a token classifier's
    assert torch.equal(class_scores(scores, kind), class_scores(token_major, kind))
    loss = default_loss(kind)
    expected = F.cross_entropy(scores, y, ignore_index=IGNORE_INDEX)
    assert float(loss(scores, y)) == pytest.approx(float(expected), rel=1e-12)
    assert float(loss(token_major, y)) == pytest.approx(float(expected), rel=1e-12)
    labelled = y != IGNORE_INDEX
    right = (scores.argmax(dim=1) == y)[labelled]
    values = builtin_metrics(kind, scores, y)
    assert values["accuracy"] == pytest.approx(float(right.double().mean()))
    assert values["log_loss"] == pytest.approx(float(expected), rel=1e-6)


def test_class_156_of_a_uint8_mask_is_a_labelled_class_not_padding():
    """torch compares a uint8 tensor with -100 as with 156 (its wrapped value): masks of 157 classes or more in uint8
    (COCO-Stuff's, without void) had class 156 dropped from the class count, the loss's denominator and accuracy."""
    mask = torch.tensor([[156, 3, 156, 7], [0, 156, 2, 156]], dtype=torch.uint8)
    kind = resolve_kind(None, splits_of(mask, mask, mask))
    assert kind.per_position and kind.num_classes == 157
    scores = torch.randn(2, 157, 4, dtype=torch.float64)
    expected = F.cross_entropy(scores, mask.long())  # every position labelled: the plain mean
    assert float(default_loss(kind)(scores, mask)) == pytest.approx(float(expected), rel=1e-12)
    right = scores.argmax(dim=1) == mask.long()
    assert builtin_metrics(kind, scores, mask)["accuracy"] == pytest.approx(float(right.double().mean()))


def test_a_batch_of_padding_alone_gives_a_zero_loss_that_still_backpropagates():
    kind = TargetKind("classification", num_classes=3, positions=(4,))
    scores = torch.randn(2, 3, 4, requires_grad=True)
    loss = default_loss(kind)(scores, torch.full((2, 4), IGNORE_INDEX))
    assert float(loss.detach()) == 0.0  # torch's mean over no labelled position would be NaN and read as divergence
    loss.backward()
    assert scores.grad is not None and float(scores.grad.abs().sum()) == 0.0


def test_one_logit_per_pixel_is_binary_cross_entropy_with_logits_over_labelled_pixels():
    y = torch.randint(0, 2, (3, 4, 4))
    y[0, 0, :] = IGNORE_INDEX
    kind = resolve_kind(None, splits_of(y, y, y))
    z = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    keep = y != IGNORE_INDEX
    expected = F.binary_cross_entropy_with_logits(z[:, 0][keep], y[keep].double())
    assert float(default_loss(kind)(z, y)) == pytest.approx(float(expected), rel=1e-12)
    assert builtin_metrics(kind, z, y)["accuracy"] == pytest.approx(float(((z[:, 0] > 0).long() == y)[keep]
                                                                           .double().mean()))


def test_outputs_whose_class_dimension_the_shapes_cannot_tell_are_refused():
    kind = TargetKind("classification", num_classes=3, positions=(3,))
    with pytest.raises(TaskError, match="could be dimension 1 or the last one"):
        class_scores(torch.randn(2, 3, 3), kind)  # (N, T, T): classes first or last?
    kind = TargetKind("classification", num_classes=3, positions=(5,))
    with pytest.raises(TaskError, match=r"give one score per class at every position, shape \(batch, 3, 5\)"):
        class_scores(torch.randn(2, 4, 6), kind)
    with pytest.raises(TaskError, match='give them as floats with kind = "regression"'):
        class_scores(torch.randn(2, 5), kind)  # one output per position: integer counts, not classes
    two = TargetKind("classification", num_classes=2, positions=(5,))
    with pytest.raises(TaskError, match=r'\(batch, 5, 1\), without the squeeze, or for 0/1 labels of their own '
                                        r'\(no -100\), declare kind = "multilabel"'):
        class_scores(torch.randn(2, 5), two)  # one logit per label: a multi-label head on declared classification
    binary = TargetKind("classification", num_classes=2, positions=(4, 4))
    with pytest.raises(TaskError, match="without the squeeze"):
        class_scores(torch.randn(2, 4, 4), binary)


def _tokens(output_shape: tuple[int, ...]) -> tuple[Dataset, np.ndarray]:
    """Two sequences of three tokens, the last of the second padding; the labelled rows' probabilities."""
    every = np.array([1, 0, 1, 0, 1, -100])
    labelled = every[every != -100]
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.25, 0.75]])
    dataset = Dataset(2, labelled, labelled, (4,), None, None, output_shape=output_shape, target_shape=(3,),
                      y_val_all=every, y_test_all=every)
    return dataset, probs


def test_a_one_logit_token_head_gets_its_own_layout_back_from_an_ensemble():
    # nn.Linear(h, 1) on every token gives (n, T, 1): a metric written for it gets (n, T, 1), not two columns
    dataset, probs = _tokens((3, 1))
    logit = _model_outputs(dataset, probs, "val")
    assert logit.shape == (2, 3, 1)
    p1 = torch.sigmoid(logit.squeeze(-1)).reshape(-1)[torch.from_numpy(dataset.y_val_all != -100)]
    assert torch.allclose(p1.double(), torch.from_numpy(probs[:, 1]), atol=1e-6)


def test_a_one_logit_mask_head_and_two_score_heads_keep_their_layouts():
    for output_shape, shape in (((1, 3), (2, 1, 3)), ((2, 3), (2, 2, 3)), ((3, 2), (2, 3, 2))):
        dataset, probs = _tokens(output_shape)
        assert _model_outputs(dataset, probs, "val").shape == shape


def test_the_overfit_check_counts_labelled_positions_and_other_kinds_by_their_loss_alone():
    torch.manual_seed(0)
    tokens = torch.randint(1, 10, (20, 5))
    tags = tokens % 3
    tags[:, 4] = -100  # padding: whatever the model says there is neither right nor wrong
    kind = TargetKind("classification", num_classes=3, positions=(5,))
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 3))
    tagged = check_overfit(model, tokens, tags, lambda out, y: class_cross_entropy(out, y, kind), kind=kind)
    assert tagged.passed and "100% right" in tagged.value
    # probability targets (N, C): no class index to compare, the loss alone judges (was: a broadcasting error)
    x, soft = torch.randn(20, 4), torch.softmax(torch.randn(20, 3), dim=1)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    result = check_overfit(model, x, soft, F.cross_entropy, kind=TargetKind("classification", num_classes=3, soft=True))
    assert "right" not in result.value


def test_a_tagger_of_0_1_tags_without_padding_is_told_how_to_declare_it():
    # (N, T) of 0/1 with no -100 reads as multi-label; a head of scores per token says tagging was meant
    tags = torch.tensor([[0, 1, 1], [1, 0, 1]])
    kind = resolve_kind(None, {"train": tags, "val": tags, "test": tags})
    assert kind.multilabel
    for shape in ((2, 3, 2), (2, 2, 3), (2, 3, 1)):
        with pytest.raises(TaskError, match='for a class per position .* declare kind = "classification"$'):
            refuse_multilabel_shape(kind, torch.zeros(shape), tags)
    with pytest.raises(TaskError, match=r"shape \(batch, 3\)$"):  # no tagging reading of a flat head
        refuse_multilabel_shape(kind, torch.zeros(2, 4), tags)
    assert resolve_kind("classification", {"train": tags, "val": tags, "test": tags}).positions == (3,)


def test_a_loaded_tagger_tags_sentences_of_any_length_along_the_class_dimension_it_trained_with():
    torch.manual_seed(0)
    tagger = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))  # (n, T, 3), trained on T = 5
    every = np.array([0, 1, 2, 1, -100] * 2)
    dataset = Dataset(3, every[every != -100], every[every != -100], (5,), None, None, output_shape=(5, 3),
                      target_shape=(5,), y_val_all=every, y_test_all=every)
    model = EnsembleModel([tagger], [1.0], positions=(5,), class_dim=stored_class_dim(dataset)).eval()
    for length in (5, 8, 3):  # 3: as many tokens as classes, a shape that alone fits both layouts
        tokens = torch.randint(0, 10, (2, length))
        with torch.no_grad():
            probs, expected = model(tokens), torch.softmax(tagger(tokens), dim=-1)
        assert torch.allclose(probs, expected) and torch.equal(model.predict(tokens), expected.argmax(dim=-1))
    masks = Dataset(2, every, every, (1, 4, 4), None, None, output_shape=(1, 4, 4), target_shape=(4, 4),
                    y_val_all=every, y_test_all=every)
    assert stored_class_dim(masks) == 1  # a one-logit mask head, torch's layout


def test_a_squeezed_head_is_told_what_fits_its_class_count():
    # (n, T) scores for tags: one logit per token when there are two classes; never "multilabel" for four (one value
    # per position of integer targets with more classes: counts, more likely than classes)
    four = TargetKind("classification", num_classes=4, positions=(6,))
    with pytest.raises(TaskError, match=r"shape \(batch, 4, 6\) \(torch's layout\) or \(batch, 6, 4\); if the targets "
                                        r'are numbers \(counts\), give them as floats with kind = "regression"$'):
        class_dim((32, 6), four)
    two = TargetKind("classification", num_classes=2, positions=(6,))
    with pytest.raises(TaskError, match=r"give shape \(batch, 1, 6\) or \(batch, 6, 1\), without the squeeze, or "
                                        r'for 0/1 labels of their own \(no -100\), declare kind = "multilabel"$'):
        class_dim((32, 6), two)


def test_batches_padded_each_to_their_longest_are_refused_saying_to_pad_every_example_to_one_length():
    def batches(batch_size):  # a collate_fn that pads each batch to its longest sentence, as token taggers often do
        return [(torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)),
                (torch.ones(2, 3, dtype=torch.long), torch.full((2, 3), -100))]

    with pytest.raises(TaskError, match=r"^load_data: the val split's batches give targets of shapes \(batch, 3\), "
                                        r"\(batch, 5\); pad every example to one length \(class indices: -100 "
                                        r"where a position has no label\), not each batch to its longest$"):
        scan(Stream(None, "val", make_loader=batches), statistics=False)


def test_stored_predictions_are_estimated_per_labelled_position(caplog):
    from types import SimpleNamespace

    from orchestrator.spec.task import load_task
    from tests.conftest import ROOT
    from worker.check.validate import prediction_bytes, warn_if_large
    from worker.data.splits import prepare_task_data

    splits = prepare_task_data(load_task(f"{ROOT}/tests/tasks/tagging_task.py"))
    rows = sum(int((y != IGNORE_INDEX).sum()) for y in (splits.y_val, splits.y_test))  # labelled tokens, not sentences
    assert rows > 3 * (len(splits.y_val) + len(splits.y_test))
    assert prediction_bytes(splits, 10, 2, "float16") == 10 * 2 * rows * (3 * 2 + 20)
    many = SimpleNamespace(trials=10**6, keep_best=1, prediction_dtype="float16")
    with caplog.at_level("WARNING", logger="caviar"):
        warn_if_large(splits, many, ema=False)
    val = int((splits.y_val != IGNORE_INDEX).sum())
    assert f"({val} val + {rows - val} test rows per checkpoint)" in caplog.records[0].getMessage()


def test_masks_that_mark_void_pixels_255_are_told_caviars_mark(tmp_path):
    from orchestrator.spec.task import load_task
    from worker.check.validate import validate_task

    task = tmp_path / "voc_masks.py"
    task.write_text(textwrap.dedent("""
        import numpy as np
        from torch import nn
        from orchestrator.search.space import loguniform
        space = {"lr": loguniform(1e-3, 1e-1)}
        def load_data():
            rng = np.random.default_rng(0)
            x = rng.normal(size=(30, 1, 4, 4)).astype(np.float32)
            y = rng.integers(0, 3, size=(30, 4, 4)).astype(np.uint8)
            y[:, 0, :] = 255  # Pascal VOC's "void" border
            return (x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])
        def build_model(config):
            return nn.Conv2d(1, 3, 1)
    """))
    with pytest.raises(TaskError) as caught:  # was: "give the model 256 outputs, one per class"
        validate_task(load_task(str(task)))
    assert str(caught.value) == ("the model outputs 3 scores per position but the targets hold class 255, as masks "
                                 "that mark void pixels 255 do: caviar's mark is -100 (torch's ignore_index): give "
                                 "y.astype('int64') with y[y == 255] = -100")


class ConvTagger(nn.Module):
    """Class scores first, (n, C, T): a Conv1d head."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(10, 4), nn.Conv1d(4, 3, 1)

    def forward(self, x):
        return self.head(self.embed(x).transpose(1, 2))


def test_members_of_both_layouts_are_each_read_along_their_own_class_dimension():
    # An architecture choice gives (n, C, T) in one trial and (n, T, C) in another; the sweep stored one layout.
    # Before: a greedy or top-k of both could not be loaded (torch's size error adding them), and a member of the
    # other layout alone was softmaxed over its positions: probabilities that are not a class's, in silence.
    torch.manual_seed(0)
    conv, linear = ConvTagger(), nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))  # trained on T = 5
    tokens = torch.randint(0, 10, (2, 5))
    with torch.no_grad():
        p_conv, p_linear = torch.softmax(conv(tokens), dim=1), torch.softmax(linear(tokens), dim=-1).transpose(1, 2)
        for members, weights, expected in (([linear], [1.0], p_linear),
                                           ([conv, linear], [0.25, 0.75], 0.25 * p_conv + 0.75 * p_linear)):
            model = EnsembleModel(members, weights, positions=(5,), class_dim=1, input_dtype=torch.int64,
                                  input_shape=(5,)).eval()  # the sweep's layout: classes first
            for length in (5, 3):  # 3: as many tokens as classes, which the shapes alone cannot tell
                x = tokens[:, :length]
                got = model(x)
                assert got.shape == (2, 3, length) and torch.allclose(got, expected[..., :length], atol=1e-6)
                assert torch.equal(model.predict(x), expected[..., :length].argmax(dim=1))


class _CausalLM(nn.Module):
    def __init__(self, vocabulary: int):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 32, padding_idx=0)
        self.gru = nn.GRU(32, 32, batch_first=True)
        self.out = nn.Linear(32, vocabulary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gru(self.embed(x))[0])


def test_the_overfit_check_asks_a_causal_language_model_only_what_its_prefixes_tell():
    # Next-token targets of sequences that all start with one token (a beginning-of-sequence id, as real text has):
    # a causal model cannot tell the first next tokens apart, so `caviar check` said of every such model "FAIL: cannot
    # fit 20 examples: the model or its loss cannot learn". Now the bar is the most a prefix-reading model can fit.
    torch.manual_seed(0)
    seq = torch.cat([torch.ones(20, 1, dtype=torch.int64), torch.randint(2, 12, (20, 6))], dim=1)
    x, y = seq[:, :-1], seq[:, 1:].clone()
    y[:3, -1] = -100
    kind = TargetKind("classification", num_classes=12, positions=(6,))
    loss = lambda out, t: class_cross_entropy(out, t, kind)  # noqa: E731
    result = check_overfit(_CausalLM(12), x, y, loss, kind=kind)
    assert result.passed, result
    assert "76.0% accuracy on 20 examples" in result.expected and "43 positions share a prefix" in result.expected
    # a model that ignores its inputs still fails: the ceiling is about prefixes, not a pass for anything
    constant = nn.Sequential(nn.Embedding(12, 4), nn.Linear(4, 12))
    with torch.no_grad():
        constant[0].weight.zero_()
    constant[0].weight.requires_grad_(False)
    assert not check_overfit(constant, x, y, loss, kind=kind).passed
