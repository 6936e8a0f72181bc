"""A split's data in a few numbers, to tell the data a sweep began with from other data in a later process.

A resume's workers (and a soup) call ``load_data`` again. A sha256 of the bytes would refuse the same data computed
again with other rounding (torch's reductions split by thread count, a GPU feature extractor's nondeterministic
kernels): so each tensor is summed up in float64 as its element count, mean, root mean square and two random
projections, and compared within ``TOLERANCE`` of its root mean square. A rescaled or negated feature, edited or
other rows move the projections by a share of the data's scale, far past it; rounding moves them by ~1e-7 of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PER_TENSOR = 5  # element count, mean, rms, two projections
PROJECTIONS = 2
TOLERANCE = 1e-5  # of the stored root mean square
_CHUNK = 1 << 20  # elements summed at a time (whole rows): a float64 copy of 8 MiB is all the memory it takes


def summary(t: torch.Tensor) -> list[float]:
    """``[numel, mean, rms, p1, p2]``; ``p_k = sum_ij r_ki c_kj x_ij / sqrt(numel)``, r and c fixed random signs
    (per row from the row's index, per position within an example), so any process gets the same for the same data."""
    t = t.detach().cpu()
    rows = len(t) if t.dim() else 1
    flat = t.reshape(rows, -1)
    width = flat.shape[1]
    # one product per chunk: each row's sum and its two column projections
    columns = np.stack([np.ones(width)] + [np.random.default_rng([k, 1]).choice([-1.0, 1.0], width)
                                            for k in range(PROJECTIONS)], axis=1)
    total = squares = 0.0
    projections = np.zeros(PROJECTIONS)
    step = max(1, _CHUNK // max(width, 1))
    for start in range(0, rows, step):
        chunk = flat[start:start + step].to(torch.float64).numpy()
        per_row = chunk @ columns
        total += float(per_row[:, 0].sum())
        squares += float(np.einsum("ij,ij->", chunk, chunk))
        signs = np.stack([np.random.default_rng([k, 2, start]).choice([-1.0, 1.0], len(chunk))
                          for k in range(PROJECTIONS)])
        projections += np.einsum("ki,ik->k", signs, per_row[:, 1:])
    n = max(rows * width, 1)
    return [float(rows * width), total / n, float(np.sqrt(squares / n)), *(float(p / np.sqrt(n)) for p in projections)]


def split_summary(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    return summary(x) + summary(y)


def first_difference(stored: Sequence[float], given: Sequence[float]) -> int | None:
    """Index of the first tensor (0: train x, 1: train y, 2: val x, ...) whose numbers differ past rounding."""
    if len(stored) != len(given):
        return 0
    for i in range(0, len(stored), PER_TENSOR):
        old, new = stored[i:i + PER_TENSOR], given[i:i + PER_TENSOR]
        if old[0] != new[0]:
            return i // PER_TENSOR
        scale = TOLERANCE * old[2]
        if any(abs(a - b) > scale for a, b in zip(old[1:], new[1:])):
            return i // PER_TENSOR
    return None
