"""A class per position (tagging, segmentation): targets (N, *S) with -100 where a position has no label.

Unit tests on plain tensors: what an ensemble's averaged probabilities look like when they reach a task's
own metrics and loss_fn, in the layout the model gives; the preflight's overfit check; refusals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.ensemble.ensemble_run import Dataset
from orchestrator.errors import TaskError
from worker.check.preflight import check_overfit
from worker.check.validate import refuse_multilabel_shape
from worker.data.kinds import TargetKind, class_cross_entropy, class_dim, resolve_kind
from worker.data.streams import Stream, scan
from worker.load.ensemble_model import EnsembleModel, _position_class_dim
from worker.load.objective import _model_outputs


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
    model = EnsembleModel([tagger], [1.0], positions=(5,), class_dim=_position_class_dim(dataset)).eval()
    for length in (5, 8, 3):  # 3: as many tokens as classes, a shape that alone fits both layouts
        tokens = torch.randint(0, 10, (2, length))
        with torch.no_grad():
            probs, expected = model(tokens), torch.softmax(tagger(tokens), dim=-1)
        assert torch.allclose(probs, expected) and torch.equal(model.predict(tokens), expected.argmax(dim=-1))
    masks = Dataset(2, every, every, (1, 4, 4), None, None, output_shape=(1, 4, 4), target_shape=(4, 4),
                    y_val_all=every, y_test_all=every)
    assert _position_class_dim(masks) == 1  # a one-logit mask head, torch's layout


def test_a_squeezed_head_is_told_what_fits_its_class_count():
    # (n, T) scores for tags: one logit per token when there are two classes; never "multilabel" for four
    four = TargetKind("classification", num_classes=4, positions=(6,))
    with pytest.raises(TaskError, match=r"shape \(batch, 4, 6\) \(torch's layout\) or \(batch, 6, 4\)$"):
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
                                        r"\(batch, 5\); pad every example to one length \(-100 where a position "
                                        r"has no label\), not each batch to its longest$"):
        scan(Stream(None, "val", make_loader=batches), statistics=False)
