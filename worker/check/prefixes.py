"""The most a model reading each position's prefix can fit of a tiny subset of token targets.

A causal language model (targets the next token: outputs at position t see tokens 0..t) cannot fit two examples that
share a prefix and then go on differently: sequences of real text that start with the same word (or with one
beginning-of-sequence token) always do. The overfit check then asked 100% of the positions right and a loss near 0,
and said of every such model that it "cannot learn". Here each labelled position is grouped with those of the same
prefix; the most frequent target of a group is the most a prefix-reading model gets right, and the groups' entropy the
least cross-entropy it reaches. A model that reads the whole sequence (a tagger) can do better: the bar is lower for
it only where prefixes collide.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import torch

IGNORE_INDEX = -100  # torch's cross-entropy default: a position without a label


def prefix_ceiling(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int] | None:
    """``(accuracy, least loss, positions)`` a prefix-reading model reaches on integer token inputs ``(N, T)`` with a
    class per position ``(N, T)``, and how many labelled positions share a prefix with other targets; None when no
    two prefixes collide (or the inputs are not tokens aligned with the targets)."""
    if x.is_floating_point() or x.ndim != 2 or tuple(x.shape) != tuple(y.shape):
        return None
    groups: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
    for tokens, targets in zip(x.tolist(), y.tolist()):
        for t, target in enumerate(targets):
            if target != IGNORE_INDEX:
                groups[tuple(tokens[: t + 1])][target] += 1
    total = sum(sum(c.values()) for c in groups.values())
    mixed = [c for c in groups.values() if len(c) > 1]
    if not total or not mixed:
        return None
    right = sum(max(c.values()) for c in groups.values())
    entropy = sum(-n * math.log(n / sum(c.values())) for c in mixed for n in c.values())
    return right / total, entropy / total, sum(sum(c.values()) for c in mixed)
