"""How one stage leads to the next: which ranges the next stage samples and which configs it trains again.

The default, :class:`NarrowAndPromote`, is caviar's coarse-to-fine search (the CS231n notes'
"coarse to fine"): the next stage's ranges close around the top trials (and move past an edge the
best values sit on), and the best configs train again with the longer budget. A different policy is
one class given to ``ControllerOptions(stage_policy=...)``: for example one that never narrows
(plain successive stages of random search), or one that narrows around a model's prediction.
(``run_sweep`` does not take one yet: a resumed sweep must decide as the first run did, and the
sweep row records only named settings.) Pure: finished results in, a space and configs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.search.narrowing import NarrowResult, Result, narrow_space, top_results
from orchestrator.search.space import SearchSpace
from orchestrator.search.stages import promotion_count


class StagePolicy:
    """The seam between stages; both methods see the ended stage's (config, best score) results."""

    def next_space(self, space: SearchSpace, results: Sequence[Result]) -> NarrowResult | None:
        """The next stage's space and the edge notices that explain it; None keeps ``space`` as it is."""
        return None

    def promoted(self, results: Sequence[Result], next_stage_trials: int) -> list[dict[str, Any]]:
        """Configs of the ended stage that the next stage trains again (at most ``next_stage_trials``)."""
        return []


@dataclass(frozen=True)
class NarrowAndPromote(StagePolicy):
    top_fraction: float = 0.25  # the share of trials the ranges close around
    extend_edges: bool = True  # a best value on an edge moves the range past it (never past limits=)
    promote_fraction: float = 0.5  # the share of the next stage given to the ended stage's best configs
    narrow: bool = True

    def next_space(self, space: SearchSpace, results: Sequence[Result]) -> NarrowResult | None:
        if not self.narrow or not results:
            return None
        no_extension = {} if self.extend_edges else {"extend": 0.0}
        return narrow_space(space, results, top_fraction=self.top_fraction, **no_extension)

    def promoted(self, results: Sequence[Result], next_stage_trials: int) -> list[dict[str, Any]]:
        top = top_results(results, self.top_fraction, min_top=3)
        return [config for config, _ in top[: promotion_count(next_stage_trials, len(top), self.promote_fraction)]]
