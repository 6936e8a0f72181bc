"""Data that streams: torch Datasets read through a DataLoader per trial, never stacked into memory.

When ``load_data()`` returns torch ``Dataset`` objects (map-style or iterable) for its splits,
each split becomes a :class:`Stream`. One pass over each split when the master loads the task
collects the targets (small: one row per example, needed for the kind, the metrics and the
ensembles) and, for the training split only, the input standardisation statistics (sums in
float64, so no example is kept). Workers are sent what it found (:func:`measured_streams`) and read
no split in full before their first trial; only a resume's, whose master loads no data, make a pass.
Trials then read batches through a ``DataLoader``: shuffled
with the trial's own generator, the batch size from its config, ``num_workers`` worker
processes kept alive across epochs, pinned memory and non-blocking copies on a GPU.

Train-only transforms (random augmentation) belong in the training split's Dataset: validation
and test are separate Datasets, read in order, so they never see them.

A split may also be a function ``make_loader(batch_size) -> DataLoader`` (any iterable of
``(inputs, targets)`` batches): caviar calls it with the trial's batch size for training and
with its own for evaluation, and the loader owns shuffling, workers and augmentation. Validation
and test loaders must yield their examples in the same order at every pass (stored predictions
and ensembles rely on it): each evaluation checks its targets against the load-time pass and
refuses, in one line, a split whose order changed.
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from orchestrator.errors import TaskError

EVAL_BATCH = 1024
# Input numbers per evaluation chunk: 4096 rows of tabular features or 8x8 digits, 2730 CIFAR images, 55 of 3x224x224.
# Evaluation runs without gradients but on far more rows than a training batch: 4096 large images made activations
# that a GPU training a batch of 64 of them could not hold, and lowering batch_size did not help.
EVAL_ELEMENTS = 2**23
STATS_BATCH = 256
SCAN_REPORT_SECONDS = 30.0  # the load-time pass says how far it got after this long, then at doubling intervals
log = logging.getLogger("caviar")


def eval_rows(example_shape: tuple[int, ...], most: int = 4096, copies: int = 1) -> int:
    """Examples per evaluation chunk: ``most``, fewer where ``copies`` models (a fused array's members) each take a
    chunk of examples this large, so that a chunk holds at most :data:`EVAL_ELEMENTS` input numbers."""
    per_example = max(1, math.prod(example_shape)) * max(1, copies)
    return max(1, min(most, EVAL_ELEMENTS // per_example))


@dataclass(eq=False)
class Stream:
    """One split read through DataLoaders; ``length`` counted by the load-time pass.

    ``dataset`` is a torch Dataset, or ``make_loader`` the task's ``batch_size -> DataLoader`` function.
    """

    dataset: Dataset | None
    name: str
    length: int = 0
    input_shape: tuple[int, ...] = ()
    input_dtype: torch.dtype = torch.float32  # as the Dataset gives it (set by the load-time pass); never cast
    other_input_shape: tuple[int, ...] | None = None  # a batch's one-example shape unlike the first's (load-time pass)
    num_workers: int = 0
    pin_memory: bool = False
    make_loader: Callable[[int], Iterable[Any]] | None = None
    targets: torch.Tensor | None = field(default=None, repr=False)  # from the load-time pass: the order to keep
    # val and test: the first inputs the load-time pass read, which every evaluation must read again
    first_inputs: torch.Tensor | None = field(default=None, repr=False)
    # integer inputs (ids): the load-time pass's smallest and largest value, each with one example holding it
    extreme_ids: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict, repr=False)
    _eval_loader: Iterable[Any] | None = field(default=None, repr=False)

    @property
    def iterable(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    def _made(self, batch_size: int) -> Iterable[Any]:
        """The task's loader for ``batch_size``; what it raises is named as the task's."""
        assert self.make_loader is not None
        try:
            loader = self.make_loader(batch_size)
        except Exception as exc:
            raise TaskError(f"load_data: the {self.name} loader function raised {type(exc).__name__} for batch size "
                            f"{batch_size}: {exc}") from exc
        if not isinstance(loader, Iterable):
            raise TaskError(f"load_data: the {self.name} loader function must return a DataLoader (an iterable of "
                            f"(inputs, targets) batches), got {type(loader).__name__}")
        return loader

    def _workers(self) -> int:
        # An iterable Dataset would be read once per worker process unless it shards itself: one reader.
        return 0 if self.iterable else self.num_workers

    def loader(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
               drop_last: bool = False, workers_per_epoch: bool = False) -> Iterable[Any]:
        """Batches of ``batch_size``: a DataLoader over the Dataset, or the task's own loader (which owns shuffling
        and its last batch).

        ``workers_per_epoch``: start the loader's workers again at each pass instead of keeping them. Each pass then
        seeds its workers (torch, numpy, ``random``) from ``generator``, so a training epoch's augmentation follows
        from the generator's state at the epoch's start, which a resume restores; kept workers carry their streams
        from epoch to epoch, which no resume state holds."""
        if self.make_loader is not None:
            return self._made(batch_size)
        workers = self._workers()
        if generator is None:
            # Each pass of a DataLoader without a generator draws its workers' seed from torch's global one, where a
            # trial's dropout draws from; a kept loader (val, test) draws only at its first pass in the process, so
            # a trial's masks depended on whether it was its worker's first trial (or a resumed one).
            generator = torch.Generator().manual_seed(0)
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle and not self.iterable,
                          generator=generator, num_workers=workers, pin_memory=self.pin_memory,
                          persistent_workers=workers > 0 and not workers_per_epoch, drop_last=drop_last)

    def reading(self, batch_size: int, shuffle_seed: int | None = None) -> Iterable[Any]:
        """Batches for a pass that is no training epoch (samples for checks, a soup's batch-norm pass): every
        example, whatever the task's loader drops; in an order drawn from ``shuffle_seed`` if given (a Dataset's;
        the task's own loader keeps its order)."""
        generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
        loader = self.loader(batch_size, shuffle=shuffle_seed is not None, generator=generator)
        return every_example(loader, self.name) if self.make_loader is not None else loader

    def release_workers(self) -> None:
        """End the evaluation loader's worker processes (made again on the next pass): the master's check reads val
        once, then would keep ``num_workers`` idle processes for the whole sweep."""
        self._eval_loader = None  # its persistent iterator shuts its workers down as it is collected

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in order, in large batches (one loader per stream, its workers kept).

        Targets are checked against the load-time pass as they come: a loader that shuffles val or
        test would pair every stored prediction with another example's target. The first inputs are checked too:
        a random transform (a training augmentation given to val) would score every epoch on other inputs.
        """
        if self._eval_loader is None:
            self._eval_loader = self.loader(eval_rows(self.input_shape, EVAL_BATCH), shuffle=False)
        seen = 0
        for batch in self._eval_loader:
            x, y = _pair(batch, self.name)
            if self.targets is not None:
                expected = self.targets[seen : seen + len(y)]
                if expected.shape != y.shape or not torch.equal(expected, y.to(expected.device)):
                    raise TaskError(f"load_data: the {self.name} split gave its examples in another order than at "
                                    f"load (batch at row {seen}); {ORDER_RULE}")
            if seen == 0:
                self._check_first_inputs(x)
            seen += len(y)
            yield x, y
        if self.targets is not None and seen != len(self.targets):
            again = (": a Dataset's __iter__ must start a new pass at each call (return a new generator, not one "
                     "made once)") if seen == 0 else ""
            raise TaskError(f"load_data: the {self.name} split gave {seen} examples, {len(self.targets)} at "
                            f"load{again}")


    def _check_first_inputs(self, x: torch.Tensor) -> None:
        expected = self.first_inputs
        if expected is None:
            return
        got = x[: len(expected)]
        if got.shape != expected.shape or got.dtype != expected.dtype:
            return  # a loader padding each batch to its longest: other shapes, nothing to compare
        same = got.to(expected.device) == expected
        if bool(same.all()):
            return
        row = int((~same).reshape(len(same), -1).any(dim=1).nonzero()[0])
        raise TaskError(f"load_data: the {self.name} split gave other inputs for example {row} than at load; val and "
                        "test must give the same inputs at every pass: random augmentation belongs in the training "
                        f"split only (give {self.name} a Dataset or loader without random transforms)")


ORDER_RULE = ("val and test must be read in the same order every time (no shuffle), and give the same examples in "
              "every process that loads them (seed a split drawn at random: np.random.default_rng(0))")
FIRST_INPUTS = 16  # val and test examples whose inputs every evaluation compares with the load-time pass


def check_first_batches_repeat(streams: dict[str, Stream] | None) -> None:
    """Read val's and test's first batch again, as every evaluation will: the master's check refuses a split that
    shuffles or augments before any trial (the trials measure test only as they end)."""
    for name in ("val", "test"):
        if streams and name in streams:
            for _ in streams[name].eval_batches():
                break


def measured_streams(streams: dict[str, Stream], targets: dict[str, torch.Tensor]) -> bytes:
    """What the master's load-time pass found in each split (its length, input shape and dtype, val's and test's
    order and first inputs) and every split's targets, for workers that load the task's Datasets themselves: they
    read no split in full again (:func:`adopt_measured`)."""
    found = {name: {"length": s.length, "input_shape": list(s.input_shape),
                    "input_dtype": str(s.input_dtype).removeprefix("torch."),
                    "other_input_shape": None if s.other_input_shape is None else list(s.other_input_shape),
                    "first_inputs": s.first_inputs, "targets": targets[name].cpu()}
             for name, s in streams.items()}
    buffer = io.BytesIO()
    torch.save(found, buffer)
    return buffer.getvalue()


def adopt_measured(streams: dict[str, Stream], measured: bytes) -> tuple[torch.Tensor, ...]:
    """The master's load-time pass as this process's: the splits' (train, val, test) targets.

    What must hold is checked without a pass: a Dataset read by index has the length the master counted, and val's
    and test's first batches give the master's targets and first inputs (every evaluation then compares all of them
    as it reads them, :meth:`Stream.eval_batches`), so a split drawn at random in each process is refused here.
    """
    found = torch.load(io.BytesIO(measured), weights_only=True)
    targets = []
    for name, stream in streams.items():
        facts = found[name]
        if stream.dataset is not None and not stream.iterable and len(stream.dataset) != facts["length"]:
            raise TaskError(f"load_data: the {name} Dataset has {len(stream.dataset)} examples in this worker but "
                            f"{facts['length']} in the master's: each process that loads the data must get the same "
                            "splits (seed a random split: np.random.default_rng(0))")
        stream.length = facts["length"]
        stream.input_shape = tuple(facts["input_shape"])
        stream.input_dtype = getattr(torch, facts["input_dtype"])
        other = facts["other_input_shape"]
        stream.other_input_shape = None if other is None else tuple(other)
        stream.first_inputs = facts["first_inputs"]
        if name != "train":
            stream.targets = facts["targets"]
        targets.append(facts["targets"])
    check_first_examples(streams)  # a few examples each: other val or test examples are refused before any trial
    return tuple(targets)


def check_first_examples(streams: dict[str, Stream]) -> None:
    """Val's and test's first ``FIRST_INPUTS`` examples against the load-time pass's targets and inputs: a process
    whose ``load_data`` drew other splits (no seed) is refused at the cost of a few reads, not a pass."""
    for name in ("val", "test"):
        stream = streams[name]
        for batch in stream.reading(FIRST_INPUTS):
            x, y = _pair(batch, name)
            expected = stream.targets[: len(y)] if stream.targets is not None else None
            if expected is not None and (expected.shape != y.shape or not torch.equal(expected, y)):
                raise TaskError(f"load_data: the {name} split gave its examples in another order than at load (batch "
                                f"at row 0); {ORDER_RULE}")
            stream._check_first_inputs(x)
            break


def is_stream(split: Any) -> bool:
    """A torch Dataset, or a function making a DataLoader for a batch size."""
    if isinstance(split, (tuple, list, torch.Tensor)) or type(split).__module__ == "numpy":
        return False
    return isinstance(split, Dataset) or callable(split)


def collated(batches: Iterable[Any], name: str) -> Iterator[Any]:
    """``batches`` as they come; items torch's default collate cannot batch (a PIL image, as a torchvision Dataset
    gives it without ToTensor) are refused in one line naming the split, not as load_data's TypeError."""
    items = iter(batches)
    while True:
        try:
            batch = next(items)
        except StopIteration:
            return
        except TypeError as exc:  # from a loader worker process too: torch's words are then one line of a traceback
            found = re.search(r"default_collate: [^\n]*", str(exc))
            if found is None:
                raise
            fix = ("return tensors from __getitem__: for a PIL image torch.from_numpy(np.asarray(image)).permute(2, 0, "
                   "1).float() / 255, as torchvision's ToTensor gives it" if "PIL" in found[0] else
                   "return tensors, numpy arrays or numbers from __getitem__")
            raise TaskError(f"load_data: the {name} Dataset yields items a DataLoader cannot batch ({found[0]}); "
                            f"{fix}") from None
        yield batch


def _pair(item: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        got = type(item).__name__
        if isinstance(item, dict):  # Hugging Face style items: say which keys, and how to pair them
            names = list(item)
            example = f", e.g. (item[{names[0]!r}], item[{names[1]!r}])" if len(names) == 2 else ""
            got = (f"a dict with keys {', '.join(repr(k) for k in names[:6])}; return (input, target) from "
                   f"__getitem__ (or wrap the Dataset){example}")
        elif isinstance(item, (tuple, list)):
            got = f"a {got} of {len(item)}"
        raise TaskError(f"load_data: the {name} Dataset must yield (input, target) pairs, got {got}")
    x, y = item
    for what, value in (("inputs", x), ("targets", y)):
        if isinstance(value, (tuple, list, dict)):  # collated from items of several tensors: the model gets one
            held = f"a dict with keys {', '.join(repr(k) for k in list(value)[:6])}" if isinstance(value, dict) \
                else f"a {type(value).__name__} of {len(value)}"
            fix = ("join them into one tensor (torch.cat along the feature dimension) and split it again in forward "
                   "(floating inputs are standardised: with token ids among them, set normalize = False)"
                   ) if what == "inputs" else "give one target tensor"
            if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) and v.ndim == 1 for v in value):
                # a Python list of numbers per example collates into one tensor per position, not into rows
                fix = f"give each example's {what} as one tensor (torch.tensor(values), not a list) from __getitem__"
            raise TaskError(f"load_data: the {name} split's {what} are {held}, not one tensor; {fix}")
    return torch.as_tensor(x), torch.as_tensor(y)


def scan(stream: Stream, *, statistics: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One pass over a split: its targets (in order), and with ``statistics`` the inputs' mean and std.

    Floating inputs are summed in float64 batch by batch and dropped: memory stays one batch,
    whatever the split's size; the statistics are kept in the inputs' dtype. Integer inputs get
    none. Inputs and targets keep the dtype and shape the Dataset gives them.
    """
    targets: list[torch.Tensor] = []
    total = total_sq = None
    count = 0
    started = time.monotonic()
    report_at = started + SCAN_REPORT_SECONDS
    batches = (stream.reading(_pass_batch(stream)) if stream.make_loader is not None else
               DataLoader(stream.dataset, batch_size=STATS_BATCH, shuffle=False, num_workers=stream._workers()))
    for batch in collated(batches, stream.name):
        x, y = _pair(batch, stream.name)
        if count == 0:
            stream.input_shape, stream.input_dtype = tuple(x.shape[1:]), x.dtype
        elif x.dtype != stream.input_dtype:
            raise TaskError(f"load_data: the {stream.name} Dataset gives inputs of dtype "
                            f"{str(stream.input_dtype).removeprefix('torch.')} and "
                            f"{str(x.dtype).removeprefix('torch.')}; give one dtype")
        if tuple(x.shape[1:]) != stream.input_shape and stream.other_input_shape is None:
            stream.other_input_shape = tuple(x.shape[1:])  # a loader padding each batch to its longest
        check_finite_inputs(x, stream.name, first_row=count)
        keep_extreme_ids(stream, x)
        if count == 0 and stream.name != "train":  # the training split may augment; val and test must not
            stream.first_inputs = x[:FIRST_INPUTS].clone()
        targets.append(y)
        count += len(x)
        if time.monotonic() >= report_at:  # a pass that never ends (an endless stream) would otherwise say nothing
            report_at = _report_progress(stream, count, time.monotonic() - started)
        if statistics and x.is_floating_point() and stream.other_input_shape is None:  # ids: never standardised
            x64 = x.double()
            s, sq = x64.sum(dim=0, keepdim=True), (x64 * x64).sum(dim=0, keepdim=True)
            total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
    if count == 0:
        raise TaskError(f"load_data: {stream.name} split is empty")
    stream.length = count
    shapes = sorted({tuple(y.shape[1:]) for y in targets})
    if len(shapes) > 1:  # a collate_fn padding each batch to its longest: every split is held at one shape
        named = ", ".join("(" + ", ".join(map(str, ("batch", *shape))) + ")" for shape in shapes[:3])
        raise TaskError(f"load_data: the {stream.name} split's batches give targets of shapes {named}; pad every "
                        "example to one length (class indices: -100 where a position has no label), not each batch to "
                        "its longest")
    y_all = torch.cat(targets)
    if stream.name != "train":  # the training loader may shuffle; val and test keep this order (eval_batches)
        stream.targets = y_all
    if not statistics or total is None or total_sq is None:
        return y_all, None, None
    mean = total / count
    # The unbiased estimate, as torch.std on the in-memory path.
    var = (total_sq - count * mean * mean) / max(count - 1, 1)
    std = usable_std(var.clamp_min(0).sqrt(), mean)
    return y_all, mean.to(stream.input_dtype), std.to(stream.input_dtype)


def keep_extreme_ids(stream: Stream, x: torch.Tensor) -> None:
    """For integer inputs, the example holding the smallest and the one holding the largest id read so far
    (worker/check/extreme_ids.py runs them through the model before any trial)."""
    if x.is_floating_point() or x.dtype == torch.bool or x.numel() == 0:
        return
    flat = x.reshape(len(x), -1)
    for end, values in (("min", flat.min(dim=1).values), ("max", flat.max(dim=1).values)):
        row = int(values.argmin() if end == "min" else values.argmax())
        value, kept = int(values[row]), stream.extreme_ids.get(end)
        if kept is None or (value < kept[0] if end == "min" else value > kept[0]):
            stream.extreme_ids[end] = (value, x[row : row + 1].clone())


def _pass_batch(stream: Stream) -> int:
    """The batch size the load-time pass asks a task's loader function for: val's and test's at the size every
    evaluation asks for (:meth:`Stream.eval_batches`), since a loader's order may follow its batch size (an
    IterableDataset sharded over loader workers yields their batches in turn: at 256 rows 0-255 of one shard, then
    of the next; at 1024 the whole first shard first), and every evaluation compares its order with this pass's."""
    if stream.name == "train":
        return STATS_BATCH
    for batch in collated(stream.reading(FIRST_INPUTS), stream.name):
        x, _ = _pair(batch, stream.name)
        return eval_rows(tuple(x.shape[1:]), EVAL_BATCH)
    return STATS_BATCH  # no batch: the pass says the split is empty


def _report_progress(stream: Stream, count: int, seconds: float) -> float:
    """One line while the load-time pass goes on; the time of the next (intervals doubling)."""
    endless = (": an IterableDataset must end each pass (one pass is one epoch), not stream for ever"
               if stream.iterable else "")
    log.warning("load_data: still reading the %s split once at load: %d examples in %.0f s%s", stream.name, count,
                seconds, endless)
    return time.monotonic() + seconds


def check_small_batches(stream: Stream, batches: int = 8) -> None:
    """A task's loader read in batches of two: one padding each batch to its longest gives batches of other shapes
    than the load-time pass's large ones, which nearly always hold the longest example (sets ``other_input_shape``)."""
    if stream.make_loader is None or stream.other_input_shape is not None:
        return
    try:
        for i, batch in enumerate(stream.reading(2)):
            x, _ = _pair(batch, stream.name)
            if tuple(x.shape[1:]) != stream.input_shape:
                stream.other_input_shape = tuple(x.shape[1:])
                return
            if i + 1 >= batches:
                return
    except Exception:  # a loader that cannot make batches of two: the trials' own batches will tell
        return


def every_example(loader: Iterable[Any], name: str) -> Iterable[Any]:
    """The task's loader for the load-time pass, dropping no example.

    A training DataLoader with ``drop_last=True`` (as batch norm wants) would leave its last partial batch out of
    the pass: the targets and statistics would cover a random subset, and a split smaller than one batch would read
    as empty. The same sampler, collate and worker set-up without dropping (a ``worker_init_fn`` that opens each
    worker's file handle, as HDF5 readers do). Validation and test must give every example.
    """
    if not (isinstance(loader, DataLoader) and loader.drop_last):
        return loader
    if name != "train":
        raise TaskError(f"load_data: the {name} loader function's DataLoader has drop_last=True; validation and "
                        "test are measured on every example: leave drop_last off for them")
    # An IterableDataset's loader holds torch's own placeholder sampler, which a DataLoader over one refuses.
    sampler = None if isinstance(loader.dataset, IterableDataset) else loader.sampler
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, drop_last=False,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      generator=loader.generator, timeout=loader.timeout)


def usable_std(std: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The scale of each input: 1 where the training split holds it constant (to float32 resolution).

    A feature constant in training but not in validation (a rare flag, a border pixel) would otherwise be
    divided by a near-zero scale and reach the model a million times too large; scikit-learn's
    StandardScaler leaves such features unscaled the same way. Constant is relative to the feature's own
    magnitude (its rounding), as scikit-learn's test is: a feature that varies on a tiny scale (a wavelength in
    metres, 5e-7 +- 1e-7) is scaled like any other, not passed on at 1e-7 where the model cannot see it.
    """
    constant = std <= 1e-6 * mean.abs()
    return torch.where(constant, torch.ones_like(std), std)


def check_finite_inputs(x: torch.Tensor, split: str, first_row: int = 0) -> None:
    """NaN or inf in the inputs would spread through the standardisation and every loss: refused, naming where.

    ``first_row``: the split's index of ``x``'s first row (a streamed batch)."""
    if not x.is_floating_point():
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    where = (~finite).nonzero()[0].tolist()
    value = x[tuple(where)].item()
    where[0] += first_row
    raise TaskError(f"load_data: {split} X contains {value} (at index {tuple(where)}); every input must be finite: "
                    "fill or drop missing values before load_data returns")
