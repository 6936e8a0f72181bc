"""Integer inputs (token or category ids) that some split holds beyond what the model's embeddings take.

The master's check runs one training batch and validation; ids that only test holds (a word the training text never
had, beyond the vocabulary an ``nn.Embedding`` was sized for) fail every trial later, while its test predictions are
written, with torch's range error, which names neither the split nor the ids. Each split's rows that hold a position's
largest or smallest id (streamed: the examples of the split's smallest and largest id, kept by the load-time pass) go
through the model here, once, so such data is refused before any trial, naming the split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from orchestrator.errors import TaskError
from worker.data.splits import SPLITS, Splits

MOST_ROWS = 256  # rows per split run through the model: a position's extremes, at most this many


def extreme_rows(x: torch.Tensor) -> torch.Tensor:
    """Indices of the rows holding each position's largest and smallest value (at most ``MOST_ROWS``)."""
    flat = x.reshape(len(x), -1)
    rows = torch.unique(torch.cat([flat.argmax(dim=0), flat.argmin(dim=0)]))
    return rows[:MOST_ROWS]


def refuse_ids_the_model_cannot_take(model: torch.nn.Module, splits: Splits,
                                     describe: Callable[[BaseException], str]) -> None:
    """Raise a one-line ``TaskError`` when the model raises on a split's most extreme integer inputs (in memory, or
    those the load-time pass over a streamed split kept); ``describe`` puts the model's exception in words."""
    if splits.streams:  # the load-time pass kept each split's examples of the smallest and the largest id
        batches = {name: [row for _, row in s.extreme_ids.values()] for name, s in splits.streams.items()}
        ranges = {name: [s.extreme_ids[end][0] for end in ("min", "max") if end in s.extreme_ids]
                  for name, s in splits.streams.items()}
    else:
        xs = {name: getattr(splits, f"x_{name}") for name in SPLITS}
        if any(x is None or x.is_floating_point() or x.dtype == torch.bool for x in xs.values()):
            return
        batches = {name: [x[extreme_rows(x)]] for name, x in xs.items()}
        ranges = {name: [int(x.min()), int(x.max())] for name, x in xs.items()}
    was_training = model.training
    model.eval()
    try:
        for name, inputs in batches.items():
            try:
                with torch.no_grad():
                    for x in inputs:
                        model(x)
            except Exception as exc:
                raise _refusal(model, name, ranges, describe(exc)) from exc
    finally:
        model.train(was_training)


def _refusal(model: torch.nn.Module, name: str, ranges: dict[str, list[int]], raised: str) -> TaskError:
    shown = ", ".join(f"{split} {low} to {high}" for split, (low, high) in ranges.items())
    sizes = sorted({m.num_embeddings for m in model.modules()
                    if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))})
    tables = (f"; the model's embeddings take ids 0 to num_embeddings - 1 (num_embeddings "
              f"{', '.join(map(str, sizes))})" if sizes else "")
    return TaskError(f"load_data: the model's forward pass raised {raised} on the {name} examples holding "
                     f"its largest and smallest ids (the inputs range: {shown}){tables}: size "
                     "every embedding for the ids of every split, or map ids the training split lacks to one "
                     "unknown-token id in load_data")
