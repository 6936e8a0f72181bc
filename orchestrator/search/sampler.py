"""Samplers: pure functions from (space, seed, stage, count) to configs, so a stage is reproducible.

Random search is the first stage's sampler (the CS231n notes: random beats grid because the
important parameters get more distinct values). Sobol and Latin hypercube cover the unit cube more
evenly for small stages. ``tpe`` samples the first stage at random and each later stage by a
density ratio on the trials already finished (:mod:`orchestrator.search.tpe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from orchestrator.errors import ConfigError
from orchestrator.search.space import SearchSpace
from orchestrator.search.tpe import Scored, tpe_unit_points

SAMPLERS = ("random", "sobol", "lhs", "tpe")


def unit_points(kind: str, count: int, dims: int, seed: int, stage: int) -> np.ndarray:
    """``count`` points of the ``dims``-dimensional unit cube, fixed by ``(seed, stage)``."""
    if kind not in SAMPLERS:
        raise ConfigError(f"sampler: unknown kind {kind!r} (one of {', '.join(SAMPLERS)})")
    if dims == 0:
        return np.zeros((count, 0))
    if kind in ("random", "tpe"):  # tpe: random where it has no finished trials to model
        return np.random.default_rng([seed, stage]).random((count, dims))
    from scipy.stats import qmc  # only where asked: scipy is slow to import

    rng = np.random.default_rng([seed, stage, 1])
    engine = qmc.Sobol(dims, scramble=True, seed=rng) if kind == "sobol" else qmc.LatinHypercube(dims, seed=rng)
    return engine.random(count)


def sample_configs(space: SearchSpace, count: int, *, seed: int, stage: int = 0, kind: str = "random",
                   keep_inactive: bool = False) -> list[dict[str, Any]]:
    """The configs of one stage, in trial order. Same arguments, same configs.

    Inactive conditional parameters are ``None`` unless ``keep_inactive`` (their draws are kept for a caller
    that changes parents first, then applies ``space.deactivate``).
    """
    points = unit_points(kind, count, len(space.searched), seed, stage)
    return [space.from_unit(p, deactivate=not keep_inactive) for p in points]


def stage_configs(space: SearchSpace, count: int, *, seed: int, stage: int, kind: str = "random",
                  history: Sequence[Scored] = (), keep_inactive: bool = False) -> tuple[list[dict[str, Any]], str]:
    """The configs of one stage and how they were drawn (``"random"``, ``"tpe"``, ...).

    ``history``: (config, score, stage) of the trials finished before this stage, in trial order; only
    ``kind="tpe"`` reads it, and falls back to random points while too few trials are good.
    """
    if kind == "tpe" and stage > 0 and count > 0:
        points = tpe_unit_points(space, history, count, seed=seed, stage=stage)
        if points is not None:
            return [space.from_unit(p, deactivate=not keep_inactive) for p in points], "tpe"
    return sample_configs(space, count, seed=seed, stage=stage, kind=kind, keep_inactive=keep_inactive), (
        "random" if kind == "tpe" else kind)


def trial_seed(sweep_seed: int, trial_id: int) -> int:
    """Each trial's own torch seed: independent streams, derived rather than stored state."""
    return int(np.random.SeedSequence([sweep_seed, trial_id]).generate_state(1)[0] & 0x7FFFFFFF)
