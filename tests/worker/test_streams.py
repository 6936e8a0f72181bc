"""Streamed Datasets: read through DataLoaders per trial, never stacked into memory."""

from __future__ import annotations

import io
import math
import os
import random

import numpy as np
import pytest
import torch

from orchestrator.spec.task import load_task
from tests.conftest import ROOT
from worker.data.splits import prepare_task_data
from worker.train.trainer import TrialRun, TrialSpec

STREAMED = os.path.join(ROOT, "tests", "tasks", "streamed_task.py")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread beats several spin-waiting on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_streamed_dataset_is_read_per_epoch_and_never_stacked():
    task = load_task(STREAMED)
    reads, sizes = task.get("READS"), task.get("SIZES")
    loaded = dict(reads)  # the task module is imported once per process: other tests may have read it
    splits = prepare_task_data(task)
    # One pass per split at load: the targets and the training statistics, nothing else kept.
    assert {k: reads[k] - loaded[k] for k in reads} == sizes
    assert splits.x_train is None and splits.x_val is None and splits.x_test is None
    assert splits.n_train == sizes["train"] and splits.y_val.dtype == torch.int64 and splits.num_classes == 3
    assert splits.mean is not None and splits.mean.shape == (1, 6)
    spec = TrialSpec(0, 0, {"lr": 0.02, "batch_size": 50, "optimizer": "adam"}, 7, 2)
    run = TrialRun(task, splits, spec, torch.device("cpu"))
    probe = dict(reads)
    for _ in range(2):
        before = dict(reads)
        row = run.train_epoch()
        # Each epoch reads every training item once (in batches of 50) and validation once.
        assert reads["train"] - before["train"] == sizes["train"]
        assert reads["val"] - before["val"] == sizes["val"]
        assert reads["test"] == before["test"]
    assert row["val_accuracy"] > 0.8 and math.isfinite(row["val_loss"])
    assert reads["train"] - probe["train"] == 2 * sizes["train"]


def test_augmentation_drawn_from_numpy_trains_a_config_to_the_same_numbers_again_and_resumes_exactly():
    """streamed_task augments with np.random: its draws follow the trial's seed, not where the worker process's
    numpy state happened to be (a forked worker starts from the master's and carries it from trial to trial)."""
    task = load_task(STREAMED)
    splits = prepare_task_data(task)
    spec = TrialSpec(0, 0, {"lr": 0.02, "batch_size": 50, "optimizer": "adam"}, 7, 3)

    def losses(run, epochs):
        return [run.train_epoch()["train_loss"] for _ in range(epochs)]

    first = losses(TrialRun(task, splits, spec, torch.device("cpu")), 3)
    np.random.seed(12345)  # another trial ran in this worker before: its draws moved numpy's and Python's state
    random.seed(12345)
    assert losses(TrialRun(task, splits, spec, torch.device("cpu")), 3) == first
    interrupted = TrialRun(task, splits, spec, torch.device("cpu"))
    losses(interrupted, 1)
    saved = io.BytesIO()
    torch.save(interrupted.resume_state(), saved)
    python_state = random.getstate()
    np.random.seed(999)  # the resumed attempt runs in another process
    random.seed(999)
    resumed = TrialRun(task, splits, spec, torch.device("cpu"))
    resumed.load_resume_state(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    assert random.getstate() == python_state
    assert losses(resumed, 2) == first[1:]


def test_the_load_time_statistics_of_an_augmenting_split_are_the_same_in_every_process():
    """The master's pass over streamed_task's training split (noise from np.random) standardised with numbers that
    depended on numpy's state, new in every process: a rerun of the same sweep trained to other losses (0.24794
    against 0.24798 after one epoch). The user's generators are left as they were."""
    task = load_task(STREAMED)
    means = []
    for state in (1, 2):
        np.random.seed(state)  # another process: another numpy state when load_data runs
        before = np.random.get_state()[1].copy()
        means.append(prepare_task_data(task).mean)
        assert np.array_equal(np.random.get_state()[1], before)
    assert torch.equal(means[0], means[1])


def test_streamed_and_in_memory_data_give_the_same_numbers():
    """The same examples without augmentation, streamed or as tensors: the same standardisation and metrics."""
    task = load_task(STREAMED)
    blobs = task.get("Blobs")
    streamed = prepare_task_data(task)
    pairs = []
    for split in ("train", "val", "test"):
        data = blobs(split, False)
        xs, ys = zip(*(data[i] for i in range(len(data))))
        pairs.append((torch.stack(xs), torch.tensor(ys)))
    from worker.data.splits import prepare

    in_memory = prepare(tuple(pairs))
    assert torch.allclose(streamed.mean, in_memory.mean, atol=0.02)  # train items are augmented by N(0, 0.1)
    assert torch.allclose(streamed.std, in_memory.std, rtol=0.02)
    assert torch.equal(streamed.y_val, in_memory.y_val)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_persist_and_read_each_item_once(workers):
    task = load_task(STREAMED)
    splits = prepare_task_data(task)
    train = splits.streams["train"]
    train.num_workers = workers
    loader = train.loader(100, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert loader.persistent_workers == (workers > 0)
    seen = torch.cat([y for _, y in loader])
    assert len(seen) == splits.n_train
    assert torch.equal(seen.sort().values, splits.y_train.sort().values)


def loader_task_data(shuffle_val: bool = False, drop_last: tuple[str, ...] = ()):
    """The blobs as tensors, each split given as a function making a DataLoader for a batch size (``drop_last``: the
    splits whose loaders drop their last partial batch)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(300, 4, generator=g) + 3 * torch.nn.functional.one_hot(y, 4).float()
    asked: list[tuple[str, int]] = []

    def split(name, lo, hi, shuffle):
        data = torch.utils.data.TensorDataset(x[lo:hi], y[lo:hi])

        def make_loader(batch_size):
            asked.append((name, batch_size))
            return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                                               drop_last=name in drop_last)

        return make_loader

    functions = {"train": split("train", 0, 180, True), "val": split("val", 180, 240, shuffle_val),
                 "test": split("test", 240, 300, False)}
    tensors = ((x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:]))
    return functions, tensors, asked


def test_a_loader_function_per_split_gets_the_trials_batch_size_and_gives_the_in_memory_numbers():
    from types import SimpleNamespace

    from orchestrator.search.space import SearchSpace
    from orchestrator.spec.task import Task
    from worker.data.splits import prepare
    from worker.train.trainer import evaluate_split

    functions, tensors, asked = loader_task_data()
    streamed, in_memory = prepare(functions), prepare(tensors)
    assert streamed.x_train is None and torch.equal(streamed.y_val, in_memory.y_val)
    assert torch.allclose(streamed.mean, in_memory.mean, atol=1e-5) and torch.allclose(streamed.std, in_memory.std)
    task = Task("inline", SimpleNamespace(build_model=lambda c: torch.nn.Linear(4, 3)), SearchSpace({"lr": 0.05}))
    run = TrialRun(task, streamed, TrialSpec(0, 0, {"lr": 0.05, "batch_size": 20, "optimizer": "adam"}, 1, 2),
                   torch.device("cpu"))
    asked.clear()
    run.train_epoch()
    assert ("train", 20) in asked  # the trial's batch size; evaluation asks for its own
    # The same weights score the same on the loader's val split as on the tensors.
    loss_fn = torch.nn.functional.cross_entropy
    by_loader, _ = evaluate_split(task, streamed.target_kind, loss_fn, run.model, streamed.streams["val"],
                                  streamed.y_val, "val", streamed)
    by_tensor, _ = evaluate_split(task, in_memory.target_kind, loss_fn, run.model, in_memory.x_val, in_memory.y_val,
                                  "val", in_memory)
    assert by_loader["val_loss"] == pytest.approx(by_tensor["val_loss"], rel=1e-5)
    assert by_loader["val_accuracy"] == by_tensor["val_accuracy"]


def test_a_training_loader_that_drops_its_last_batch_is_read_whole_outside_training_epochs():
    """``DataLoader(..., drop_last=True)`` for training (as batch norm wants), 180 examples: the load-time pass read
    batches of 256, got none and called the split empty (with 300 it would have counted 256, a random subset). The
    trials' epochs still drop, and the update ratio is measured on a batch the epoch has."""
    from types import SimpleNamespace

    from orchestrator.errors import TaskError
    from orchestrator.search.space import SearchSpace
    from orchestrator.spec.task import Task
    from worker.data.splits import prepare

    functions, tensors, _ = loader_task_data(drop_last=("train",))
    streamed, in_memory = prepare(functions), prepare(tensors)
    assert streamed.n_train == 180 and sorted(streamed.y_train.tolist()) == sorted(in_memory.y_train.tolist())
    assert torch.allclose(streamed.mean, in_memory.mean, atol=1e-5) and torch.allclose(streamed.std, in_memory.std)
    assert len(streamed.sample(200)[0]) == 180
    task = Task("inline", SimpleNamespace(build_model=lambda c: torch.nn.Linear(4, 3)), SearchSpace({"lr": 0.05}))
    run = TrialRun(task, streamed, TrialSpec(0, 0, {"lr": 0.05, "batch_size": 50, "optimizer": "adam"}, 1, 2),
                   torch.device("cpu"))
    row = run.train_epoch()
    assert math.isfinite(row["update_ratio"]) and row["update_ratio"] > 0
    # samples/s counts the 150 examples the epoch trained (3 batches of 50), not the split's 180
    assert row["samples_per_second"] * row["epoch_seconds"] == pytest.approx(150)
    with pytest.raises(TaskError, match="the val loader function's DataLoader has drop_last=True"):
        prepare(loader_task_data(drop_last=("val",))[0])


class _FileRows(torch.utils.data.Dataset):
    """Rows read through a handle each DataLoader worker opens in its worker_init_fn, as HDF5 readers do."""

    def __init__(self, x, y):
        self.x, self.y, self.handle = x, y, None

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.handle is None:
            raise RuntimeError("no file handle: read in a worker that worker_init_fn opened")
        return self.x[i], self.y[i]


def _open_handle(worker_id):
    torch.utils.data.get_worker_info().dataset.handle = f"worker {worker_id}"


def test_the_load_time_pass_of_a_loader_that_drops_its_last_batch_keeps_its_worker_init_fn():
    """The pass that reads a drop_last=True training loader whole made a DataLoader of its own and left out the
    task's worker_init_fn: a Dataset whose workers open their file there failed at load ("no file handle")."""
    from torch.utils.data import DataLoader

    from worker.data.splits import prepare

    x, y = torch.randn(90, 4), torch.arange(90) % 3
    rows = _FileRows(x, y)
    splits = prepare((lambda size: DataLoader(rows, batch_size=size, shuffle=True, drop_last=True, num_workers=1,
                                              worker_init_fn=_open_handle), (x[:30], y[:30]), (x[:30], y[:30])))
    assert splits.n_train == 90 and sorted(splits.y_train.tolist()) == sorted(y.tolist())


class _StreamedRows(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def test_a_training_loader_over_an_iterable_dataset_that_drops_its_last_batch_is_read_whole_at_load():
    """A train loader function ``DataLoader(IterableDataset, batch_size=b, drop_last=True)`` (a streamed shard
    reader, batch norm): the load-time pass rebuilt it with its placeholder sampler, which torch refuses for an
    IterableDataset, so every sweep stopped with "load_data raised ValueError: DataLoader with IterableDataset:
    expected unspecified sampler option"."""
    from torch.utils.data import DataLoader

    from worker.data.splits import prepare

    x, y = torch.randn(90, 4, dtype=torch.float64), torch.arange(90) % 3
    rows = _StreamedRows(x, y)
    splits = prepare((lambda size: DataLoader(rows, batch_size=size, drop_last=True), (x[:30], y[:30]),
                      (x[:30], y[:30])))
    assert splits.n_train == 90 and torch.equal(splits.y_train, y)
    assert torch.allclose(splits.mean, x.mean(0, keepdim=True)) and torch.allclose(splits.std, x.std(0, keepdim=True))


class _Shards(torch.utils.data.IterableDataset):
    """Rows split into one contiguous shard per DataLoader worker, as a streamed shard reader does."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, workers = (0, 1) if info is None else (info.id, info.num_workers)
        per = math.ceil(len(self.x) / workers)
        return iter(zip(self.x[k * per:(k + 1) * per], self.y[k * per:(k + 1) * per]))


def test_val_and_test_loaders_sharded_over_loader_workers_are_read_in_one_order_at_load_and_evaluation():
    """``DataLoader(sharded IterableDataset, batch_size=b, num_workers=2)`` yields the workers' batches in turn, so
    its order follows ``b``: the load-time pass read val at 256 (rows 0-255, 300-555, 256-299, ...), evaluation at
    1024 (rows 0-299, then 300-599), and every sweep was refused with "the val split gave its examples in another
    order than at load" although nothing shuffled. Both now ask for the evaluation's batch size."""
    from torch.utils.data import DataLoader

    from worker.data.splits import prepare
    from worker.data.streams import check_first_batches_repeat

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 4, generator=g), torch.randint(0, 3, (600,), generator=g)
    val = _Shards(x, y)
    splits = prepare(((x[:200], y[:200]), lambda size: DataLoader(val, batch_size=size, num_workers=2),
                      (x[:200], y[:200])))
    check_first_batches_repeat(splits.streams)  # the master's check: refused here before
    seen = torch.cat([yb for _, yb in splits.streams["val"].eval_batches()])
    assert torch.equal(seen, splits.y_val) and sorted(seen.tolist()) == sorted(y.tolist())
    splits.streams["val"].release_workers()


def test_a_val_loader_that_shuffles_is_refused_in_one_line():
    from orchestrator.errors import TaskError
    from worker.data.splits import prepare
    from worker.train.trainer import model_outputs

    functions, _, _ = loader_task_data(shuffle_val=True)
    splits = prepare(functions)
    with pytest.raises(TaskError, match="the val split gave its examples in another order than at load"):
        model_outputs(torch.nn.Linear(4, 3), splits.streams["val"], splits=splits)


@pytest.mark.parametrize("given", ["datasets", "loader functions"])
def test_a_val_split_that_augments_is_refused_before_any_trial_naming_it(given):
    """A training transform given to val too (``transform=train_tf`` on both): every epoch would score other inputs,
    and the stored predictions and ensembles with them. The master's check reads val twice: refused in one line."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from orchestrator.errors import TaskError
    from orchestrator.search.space import SearchSpace
    from orchestrator.spec.task import Task
    from worker.check.contract import validate_contract

    blobs = load_task(STREAMED).get("Blobs")
    splits = {"train": blobs("train", True), "val": blobs("val", True), "test": blobs("test", False)}
    if given == "loader functions":
        splits = {name: (lambda size, data=data: DataLoader(data, batch_size=size)) for name, data in splits.items()}
    config = {"lr": 0.02, "batch_size": 50, "optimizer": "adam"}
    task = Task("inline", SimpleNamespace(load_data=lambda: splits, build_model=lambda c: torch.nn.Linear(6, 3)),
                SearchSpace(config))
    with pytest.raises(TaskError, match=r"the val split gave other inputs for example 0 than at load; .*random "
                                        r"augmentation belongs in the training split only") as refused:
        validate_contract(task, [config])
    assert "\n" not in str(refused.value)
    plain_val = blobs("val", False)
    splits["val"] = plain_val if given == "datasets" else lambda size: DataLoader(plain_val, batch_size=size)
    validate_contract(task, [config])  # augmentation in train alone is what the contract asks for
    splits["test"] = blobs("test", True)  # the trials measure test only as they end: refused before them too
    if given == "loader functions":
        splits["test"] = lambda size, data=splits["test"]: DataLoader(data, batch_size=size)
    with pytest.raises(TaskError, match=r"the test split gave other inputs for example 0 than at load"):
        validate_contract(task, [config])


def test_the_fusing_off_reason_names_what_the_task_gives_loader_functions_or_datasets():
    from worker.arrays.fused import contract_blocker
    from worker.data.splits import prepare

    functions, tensors, _ = loader_task_data()
    by_functions = prepare(functions)
    reason = contract_blocker(None, by_functions.target_kind, by_functions.streams)
    assert reason.startswith("the data streams from the task's loader functions (batch_size -> DataLoader):")
    assert "Dataset" not in reason
    by_datasets = prepare_task_data(load_task(STREAMED))
    assert contract_blocker(None, by_datasets.target_kind, by_datasets.streams).startswith(
        "the data streams from torch Datasets:")
    mixed = prepare({**functions, "train": torch.utils.data.TensorDataset(*tensors[0])})
    assert "loader functions for val, test (batch_size -> DataLoader) and torch Datasets:" in contract_blocker(
        None, mixed.target_kind, mixed.streams)


class DictRows(torch.utils.data.Dataset):
    """Items as Hugging Face datasets give them: a dict per example."""

    def __init__(self, keys=("pixels", "label")):
        self.keys = keys

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(zip(self.keys, (torch.zeros(3), i % 2, 0)))


def test_a_dataset_of_dicts_is_refused_naming_its_keys_and_the_pair_to_return():
    from orchestrator.errors import TaskError
    from worker.data.splits import prepare

    with pytest.raises(TaskError, match=r"^load_data: the train Dataset must yield \(input, target\) pairs, got a "
                                        r"dict with keys 'pixels', 'label'; return \(input, target\) from __getitem__ "
                                        r"\(or wrap the Dataset\), e.g. \(item\['pixels'\], item\['label'\]\)$"):
        prepare({"train": DictRows(), "val": DictRows(), "test": DictRows()})
    with pytest.raises(TaskError, match=r"got a dict with keys 'a', 'b', 'c'; return \(input, target\) from "
                                        r"__getitem__ \(or wrap the Dataset\)$"):
        prepare({"train": DictRows(("a", "b", "c")), "val": DictRows(), "test": DictRows()})


class TwoInputs(torch.utils.data.Dataset):
    """Items of two inputs, token ids beside numeric features: ((tokens, features), label), or a dict of them."""

    def __init__(self, as_dict=False):
        self.as_dict = as_dict

    def __len__(self):
        return 8

    def __getitem__(self, i):
        tokens, features = torch.arange(5) + i, torch.zeros(3)
        return ({"tokens": tokens, "features": features} if self.as_dict else (tokens, features)), i % 2


class ListRows(torch.utils.data.Dataset):
    """Token ids as a Python list per example."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return [i, 1, 2, 3, 4], i % 2


def test_a_dataset_of_several_inputs_is_refused_in_one_line_saying_to_join_them():
    # Before: "load_data raised ValueError: only one element tensors can be converted to Python scalars" from
    # caviar's own torch.as_tensor (a traceback under `caviar check`), blaming load_data, which had not raised.
    from orchestrator.errors import TaskError
    from worker.data.splits import prepare

    with pytest.raises(TaskError, match=r"^load_data: the train split's inputs are a list of 2, not one tensor; "
                                        r"join them into one tensor \(torch.cat"):
        prepare({"train": TwoInputs(), "val": TwoInputs(), "test": TwoInputs()})
    with pytest.raises(TaskError, match=r"^load_data: the train split's inputs are a dict with keys 'tokens', "
                                        r"'features', not one tensor; join them"):
        prepare({"train": TwoInputs(as_dict=True), "val": TwoInputs(), "test": TwoInputs()})
    # one input as a Python list per example: collated into one tensor per position, so the hint is another
    with pytest.raises(TaskError, match=r"^load_data: the train split's inputs are a list of 5, not one tensor; give "
                                        r"each example's inputs as one tensor \(torch.tensor\(values\), not a list\)"):
        prepare({"train": ListRows(), "val": ListRows(), "test": ListRows()})


def test_the_masters_check_leaves_no_loader_workers_idling_through_the_sweep():
    """``num_workers = 2``: the contract check reads val through a loader with persistent workers; they end with it
    (a later pass makes them again), instead of two idle processes on the master for the whole sweep."""
    import multiprocessing

    from tests.conftest import ROOT
    from worker.check.contract import validate_contract

    task = load_task(f"{ROOT}/tests/tasks/loader_workers_task.py")
    splits = validate_contract(task, [{"lr": 0.02, "batch_size": 32, "optimizer": "adam"}])
    assert splits.streams["val"].num_workers == 2
    assert multiprocessing.active_children() == []
    assert len(list(splits.streams["val"].eval_batches())) == 1  # read again on demand: 80 examples, one batch


def test_float_sequences_padded_per_batch_are_refused_before_any_trial_unless_normalize_is_off():
    # Before: the load-time pass (batches of 256) saw the longest length only; every trial then failed on torch's
    # "The size of tensor a (13) must match the size of tensor b (14)" between a batch and the statistics.
    from torch.nn.utils.rnn import pad_sequence
    from torch.utils.data import DataLoader

    from orchestrator.errors import TaskError
    from worker.data.splits import prepare

    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(int(n), 3, generator=g) + 5, i % 2)
             for i, n in enumerate(torch.randint(2, 15, (300,), generator=g))]
    items[0] = (torch.randn(14, 3, generator=g), 0)  # the longest, in every batch of 256

    def collate(batch):
        return pad_sequence([x for x, _ in batch], batch_first=True), torch.tensor([y for _, y in batch])

    def loader(batch_size):
        return DataLoader(items, batch_size=batch_size, collate_fn=collate)

    raw = {"train": loader, "val": loader, "test": loader}
    with pytest.raises(TaskError, match=r"^load_data: the train split's batches give floating inputs of shapes "
                                        r"\(batch, 14, 3\) and \(batch, \d+, 3\); caviar standardises each input "
                                        r"position .* or set normalize = False"):
        prepare(raw)
    splits = prepare(raw, normalize=False)  # the model takes any length: nothing to standardise
    assert splits.mean is None
    splits.mean, splits.std = torch.zeros(1, 14, 3), torch.ones(1, 14, 3)  # a batch meeting statistics of another shape
    with pytest.raises(TaskError, match=r"^load_data: a split's batches give floating inputs of shapes "
                                        r"\(batch, 14, 3\) and \(batch, 5, 3\)"):
        splits.normalise(torch.zeros(2, 5, 3))


def test_a_dataset_read_by_index_without_len_is_refused_naming_the_split():
    """torch's sampler said "object of type 'Rows' has no len()", and the check blamed load_data itself."""
    from torch.utils.data import Dataset

    from orchestrator.errors import TaskError
    from worker.data.splits import prepare

    class Rows(Dataset):  # __getitem__ alone, ended by IndexError as a Python sequence is
        def __getitem__(self, i):
            if i >= 8:
                raise IndexError(i)
            return torch.full((2,), float(i)), i % 2

    pair = (torch.randn(8, 2), torch.arange(8) % 2)
    with pytest.raises(TaskError, match=r"^load_data: the val Dataset \(Rows\) has no __len__; .*define __len__, or "
                                        r"subclass IterableDataset"):
        prepare((pair, Rows(), pair))


def test_a_training_stream_caviar_cannot_shuffle_that_comes_grouped_by_class_is_named_in_a_warning(caplog):
    """Data stored one file per class, read by an IterableDataset (or the task's loader without shuffle=True), trained
    class after class every epoch: 0.625 best val accuracy against 0.965 shuffled in a 2-trial sweep, no word said.
    Arrays and map-style Datasets are shuffled by caviar: never named."""
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    from worker.check.validate import warn_if_train_comes_grouped_by_class
    from worker.data.splits import prepare

    x = torch.randn(600, 4)
    y = torch.arange(600) % 3
    by_class = torch.argsort(y, stable=True)

    class Files(IterableDataset):  # yields the examples in the order given
        def __init__(self, order):
            self.order = order

        def __iter__(self):
            return ((x[i], int(y[i])) for i in self.order.tolist())

    held = (x[:60], y[:60])
    grouped = prepare((Files(by_class), held, held))
    said = warn_if_train_comes_grouped_by_class(grouped)
    assert said is not None and said in caplog.text
    assert said.startswith("load_data: the train split gives its examples grouped by class (2 class changes in "
                           "600 examples, about 399 in a random order), and caviar reads an IterableDataset in the "
                           "order it yields")
    assert said.endswith("shuffle in __iter__ (a torch.randperm per pass follows each trial's seed)")
    sorted_set = TensorDataset(x[by_class], y[by_class])
    unshuffled = prepare((lambda size: DataLoader(sorted_set, batch_size=size), held, held))
    assert warn_if_train_comes_grouped_by_class(unshuffled).endswith("give its DataLoader shuffle=True")
    shuffled = prepare((lambda size: DataLoader(sorted_set, batch_size=size, shuffle=True), held, held))
    for fine in (prepare((Files(torch.randperm(600)), held, held)), shuffled, prepare((sorted_set, held, held)),
                 prepare(((x[by_class], y[by_class]), held, held))):
        assert warn_if_train_comes_grouped_by_class(fine) is None


def test_an_epoch_that_gets_no_training_batch_fails_its_trial_saying_why_instead_of_a_loss_of_zero():
    """A trial whose epochs got no batch reported train_loss 0.0 and completed with its initial weights."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    from orchestrator.errors import TaskError
    from orchestrator.search.space import SearchSpace
    from orchestrator.spec.task import Task
    from worker.data.splits import prepare

    x, y = torch.randn(300, 4), torch.arange(300) % 3
    held = (x[:60], y[:60])
    train = TensorDataset(x, y)

    def first_epoch(splits, batch_size, **hooks):
        task = Task("inline", SimpleNamespace(build_model=lambda c: torch.nn.Linear(4, 3), **hooks),
                    SearchSpace({"lr": 0.05}))
        run = TrialRun(task, splits, TrialSpec(0, 0, {"lr": 0.05, "batch_size": batch_size}, 1, 3), torch.device("cpu"))
        return run, run.train_epoch()

    dropping = prepare((lambda size: DataLoader(train, batch_size=size, shuffle=True, drop_last=True), held, held))
    assert first_epoch(dropping, 256)[1]["train_loss"] > 0  # one full batch of 256: trains
    with pytest.raises(TaskError, match=r"^the training split gave no batch in epoch 1 at batch_size 512 \(300 "
                                        r"examples\): the train loader's DataLoader has drop_last=True, .*keep "
                                        r"batch_size at most 300 in the space, or drop_last=False$"):
        first_epoch(dropping, 512)
    with pytest.raises(TaskError, match=r"no batch in epoch 1 at batch_size 512"):  # a task's own loop, alike
        first_epoch(dropping, 512, train_epoch=lambda model, optimizer, batches, config: {
            "train_loss": sum(float(torch.nn.functional.cross_entropy(model(xb), yb)) for xb, yb in batches)})

    class OnePass(IterableDataset):  # __iter__ hands out one generator made once: the load-time pass empties it
        def __init__(self):
            self.rows = iter(zip(x, y.tolist()))

        def __iter__(self):
            return self.rows

    with pytest.raises(TaskError, match=r"^load_data: the train split gave no example when read a second time .*"
                                        r"__iter__ must start a new pass at each call"):
        first_epoch(prepare((OnePass(), held, held)), 32)


def test_a_long_load_time_pass_says_how_far_it_got_and_that_an_iterable_must_end(caplog, monkeypatch):
    """An IterableDataset that streams for ever kept caviar reading it at load without a word, as a hang."""
    import time as clock

    from torch.utils.data import IterableDataset

    from worker.data import streams
    from worker.data.splits import prepare

    monkeypatch.setattr(streams, "SCAN_REPORT_SECONDS", 0.05)  # the pass below takes ~0.3 s, not minutes

    class Slow(IterableDataset):
        def __iter__(self):
            for i in range(600):
                if i % 60 == 0:
                    clock.sleep(0.03)
                yield torch.full((2,), float(i)), i % 2

    held = (torch.randn(20, 2), torch.arange(20) % 2)
    with caplog.at_level("WARNING", logger="caviar"):
        prepare((Slow(), held, held))
    said = [r.getMessage() for r in caplog.records if "still reading" in r.getMessage()]
    assert said and said[0].startswith("load_data: still reading the train split once at load: ")
    assert said[0].endswith(": an IterableDataset must end each pass (one pass is one epoch), not stream for ever")
    assert len(said) < 6  # the intervals double: a few lines, not one per batch


def test_the_masters_check_leaves_the_callers_generators_as_they_were():
    """The check builds a trial, which seeds torch, numpy and random with the trial's seed: a notebook's own draws
    after run_sweep started from that seed, and an unseeded split drawn by load_data in the same process repeated
    the draws the check left, so the stored labels could match a worker's and the unseeded split go unseen."""
    from tests.conftest import TINY_TASK
    from worker.check.contract import validate_contract

    task = load_task(TINY_TASK)
    config = {"lr": 0.05, "hidden": 8, "batch_size": 32}

    def draws():
        return random.random(), float(np.random.random()), float(torch.rand(1))

    for seed in (5, 6):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        expected = draws()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        validate_contract(task, [config])  # tiny_task's load_data draws from a generator of its own
        assert draws() == expected


COUNTED = os.path.join(ROOT, "tests", "tasks", "counted_stream_task.py")


def test_workers_read_no_streamed_split_in_full_before_their_first_trial(tmp_path, monkeypatch):
    """Each spawned worker used to read every split once at its start (its own load-time pass) although the master
    had measured them: for data larger than memory, one full pass per worker before any trial trained."""
    from collections import Counter

    from orchestrator.app.api import run_sweep

    reads = tmp_path / "reads"
    monkeypatch.setenv("CAVIAR_TEST_READS", str(reads))
    run_sweep(COUNTED, storage=str(tmp_path), name="counted", slots=2, executor="processes", ensemble=False)
    sizes = load_task(COUNTED).get("SIZES")
    rows = [line.split() for line in reads.read_text().splitlines()]
    workers = {pid for pid, _ in rows if pid != str(os.getpid())}
    assert len(workers) == 2
    worker_passes = Counter(split for pid, split in rows if pid in workers)
    # 2 trials of 1 epoch: 2 training epochs (and a first batch of 256 each for the trials' probes), 2 validation
    # passes and 2 test passes; a load-time pass per worker made these 4.5, 4 and 4
    assert worker_passes["train"] / sizes["train"] < 3
    # (and val's and test's first 16 examples, compared with the master's)
    assert worker_passes["val"] / sizes["val"] < 2.5 and worker_passes["test"] / sizes["test"] < 2.5


def test_a_worker_given_the_masters_pass_still_refuses_streamed_splits_unlike_the_masters():
    """A worker that skips its load-time pass must still refuse a load_data that gives it other splits (drawn again
    without a seed): a Dataset of another length, or val examples other than the master's, before any trial."""
    from orchestrator.errors import TaskError
    from worker.data.splits import measured_data

    task = load_task(COUNTED)
    measured = measured_data(prepare_task_data(task))
    worker = prepare_task_data(task, measured=measured)  # the same data: taken as measured
    assert worker.n_train == 1000 and worker.num_classes == 3 and worker.streams["val"].targets is not None
    sizes, offsets = task.get("SIZES"), task.get("OFFSETS")
    sizes["train"] += 1
    try:
        with pytest.raises(TaskError, match=r"^load_data: the train Dataset has 1001 examples in this worker but 1000 "
                                            r"in the master's: .*seed a random split"):
            prepare_task_data(task, measured=measured)
    finally:
        sizes["train"] -= 1
    offsets["val"] += 7
    try:
        with pytest.raises(TaskError, match=r"the val split gave its examples in another order than at load \(batch at "
                                            r"row 0\).*same examples in every process"):
            prepare_task_data(task, measured=measured)  # its first batch, before any trial
    finally:
        offsets["val"] -= 7


def test_num_workers_that_an_iterable_dataset_cannot_use_is_named_in_one_warning_line(caplog):
    """``num_workers = 2`` with an IterableDataset was dropped in silence (several loader workers would each yield
    the whole stream): the user who asked for parallel reading is told, once, which splits and what to do."""
    from worker.check.contract import validate_contract

    task = load_task(os.path.join(ROOT, "tests", "tasks", "iterable_workers_task.py"))
    splits = validate_contract(task, [{"lr": 0.02, "batch_size": 32, "optimizer": "adam"}])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("num_workers")]
    assert said == ["num_workers = 2 is not used for the train split (IterableDataset): each DataLoader worker would "
                    "yield every example unless the Dataset splits its stream by "
                    "torch.utils.data.get_worker_info(), so caviar reads it in one process; to read in parallel, give "
                    "a split as a function making your own DataLoader for a batch size, over a Dataset that splits "
                    "its stream so"]
    assert splits.streams["val"].num_workers == 2  # map-style splits use them: nothing said of those
    caplog.clear()
    validate_contract(load_task(os.path.join(ROOT, "tests", "tasks", "loader_workers_task.py")),
                      [{"lr": 0.02, "batch_size": 32, "optimizer": "adam"}])
    assert not any(r.getMessage().startswith("num_workers") for r in caplog.records)


def test_a_batch_size_above_a_training_split_that_drops_its_last_batch_is_named_before_the_sweep(tmp_path, caplog):
    """The train loader function's DataLoader has drop_last=True over 100 examples; the space draws batch_size from
    32, 64, 128, 256. Trials drawing 128 or 256 got no batch and failed one by one after the sweep started, with no
    word before. Now one warning line before it (the other values train), and a refusal when no value can train."""
    from orchestrator.app.api import run_sweep
    from orchestrator.errors import TaskError

    task_file = os.path.join(ROOT, "tests", "tasks", "drop_last_loader_task.py")
    result = run_sweep(task_file, storage=str(tmp_path), name="dropping", slots=1, executor="processes",
                       ensemble=False)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("space: batch_size")]
    assert said == ["space: batch_size options 32, 64, 128, 256 goes above 100: the train loader's DataLoader has "
                    "drop_last=True and the training split holds 100 examples, so an epoch at a larger batch_size gets "
                    "no batch, and the trials that draw such a value will fail (the others train); drop the options "
                    "above it, or give the train DataLoader drop_last=False"]
    assert result.counts.get("completed", 0) >= 1  # the warning stops nothing
    from orchestrator.search.space import SearchSpace, choice, randint
    from worker.check.contract import validate_contract

    task = load_task(task_file)
    for space, shown in (({"batch_size": choice([128, 256])}, "options 128, 256"), ({"batch_size": 128}, "128")):
        space = SearchSpace({**space, "lr": 0.02, "optimizer": "adam"})
        with pytest.raises(TaskError, match=rf"space: batch_size {shown} is above 100: .* every trial would fail; "
                                            r"keep batch_size at most 100, or give the train DataLoader "
                                            r"drop_last=False$"):
            validate_contract(task, [{"lr": 0.02, "optimizer": "adam", "batch_size": 128}], space=space)
    from worker.check.validate import check_batches_fit_dropping_split
    from worker.data.splits import prepare_task_data as load

    splits = load(load_task(task_file))
    ranged = check_batches_fit_dropping_split(splits, {"batch_size": randint(16, 200)}, [])
    assert "batch_size range [16, 200] goes above 100" in ranged and "limits=(low, 100)" in ranged
    assert check_batches_fit_dropping_split(splits, {"batch_size": randint(16, 100)}, []) is None


class _PilImages(torch.utils.data.Dataset):
    """Images as a torchvision Dataset gives them without ToTensor: PIL images."""

    def __init__(self, n: int):
        self.pixels = np.random.default_rng(0).integers(0, 256, size=(n, 6, 6, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(self.pixels[i]), i % 2


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataset_of_pil_images_is_refused_naming_the_split_and_the_conversion(workers):
    """It was 'load_data raised TypeError: default_collate: batch must contain tensors, ...; found <class
    'PIL.Image.Image'>': load_data had returned; caviar's own read of the split could not batch its items."""
    pytest.importorskip("PIL")
    from orchestrator.errors import TaskError
    from worker.data.splits import prepare

    with pytest.raises(TaskError, match=r"^load_data: the train Dataset yields items a DataLoader cannot batch "
                                        r"\(default_collate: .*found <class 'PIL.Image.Image'>\); return tensors from "
                                        r"__getitem__: for a PIL image torch.from_numpy\(np.asarray\(image\)\)"):
        prepare((_PilImages(8), _PilImages(4), _PilImages(4)), num_workers=workers)


DROPOUT_STREAMED = os.path.join(ROOT, "tests", "tasks", "streamed_dropout_task.py")


def test_a_trial_with_dropout_and_loader_workers_trains_the_same_whatever_ran_before_it_in_its_process():
    """The kept val loader drew its workers' seed from torch's global generator at its first pass in a process only:
    the first trial a worker trained took other dropout masks than the same trial trained later in that worker
    (--slots 1 and --slots 2 gave trial 1 other numbers)."""
    task = load_task(DROPOUT_STREAMED)
    splits = prepare_task_data(task)
    assert splits.streams["val"].num_workers == 2
    spec = TrialSpec(1, 0, {"lr": 0.02, "batch_size": 50, "optimizer": "adam", "dropout": 0.3}, 7, 2)

    def val_losses():
        run = TrialRun(task, splits, spec, torch.device("cpu"))
        return [run.train_epoch()["val_loss"] for _ in range(2)]

    splits.streams["val"].release_workers()  # a fresh worker process: its val loader not made yet
    first = val_losses()
    assert val_losses() == first  # a later trial of the same worker: its val loader kept


def test_augmentation_in_loader_workers_resumes_exactly():
    """Kept training workers carried their numpy streams from epoch to epoch, which no resume state holds: a resumed
    trial read other augmentation (and, its loader drawing a new seed, another order) than the run it continues."""
    task = load_task(DROPOUT_STREAMED)
    splits = prepare_task_data(task)
    spec = TrialSpec(0, 0, {"lr": 0.02, "batch_size": 50, "optimizer": "adam", "dropout": 0.3}, 7, 3)

    def losses(run, epochs):
        return [run.train_epoch()["train_loss"] for _ in range(epochs)]

    first = losses(TrialRun(task, splits, spec, torch.device("cpu")), 3)
    interrupted = TrialRun(task, splits, spec, torch.device("cpu"))
    losses(interrupted, 1)
    saved = io.BytesIO()
    torch.save(interrupted.resume_state(), saved)
    resumed = TrialRun(task, splits, spec, torch.device("cpu"))
    resumed.load_resume_state(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    assert losses(resumed, 2) == first[1:]


def test_a_seeded_reading_mixes_a_dataset_and_a_plain_one_keeps_its_order():
    """The soup's batch-norm pass over a streamed Dataset stored class by class read it in that order (batches of one
    class, the within-class variance); it now asks for an order drawn from a seed, the same on every build."""
    from torch.utils.data import TensorDataset

    from worker.data.streams import Stream

    x = torch.arange(1024, dtype=torch.float32).unsqueeze(1)
    stream = Stream(TensorDataset(x, torch.zeros(1024, dtype=torch.long)), "train", length=1024)
    plain = torch.cat([xb for xb, _ in stream.reading(512)])
    assert torch.equal(plain, x)
    first = torch.cat([xb for xb, _ in stream.reading(512, shuffle_seed=0)])
    again = torch.cat([xb for xb, _ in stream.reading(512, shuffle_seed=0)])
    assert torch.equal(first, again) and not torch.equal(first, x)
    assert torch.equal(first.sort(0).values, x)  # every example, once
