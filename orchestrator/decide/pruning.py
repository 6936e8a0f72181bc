"""Pruning: stop trials that explode, do not learn, or fall behind their peers.

A pruner sees one :class:`Observation` per (trial, epoch) and answers with a stop reason
(a short token) or ``None`` to continue. It keeps only plain data derived from what it
observed and uses no randomness, so replaying the stored metric rows in the same order
rebuilds the same state and gives the same decisions (that is how a sweep resumes).

Reasons: ``"diverged"`` (the loss), ``"objective_nan"`` (the objective, while the losses are finite),
``"not_learning"``, ``"asha_rung_<epoch>"``, ``"median_epoch_<epoch>"``.

A new pruner is one class: subclass :class:`Pruner`, implement ``_decide`` and
``next_decision_epoch``, and either register it by name (``@register_pruner("mine")``, then
``pruner="mine"`` works in settings, TOML and the CLI) or pass the class or a configured instance
to ``run_sweep(pruner=...)``. Each stage gets a fresh pruner built from its :class:`StageBudget`.
"""

from __future__ import annotations

import bisect
import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from orchestrator.errors import ConfigError
from orchestrator.search.registry import Registry

NEVER = 2**31 - 1  # "no decision epoch ahead" when a pruner has no max_epochs
DIVERGED = "diverged"
OBJECTIVE_NAN = "objective_nan"
NOT_LEARNING = "not_learning"
EARLY_STOPPED = "early_stopped"  # a completed trial's reason: its objective stopped improving


@dataclass(frozen=True, slots=True)
class Observation:
    """One finished epoch of one trial, as the controller reads it from a metrics row.

    ``score`` is oriented so that higher is better (accuracy, or ``-loss``).
    """

    trial_id: int
    epoch: int  # 1-based: epochs completed
    score: float
    train_loss: float
    val_loss: float
    val_accuracy: float | None = None
    num_classes: int | None = None
    # Regression: the validation loss of always predicting the training mean (the "chance" of a regressor).
    baseline_val_loss: float | None = None


@dataclass(frozen=True)
class StageBudget:
    """What one stage offers its pruner; a pruner's constructor takes those of these it names."""

    max_epochs: int
    grace_epochs: int = 1  # the plan's grace for this stage (never shorter than the stage before's epochs)
    reduction_factor: int = 3
    max_loss_ratio: float = 4.0


# -- pure rules -----------------------------------------------------------------------------


def divergence_reason(losses: Sequence[float], max_ratio: float = 4.0, min_epochs: int = 2) -> str | None:
    """``"diverged"`` if the last loss is NaN/inf, or (from ``min_epochs`` losses on) above ``max_ratio`` x the first.

    The worker calls this after every epoch too, so it stays tiny and dependency-free.
    """
    if not losses:
        return None
    first, last = losses[0], losses[-1]
    if not math.isfinite(last):
        return DIVERGED
    if len(losses) >= min_epochs and first > 0 and last > max_ratio * first:
        return DIVERGED
    return None


def plateau_reason(scores: Sequence[float], patience: int) -> str | None:
    """``"early_stopped"`` once the last ``patience`` epochs brought no score above the best before them.

    Early stopping, as Prechelt ("Early Stopping -- But When?", 1998) and Goodfellow et al. (Deep Learning, 7.8)
    describe it: a trial whose validation objective stopped improving trains on for nothing; its best checkpoint is
    kept, as always. Scores are
    higher-is-better (``score_of``); a NaN never counts as an improvement. ``patience`` 0: never.
    The worker calls this after every epoch, as it calls :func:`divergence_reason`.
    """
    if patience <= 0 or len(scores) <= patience:
        return None
    before = max((s for s in scores[:-patience] if not math.isnan(s)), default=-math.inf)
    return EARLY_STOPPED if not any(s > before for s in scores[-patience:] if not math.isnan(s)) else None


def objective_nan_reason(obs: Observation) -> str | None:
    """``"objective_nan"`` when the score is NaN (or infinite) while train and val loss are finite.

    Training is healthy then and the task's metric is not (a precision over a class never predicted
    divides by zero): calling that divergence would send the user after the wrong bug.
    """
    losses_finite = math.isfinite(obs.train_loss) and math.isfinite(obs.val_loss)
    return OBJECTIVE_NAN if losses_finite and not math.isfinite(obs.score) else None


def not_learning_reason(obs: Observation, margin: float = 0.02) -> str | None:
    """``"not_learning"`` when a classifier is still at chance: accuracy <= 1/C + margin, else val loss >= ln C.

    A regressor is at chance when its validation loss is no lower than ``(1 - margin)`` times the
    loss of predicting the training mean (``baseline_val_loss``). Without either (a custom task)
    nothing can be said, so ``None``.
    """
    c = obs.num_classes
    baseline = obs.baseline_val_loss
    if c is None and baseline is not None and math.isfinite(baseline) and baseline > 0:
        # A regressor no better than the training mean: R^2 (for MSE) at most ``margin``.
        return NOT_LEARNING if not obs.val_loss < (1.0 - margin) * baseline else None
    if c is None or c < 2:
        return None
    acc = obs.val_accuracy
    if acc is not None and math.isfinite(acc):
        return NOT_LEARNING if acc <= 1.0 / c + margin else None
    return NOT_LEARNING if obs.val_loss >= math.log(c) else None


# What caviar itself measures of a classifier's fit: at chance when accuracy (or the log loss) is.
FIT_OBJECTIVES = ("val_accuracy", "val_log_loss", "val_loss", "val_exact_match")


def chance_classes(num_classes: int | None, objective: str | None, own_loss: bool = False) -> int | None:
    """The class count the not-learning rule judges a classifier by; None (no rule) for a sweep ranked by a metric
    of the task's own, or by the task's own loss (``own_loss`` and ``val_loss``), whose chance value caviar cannot
    know. Accuracy at chance says nothing of either: a class-weighted loss on one positive in ten calls most
    examples positive at first, accuracy 0.1, while the AUC climbs and the weighted loss falls. ``objective`` None:
    a sweep from before the objective was stored."""
    if objective is not None and (objective not in FIT_OBJECTIVES or (own_loss and objective == "val_loss")):
        return None
    return num_classes


# caviar's own measures of a regressor's fit, each at chance when its MSE is no better than the training mean's.
REGRESSION_FIT_OBJECTIVES = ("val_loss", "val_mse", "val_mae", "val_r2")


def chance_loss(baseline_val_loss: float | None, objective: str | None) -> float | None:
    """The validation loss a regressor is judged against by the not-learning rule; None (no rule) for a sweep ranked
    by a metric of the task's own, as :func:`chance_classes`: a correlation or a rank metric ignores the outputs'
    scale, so a model whose MSE is far worse than the training mean's can already rank well. ``objective`` None: a
    sweep from before the objective was stored."""
    if objective is not None and objective not in REGRESSION_FIT_OBJECTIVES:
        return None
    return baseline_val_loss


def asha_rungs(grace_epochs: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """Rung epochs ``grace * eta**k`` below ``max_epochs`` (a trial at max_epochs ends anyway)."""
    rungs, epoch = [], grace_epochs
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= reduction_factor
    return rungs


def asha_keep(sorted_scores: Sequence[float], score: float, reduction_factor: int) -> bool:
    """Whether ``score`` survives a rung whose recorded scores (ascending, itself included) are given.

    With ``n`` scores: keep when ``n < eta`` (too few to judge, as in the ASHA paper);
    otherwise keep iff the trial's rank is within the top ``floor(n / eta)``, where
    rank = 1 + the number of scores strictly greater (ties count in the trial's favour).
    """
    n = len(sorted_scores)
    if n < reduction_factor:
        return True
    greater = n - bisect.bisect_right(sorted_scores, score)
    return greater + 1 <= n // reduction_factor


def sorted_median(values: Sequence[float]) -> float:
    """Median of an ascending, non-empty sequence (mean of the two middle values when even)."""
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else 0.5 * (values[mid - 1] + values[mid])


# -- pruners --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Trial:
    """What a pruner remembers of one trial: enough for divergence and running averages."""

    first_loss: float
    last_epoch: int = 0
    count: int = 0  # epochs recorded
    total: float = 0.0  # sum of recorded scores
    best: float = -math.inf
    stopped: str | None = None


class Pruner(ABC):
    """Turns observations into stop reasons. Subclasses implement :meth:`_decide` only.

    Shared behaviour: health is checked on every observation: divergence (NaN/inf losses, or a
    train loss above ``max_loss_ratio`` x its first value), then a NaN/inf score with finite losses
    (``objective_nan``); an epoch reported twice
    (a retried attempt) is recorded once; once a trial was stopped, later observations of it
    repeat the reason and change nothing; no decision is taken at or after ``max_epochs``.
    """

    name: ClassVar[str] = ""  # set by @register_pruner

    def __new__(cls, *args: Any, **options: Any) -> Pruner:
        pruner = super().__new__(cls)
        pruner._chosen = chosen_by_name(cls, args, options)  # what the user set: a copy for another stage keeps it
        return pruner

    @classmethod
    def for_stage(cls, budget: StageBudget, **chosen: Any) -> Pruner:
        """A fresh pruner for one stage: the budget's values its constructor takes, then ``chosen`` over them
        (``max_epochs`` always the stage's own)."""
        takes = inspect.signature(cls).parameters
        offered = {k: v for k, v in asdict(budget).items() if k in takes}
        return cls(**{**offered, **{k: v for k, v in chosen.items() if k != "max_epochs"}})

    def copy_for(self, budget: StageBudget) -> Pruner:
        """This pruner's class and chosen options, fresh, for another stage."""
        return type(self).for_stage(budget, **self._chosen)

    def __init__(
        self,
        *,
        max_epochs: int | None = None,
        grace_epochs: int = 1,
        check_not_learning: bool = False,
        not_learning_margin: float = 0.02,
        max_loss_ratio: float = 4.0,
    ):
        _positive_int("max_epochs", NEVER if max_epochs is None else max_epochs)
        _positive_int("grace_epochs", grace_epochs)
        if not (math.isfinite(not_learning_margin) and 0.0 <= not_learning_margin < 1.0):
            raise ConfigError(f"pruner.not_learning_margin: must lie in [0, 1), got {not_learning_margin!r}")
        if not (max_loss_ratio > 1.0):
            raise ConfigError(f"pruner.max_loss_ratio: must be above 1, got {max_loss_ratio!r}")
        self.max_epochs = NEVER if max_epochs is None else max_epochs
        self.grace_epochs = grace_epochs
        self.check_not_learning = bool(check_not_learning)
        self.not_learning_margin = float(not_learning_margin)
        self.max_loss_ratio = float(max_loss_ratio)
        self._trials: dict[int, _Trial] = {}

    def observe(self, obs: Observation) -> str | None:
        """Record one epoch's result; a stop reason, or ``None`` to continue."""
        trial = self._trials.get(obs.trial_id)
        if trial is None:
            trial = self._trials[obs.trial_id] = _Trial(first_loss=obs.train_loss)
        if trial.stopped is not None:
            return trial.stopped
        reason = self._health(obs, trial)
        if reason is None and obs.epoch > trial.last_epoch:
            trial.last_epoch = obs.epoch
            trial.count += 1
            trial.total += obs.score
            trial.best = max(trial.best, obs.score)
            if obs.epoch < self.max_epochs:
                reason = self._decide(obs, trial)
        trial.stopped = reason
        return reason

    @abstractmethod
    def next_decision_epoch(self, epoch: int) -> int:
        """Smallest epoch after ``epoch`` at which a non-divergence stop may come (``max_epochs`` if none)."""

    def forget(self, trial_id: int) -> None:
        """Drop a finished trial's own state; what it contributed to rungs or medians stays."""
        self._trials.pop(trial_id, None)

    def overrule(self, trial_id: int) -> None:
        """The run went on with a trial this pruner stopped (a replay that met the reports in another order than the
        live run did): later epochs are judged again, with the trial's first loss and running average kept."""
        trial = self._trials.get(trial_id)
        if trial is not None:
            trial.stopped = None

    @abstractmethod
    def _decide(self, obs: Observation, trial: _Trial) -> str | None:
        """The pruner's own rule, called once per new, healthy epoch below ``max_epochs``."""

    def _health(self, obs: Observation, trial: _Trial) -> str | None:
        if not math.isfinite(obs.val_loss):
            return DIVERGED
        diverged = divergence_reason((trial.first_loss, obs.train_loss), self.max_loss_ratio)
        return diverged or objective_nan_reason(obs)

    def _not_learning(self, obs: Observation) -> str | None:
        if self.check_not_learning and obs.epoch == self.grace_epochs:
            return not_learning_reason(obs, self.not_learning_margin)
        return None


def chosen_by_name(cls: type[Pruner], args: tuple[Any, ...], options: dict[str, Any]) -> dict[str, Any]:
    """The options a pruner was made with, each by its name: ``copy_for`` passes them as keywords, so an option
    given by position (``MyPruner(0.9)``) is kept for every stage instead of silently falling back to its default."""
    if not args:
        return dict(options)
    try:
        bound = inspect.signature(cls).bind_partial(*args, **options)
    except TypeError:
        return dict(options)  # the constructor itself says what is wrong with these arguments
    chosen: dict[str, Any] = {}
    for key, value in bound.arguments.items():
        kind = bound.signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            raise ConfigError(f"pruner {cls.__module__}.{cls.__qualname__}: takes *{key}, which a copy for each "
                              "stage cannot pass again; take named options instead")
        if kind is inspect.Parameter.VAR_KEYWORD:
            chosen.update(value)
        else:
            chosen[key] = value
    return chosen


PRUNERS: Registry[Pruner] = Registry()
register_pruner = PRUNERS.register  # @register_pruner("mine"): settings, TOML files and --pruner know it by name


@register_pruner("none")
class NoPruner(Pruner):
    """Never prunes on results: only trials that diverge (or whose objective is NaN) are stopped."""

    def __init__(self, *, max_epochs: int | None = None, max_loss_ratio: float = 4.0):
        super().__init__(max_epochs=max_epochs, max_loss_ratio=max_loss_ratio)

    def next_decision_epoch(self, epoch: int) -> int:
        return self.max_epochs

    def _decide(self, obs: Observation, trial: _Trial) -> str | None:
        return None


@register_pruner("asha")
class ASHAPruner(Pruner):
    """Asynchronous successive halving, stopping variant (Li et al. 2020; Ray Tune, Syne Tune).

    Rungs sit at ``grace_epochs * reduction_factor**k < max_epochs``. At a rung, the trial's
    score at that epoch joins the rung's sorted scores, then :func:`asha_keep` decides:
    fewer than ``eta`` scores -> continue; else continue iff within the top ``floor(n/eta)``.
    The not-learning check runs at the first rung. ``observe`` costs O(log n) compares plus
    one list insertion per rung reached.
    """

    def __init__(
        self,
        *,
        max_epochs: int,
        grace_epochs: int = 1,
        reduction_factor: int = 3,
        check_not_learning: bool = True,
        not_learning_margin: float = 0.02,
        max_loss_ratio: float = 4.0,
    ):
        super().__init__(
            max_epochs=max_epochs,
            grace_epochs=grace_epochs,
            check_not_learning=check_not_learning,
            not_learning_margin=not_learning_margin,
            max_loss_ratio=max_loss_ratio,
        )
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, int) or reduction_factor < 2:
            raise ConfigError(f"pruner.reduction_factor: must be an integer >= 2, got {reduction_factor!r}")
        self.reduction_factor = reduction_factor
        self.rungs = asha_rungs(grace_epochs, reduction_factor, max_epochs)
        self._rung_of = {epoch: i for i, epoch in enumerate(self.rungs)}
        self._scores: list[list[float]] = [[] for _ in self.rungs]  # ascending, per rung

    def next_decision_epoch(self, epoch: int) -> int:
        i = bisect.bisect_right(self.rungs, epoch)
        return self.rungs[i] if i < len(self.rungs) else self.max_epochs

    def rung_scores(self, epoch: int) -> list[float]:
        """The scores recorded at a rung so far, ascending (a copy, for reports and tests)."""
        i = self._rung_of.get(epoch)
        return [] if i is None else list(self._scores[i])

    def _decide(self, obs: Observation, trial: _Trial) -> str | None:
        i = self._rung_of.get(obs.epoch)
        if i is None:
            return None
        scores = self._scores[i]
        bisect.insort(scores, obs.score)
        reason = self._not_learning(obs) if i == 0 else None
        if reason is None and not asha_keep(scores, obs.score, self.reduction_factor):
            reason = f"asha_rung_{obs.epoch}"
        return reason


@register_pruner("median")
class MedianStoppingPruner(Pruner):
    """Median stopping rule (Golovin et al. 2017, Google Vizier).

    At every epoch ``s >= grace_epochs`` a trial stops if its best score so far is strictly
    below the median of the running averages (mean score over epochs 1..s) of the other
    trials that reached epoch ``s``, once at least ``min_trials`` such trials exist. Vizier
    compares with completed trials; in a stage all trials start together, so, like Ray
    Tune, "other trials that reported epoch s" stands in for completed ones.
    """

    def __init__(
        self,
        *,
        grace_epochs: int = 1,
        min_trials: int = 5,
        max_epochs: int | None = None,
        check_not_learning: bool = True,
        not_learning_margin: float = 0.02,
        max_loss_ratio: float = 4.0,
    ):
        super().__init__(
            max_epochs=max_epochs,
            grace_epochs=grace_epochs,
            check_not_learning=check_not_learning,
            not_learning_margin=not_learning_margin,
            max_loss_ratio=max_loss_ratio,
        )
        _positive_int("min_trials", min_trials)
        self.min_trials = min_trials
        self._averages: dict[int, list[float]] = {}  # epoch -> running averages, ascending

    def next_decision_epoch(self, epoch: int) -> int:
        nxt = max(epoch + 1, self.grace_epochs)
        return nxt if nxt < self.max_epochs else self.max_epochs

    def _decide(self, obs: Observation, trial: _Trial) -> str | None:
        if obs.epoch < self.grace_epochs:
            return None
        others = self._averages.setdefault(obs.epoch, [])
        median = sorted_median(others) if len(others) >= self.min_trials else None
        bisect.insort(others, trial.total / trial.count)
        reason = self._not_learning(obs)
        if reason is None and median is not None and trial.best < median:
            reason = f"median_epoch_{obs.epoch}"
        return reason


def make_pruner(name: str, **options: Any) -> Pruner:
    """Build a pruner by name (``asha``, ``median``, ``none``); bad names and options raise ConfigError."""
    cls = PRUNERS.get(name)
    if cls is None:
        raise ConfigError(f"pruner: unknown pruner {name!r} (one of {', '.join(PRUNERS)})")
    params = inspect.signature(cls).parameters
    for key in options:
        if key not in params:
            raise ConfigError(f"pruner.{key}: not an option of the {name} pruner (options: {', '.join(params)})")
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and key not in options:
            raise ConfigError(f"pruner.{key}: required by the {name} pruner")
    return cls(**options)


def _positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"pruner.{field}: must be a positive integer, got {value!r}")


PrunerChoice = str | type[Pruner] | Pruner


def pruner_factory(choice: PrunerChoice, options: Mapping[str, Any] | None = None) -> Callable[[StageBudget], Pruner]:
    """A registered name, a :class:`Pruner` subclass or a configured instance, as a builder of one per stage.
    ``options`` (the setting ``pruner_options``) go to a name's or a class's constructor; an instance keeps its own."""
    if isinstance(choice, str):
        if choice not in PRUNERS:
            raise ConfigError(f"setting 'pruner': unknown pruner {choice!r} (one of {', '.join(PRUNERS)})")
        choice = PRUNERS[choice]
    if isinstance(choice, type) and issubclass(choice, Pruner):
        params = inspect.signature(choice).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [key for key in options or {} if key not in params and not takes_any]
        if unknown:
            raise ConfigError(f"setting 'pruner_options': {unknown[0]!r} is not an option of the "
                              f"{PRUNERS.name_of(choice)} pruner (options: {', '.join(params)})")
        return functools.partial(choice.for_stage, **(options or {}))
    if isinstance(choice, Pruner):
        return choice.copy_for
    raise ConfigError(f"setting 'pruner': expected a name ({', '.join(PRUNERS)}), a Pruner subclass or a Pruner, "
                      f"got {type(choice).__name__}")


UNRECORDED = "_unrecorded"  # pruner_options' key for the options of an object that JSON cannot hold


def recorded_options(pruner: Pruner) -> dict[str, Any]:
    """A configured pruner's options as the sweep row keeps them (``pruner_options``): the plain values, and the
    names of any others under ``UNRECORDED``, so a resume without the object refuses instead of using defaults."""
    chosen = {k: v for k, v in pruner._chosen.items() if k != "max_epochs"}  # each stage brings its own
    kept = {k: v for k, v in chosen.items()
            if v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))}
    others = sorted(set(chosen) - set(kept))
    return {**kept, UNRECORDED: ", ".join(others)} if others else kept


def pruner_name(choice: PrunerChoice) -> str:
    """How the sweep row records a choice: its registered name, else the class's import path."""
    if isinstance(choice, str):
        return choice
    cls = choice if isinstance(choice, type) else type(choice)
    if not issubclass(cls, Pruner):
        pruner_factory(choice)  # the one line that says what a pruner may be
    return PRUNERS.name_of(cls)
