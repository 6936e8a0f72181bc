"""Inputs keep their dtype: token ids reach an ``nn.EmbeddingBag`` as integers, float64 is never truncated.

In-process on plain data (no Ray): the real trainer, the real contract check, real torch.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from orchestrator.errors import TaskError
from orchestrator.search.space import SearchSpace
from orchestrator.spec.task import Task, load_task
from tests.conftest import ROOT
from worker.check.validate import check_config
from worker.data.splits import prepare, prepare_task_data
from worker.train.trainer import TrialRun, TrialSpec

TOKEN_TASK = os.path.join(ROOT, "tests", "tasks", "token_task.py")
TOKEN_CONFIG = {"lr": 0.05, "batch_size": 32, "optimizer": "adam", "dim": 8}


def plain_task(build_model, load_data=None, **fields) -> Task:
    namespace = SimpleNamespace(build_model=build_model, load_data=load_data, **fields)
    return Task("inline", namespace, SearchSpace({"lr": 0.05, "batch_size": 16, "optimizer": "adam"}),
                normalize=fields.get("normalize", True) is not False)


def test_token_ids_reach_the_model_as_integers_and_are_never_standardised():
    task = load_task(TOKEN_TASK)
    splits = prepare_task_data(task)
    (x_train, _), _, _ = task.get("load_data")()
    assert splits.x_train.dtype == torch.int64 and splits.mean is None and splits.std is None
    assert torch.equal(splits.x_train, torch.from_numpy(x_train))  # untouched, although normalize is on
    run = TrialRun(task, splits, TrialSpec(0, 0, TOKEN_CONFIG, 0, 2), torch.device("cpu"))
    seen: set[torch.dtype] = set()
    run.model.register_forward_pre_hook(lambda module, args: seen.add(args[0].dtype))
    rows = [run.train_epoch(), run.train_epoch()]
    assert seen == {torch.int64}
    assert rows[-1]["val_accuracy"] > 0.6  # 3 classes: the bag of words learns, chance is 1/3


def test_streamed_token_ids_stay_integers():
    class Tokens(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return torch.tensor([i % 7, (i + 1) % 7, 3]), i % 2

    splits = prepare((Tokens(), Tokens(), Tokens()))
    x, _ = splits.sample(8)
    assert x.dtype == torch.int64 and splits.input_dtype == torch.int64 and splits.mean is None
    assert torch.equal(splits.normalise(x), x)


def test_float64_inputs_keep_their_dtype_and_a_float32_model_is_refused_in_one_line():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)  # numpy's default: float64
    splits = prepare(((x, y), (x, y), (x, y)))
    assert splits.x_train.dtype == torch.float64 and splits.mean.dtype == torch.float64
    expected = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
    np.testing.assert_allclose(splits.x_train.numpy(), expected, rtol=1e-12)  # float64 arithmetic throughout
    task = plain_task(lambda config: nn.Linear(3, 2))
    with pytest.raises(TaskError, match=r"^load_data: the inputs are float64 but the model's parameters are "
                                        r"float32; caviar never casts inputs: give X.astype\('float32'\)"):
        check_config(task, splits, {"lr": 0.05, "batch_size": 16, "optimizer": "adam"})
    # A float64 model takes them as they are.
    check_config(plain_task(lambda config: nn.Linear(3, 2).double()), splits, {"batch_size": 16})


def test_one_feature_given_as_a_flat_array_is_refused_saying_to_reshape_it():
    """X of shape (N,) for an nn.Linear(1, 1): the master's check said only torch's "mat1 and mat2 shapes cannot be
    multiplied (1x16 and 1x1)", naming neither the inputs nor their shape."""
    from worker.check.contract import validate_contract

    rng = np.random.default_rng(0)
    x = rng.normal(size=90).astype("float32")
    split = (x, (2 * x + 1).astype("float32"))
    task = plain_task(lambda config: nn.Linear(1, 1), lambda: (split, split, split))
    task.kind = "regression"
    config = {"lr": 0.05, "batch_size": 16, "optimizer": "adam"}
    with pytest.raises(TaskError, match=r"^task 'inline': load_data: the inputs hold one number per example, shape "
                                        r"\(N,\), and the model's forward pass raised RuntimeError on a batch of them "
                                        r"\(mat1 and mat2 .*\); for one feature give X.reshape\(-1, 1\)"):
        validate_contract(task, [config])
    column = (x.reshape(-1, 1), split[1])
    task.namespace.load_data = lambda: (column, column, column)
    validate_contract(task, [config])


@pytest.mark.parametrize("split", ["val", "test"])
def test_int32_class_indices_in_val_or_test_alone_are_refused_naming_the_split(split):
    """Train's int64 passed the check; val's int32 were refused in torch's words as 'the model's forward pass or
    loss_fn', and test's (measured only as a trial ends) failed every trial at its end."""
    from worker.check.contract import validate_contract

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(90, 3)).astype("float32"), rng.integers(0, 2, size=90)
    parts = {"train": (x, y), "val": (x[:30], y[:30]), "test": (x[30:60], y[30:60])}
    parts[split] = (parts[split][0], parts[split][1].astype("int32"))
    task = plain_task(lambda config: nn.Linear(3, 2), lambda: parts)
    with pytest.raises(TaskError, match=rf"^task 'inline': load_data: the {split} targets are int32 class indices, "
                                        r"and their log loss \(torch's cross-entropy\) takes int64: give "
                                        r"y.astype\('int64'\)"):
        validate_contract(task, [{"lr": 0.05, "batch_size": 16, "optimizer": "adam"}])


def test_a_split_whose_examples_have_another_shape_than_train_is_refused_where_they_are_standardised():
    """Val inputs (N, 1) beside six training features were broadcast against the training statistics into (N, 6)
    copies of their one column, and trained and scored on in silence; (N, 4) failed in torch's words. Streamed
    training crops (1, 6, 6) beside full (1, 8, 8) val images: a message about padding sequences."""
    from torch.utils.data import TensorDataset

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 6)).astype("float32"), rng.integers(0, 2, size=50)
    for val in (x[:, :1], x[:, :4]):
        with pytest.raises(TaskError, match=rf"^load_data: val examples have shape \({val.shape[1]},\) but train's "
                                            r"\(6,\); caviar standardises each input position .*or set normalize = "
                                            r"False and scale the inputs yourself$"):
            prepare(((x, y), (val, y), (x, y)))
    assert prepare(((x, y), (x[:, :1], y), (x, y)), normalize=False).x_val.shape == (50, 1)  # nothing standardised
    images = torch.rand(40, 1, 8, 8)
    labels = torch.arange(40) % 2
    with pytest.raises(TaskError, match=r"^load_data: test examples have shape \(1, 8, 8\) but train's \(1, 6, 6\)"):
        prepare((TensorDataset(images[:, :, 1:7, 1:7], labels), TensorDataset(images[:, :, 1:7, 1:7], labels),
                 TensorDataset(images, labels)))


def test_integer_pixels_for_a_model_without_an_embedding_are_refused_in_one_line():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, size=(60, 1, 4, 4)).astype(np.uint8), rng.integers(0, 2, size=60)  # raw images
    splits = prepare(((x, y), (x, y), (x, y)))
    assert splits.x_train.dtype == torch.uint8  # as given: never cast
    conv = plain_task(lambda config: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))
    with pytest.raises(TaskError, match=r"^load_data: the inputs are uint8 and the model, with no embedding, has "
                                        r"float32 parameters; caviar never casts inputs: give X.astype\('float32'\)$"):
        check_config(conv, splits, {"batch_size": 16})
    # A model that embeds integer ids and fails for its own reason keeps its own error.
    bad_ids = plain_task(lambda config: nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(64, 2)))
    with pytest.raises(TaskError, match=r"^the model.s forward pass raised RuntimeError .*embedding"):
        check_config(bad_ids, splits, {"batch_size": 16})


@pytest.mark.parametrize(("y", "said"), [
    (np.array(["cat", "dog"] * 30), r"train y holds strings \('cat'\); give numbers: integer class indices"),
    (np.array([{"a": 1}] * 60, dtype=object), r"train y holds Python objects \(dtype object\)"),
    ([0, 1] * 30, r"train y must be a numpy array or tensor, got list; give np.asarray\(\.\.\.\)"),
])
def test_targets_that_are_not_numbers_are_refused_in_one_line(y, said):
    x = np.zeros((60, 3), np.float32)
    with pytest.raises(TaskError, match=r"^load_data: " + said):
        prepare(((x, y), (x, np.zeros(60, np.int64)), (x, np.zeros(60, np.int64))))


def test_several_inputs_for_one_model_are_refused_with_what_to_give():
    # A model taking (features, category ids): np.asarray would make a ragged object array, so the hint differs.
    x, ids, y = np.zeros((60, 3), np.float32), np.zeros(60, np.int64), np.zeros(60, np.int64)
    with pytest.raises(TaskError, match=r"^load_data: train X must be a numpy array or tensor, got tuple; several "
                                        r"inputs \(2 arrays\) are not taken: .*np.concatenate along axis 1"):
        prepare((((x, ids), y), (x, y), (x, y)))
    with pytest.raises(TaskError, match=r"^load_data: train X must be a numpy array or tensor, got dict; several "
                                        r"inputs \(2 arrays\) are not taken: .*set normalize = False\)$"):
        prepare((({"features": x, "ids": ids}, y), (x, y), (x, y)))


def test_a_split_of_inputs_targets_and_sample_weights_is_refused_saying_how_long_it_is():
    # Before: "must be (X, y) or a torch Dataset, got tuple", to a user who had given a tuple.
    x, y, w = np.zeros((60, 3), np.float32), np.zeros(60, np.int64), np.ones(60, np.float32)
    with pytest.raises(TaskError, match=r"^load_data: the train split must be \(X, y\) or a torch Dataset, got a "
                                        r"tuple of 3; a third part \(sample weights\?\) is not taken$"):
        prepare(((x, y, w), (x, y), (x, y)))


class Rows(Dataset):
    """A float array streamed one row at a time, every target 0."""

    def __init__(self, data):
        self.data = torch.from_numpy(data)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], 0


def test_missing_inputs_are_refused_naming_split_and_index_in_memory_and_streamed():
    # One NaN would turn its whole column into NaN through the standardisation, and a NaN in val makes every
    # trial's validation loss NaN (all pruned as diverged): refused before any trial, naming where it is.
    x, y = np.zeros((60, 3), np.float32), np.zeros(60, np.int64)
    bad = x.copy()
    bad[17, 2] = np.nan
    with pytest.raises(TaskError, match=r"^load_data: train X contains nan \(at index \(17, 2\)\); every input "
                                        r"must be finite"):
        prepare(((bad, y), (x, y), (x, y)))
    infinite = x.copy()
    infinite[5, 0] = np.inf
    with pytest.raises(TaskError, match=r"^load_data: val X contains inf \(at index \(5, 0\)\)"):
        prepare(((x, y), (infinite, y), (x, y)))

    with pytest.raises(TaskError, match=r"^load_data: test X contains nan \(at index \(17, 2\)\)"):
        prepare((Rows(x), Rows(x), Rows(bad)))


def test_a_feature_constant_in_training_is_left_unscaled_in_memory_and_streamed():
    # A flag that never fires in training but does in validation would be divided by a near-zero scale.
    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    x[:, 1] = 0.0
    y = np.zeros(60, np.int64)
    val = x.copy()
    val[:5, 1] = 1.0

    for splits in (prepare(((x, y), (val, y), (x, y))), prepare((Rows(x), Rows(val), Rows(x)))):
        assert splits.std.flatten()[1] == 1.0 and splits.mean.flatten()[1] == 0.0
        got = splits.x_val[:5, 1] if splits.x_val is not None else splits.normalise(torch.from_numpy(val[:5]))[:, 1]
        assert torch.equal(got, torch.ones(5))  # not 1e6
        assert 0.5 < float(splits.std.flatten()[0]) < 2.0  # other features keep their own scale


def test_pandas_targets_are_refused_with_what_to_give():
    # Inputs may be a DataFrame of one dtype (tests/worker/test_tabular_inputs.py); targets are never guessed from one.
    pd = pytest.importorskip("pandas")
    x = np.zeros((60, 3), np.float32)
    y = pd.Series(np.zeros(60, np.int64))
    with pytest.raises(TaskError, match=r"^load_data: train y must be a numpy array or tensor, got Series; give "
                                        r"\.to_numpy\(\) with the dtype you mean"):
        prepare(((x, y), (x, y), (x, y)))


def test_splits_with_different_input_dtypes_are_refused():
    x, y = np.zeros((10, 2), np.float32), np.zeros(10, np.int64)
    with pytest.raises(TaskError, match=r"inputs differ in dtype \(train float32, val float64, test float32\)"):
        prepare(((x, y), (x.astype(np.float64), y), (x, y)))


def test_a_task_gives_its_own_statistics_and_gets_exactly_those():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    y = np.array([0, 1])
    mean, std = [1.0, 2.0, 3.0], [0.5, 0.25, 2.0]  # per channel, as torchvision's Normalize
    splits = prepare(((x, y), (x, y), (x, y)), task_statistics=(mean, std))
    per_channel = (x - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    np.testing.assert_allclose(splits.x_val.numpy(), per_channel, rtol=1e-6)
    assert splits.mean.shape == (1, 3, 2, 2)
    # Streamed data gets the same numbers, with no pass over the inputs for statistics.
    streamed = prepare((torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),) * 3,
                       task_statistics=(mean, std))
    assert torch.equal(streamed.mean, splits.mean) and torch.equal(streamed.std, splits.std)
    # Opting out leaves the inputs as given.
    assert torch.equal(prepare(((x, y), (x, y), (x, y)), normalize=False).x_val, torch.from_numpy(x))
    tokens = np.zeros((2, 5), np.int64)
    with pytest.raises(TaskError, match=r"normalize: the task gives \(mean, std\) but the inputs are int64"):
        prepare(((tokens, y), (tokens, y), (tokens, y)), task_statistics=(0.0, 1.0))
    with pytest.raises(TaskError, match=r"normalize: std must be positive, got 0 at input position \(1, 0, 0\)"):
        prepare(((x, y), (x, y), (x, y)), task_statistics=(mean, [1.0, 0.0, 1.0]))
    # Tabular data's std from x.std(0), with one constant column: which of its features, and what to give instead.
    table = np.random.default_rng(0).normal(size=(10, 30)).astype(np.float32)
    table[:, 3] = 1.0
    with pytest.raises(TaskError, match=r"^normalize: std must be positive, got 0 at input position \(3,\); for a "
                                        r"feature constant in your data give 1 there \(np.where\(std > 0, std, 1\)\)"):
        prepare(((table, y.repeat(5)),) * 3, task_statistics=(table.mean(0), table.std(0)))
    with pytest.raises(TaskError, match=r"normalize: mean of shape \(4,\) does not fit inputs of shape"):
        prepare(((x, y), (x, y), (x, y)), task_statistics=([0.0, 1.0, 2.0, 3.0], std))


class _JoinedIds(nn.Module):
    """Token ids and two float features joined in one float32 tensor, split again in forward (the ids cast back)."""

    def __init__(self, length: int):
        super().__init__()
        self.length = length
        self.embed = nn.EmbeddingBag(40, 4, mode="mean")
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, features = x[:, :self.length].long(), x[:, self.length:]
        return self.out(torch.cat([self.embed(ids), features], 1))


class _PositionEmbedded(nn.Module):
    """Float features with a learned embedding of their positions (a transformer's), no ids among the inputs."""

    def __init__(self, length: int):
        super().__init__()
        self.position = nn.Embedding(length, 1)
        self.out = nn.Linear(length, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.position(torch.arange(x.shape[1])).squeeze(1))


def _joined_ids(ids: np.ndarray) -> tuple:
    rng = np.random.default_rng(1)
    x = np.concatenate([ids, rng.normal(size=(len(ids), 2))], axis=1).astype(np.float32)
    y = (ids == 1).any(axis=1).astype(np.int64)
    split = (x, y)
    return split, split, split


def test_token_ids_given_as_floats_to_a_model_with_an_embedding_are_named(caplog):
    """Word ids skewed towards small values (as word frequencies are), joined with float features in one float32
    tensor: caviar standardised them with the features and the embedding saw only rows 0 and 1, without a word (the
    sweep trained and ranked such models). Ids spread evenly crashed with torch's range error, naming no cause."""
    import logging

    from worker.check.contract import validate_contract

    rng = np.random.default_rng(0)
    config = {"lr": 0.05, "batch_size": 16, "optimizer": "adam"}
    skewed = np.minimum(rng.zipf(1.6, size=(120, 6)), 39)
    task = plain_task(lambda config: _JoinedIds(6), lambda: _joined_ids(skewed))
    said = (r"load_data: the inputs are float32 and 6 of their 8 positions hold only whole numbers from 1 to 39, "
            r"beside a model with an embedding: if they are token ids, caviar standardises them .*; give the ids as "
            r"int64 \(X.astype\('int64'\), never standardised\), or set normalize = False in the task")
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(task, [config])
    assert [r.getMessage() for r in caplog.records if re.match(said, r.getMessage())]
    even = rng.integers(1, 40, size=(120, 6))
    task.namespace.load_data = lambda: _joined_ids(even)
    with pytest.raises(TaskError, match=r"forward pass or loss_fn raised RuntimeError: .*not in the valid range.*; "
                                        + said):
        validate_contract(task, [config])
    # Kept as given, the same ids say nothing; nor do whole-number floats beside a model without an embedding.
    caplog.clear()
    quiet = plain_task(lambda config: _JoinedIds(6), lambda: _joined_ids(skewed), normalize=False)
    no_embedding = plain_task(lambda config: nn.Linear(8, 2), lambda: _joined_ids(even))
    indicators = plain_task(lambda config: _PositionEmbedded(8), lambda: _joined_ids(rng.integers(0, 2, size=(120, 6))))
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(quiet, [config])
        validate_contract(no_embedding, [config])
        validate_contract(indicators, [config])  # 0/1 features: no vocabulary
    assert not [r for r in caplog.records if "whole numbers" in r.getMessage()]


def test_streamed_token_ids_given_as_floats_are_named_too():
    from worker.check.embedded_ids import standardised_ids_note

    class FloatIds(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return torch.tensor([i % 7, (i + 1) % 7, 0.5 * i], dtype=torch.float32), i % 2

    splits = prepare((FloatIds(), FloatIds(), FloatIds()))
    assert splits.mean is not None  # floats: standardised, by the load-time pass
    note = standardised_ids_note(nn.Sequential(nn.EmbeddingBag(10, 4), nn.Linear(4, 2)), splits)
    assert note is not None and note.startswith("load_data: the inputs are float32 and 2 of their 3 positions hold "
                                                "only whole numbers from 0 to 6, beside a model with an embedding")
    assert standardised_ids_note(nn.Linear(3, 2), splits) is None


def test_an_objective_the_metrics_do_not_return_is_refused_naming_the_metrics_not_the_forward_pass():
    """objective = "val_f1" beside metrics returning {"val_f1": ...} (caviar adds the prefix: val_val_f1), or metrics
    that leave the key out where it is undefined, were refused as 'the model's forward pass or loss_fn: objective
    'val_f1' is not a reported column', blaming code that was fine; a key left out later in the sweep failed trials
    with those words. Now the line names the metrics and what to return."""
    from worker.check.contract import validate_contract

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(90, 3)).astype("float32"), rng.integers(0, 2, size=90)
    config = {"lr": 0.05, "batch_size": 16, "optimizer": "adam"}
    prefixed = plain_task(lambda config: nn.Linear(3, 2), lambda: ((x, y), (x, y), (x, y)),
                          metrics=lambda outputs, targets: {"val_f1": 0.5})
    prefixed.objective, prefixed.mode = "val_f1", "max"
    with pytest.raises(TaskError, match=r"^task 'inline': objective 'val_f1': metrics returns 'val_f1', which caviar "
                                        r"reports as 'val_val_f1' \(it adds the split's prefix itself\); return 'f1'"):
        validate_contract(prefixed, [config])
    left_out = plain_task(lambda config: nn.Linear(3, 2), lambda: ((x, y), (x, y), (x, y)),
                          metrics=lambda outputs, targets: {})
    left_out.objective, left_out.mode = "val_prec1", "max"
    with pytest.raises(TaskError, match=r"^task 'inline': objective 'val_prec1' is not a reported column \(reported: "
                                        r"val_accuracy, val_log_loss, val_loss\): metrics must return 'prec1' at every "
                                        r"evaluation \(NaN where it is undefined\)"):
        validate_contract(left_out, [config])


def test_a_per_axis_statistic_that_fits_the_first_and_the_last_axis_is_refused_naming_both_shapes():
    """Sequences of 6 steps of 6 sensor features standardised per feature with x.mean((0, 1)): the (6,) vector was
    read as one value per time step (the channel rule for (C, H, W) images), in silence."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40, 6, 6)) * np.arange(1, 7) + np.arange(6) * 10).astype(np.float32)
    y = np.arange(40) % 2
    mean, std = x.mean((0, 1)), x.std((0, 1))
    with pytest.raises(TaskError, match=r"^normalize: mean of shape \(6,\) fits both the first axis \(channels, .*\) "
                                        r"and the last \(features\) of inputs of shape \(6, 6\); give it the shape "
                                        r"\(6, 1\) for the first or \(1, 6\) for the last$"):
        prepare(((x, y),) * 3, task_statistics=(mean, std))
    splits = prepare(((x, y),) * 3, task_statistics=(mean[None], std[None]))
    np.testing.assert_allclose(splits.x_val.numpy(), (x - mean) / std, rtol=1e-5, atol=1e-5)


def test_a_spectrogram_statistic_per_frequency_that_also_fits_the_time_axis_is_refused_naming_both_shapes():
    """Spectrograms (N, 1, F, T) with F == T standardised per frequency bin with x.mean((0, 3)), shape (1, F):
    broadcasting placed it on the last axes, one value per time step, in silence (with F != T it was refused)."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40, 1, 8, 8)) * np.arange(1, 9)[:, None] + np.arange(8)[:, None] * 10).astype(np.float32)
    y = np.arange(40) % 2
    mean, std = x.mean((0, 3)), x.std((0, 3))
    for given in ((mean, std), (mean[0], std[0])):
        with pytest.raises(TaskError, match=r"^normalize: mean of shape \((1, )?8,?\) fits inputs of shape \(1, 8, 8\) "
                                            r"on more than one axis: broadcasting reads it as \(1, 1, 8\) .* also fits "
                                            r"as \(1, 8, 1\); give it one of the shapes \(1, 8, 1\) or \(1, 1, 8\)"):
            prepare(((x, y),) * 3, task_statistics=given)
    splits = prepare(((x, y),) * 3, task_statistics=(mean[..., None], std[..., None]))
    np.testing.assert_allclose(splits.x_val.numpy(), (x - mean[..., None]) / std[..., None], rtol=1e-5, atol=1e-5)
    # One value per channel of (C, T) sensor series, and an unambiguous per-time vector, read as before.
    series = rng.normal(size=(40, 3, 5)).astype(np.float32)
    for stat in (np.arange(3.0), np.arange(5.0)):
        prepare(((series, y),) * 3, task_statistics=(stat, stat + 1))


def test_channels_last_images_for_a_convolution_are_refused_saying_how_to_transpose_them():
    """Images as PIL and numpy give them, (N, H, W, C), scaled to float: the refusal was torch's 'expected
    input[16, 6, 6, 3] to have 3 channels, but got 6 channels instead', naming neither the layout nor a fix."""
    from worker.check.contract import validate_contract

    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6, 6, 3), dtype=np.float32), rng.integers(0, 2, size=40)
    conv = lambda config: nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(32, 2))  # noqa: E731
    streamed = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    for data in (((x, y),) * 3, (streamed,) * 3):
        with pytest.raises(TaskError, match=r"to have 3 channels, but got 6 channels.*; the inputs are \(N, 6, 6, 3\), "
                                            r"channels last .*: give np.ascontiguousarray\(x.transpose\(0, 3, 1, 2\)\) "
                                            r"in load_data, or image.permute\(2, 0, 1\) in a Dataset's __getitem__$"):
            validate_contract(plain_task(conv, lambda data=data: data), [{"lr": 0.05, "batch_size": 16}])
    channels_first = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    assert validate_contract(plain_task(conv, lambda: ((channels_first, y),) * 3), [{"lr": 0.05, "batch_size": 16}])
    # A convolution given too few channels for another reason keeps torch's words alone.
    with pytest.raises(TaskError, match=r"to have 4 channels, but got 3 channels[^;]*$"):
        four = plain_task(lambda config: nn.Sequential(nn.Conv2d(4, 2, 3)), lambda: ((channels_first, y),) * 3)
        validate_contract(four, [{"lr": 0.05, "batch_size": 16}])


def test_statistics_kept_with_their_batch_axis_standardise_per_channel():
    """normalize = (x.mean((0, 2, 3), keepdims=True), x.std(...)), shape (1, 3, 1, 1) as numpy and torch keep them,
    was refused: 'normalize: mean of shape (1, 3, 1, 1) does not fit inputs of shape (3, 4, 4)'."""
    scale = np.array([1, 5, 9], np.float32)[:, None, None]
    x = np.random.default_rng(0).random((20, 3, 4, 4), dtype=np.float32) * scale
    y = np.arange(20) % 2
    mean, std = x.mean((0, 2, 3), keepdims=True), x.std((0, 2, 3), keepdims=True)
    splits = prepare(((x, y),) * 3, task_statistics=(mean, std))
    np.testing.assert_allclose(splits.x_val.numpy(), (x - mean) / std, rtol=1e-5, atol=1e-6)
    assert torch.equal(prepare(((x, y),) * 3, task_statistics=(mean[0], std[0])).x_val, splits.x_val)
    with pytest.raises(TaskError, match=r"normalize: mean of shape \(2, 3, 1, 1\) does not fit inputs of shape"):
        prepare(((x, y),) * 3, task_statistics=(np.concatenate([mean, mean]), std))


class _MeanOfEmbedded(nn.Module):
    def __init__(self, vocabulary: int):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 4, padding_idx=0)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x).mean(dim=1))


@pytest.mark.parametrize("split", ["val", "test"])
def test_ids_beyond_the_embedding_in_val_or_test_alone_are_refused_naming_the_split(split):
    """Token ids of a vocabulary of 20 in train, with one word beyond it in test only: the check passed, and every
    trial then failed while writing its test predictions, as `failed (storage)` with torch's `index out of range in
    self`, and no ensemble was built. In val only, the refusal named neither the split nor the ids."""
    from worker.check.contract import validate_contract

    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(3, 60, 5))
    x[["train", "val", "test"].index(split), 7, 2] = 23
    y = rng.integers(0, 2, size=60)
    task = plain_task(lambda config: _MeanOfEmbedded(20), lambda: tuple((ids, y) for ids in x))
    said = (rf"load_data: the model's forward pass raised IndexError: index out of range in self \(.*\) on the {split} "
            rf"examples holding its largest and smallest ids \(the inputs range: .*{split} 0 to 23.*"
            r"\); the model's embeddings take ids 0 to num_embeddings - 1 \(num_embeddings 20\)")
    with pytest.raises(TaskError, match=said):
        validate_contract(task, [{"lr": 0.05, "batch_size": 16, "optimizer": "adam"}])
    x[x > 19] = 19  # every split within the vocabulary: no word
    validate_contract(task, [{"lr": 0.05, "batch_size": 16, "optimizer": "adam"}])


def test_ids_beyond_the_embedding_in_a_streamed_test_split_are_refused_naming_it():
    """The same word beyond the vocabulary, in a test Dataset read by a loader function padding each batch to its
    longest: every trial failed as `failed (storage)` after training."""
    from torch.nn.utils.rnn import pad_sequence
    from torch.utils.data import DataLoader

    from worker.check.contract import validate_contract

    rng = np.random.default_rng(0)

    def examples(largest: int) -> list:
        items = [(torch.as_tensor(rng.integers(1, 20, size=int(rng.integers(2, 6)))), int(rng.integers(0, 2)))
                 for _ in range(40)]
        items[9][0][0] = largest
        return items

    def padded(batch):
        return pad_sequence([x for x, _ in batch], batch_first=True), torch.tensor([y for _, y in batch])

    def loaders(test_largest: int):
        splits = {"train": examples(19), "val": examples(19), "test": examples(test_largest)}
        return lambda: {name: (lambda bs, items=items: DataLoader(items, batch_size=bs, collate_fn=padded))
                        for name, items in splits.items()}

    config = {"lr": 0.05, "batch_size": 16, "optimizer": "adam"}
    with pytest.raises(TaskError, match=r"IndexError: .* on the test examples holding its largest and smallest ids "
                                        r"\(the inputs range: train 0 to 19, val 0 to 19, test 0 to 23\)"):
        validate_contract(plain_task(lambda config: _MeanOfEmbedded(20), loaders(23)), [config])
    validate_contract(plain_task(lambda config: _MeanOfEmbedded(20), loaders(19)), [config])
