"""A class per position (tagging, segmentation): kinds, losses and metrics on plain tensors, against torch's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from orchestrator.errors import TaskError
from worker.data.kinds import (
    IGNORE_INDEX,
    TargetKind,
    builtin_metrics,
    class_scores,
    default_loss,
    resolve_kind,
)


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
    with pytest.raises(TaskError, match=r'\(batch, 1, 5\), without the squeeze; for 0/1 labels, several per example, '
                                        r'declare kind = "multilabel"'):
        class_scores(torch.randn(2, 5), two)  # one logit per label: a multi-label head on declared classification
    binary = TargetKind("classification", num_classes=2, positions=(4, 4))
    with pytest.raises(TaskError, match="without the squeeze"):
        class_scores(torch.randn(2, 4, 4), binary)
