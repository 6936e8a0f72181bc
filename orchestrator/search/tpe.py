"""Model-based sampling for the later stages: a TPE-style density ratio on the trials already scored.

The first stage stays random search (the CS231n notes: random beats grid, and a model needs data).
A later stage samples inside its narrowed ranges, but where the finished trials say good configs
live: the Tree-structured Parzen Estimator of Bergstra et al., "Algorithms for Hyper-Parameter
Optimization" (NeurIPS 2011), univariate as in Optuna's ``TPESampler``. Finished trials are split
into good (the top ``gamma`` of their own stage: a stage's trials trained the same epochs, so their
scores compare) and the rest; per parameter a Parzen density of each group, with a uniform prior,
is fitted in the unit coordinates of the stage's space (so log scales stay log scales); each new
point is the candidate, among ``candidates`` drawn from the good density, with the highest
``l(x) / g(x)``.

A pure function of (space, history, count, seed, stage): the same finished trials give the same
configs, so a resumed sweep that begins a stage again samples what the live run sampled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.errors import ConfigError
from orchestrator.search.space import Choice, Distribution, SearchSpace

Scored = tuple[Mapping[str, Any], float, int]  # (config, score (higher is better), stage)


@dataclass(frozen=True)
class TPEOptions:
    gamma: float = 0.25  # share of each stage's trials counted as good
    candidates: int = 24  # draws from the good density per new point (Optuna's n_ei_candidates)
    prior_weight: float = 1.0  # weight of the uniform prior against each observation's kernel
    min_good: int = 2  # fewer good trials than this: nothing to model, sample at random

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma < 1.0:
            raise ConfigError(f"tpe.gamma: must lie in (0, 1), got {self.gamma!r}")
        if self.candidates < 1 or self.min_good < 1 or self.prior_weight <= 0:
            raise ConfigError("tpe: candidates and min_good must be >= 1, prior_weight > 0")


def good_mask(history: Sequence[Scored], gamma: float) -> list[bool]:
    """Which finished trials count as good: the best ``ceil(gamma * n)`` of each stage (ties: earlier first)."""
    good = [False] * len(history)
    for stage in sorted({s for _, _, s in history}):
        index = [i for i, (_, _, s) in enumerate(history) if s == stage]
        ranked = sorted(index, key=lambda i: -history[i][1])
        for i in ranked[: max(1, math.ceil(gamma * len(index)))]:
            good[i] = True
    return good


def unit_coordinate(dist: Distribution, value: Any) -> float:
    """``value`` in the unit coordinate of ``dist``'s (possibly narrowed) range; NaN when inactive or not an option.

    Numeric values outside the range map outside [0, 1]: they still pull the density toward that edge.
    """
    if value is None:
        return math.nan
    if isinstance(dist, Choice):
        return dist.to_unit(value) if value in dist.options else math.nan
    try:
        u = dist.to_unit(value)
    except (ValueError, ZeroDivisionError, OverflowError):
        return math.nan
    return u if math.isfinite(u) else math.nan


def bandwidth(points: np.ndarray) -> float:
    """Scott's rule in unit coordinates, kept within [0.05, 0.5] so one or two trials do not collapse it."""
    if len(points) < 2:
        return 0.25
    return float(np.clip(1.06 * np.std(points) * len(points) ** -0.2, 0.05, 0.5))


# Kernel values computed at once: blocks of rows keep memory flat and the block in cache. One (candidates x trials)
# matrix took 1.1 GB for a stage after 4,000 trials; the blocks compute each value and each row's sum as it did.
_BLOCK = 1 << 15


def numeric_log_density(u: np.ndarray, points: np.ndarray, prior_weight: float) -> np.ndarray:
    """Log of the uniform prior on [0, 1] mixed with one Gaussian kernel per observation."""
    h = bandwidth(points)
    norm = h * math.sqrt(2 * math.pi)
    sums = np.empty(len(u))
    rows = max(1, _BLOCK // max(len(points), 1))
    for start in range(0, len(u), rows):
        k = np.subtract(u[start:start + rows, None], points[None, :])
        k /= h
        np.square(k, out=k)
        k *= -0.5
        np.exp(k, out=k)
        k /= norm
        sums[start:start + rows] = k.sum(axis=1)
    return np.log((prior_weight + sums) / (prior_weight + len(points)))


def choice_log_density(index: np.ndarray, counts: np.ndarray, prior_weight: float) -> np.ndarray:
    """Log of smoothed option frequencies (the prior spread evenly over the options)."""
    probs = (prior_weight / len(counts) + counts) / (prior_weight + counts.sum())
    return np.log(probs[index])


def tpe_unit_points(space: SearchSpace, history: Sequence[Scored], count: int, *, seed: int, stage: int,
                    options: TPEOptions | None = None) -> np.ndarray | None:
    """``count`` points of the unit cube of ``space``, chosen by the density ratio; ``None`` when too few are good.

    Every parameter gets a coordinate (inactive ones too: the caller deactivates after any
    shape sharing, as with random points). A parameter no good trial had active is drawn uniformly.
    """
    o = options or TPEOptions()
    good = good_mask(history, o.gamma)
    if sum(good) < o.min_good or not sum(not g for g in good):
        return None
    rng = np.random.default_rng([seed, stage, 2])
    names, dims = list(space.searched), list(space.searched.values())
    coords = np.array([[unit_coordinate(d, c.get(n)) for n, d in zip(names, dims)] for c, _, _ in history],
                      dtype=float)
    coords = coords.reshape(len(history), len(dims))
    good_rows, bad_rows = coords[np.array(good)], coords[~np.array(good)]
    draws = np.empty((count, o.candidates, len(dims)))
    ratio = np.zeros((count, o.candidates, len(dims)))  # log l(x) - log g(x), per parameter
    for j, dist in enumerate(dims):
        g_pts, b_pts = good_rows[:, j], bad_rows[:, j]
        g_pts, b_pts = g_pts[np.isfinite(g_pts)], b_pts[np.isfinite(b_pts)]
        if isinstance(dist, Choice):
            k = len(dist.options)
            g_idx = np.minimum((g_pts * k).astype(int), k - 1)
            b_idx = np.minimum((b_pts * k).astype(int), k - 1)
            g_counts = np.bincount(g_idx, minlength=k).astype(float)
            b_counts = np.bincount(b_idx, minlength=k).astype(float)
            probs = (o.prior_weight / k + g_counts) / (o.prior_weight + g_counts.sum())
            picked = rng.choice(k, size=(count, o.candidates), p=probs)
            draws[:, :, j] = (picked + 0.5) / k
            if len(g_pts) and len(b_pts):
                ratio[:, :, j] = choice_log_density(picked, g_counts, o.prior_weight) - choice_log_density(
                    picked, b_counts, o.prior_weight)
            continue
        if not len(g_pts):
            draws[:, :, j] = rng.random((count, o.candidates))
            continue
        h = bandwidth(g_pts)
        from_prior = rng.random((count, o.candidates)) < o.prior_weight / (o.prior_weight + len(g_pts))
        centre = g_pts[rng.integers(len(g_pts), size=(count, o.candidates))]
        kernel = centre + h * rng.standard_normal((count, o.candidates))
        u = np.where(from_prior, rng.random((count, o.candidates)), kernel)
        u = np.abs(u)  # reflect at 0 and 1 rather than pile mass on the edges
        u = np.where(u > 1.0, 2.0 - u, u)
        u = np.clip(u, 0.0, np.nextafter(1.0, 0.0))
        draws[:, :, j] = u
        if len(b_pts):
            flat = u.reshape(-1)
            lg = numeric_log_density(flat, g_pts, o.prior_weight)
            lb = numeric_log_density(flat, b_pts, o.prior_weight)
            ratio[:, :, j] = (lg - lb).reshape(count, o.candidates)
    # A conditional parameter counts only where the candidate's parents make it active (without conditions, all
    # are: the per-candidate configs, a second per trial at 4,000 trials, are then not built).
    if space.conditional:
        active = np.array([[[v is not None for v in space.from_unit(p).values()] for p in row] for row in draws])
        ratio = ratio * active[:, :, [name in space.searched for name in space]]
    best = np.argmax(ratio.sum(axis=2), axis=1)  # ties: the first candidate
    return draws[np.arange(count), best]
