"""Integer inputs (token or category ids) that some split holds beyond what the model's embeddings take.

The master's check runs one training batch and validation; ids that only test holds (a word the training text never
had, beyond the vocabulary an ``nn.Embedding`` was sized for) fail every trial later, while its test predictions are
written, with torch's range error, which names neither the split nor the ids. Each split's rows that hold a position's
largest or smallest id go through the model here, once, so such data is refused before any trial, naming the split.
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
    """Raise a one-line ``TaskError`` when the model raises on a split's most extreme integer inputs (in memory);
    ``describe`` puts the model's exception in words."""
    xs = {name: getattr(splits, f"x_{name}") for name in SPLITS}
    if any(x is None for x in xs.values()) or xs["train"].is_floating_point() or xs["train"].dtype == torch.bool:
        return
    was_training = model.training
    model.eval()
    try:
        for name, x in xs.items():
            try:
                with torch.no_grad():
                    model(x[extreme_rows(x)])
            except Exception as exc:
                raise _refusal(model, name, xs, describe(exc)) from exc
    finally:
        model.train(was_training)


def _refusal(model: torch.nn.Module, name: str, xs: dict[str, torch.Tensor], raised: str) -> TaskError:
    ranges = ", ".join(f"{split} {int(x.min())} to {int(x.max())}" for split, x in xs.items())
    sizes = sorted({m.num_embeddings for m in model.modules()
                    if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))})
    tables = (f"; the model's embeddings take ids 0 to num_embeddings - 1 (num_embeddings "
              f"{', '.join(map(str, sizes))})" if sizes else "")
    return TaskError(f"load_data: the model's forward pass raised {raised} on the {name} rows holding each "
                     f"input position's largest and smallest values (the inputs range: {ranges}){tables}: size "
                     "every embedding for the ids of every split, or map ids the training split lacks to one "
                     "unknown-token id in load_data")
