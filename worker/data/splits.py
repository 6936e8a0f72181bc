"""Data: the task's splits as tensors, floating inputs standardised with training-split statistics only.

Inputs and targets keep their dtype and shape: integer inputs (token ids for an ``nn.Embedding``)
reach the model as integers and are never standardised; float64 stays float64 (a float32 model
fed float64 is refused with one line by ``worker.check.validate``, never silently truncated).
``worker.data.kinds`` decides what the targets are and refuses what does not fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from orchestrator.errors import TaskError
from worker.data import task_globals
from worker.data.kinds import TargetKind, resolve_kind
from worker.data.seeds import seeded_randomness
from worker.data.streams import (
    Stream,
    adopt_measured,
    check_finite_inputs,
    check_small_batches,
    is_stream,
    measured_streams,
    scan,
    usable_std,
)
from worker.data.summary import split_summary

SPLITS = ("train", "val", "test")
LOAD_PASS_SEED = 0  # the generators' seed while the load-time pass reads the splits


@dataclass
class Splits:
    # Inputs are None when the data streams (``streams``): only the targets are held in memory.
    x_train: torch.Tensor | None
    y_train: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor
    num_classes: int | None  # classification only
    # Train-split standardisation, (1, *input_shape); None when the task opts out. Stored per sweep so a
    # loaded ensemble applies the same transform to raw inputs.
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    target_kind: TargetKind = TargetKind("classification")
    streams: dict[str, Stream] | None = None  # torch Datasets read through DataLoaders (worker/data/streams.py)
    # Task globals the master's load_data set (an input width, a vocabulary), for workers that never call it.
    task_globals: dict[str, Any] = field(default_factory=dict)
    # The training inputs' column names when load_data gave a DataFrame: a loaded ensemble matches a DataFrame by them.
    feature_names: tuple[str, ...] | None = None
    # Each split's inputs and targets as load_data gave them (before standardisation), in a few numbers, for data in
    # memory (worker.data.summary): a resume's workers load the data again, and must train on what the sweep began with.
    summaries: dict[str, list[float]] | None = None

    @property
    def n_train(self) -> int:
        return self.streams["train"].length if self.streams else len(self.y_train)

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.streams:
            return self.streams["val"].input_shape
        assert self.x_val is not None
        return tuple(self.x_val.shape[1:])

    @property
    def input_dtype(self) -> torch.dtype:
        if self.streams:
            return self.streams["val"].input_dtype
        assert self.x_val is not None
        return self.x_val.dtype

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """A streamed batch as the in-memory path holds its inputs: its own dtype, standardised when floating."""
        if self.mean is None or self.std is None or not x.is_floating_point():
            return x
        if x.shape[1:] != self.mean.shape[1:]:  # a loader padding each batch to its longest: torch's size error
            raise ragged_inputs(None, tuple(self.mean.shape[1:]), tuple(x.shape[1:]))
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    def sample_inputs(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """Training inputs for probes and checks: all of them in memory, else the first ``n``, standardised."""
        if self.x_train is not None:
            return self.x_train
        assert self.streams is not None
        got: list[torch.Tensor] = []
        for x, _ in self.streams["train"].reading(min(n, 256)):
            got.append(x)
            if sum(len(g) for g in got) >= n:
                break
        if not got:
            raise _second_pass_empty()
        x = torch.cat(got)[:n]
        return self.normalise(x.to(device) if device is not None else x)

    def sample(self, n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` training examples (inputs standardised, targets as given)."""
        if self.x_train is not None:
            x = self.x_train[:n]
            return x, self.y_train[: len(x)].to(x.device)
        assert self.streams is not None
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        for x, y in self.streams["train"].reading(min(n, 256)):  # pairs as read: a loader may shuffle
            xs.append(x)
            ys.append(y)
            if sum(len(b) for b in xs) >= n:
                break
        if not xs:
            raise _second_pass_empty()
        x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
        if device is not None:
            x, y = x.to(device), y.to(device)
        return self.normalise(x), y

    def to(self, device: torch.device) -> Splits:
        """The whole data set on ``device``, once per actor, so epochs copy nothing.

        From pinned host memory the copies are asynchronous (pageable memory would make each a
        blocking staging copy); the stream orders them before the first kernel that reads them.
        """
        if self.streams:  # batches are copied per step instead: pinned, non-blocking
            for stream in self.streams.values():
                stream.pin_memory = device.type == "cuda"
        if device.type == "cpu":
            return self
        pin = device.type == "cuda"
        moved = {
            k: (v.pin_memory() if pin else v).to(device, non_blocking=pin) if isinstance(v, torch.Tensor) else v
            for k, v in vars(self).items()
        }
        return Splits(**moved)


def _second_pass_empty() -> TaskError:
    """The training split read again after the load-time pass gave nothing: an iterator handed out twice."""
    return TaskError("load_data: the train split gave no example when read a second time (the load-time pass read "
                     "it once): a Dataset's __iter__ must start a new pass at each call (return a new generator, not "
                     "one made once)")


def frame_columns(value: Any) -> tuple[str, ...] | None:
    """A pandas or Polars DataFrame's column names, as strings; None for anything else."""
    if not (hasattr(value, "columns") and hasattr(value, "to_numpy") and hasattr(value, "dtypes")):
        return None
    return tuple(str(c) for c in value.columns)


def _frame_values(value: Any, what: str) -> np.ndarray:
    """A DataFrame's values when its columns share one numeric dtype (to_numpy would otherwise cast: float32 beside
    float64 becomes float64, ints beside floats become floats); else one line naming them."""
    columns = frame_columns(value)
    assert columns is not None
    if len(set(columns)) != len(columns):
        twice = sorted({c for c in columns if columns.count(c) > 1})
        raise TaskError(f"load_data: {what} is a DataFrame with the column {twice[0]!r} twice; give each column once "
                        "(a loaded ensemble matches a DataFrame's columns by name)")
    dtypes = list(value.dtypes)
    kinds = sorted({str(d) for d in dtypes})
    if len(kinds) > 1:
        raise TaskError(f"load_data: {what} is a DataFrame whose columns differ in dtype ({', '.join(kinds)}); caviar "
                        "never casts inputs: give one dtype (df.astype('float32'), ids as a column of their own kind)")
    values = np.asarray(value.to_numpy())
    if values.dtype.kind not in "biuf":  # categories, strings, nullable columns with missing values (object)
        raise TaskError(f"load_data: {what} is a DataFrame of {kinds[0] if kinds else 'no'} columns; give numbers "
                        "(float32 features, or int64 category codes: df[col].cat.codes)")
    return values


def _as_tensor(value: Any, what: str, *, frame: bool = False) -> torch.Tensor:
    """``frame``: a DataFrame of one numeric dtype is taken (inputs; its names are read by :func:`frame_columns`)."""
    if isinstance(value, torch.Tensor):
        return value
    if frame and frame_columns(value) is not None:
        value = _frame_values(value, what)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "USO":  # text or Python objects: no tensor holds them, and caviar guesses no encoding
            sample = next(iter(value.flat), None)
            sample = sample.item() if isinstance(sample, np.generic) else sample
            held = "strings" if value.dtype.kind in "US" else "Python objects (dtype object)"
            raise TaskError(f"load_data: {what} holds {held} ({sample!r}); give numbers: integer class indices for "
                            "labels (np.unique(y, return_inverse=True)[1]), a numeric dtype for features")
        with warnings.catch_warnings():  # a read-only array (np.load(..., mmap_mode="r")): caviar never writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(value))
    hint = ""
    if hasattr(value, "to_numpy"):  # pandas and the like: the user picks the dtype, caviar casts nothing
        hint = "; give .to_numpy() with the dtype you mean (float32 features, int64 class indices)"
    elif isinstance(value, (list, tuple, dict)) and value and all(hasattr(v, "shape") for v in (
            value.values() if isinstance(value, dict) else value)):
        hint = (f"; several inputs ({len(value)} arrays) are not taken: the model gets one tensor, so join them into "
                "one array (np.concatenate along axis 1) and split it again in forward (float inputs are "
                "standardised: with token ids among them, set normalize = False)")
    elif isinstance(value, (list, tuple)):
        hint = "; give np.asarray(...) with the dtype you mean"
    raise TaskError(f"load_data: {what} must be a numpy array or tensor, got {type(value).__name__}{hint}")


def _materialise(split: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, y) pairs as tensors (torch Datasets stream instead: ``_prepare_streams``)."""
    if isinstance(split, (tuple, list)) and len(split) == 2:
        return _as_tensor(split[0], f"{what} X", frame=True), _as_tensor(split[1], f"{what} y")
    got = type(split).__name__
    if isinstance(split, (tuple, list)):  # "got tuple" for a tuple reads as a contradiction: say how long
        got = f"a {got} of {len(split)}" + ("; a third part (sample weights?) is not taken" if len(split) == 3 else "")
    raise TaskError(f"load_data: the {what} split must be (X, y) or a torch Dataset, got {got}")


def prepare(raw: Any, *, normalize: bool = True, kind: str | None = None, standardize_targets: bool = False,
            num_workers: int = 0, task_statistics: Any = None, num_classes: int | None = None,
            measured: bytes | None = None) -> Splits:
    """Check ``load_data()``'s result; standardise floating inputs with train (or the task's) statistics.

    ``kind`` is the task's declared kind (None: inferred); targets that do not fit it are refused.
    ``task_statistics``: the task's own ``(mean, std)`` (``normalize = (mean, std)``), used as given.
    ``measured``: what the master's load-time pass over streamed splits found (:func:`measured_streams`), used
    instead of a pass of this process's own.
    """
    if isinstance(raw, Mapping):
        missing = [s for s in SPLITS if s not in raw]
        if missing:
            extra = [str(k) for k in raw if k not in SPLITS]
            named = f" (it has {', '.join(map(repr, extra))})" if extra else ""
            raise TaskError(f"load_data: result lacks split(s) {', '.join(missing)}{named}: caviar reads the keys "
                            f"{', '.join(SPLITS)}")
        parts = [raw[s] for s in SPLITS]
    elif isinstance(raw, (tuple, list)) and len(raw) == 3:
        parts = list(raw)
    else:
        raise TaskError("load_data: return (train, val, test) or a dict with keys train, val, test")
    if any(is_stream(p) for p in parts):
        return _prepare_streams(parts, normalize=normalize, kind=kind, standardize_targets=standardize_targets,
                                num_classes=num_classes, num_workers=num_workers, task_statistics=task_statistics,
                                measured=measured)
    tensors = [_materialise(p, s) for p, s in zip(parts, SPLITS)]
    feature_names = _feature_names(parts)
    for (x, y), name in zip(tensors, SPLITS):
        if len(x) != len(y):
            raise TaskError(f"load_data: {name} has {len(x)} inputs but {len(y)} labels")
        if len(x) == 0:
            raise TaskError(f"load_data: {name} split is empty")
    check_input_dtypes({name: x.dtype for (x, _), name in zip(tensors, SPLITS)})
    if normalize and tensors[0][0].is_floating_point():
        check_standardised_shapes({name: tuple(x.shape[1:]) for (x, _), name in zip(tensors, SPLITS)})
    for (x, _), name in zip(tensors, SPLITS):
        check_finite_inputs(x, name)
    (xtr, ytr), (xva, yva), (xte, yte) = tensors  # inputs as given: never cast
    summaries = {name: split_summary(x, y) for (x, y), name in zip(tensors, SPLITS)}
    target_kind = resolve_kind(kind, {"train": ytr, "val": yva, "test": yte}, standardize=standardize_targets,
                               classes=num_classes)
    mean, std = input_statistics(xtr, normalize, task_statistics)
    if mean is not None and std is not None:
        # Statistics from the training split only; applying them to val/test is the point.
        xtr, xva, xte = (xtr - mean) / std, (xva - mean) / std, (xte - mean) / std
    return Splits(xtr.contiguous(), ytr, xva.contiguous(), yva, xte.contiguous(), yte, target_kind.num_classes, mean,
                  std, target_kind, feature_names=feature_names, summaries=summaries)


def _feature_names(parts: Sequence[Any]) -> tuple[str, ...] | None:
    """The training DataFrame's column names; val or test DataFrames with other columns, or in another order, are
    refused (their values would reach other inputs of the model)."""
    names = [frame_columns(p[0]) for p in parts]
    if names[0] is None:
        return None
    for split, other in zip(SPLITS[1:], names[1:]):
        if other is not None and other != names[0]:
            detail = ("in another order" if sorted(other) == sorted(names[0]) else
                      f"others ({', '.join(sorted(set(other) ^ set(names[0]))[:3])} in one of them only)")
            raise TaskError(f"load_data: {split} X's columns are {detail} than train X's; give the same columns in "
                            f"train's order ({split}_df[train_df.columns])")
    return names[0]


def ragged_inputs(split: str | None, shape: tuple[int, ...], other: tuple[int, ...]) -> TaskError:
    """Floating inputs whose shape changes between batches: standardised per position and feature, they cannot be."""
    shapes = " and ".join("(batch, " + ", ".join(map(str, s)) + ")" for s in (shape, other))
    where = "a split's" if split is None else f"the {split} split's"
    return TaskError(f"load_data: {where} batches give floating inputs of shapes {shapes}; caviar standardises each "
                     "input position with training statistics: pad every example to one length, or set "
                     "normalize = False (and scale the inputs in your Dataset)")


def check_standardised_shapes(shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every split's examples in the training split's shape, where they are standardised per input position.

    Training statistics of shape (1, *S) broadcast against another shape: val inputs (N, 1) against six features
    became (N, 6) copies of their one column, in silence; others failed in torch's words.
    """
    train = shapes["train"]
    for name, shape in shapes.items():
        if shape != train:
            raise TaskError(f"load_data: {name} examples have shape {shape} but train's {train}; caviar standardises "
                            "each input position with the training split's statistics, so every split gives one "
                            f"shape: give {name} the training shape (crop or pad it as train), or set normalize = "
                            "False and scale the inputs yourself")


def check_input_dtypes(dtypes: Mapping[str, torch.dtype]) -> None:
    """Every split's inputs share one dtype (a model takes one); complex inputs are refused."""
    for name, dtype in dtypes.items():
        if dtype.is_complex:
            raise TaskError(f"load_data: {name} X is {_dtype_name(dtype)}; caviar trains on real or integer inputs")
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {_dtype_name(d)}" for name, d in dtypes.items())
        raise TaskError(f"load_data: the splits' inputs differ in dtype ({listed}); give every split the same dtype")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def input_statistics(x_train: torch.Tensor, normalize: bool, task_statistics: Any = None
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The standardisation of floating inputs: the task's own ``(mean, std)``, or the training split's.

    Integer inputs (token ids, category codes) are never standardised; nor are inputs of a task with
    ``normalize = False``. Statistics are summed in float64 and kept in the inputs' dtype.
    """
    if normalize and task_statistics is not None and not x_train.is_floating_point():
        raise TaskError(f"normalize: the task gives (mean, std) but the inputs are {_dtype_name(x_train.dtype)}; "
                        "integer inputs are never standardised (set normalize = True or False)")
    if not normalize or not x_train.is_floating_point():
        return None, None
    if task_statistics is not None:
        return task_input_statistics(task_statistics, tuple(x_train.shape[1:]), x_train.dtype)
    x64 = x_train.double()
    mean = x64.mean(dim=0, keepdim=True)
    std = usable_std(x64.std(dim=0, keepdim=True), mean) if len(x64) > 1 else torch.ones_like(mean)
    return mean.to(x_train.dtype), std.to(x_train.dtype)


def task_input_statistics(statistics: Any, input_shape: tuple[int, ...], dtype: torch.dtype
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's ``normalize = (mean, std)``: exactly those numbers, broadcast to one example's shape.

    A per-channel ``(C,)`` for images ``(C, H, W)`` is read as one value per channel (torchvision's
    ``Normalize``); anything else must broadcast to the input shape as given.
    """
    if not (isinstance(statistics, (tuple, list)) and len(statistics) == 2):
        raise TaskError("normalize must be True, False or (mean, std) for the inputs, "
                        f"got {type(statistics).__name__}")
    out = []
    for name, value in zip(("mean", "std"), statistics):
        t = torch.as_tensor(np.array(value, dtype=np.float64))  # a copy: read-only arrays (Ray's) make torch warn
        if t.ndim == len(input_shape) + 1 and t.shape[0] == 1:  # x.mean((0, 2, 3), keepdims=True): the batch axis
            t = t[0]
        if t.ndim == 1 and len(input_shape) > 1 and t.shape[0] == input_shape[0] and t.shape[0] > 1:
            if t.shape[0] == input_shape[-1]:  # (T, F) with T == F: per time step or per feature, both broadcast
                raise _ambiguous_statistics(name, len(t), input_shape)
            t = t.reshape(-1, *([1] * (len(input_shape) - 1)))  # per channel
        elif 0 < t.ndim < len(input_shape):
            _refuse_other_placements(name, t, input_shape)
        try:
            t = torch.broadcast_to(t, input_shape).unsqueeze(0)
        except RuntimeError:
            raise TaskError(f"normalize: {name} of shape {tuple(t.shape)} does not fit inputs of shape "
                            f"{input_shape}") from None
        if not bool(torch.isfinite(t).all()):
            raise TaskError(f"normalize: {name} must be finite")
        out.append(t)
    mean, std = out
    if bool((std <= 0).any()):
        where = tuple((std[0] <= 0).nonzero()[0].tolist())  # 30 features: which one is constant in the user's data
        raise TaskError(f"normalize: std must be positive, got {float(std[0][where]):g} at input position {where}; "
                        "for a feature constant in your data give 1 there (np.where(std > 0, std, 1)), which centres "
                        "it as caviar's own statistics do")
    return mean.to(dtype).contiguous(), std.to(dtype).contiguous()


def _refuse_other_placements(name: str, t: torch.Tensor, input_shape: tuple[int, ...]) -> None:
    """A statistic of fewer axes than the inputs that fits them elsewhere too, with other numbers.

    Broadcasting places it on the last axes: a spectrogram's per-frequency ``x.mean((0, 3))``, ``(1, F)`` for
    ``(1, F, T)``, would be read per time step when ``F == T``, in silence (it is refused when ``F != T``).
    """
    n, k = len(input_shape), t.ndim
    readings = []
    for offset in range(n - k + 1):
        shape = (1,) * offset + tuple(t.shape) + (1,) * (n - k - offset)
        if all(s in (1, d) for s, d in zip(shape, input_shape)):
            readings.append((shape, torch.broadcast_to(t.reshape(shape), input_shape)))
    if len(readings) < 2 or readings[-1][0] != (1,) * (n - k) + tuple(t.shape):
        return  # one place fits, or broadcasting refuses it below
    others = [shape for shape, r in readings[:-1] if not torch.equal(r, readings[-1][1])]
    if others:
        shapes = " or ".join(str(shape) for shape in [*others, readings[-1][0]])
        raise TaskError(f"normalize: {name} of shape {tuple(t.shape)} fits inputs of shape {input_shape} on more than "
                        f"one axis: broadcasting reads it as {readings[-1][0]} (the last axes), and it also fits as "
                        f"{' or '.join(str(s) for s in others)}; give it one of the shapes {shapes}, with the axes it "
                        "leaves out kept as 1")


def _ambiguous_statistics(name: str, length: int, input_shape: tuple[int, ...]) -> TaskError:
    """A ``(C,)`` statistic that fits the inputs' first axis (channels) and their last (features) alike."""
    ones = [1] * (len(input_shape) - 1)
    first, last = (tuple(s) for s in ([length, *ones], [*ones, length]))
    return TaskError(f"normalize: {name} of shape ({length},) fits both the first axis (channels, as torchvision's "
                     f"Normalize reads it) and the last (features) of inputs of shape {input_shape}; give it the "
                     f"shape {first} for the first or {last} for the last")


def _prepare_streams(parts: list[Any], *, normalize: bool, kind: str | None, standardize_targets: bool,
                     num_workers: int, task_statistics: Any = None, num_classes: int | None = None,
                     measured: bytes | None = None) -> Splits:
    """Datasets stay Datasets: one pass per split for its targets (train: and input statistics), or none where the
    master's pass is ``measured``."""
    streams = {}
    for part, name in zip(parts, SPLITS):
        if not is_stream(part):
            x, y = _materialise(part, name)  # an (X, y) pair next to Datasets streams the same way
            part = torch.utils.data.TensorDataset(x, y)
        if isinstance(part, torch.utils.data.Dataset):
            if not isinstance(part, torch.utils.data.IterableDataset) and not hasattr(part, "__len__"):
                # a DataLoader's sampler needs it: torch's "object of type 'X' has no len()" named no split
                raise TaskError(f"load_data: the {name} Dataset ({type(part).__name__}) has no __len__; a Dataset "
                                "read by index needs one: define __len__, or subclass IterableDataset (with __iter__) "
                                "for a stream of unknown length")
            streams[name] = Stream(part, name, num_workers=num_workers)
        else:  # the task's function making a DataLoader for a batch size
            streams[name] = Stream(None, name, make_loader=part)
    if measured is not None:
        y_train, y_val, y_test = adopt_measured(streams, measured)
        mean = std = None
    else:
        y_train, mean, std = scan(streams["train"], statistics=normalize and task_statistics is None)
        y_val, _, _ = scan(streams["val"], statistics=False)
        y_test, _, _ = scan(streams["test"], statistics=False)
    check_input_dtypes({name: stream.input_dtype for name, stream in streams.items()})
    for name, stream in streams.items():
        if normalize and stream.input_dtype.is_floating_point:
            check_small_batches(stream)
            if stream.other_input_shape is not None:
                raise ragged_inputs(name, stream.input_shape, stream.other_input_shape)
    if normalize and streams["train"].input_dtype.is_floating_point:
        check_standardised_shapes({name: stream.input_shape for name, stream in streams.items()})
    if normalize and task_statistics is not None:
        train = streams["train"]
        mean, std = input_statistics(torch.empty((0, *train.input_shape), dtype=train.input_dtype), True,
                                     task_statistics)
    target_kind = resolve_kind(kind, {"train": y_train, "val": y_val, "test": y_test}, standardize=standardize_targets,
                               classes=num_classes)
    return Splits(None, y_train, None, y_val, None, y_test, target_kind.num_classes, mean, std, target_kind, streams)


def prepare_task_data(task: Any, statistics: Any = None, measured: bytes | None = None) -> Splits:
    """``load_data()`` of a loaded task, checked against its declared (or inferred) kind.

    ``statistics``: the sweep's input ``(mean, std)`` (the master's, ``worker.train.session.statistics_of``), used
    instead of a pass of this process's own: a training split that augments at random gives others at every pass.
    ``measured``: the rest of the master's load-time pass over streamed splits (:func:`measured_streams`), so a
    worker reads no split in full before its first trial (data larger than memory: one pass, not one per worker).
    """
    before = task_globals.snapshot(task.namespace)
    try:
        raw = task.get("load_data")()
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"load_data raised {type(exc).__name__}: {exc}") from exc
    # The load-time pass reads a training Dataset that may augment at random: seeded, so a rerun of the sweep
    # standardises with the same statistics (numpy's global state is new in every process); restored after.
    with seeded_randomness(LOAD_PASS_SEED, torch.device("cpu")):
        splits = prepare(raw, normalize=task.normalize, kind=getattr(task, "kind", None),
                         standardize_targets=getattr(task, "standardize_targets", False),
                         num_workers=int(task.get("num_workers") or 0),
                         task_statistics=task_statistics(task) if statistics is None else statistics,
                         num_classes=task.get("num_classes"), measured=measured)
    splits.task_globals = task_globals.set_since(task.namespace, before)
    return splits


def measured_data(splits: Splits | None) -> bytes | None:
    """What the load-time pass over streamed splits found (:func:`~worker.data.streams.measured_streams`), for
    workers that load the task's Datasets themselves; None for data in memory (nothing to read again)."""
    if splits is None or not splits.streams:
        return None
    return measured_streams(splits.streams, {"train": splits.y_train, "val": splits.y_val, "test": splits.y_test})


def task_statistics(task: Any) -> Any:
    """The task's own input statistics, ``normalize = (mean, std)``; None when it leaves them to caviar."""
    value = task.get("normalize")
    return None if value is None or isinstance(value, (bool, np.bool_)) else value


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator, *, skip_single: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches in the trial's own order (its generator is seeded per trial).

    ``skip_single``: a last batch of one example is left out (see :func:`single_last_batch`).
    """
    order = torch.randperm(len(x), generator=generator).to(x.device)
    end = len(x) - 1 if skip_single and single_last_batch(len(x), batch_size) else len(x)
    for start in range(0, end, batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def single_last_batch(n_train: int | None, batch_size: int) -> bool:
    """Whether an epoch's last batch holds one example (``n_train = k * batch_size + 1``, k >= 1)."""
    return n_train is not None and batch_size > 1 and n_train > batch_size and n_train % batch_size == 1


def skips_single_batch(model: torch.nn.Module, splits: Splits, batch_size: int) -> bool:
    """Whether a trial of ``model`` at ``batch_size`` leaves its epoch's one-example last batch out (batch norm
    cannot train on it). A task's own loader functions own their last batch: never then."""
    own_loader = bool(splits.streams) and splits.streams["train"].make_loader is not None
    return not own_loader and single_last_batch(splits.n_train, batch_size) and has_batch_norm(model)


def has_batch_norm(model: torch.nn.Module) -> bool:
    """Batch norm cannot train on a batch of one example (torch raises): such a model skips that batch."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def padding_rows(model: torch.nn.Module) -> dict[str, int]:
    """Each embedding's ``padding_idx`` row, by weight name: torch gives that row no gradient, on purpose, so it
    never trains (though the loss may read it: a padded position seen by an LSTM or a convolution)."""
    return {f"{name}.weight" if name else "weight": m.padding_idx for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.padding_idx is not None}
