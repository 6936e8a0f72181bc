"""Data that streams: torch Datasets read through a DataLoader per trial, never stacked into memory.

When ``load_data()`` returns torch ``Dataset`` objects (map-style or iterable) for its splits,
each split becomes a :class:`Stream`. One pass over each split when the worker loads the task
collects the targets (small: one row per example, needed for the kind, the metrics and the
ensembles) and, for the training split only, the input standardisation statistics (sums in
float64, so no example is kept). Trials then read batches through a ``DataLoader``: shuffled
with the trial's own generator, the batch size from its config, ``num_workers`` worker
processes kept alive across epochs, pinned memory and non-blocking copies on a GPU.

Train-only transforms (random augmentation) belong in the training split's Dataset: validation
and test are separate Datasets, read in order, so they never see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from orchestrator.errors import TaskError

EVAL_BATCH = 1024
STATS_BATCH = 256


@dataclass(eq=False)
class Stream:
    """One split read through DataLoaders; ``length`` counted by the load-time pass."""

    dataset: Dataset
    name: str
    length: int = 0
    input_shape: tuple[int, ...] = ()
    input_dtype: torch.dtype = torch.float32  # as the Dataset gives it (set by the load-time pass); never cast
    num_workers: int = 0
    pin_memory: bool = False
    _eval_loader: DataLoader | None = field(default=None, repr=False)

    @property
    def iterable(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    def _workers(self) -> int:
        # An iterable Dataset would be read once per worker process unless it shards itself: one reader.
        return 0 if self.iterable else self.num_workers

    def loader(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
        workers = self._workers()
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle and not self.iterable,
                          generator=generator, num_workers=workers, pin_memory=self.pin_memory,
                          persistent_workers=workers > 0, drop_last=False)

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in order, in large batches (one loader per stream, its workers kept)."""
        if self._eval_loader is None:
            self._eval_loader = self.loader(EVAL_BATCH, shuffle=False)
        return iter(self._eval_loader)


def is_stream(split: Any) -> bool:
    return isinstance(split, Dataset) and not isinstance(split, (tuple, list))


def _pair(item: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TaskError(f"load_data: the {name} Dataset must yield (input, target) pairs, got {type(item).__name__}")
    x, y = item
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
    for batch in DataLoader(stream.dataset, batch_size=STATS_BATCH, shuffle=False, num_workers=stream._workers()):
        x, y = _pair(batch, stream.name)
        if count == 0:
            stream.input_shape, stream.input_dtype = tuple(x.shape[1:]), x.dtype
        elif x.dtype != stream.input_dtype:
            raise TaskError(f"load_data: the {stream.name} Dataset gives inputs of dtype "
                            f"{str(stream.input_dtype).removeprefix('torch.')} and "
                            f"{str(x.dtype).removeprefix('torch.')}; give one dtype")
        targets.append(y)
        count += len(x)
        if statistics and x.is_floating_point():  # integer inputs (token ids) are never standardised
            x64 = x.double()
            s, sq = x64.sum(dim=0, keepdim=True), (x64 * x64).sum(dim=0, keepdim=True)
            total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
    if count == 0:
        raise TaskError(f"load_data: {stream.name} split is empty")
    stream.length = count
    y_all = torch.cat(targets)
    if not statistics or total is None or total_sq is None:
        return y_all, None, None
    mean = total / count
    # The unbiased estimate, as torch.std on the in-memory path.
    var = (total_sq - count * mean * mean) / max(count - 1, 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-6)
    return y_all, mean.to(stream.input_dtype), std.to(stream.input_dtype)
