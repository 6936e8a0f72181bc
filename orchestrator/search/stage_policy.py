"""How one stage leads to the next: which ranges the next stage samples and which configs it trains again.

The default, :class:`NarrowAndPromote`, is caviar's coarse-to-fine search (the CS231n notes'
"coarse to fine"): the next stage's ranges close around the top trials (and move past an edge the
best values sit on), and the best configs train again with the longer budget. ``fresh`` never
narrows and retrains nothing (every stage samples the declared ranges, each trained longer). A
different policy is one class, like a pruner or a sampler: pass it (a class or an instance) as
``run_sweep(stage_policy=...)``, or register it by name (``@register_stage_policy("mine")``) for
settings, TOML files and ``caviar run --stage-policy``. The sweep row records the name (or the
class's import path), so a resume decides as the first run did. Pure: finished results in, a space
and configs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestrator.errors import ConfigError
from orchestrator.search.narrowing import NarrowResult, Result, narrow_space, top_results
from orchestrator.search.registry import Registry
from orchestrator.search.space import SearchSpace
from orchestrator.search.stages import promotion_count


class StagePolicy:
    """The seam between stages; both methods see the ended stage's (config, best score) results."""

    name: ClassVar[str] = ""  # set by @register_stage_policy

    @classmethod
    def for_sweep(cls, *, top_fraction: float, extend_edges: bool, promote_fraction: float) -> StagePolicy:
        """The policy a sweep builds when its settings name this class; the settings it does not read are ignored."""
        return cls()

    def next_space(self, space: SearchSpace, results: Sequence[Result]) -> NarrowResult | SearchSpace | None:
        """The next stage's space (a SearchSpace of the same parameters, or a NarrowResult with the edge notices
        that explain it); None keeps ``space`` as it is."""
        return None

    def promoted(self, results: Sequence[Result], next_stage_trials: int) -> list[dict[str, Any]]:
        """Configs of the ended stage that the next stage trains again (at most ``next_stage_trials``)."""
        return []


STAGE_POLICIES: Registry[StagePolicy] = Registry()
register_stage_policy = STAGE_POLICIES.register  # settings, TOML files and --stage-policy know it by name


@register_stage_policy("narrow_and_promote")
@dataclass(frozen=True)
class NarrowAndPromote(StagePolicy):
    top_fraction: float = 0.25  # the share of trials the ranges close around
    extend_edges: bool = True  # a best value on an edge moves the range past it (never past limits=)
    promote_fraction: float = 0.5  # the share of the next stage given to the ended stage's best configs

    @classmethod
    def for_sweep(cls, *, top_fraction: float, extend_edges: bool, promote_fraction: float) -> StagePolicy:
        return cls(top_fraction, extend_edges, promote_fraction)

    def next_space(self, space: SearchSpace, results: Sequence[Result]) -> NarrowResult | None:
        if not results:
            return None
        no_extension = {} if self.extend_edges else {"extend": 0.0}
        return narrow_space(space, results, top_fraction=self.top_fraction, **no_extension)

    def promoted(self, results: Sequence[Result], next_stage_trials: int) -> list[dict[str, Any]]:
        top = top_results(results, self.top_fraction, min_top=3)
        return [config for config, _ in top[: promotion_count(next_stage_trials, len(top), self.promote_fraction)]]


@register_stage_policy("fresh")
class FreshStages(StagePolicy):
    """Every stage samples the declared ranges (with the sweep's sampler) and retrains nothing."""


StagePolicyChoice = str | type[StagePolicy] | StagePolicy


def stage_policy_for(choice: StagePolicyChoice, *, top_fraction: float = 0.25, extend_edges: bool = True,
                     promote_fraction: float = 0.5) -> StagePolicy:
    """A registered name, a :class:`StagePolicy` subclass (built from the settings) or an instance, as a policy."""
    if isinstance(choice, StagePolicy):
        return choice
    cls = STAGE_POLICIES.get(choice) if isinstance(choice, str) else choice
    if not (isinstance(cls, type) and issubclass(cls, StagePolicy)):
        raise ConfigError(f"setting 'stage_policy': expected a name ({', '.join(STAGE_POLICIES)}), a StagePolicy "
                          f"subclass or a StagePolicy, got {choice!r}")
    return cls.for_sweep(top_fraction=top_fraction, extend_edges=extend_edges, promote_fraction=promote_fraction)


def stage_policy_name(choice: StagePolicyChoice) -> str:
    """How the sweep row records a choice: its registered name, else the class's import path."""
    if isinstance(choice, str):
        return choice
    cls = choice if isinstance(choice, type) else type(choice)
    if not issubclass(cls, StagePolicy):
        stage_policy_for(choice)  # the one line that says what a stage policy may be
    return STAGE_POLICIES.name_of(cls)
