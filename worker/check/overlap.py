"""Examples shared between splits: a test split that repeats validation or training data measures nothing new.

caviar's test numbers (the best model's, each ensemble's) are worth reporting because test took no part in any
choice. When ``load_data`` returns the same examples as val and test, or test rows that are also training rows,
those numbers repeat what validation or training already saw, silently. The check is one line before the sweep,
never a refusal: a task may mean it (no held-out data yet).

Rows are compared by their input bytes through a 64-bit hash per row (a random linear hash over the row's 8-byte
words, modulo 2**64): two different rows collide with probability about 2**-64, and data sets are hashed in blocks
so the check needs no more memory than one block. Data whose rows repeat within a split (tabular data with few
distinct values) shares rows across splits by chance: only more shared rows than that chance gives are said.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from worker.data.splits import Splits

log = logging.getLogger("caviar")

SHARED_SHARE = 0.01  # below this share of a split's rows, shared examples are the data's own duplicates: not said
_BLOCK_BYTES = 32 << 20


def row_hashes(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A uint64 per row of ``x``, equal for rows with equal bytes (same dtype and shape)."""
    if len(x) == 0:
        rows = np.zeros((0, 8), np.uint8)
    elif isinstance(x, torch.Tensor):  # by its bytes: bfloat16 has no numpy dtype for .numpy() to give
        rows = x.detach().cpu().contiguous().reshape(len(x), -1).view(torch.uint8).numpy()
    else:
        rows = np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint8)
    width = -(-rows.shape[1] // 8) * 8
    odd = np.random.default_rng(0).integers(1, 2**63, size=width // 8, dtype=np.uint64)
    weights = odd * np.uint64(2) + np.uint64(1)
    out = np.empty(len(rows), np.uint64)
    step = max(1, _BLOCK_BYTES // max(width, 1))
    for start in range(0, len(rows), step):
        block = rows[start:start + step]
        if block.shape[1] != width:
            block = np.pad(block, ((0, 0), (0, width - block.shape[1])))
        with np.errstate(over="ignore"):
            words = np.ascontiguousarray(block).view(np.uint64)
            out[start:start + step] = (words * weights).sum(axis=1, dtype=np.uint64)
    return out


def shared_examples(splits: Splits) -> list[str]:
    """What the warning says, one clause per pair of splits that share examples; empty when nothing is shared."""
    if splits.streams or splits.x_train is None or splits.x_val is None or splits.x_test is None:
        return []
    train, val, test = (row_hashes(x) for x in (splits.x_train, splits.x_val, splits.x_test))
    if len(val) == len(test) and np.array_equal(np.sort(val), np.sort(test)):
        return [f"val and test hold the same {len(test)} examples"]
    said = []
    for name, rows, others in (("test", test, (("train", train), ("val", val))), ("val", val, (("train", train),))):
        for other_name, other in others:
            shared = int(np.isin(rows, other).sum())
            if shared and shared >= SHARED_SHARE * len(rows) and shared > chance_shared(other, len(rows)):
                said.append(f"{shared} of {len(rows)} {name} examples ({100 * shared / len(rows):.0f}%) are also in "
                            f"{other_name}")
    return said


def chance_shared(other: np.ndarray, rows: int) -> float:
    """How many of ``rows`` examples drawn like ``other``'s would repeat one of its rows by chance, three standard
    deviations up: tabular data with few distinct values (27 rows of three 0-2 features) repeats its rows within one
    split as often as across splits, which is no leak. Estimated by the share of ``other``'s rows that repeat another
    of its rows (leave one out); 0 for data without repeats, where every shared row counts as before."""
    _, inverse, counts = np.unique(other, return_inverse=True, return_counts=True)
    repeat = float((counts[inverse] > 1).mean()) if len(other) else 0.0
    return rows * repeat + 3 * float(np.sqrt(rows * repeat * (1 - repeat)))


def warn_if_splits_share_examples(splits: Splits) -> list[str]:
    """One warning line naming the shared examples, when there are; returns its clauses (for tests)."""
    said = shared_examples(splits)
    if said:
        log.warning("load_data: %s: test numbers (the best model's and the ensembles') then repeat what validation "
                    "or training saw; give each split examples of its own", "; ".join(said))
    return said
