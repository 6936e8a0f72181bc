"""Samplers: objects that turn (space, seed, stage, count) into configs, so a stage is reproducible.

Random search is the first stage's sampler (the CS231n notes: random beats grid because the
important parameters get more distinct values). Sobol and Latin hypercube cover the unit cube more
evenly for small stages. ``tpe`` samples the first stage at random and each later stage by a
density ratio on the trials already finished (:mod:`orchestrator.search.tpe`).

A new sampler is one class: subclass :class:`Sampler` and implement :meth:`Sampler.unit_points`
(points of the unit cube; the space maps them onto its ranges, log scales and conditions), or
:meth:`Sampler.stage_configs` to see finished trials too. Register it by name
(``@register_sampler("mine")``) or pass an instance to ``run_sweep(sampler=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from orchestrator.errors import ConfigError
from orchestrator.search.registry import Registry
from orchestrator.search.space import SearchSpace
from orchestrator.search.tpe import Scored, tpe_unit_points


class Sampler:
    """Draws one stage's configs; same arguments, same configs (no hidden state between calls)."""

    name: ClassVar[str] = ""  # set by @register_sampler

    def unit_points(self, count: int, dims: int, *, seed: int, stage: int) -> np.ndarray:
        """``count`` points of the ``dims``-dimensional unit cube, fixed by ``(seed, stage)``."""
        raise NotImplementedError(f"{type(self).__name__}: implement unit_points or stage_configs")

    def stage_configs(self, space: SearchSpace, count: int, *, seed: int, stage: int,
                      history: Sequence[Scored] = (), keep_inactive: bool = False) -> tuple[list[dict[str, Any]], str]:
        """The configs of one stage, in trial order, and how they were drawn (recorded in the stage's event).

        ``history``: (config, score, stage) of the trials finished before this stage, in trial order.
        Inactive conditional parameters are ``None`` unless ``keep_inactive`` (their draws are kept for a
        caller that changes parents first, then applies ``space.deactivate``).
        """
        dims = len(space.searched)
        points = np.zeros((count, 0)) if dims == 0 else np.asarray(self.unit_points(count, dims, seed=seed,
                                                                                      stage=stage), dtype=float)
        if points.shape != (count, dims) or not (np.isfinite(points).all() and (points >= 0).all()
                                                 and (points <= 1).all()):
            raise ConfigError(f"sampler {sampler_name(self)!r}: unit_points must return {count}x{dims} values in "
                              f"[0, 1], got shape {points.shape}")
        return [space.from_unit(p, deactivate=not keep_inactive) for p in points], sampler_name(self)


SAMPLERS: Registry[Sampler] = Registry()
register_sampler = SAMPLERS.register  # @register_sampler("mine"): settings, TOML files and --sampler know it by name


@register_sampler("random")
class RandomSampler(Sampler):
    def unit_points(self, count: int, dims: int, *, seed: int, stage: int) -> np.ndarray:
        return np.random.default_rng([seed, stage]).random((count, dims))


@register_sampler("sobol")
class SobolSampler(Sampler):
    def unit_points(self, count: int, dims: int, *, seed: int, stage: int) -> np.ndarray:
        import warnings

        from scipy.stats import qmc  # only where asked: scipy is slow to import

        with warnings.catch_warnings():  # a stage of 24 trials takes the sequence's first 24 points, as asked; scipy's
            # "balance properties ... require n to be a power of 2" warning printed a source path in the run's output
            warnings.filterwarnings("ignore", message=".*balance properties of Sobol", category=UserWarning)
            return qmc.Sobol(dims, scramble=True, seed=np.random.default_rng([seed, stage, 1])).random(count)


@register_sampler("lhs")
class LatinHypercubeSampler(Sampler):
    def unit_points(self, count: int, dims: int, *, seed: int, stage: int) -> np.ndarray:
        from scipy.stats import qmc

        return qmc.LatinHypercube(dims, seed=np.random.default_rng([seed, stage, 1])).random(count)


@register_sampler("tpe")
class TPESampler(RandomSampler):
    """Random where it has no finished trials to model (the first stage), a density ratio after that."""

    def stage_configs(self, space: SearchSpace, count: int, *, seed: int, stage: int,
                      history: Sequence[Scored] = (), keep_inactive: bool = False) -> tuple[list[dict[str, Any]], str]:
        if stage > 0 and count > 0:
            points = tpe_unit_points(space, history, count, seed=seed, stage=stage)
            if points is not None:
                return [space.from_unit(p, deactivate=not keep_inactive) for p in points], "tpe"
        configs, _ = super().stage_configs(space, count, seed=seed, stage=stage, keep_inactive=keep_inactive)
        return configs, "random"


SamplerChoice = str | Sampler


def sampler_for(choice: SamplerChoice) -> Sampler:
    """A registered name or a :class:`Sampler` instance, as a sampler."""
    if isinstance(choice, Sampler):
        return choice
    if isinstance(choice, str) and choice in SAMPLERS:
        return SAMPLERS[choice]()
    if isinstance(choice, type) and issubclass(choice, Sampler):
        return choice()
    known = ", ".join(SAMPLERS)
    raise ConfigError(f"setting 'sampler': expected a name ({known}) or a Sampler, got {choice!r}")


def sampler_name(choice: SamplerChoice | type[Sampler]) -> str:
    """How the sweep row records a choice: its registered name, else the class's import path."""
    if isinstance(choice, str):
        return choice
    cls = choice if isinstance(choice, type) else type(choice)
    if not issubclass(cls, Sampler):
        sampler_for(choice)  # type: ignore[arg-type]  # the one line that says what a sampler may be
    return SAMPLERS.name_of(cls)


def sample_configs(space: SearchSpace, count: int, *, seed: int, stage: int = 0, kind: SamplerChoice = "random",
                   keep_inactive: bool = False) -> list[dict[str, Any]]:
    """The configs of one stage from points of the unit cube alone (no history). Same arguments, same configs."""
    # The base method maps the sampler's own unit points (tpe's are random ones) and never reads history.
    sampler = sampler_for(kind)
    return Sampler.stage_configs(sampler, space, count, seed=seed, stage=stage, keep_inactive=keep_inactive)[0]


def stage_configs(space: SearchSpace, count: int, *, seed: int, stage: int, kind: SamplerChoice = "random",
                  history: Sequence[Scored] = (), keep_inactive: bool = False) -> tuple[list[dict[str, Any]], str]:
    """The configs of one stage and how they were drawn (``"random"``, ``"tpe"``, ...); a sampler's own
    ``stage_configs`` that returns another count, or configs of other parameters, is one line naming it."""
    sampler = sampler_for(kind)
    configs, drawn_by = sampler.stage_configs(space, count, seed=seed, stage=stage, history=history,
                                              keep_inactive=keep_inactive)
    who = f"sampler {sampler_name(sampler)!r}: stage_configs"
    if not isinstance(configs, Sequence) or len(configs) != count:
        got = len(configs) if isinstance(configs, Sequence) else type(configs).__name__
        raise ConfigError(f"{who} returned {got} configs for stage {stage + 1}, which draws {count}")
    for config in configs:
        misfit = space.misfit(config)
        if misfit is not None:
            raise ConfigError(f"{who} returned a config for stage {stage + 1} that {misfit}")
    return configs, drawn_by


def trial_seed(sweep_seed: int, trial_id: int) -> int:
    """Each trial's own torch seed: independent streams, derived rather than stored state."""
    return int(np.random.SeedSequence([sweep_seed, trial_id]).generate_state(1)[0] & 0x7FFFFFFF)
