"""Stage plans for coarse-to-fine search: many short trials first, then fewer, longer ones.

A plan is written ``"64x1,24x5,8x20"``: 64 trials of 1 epoch, then 24 of 5 epochs in
ranges narrowed around the best, then 8 of 20 epochs (:func:`default_plan` derives one from
the trials and epochs a user gives). Each later stage trains the best
configs of the stage before again, for longer (:func:`promotion_count`), and fills its
other trials with fresh samples from the narrowed ranges: a short run tells a config that
learns from one that does not, but is a poor judge among the good ones, so the good ones
get the longer run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import ConfigError

_STAGE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")


@dataclass(frozen=True)
class Stage:
    """One stage: how many trials, each trained for at most how many epochs.

    A ``reseed`` stage samples nothing: it trains the best config so far once per trial, each
    with its own seed (CS231n's "same model, different initializations" ensemble).
    """

    trials: int
    epochs: int
    reseed: bool = False
    grace_epochs: int | None = None  # the pruner's grace in this stage (None: the sweep's setting)

    def __post_init__(self) -> None:
        _positive_int("stage.trials", self.trials)
        _positive_int("stage.epochs", self.epochs)

    def __str__(self) -> str:
        return f"{self.trials}x{self.epochs}" + (" (seeds)" if self.reseed else "")


def parse_plan(text: str) -> list[Stage]:
    """``"64x1,24x5,8x20"`` -> stages; anything else raises ConfigError naming ``plan``."""
    if not str(text).strip():
        raise ConfigError("plan: empty; write stages as TRIALSxEPOCHS, like '64x1,24x5,8x20'")
    plan = []
    for i, piece in enumerate(str(text).split(","), start=1):
        match = _STAGE.fullmatch(piece)
        if match is None:
            raise ConfigError(f"plan: stage {i} {piece.strip()!r} is not TRIALSxEPOCHS (like '64x1,24x5,8x20')")
        try:
            plan.append(Stage(int(match[1]), int(match[2])))
        except ConfigError as exc:
            raise ConfigError(f"plan: stage {i} {piece.strip()!r}: {exc}") from None
        if i > 1 and plan[-1].epochs < plan[-2].epochs:  # later stages train the earlier ones' best configs longer
            raise ConfigError(f"plan: stage {i} {piece.strip()!r} trains {plan[-1].epochs} epochs, fewer than stage "
                              f"{i - 1}'s {plan[-2].epochs}; coarse to fine, each stage trains at least as long as the "
                              "one before, and the last stage's trials are the sweep's answer")
    return plan


def plan_to_str(plan: Sequence[Stage]) -> str:
    """The inverse of :func:`parse_plan`."""
    return ",".join(str(stage) for stage in plan)


def default_plan(trials: int, epochs: int, stages: int | None = None) -> list[Stage]:
    """A coarse-to-fine plan that spends exactly ``trials`` trials and ends at ``epochs`` epochs.

    Rule: one stage when ``trials < 8`` or ``epochs == 1`` (nothing to refine); otherwise 2
    stages below 24 trials and 3 from 24 on (never more stages than epochs). Trials: the
    first stage (random search) takes half, the later stages share the other half equally,
    rounded by largest remainder, at least 1 each. Epochs: the first stage runs
    ``max(1, epochs // 20)``, the last ``epochs``, the ones between grow geometrically
    (rounded up). So ``default_plan(32, 10)`` is ``16x1,8x4,8x10``.

    Why equal later stages: a last stage of a few trials (the plan once cut each stage to a
    third of the one before: ``21x1,8x4,3x10``) trained about a fifth of the epochs the
    settings allow and handed back a worse model than ASHA or Optuna given the same trials
    and epochs (``benchmarks/quality.py``). The pruner inside each stage still stops the
    later stages' laggards early, so the sweep spends about as many epochs as those peers.
    """
    _positive_int("trials", trials)
    _positive_int("epochs", epochs)
    if stages is None:
        stages = 1 if trials < 8 or epochs == 1 else (2 if trials < 24 else 3)
        stages = min(stages, epochs)
    else:
        _positive_int("stages", stages)
        if stages > trials:
            raise ConfigError(f"stages: {stages} stages need at least {stages} trials, got {trials}")
        if stages > epochs:
            raise ConfigError(f"stages: {stages} stages need at least {stages} epochs to grow, got {epochs}")
    if stages == 1:
        return [Stage(trials, epochs)]
    counts = _split(trials, [stages - 1] + [1] * (stages - 1))
    return [Stage(n, e) for n, e in zip(counts, _epoch_levels(epochs, stages), strict=True)]


def stage_budget_epochs(plan: Sequence[Stage]) -> int:
    """Trial-epochs the plan costs without pruning (an upper bound on the work)."""
    return sum(stage.trials * stage.epochs for stage in plan)


def default_plan_for_budget(budget_epochs: int, epochs: int, stages: int | None = None) -> list[Stage]:
    """The :func:`default_plan` with the most trials whose cost (:func:`stage_budget_epochs`) fits the budget.

    So a staged sweep can be given the epochs a plain random search of ``budget_epochs //
    epochs`` trials would spend. Costs are not monotone in the trial count (the number of
    stages jumps at 8 and 24 trials), so every count up to the budget is tried: O(budget).
    """
    _positive_int("budget_epochs", budget_epochs)
    _positive_int("epochs", epochs)
    best: list[Stage] | None = None
    for trials in range(1, budget_epochs + 1):
        try:
            plan = default_plan(trials, epochs, stages)
        except ConfigError:  # too few trials for the stages asked
            continue
        if stage_budget_epochs(plan) <= budget_epochs:
            best = plan
    if best is None:
        raise ConfigError(f"budget_epochs: {budget_epochs} epochs cannot pay for one trial of {epochs} epochs")
    return best


def stage_grace_epochs(plan: Sequence[Stage], grace_epochs: int) -> list[int]:
    """Each stage's grace period for a pruner: no shorter than the epochs of the stage before.

    A later stage's trials were chosen on what the earlier stage saw after its epochs; cutting
    them on a shorter horizon than that would throw away slow starters the plan meant to give
    a longer run. Capped at each stage's own epochs.
    """
    _positive_int("grace_epochs", grace_epochs)
    graces, previous = [], 0
    for stage in plan:
        graces.append(min(max(grace_epochs, previous), stage.epochs))
        previous = stage.epochs
    return graces


def promotion_count(stage_trials: int, candidates: int, fraction: float = 0.5) -> int:
    """How many of the earlier stage's best configs a stage of ``stage_trials`` trains again.

    At most ``fraction`` of the stage (rounded down; the rest are fresh samples that explore the
    narrowed, possibly extended, ranges), and never more than the ``candidates`` on offer. Any
    fraction above 0 retrains at least the best config: a one-trial final stage (``16x2,1x20``)
    trains the best config long, not a fresh sample nobody has seen learn.
    """
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
        raise ConfigError(f"promote_fraction: must lie in [0, 1], got {fraction!r}")
    wanted = math.floor(stage_trials * fraction + 1e-9)
    if fraction > 0 and stage_trials >= 1:
        wanted = max(wanted, 1)
    return max(0, min(candidates, wanted))


def _epoch_levels(epochs: int, stages: int) -> list[int]:
    """Strictly increasing epochs from ``max(1, epochs // 20)`` to ``epochs``, geometric in between."""
    first = max(1, epochs // 20)
    levels = [math.ceil(first * (epochs / first) ** (i / (stages - 1)) - 1e-9) for i in range(stages)]
    levels[0], levels[-1] = first, epochs
    for i in range(1, stages):
        levels[i] = max(levels[i], levels[i - 1] + 1)
    for i in range(stages - 2, -1, -1):
        levels[i] = min(levels[i], levels[i + 1] - 1)
    return levels


def _split(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split by ``weights`` (largest remainder, ties to earlier), each part at least 1."""
    raw = [total * w / sum(weights) for w in weights]
    parts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (parts[i] - raw[i], i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    for i, part in enumerate(parts):
        if part == 0:
            parts[i] = 1
            parts[max(range(len(parts)), key=parts.__getitem__)] -= 1
    return parts


def _positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field}: must be a positive integer, got {value!r}")
