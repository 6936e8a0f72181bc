"""The sweep state machine: a pure function of the reports it has seen.

It samples each stage's trials, turns every report into a decision (continue to an
epoch, or stop with a reason), narrows the ranges between stages, and records every
decision as an event. It touches no backend and no storage: the driver carries values
between it, the executor and the tables, so it runs as well on replayed curves.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from orchestrator.decide.backend import START_FAILED, Assignment, Report
from orchestrator.decide.fusing import PER_MEMBER, FusePlan, block_size, share_shapes
from orchestrator.decide.pruning import DIVERGED, OBJECTIVE_NAN, Observation, Pruner, pruner_name
from orchestrator.decide.status import SUCCEEDED, TrialStatus, checked_move, stored_status
from orchestrator.errors import ConfigError, StorageError, exception_line
from orchestrator.search.narrowing import NarrowResult, edge_warnings, explored_space
from orchestrator.search.registry import plugin_code
from orchestrator.search.sampler import sampler_name, stage_configs, trial_seed
from orchestrator.search.space import Choice, SearchSpace, shown_value
from orchestrator.search.stage_policy import NarrowAndPromote, StagePolicy, stage_policy_name
from orchestrator.search.stages import Stage
from orchestrator.store.schema import TRIALS_PATH, now_ms, typed_config

# What a trials-table row restores of a trial besides its config (orchestrator.decide.restore).
RESTORED_FIELDS = ("reason", "attempt", "epochs_run", "best_score", "best_epoch", "best_val_loss",
                   "best_val_accuracy", "train_seconds", "started", "finished", "node", "error")
T = TypeVar("T")



@dataclass
class TrialState:
    trial_id: int
    stage: int
    config: dict[str, Any]
    seed: int
    max_epochs: int
    status: TrialStatus = TrialStatus.PENDING
    reason: str | None = None
    attempt: int = 0
    epochs_run: int = 0
    best_score: float = -math.inf
    best_epoch: int | None = None
    best_val_loss: float | None = None
    best_val_accuracy: float | None = None
    train_seconds: float = 0.0
    started: int | None = None
    finished: int | None = None
    node: str | None = None
    error: str | None = None

    def move_to(self, status: TrialStatus | str) -> None:
        """The one way a trial's status changes: along the legal moves of ``orchestrator.decide.status``."""
        self.status = checked_move(self.trial_id, self.status, status)

    def as_row(self) -> dict[str, Any]:
        row = dict(vars(self))
        row["status"] = str(self.status)
        if not math.isfinite(row["best_score"]):
            row["best_score"] = None
        return row


@dataclass(frozen=True)
class Decision:
    stop: bool
    until_epoch: int = 0
    reason: str | None = None


def best_trial_rank(max_epochs: int, best_score: float, stage: int, stage_done: bool = True
                    ) -> tuple[bool, int, float, int]:
    """The sweep's best trial is the largest of these. First the stages where a trial completed: a sweep stopped one
    epoch into a stage holds only pruned or unfinished trials there, no match for the stage before. Then the trials
    trained longest (later stages train longer), then the best score, then the later stage on a tie. By epochs, not
    stage: in a plan whose stages train equally long (8x5,8x5) a later stage's worse trial is no better for being
    later. ``caviar top``, ``status`` and the report use it too."""
    return stage_done, max_epochs, best_score, stage


def decision_epoch(pruner: Pruner, epoch: int, max_epochs: int) -> int:
    """The epoch a trial at ``epoch`` trains to next: ``pruner.next_decision_epoch``, checked. One not after ``epoch``
    asked the worker to train to where the trial stood, again and again: the sweep hung without a word."""
    name = pruner_name(type(pruner))
    with plugin_code("pruner", name, pruner, "next_decision_epoch", f"after epoch {epoch}"):
        until = pruner.next_decision_epoch(epoch)
    if isinstance(until, bool) or not isinstance(until, numbers.Integral) or until <= epoch < max_epochs:
        raise ConfigError(f"pruner {name!r}: next_decision_epoch({epoch}) returned {until!r}; return an epoch after "
                          f"{epoch} (max_epochs when no decision is ahead)")
    return min(int(until), max_epochs)


def judged(trials: Sequence[T], facts: Callable[[T], tuple[str, str | None, float | None]]) -> list[T]:
    """Of one stage's trials, those the next stage (or the next sweep) is decided on; ``facts`` gives a trial's
    (status, reason, best score). Those that ended with a score, only the completed ones when there are three or more
    (a trial pruned or diverged after fewer epochs is no peer of theirs). With fewer, a diverged trial is judged only
    when every ended trial diverged: its best score came before the config blew up, and narrowing around it would
    chase the config that cannot train."""
    ended = [t for t in trials if (f := facts(t))[0] in SUCCEEDED and f[2] is not None and math.isfinite(f[2])]
    completed = [t for t in ended if facts(t)[0] == TrialStatus.COMPLETED]
    if len(completed) >= 3:
        return completed
    return [t for t in ended if facts(t)[1] != DIVERGED] or ended


def next_space_of(policy: StagePolicy, space: SearchSpace, results: Sequence[tuple[dict[str, Any], float]],
                  stage_number: int) -> NarrowResult | None:
    """``policy.next_space``, checked: a SearchSpace returned as it is stands for itself with no edge notices (it failed
    on ``.edges`` after the stage had trained); anything else, or a space of other parameters, is one line."""
    narrowed = policy.next_space(space, results)
    if isinstance(narrowed, SearchSpace):
        narrowed = NarrowResult(narrowed, [])
    who = f"stage policy {stage_policy_name(policy)!r}: next_space"
    if narrowed is not None and not isinstance(narrowed, NarrowResult):
        raise ConfigError(f"{who} returned a {type(narrowed).__name__}; return the next stage's SearchSpace, a "
                          "NarrowResult, or None to keep the ranges")
    if narrowed is not None and set(narrowed.space) != set(space):
        raise ConfigError(f"{who} returned a space for stage {stage_number} with parameters "
                          f"{', '.join(narrowed.space)}; the stage before has {', '.join(space)}")
    return narrowed


def completed_stages(stages_and_statuses: Iterable[tuple[int, str]]) -> set[int]:
    """The stages with a completed trial (early-stopped ones included), for :func:`best_trial_rank`."""
    return {stage for stage, status in stages_and_statuses if status == TrialStatus.COMPLETED}


@dataclass
class ControllerOptions:
    seed: int = 0
    sampler: str = "random"
    max_retries: int = 2  # a trial whose executor dies is retried this many times
    fail_fast: int = 5  # stop when this many trials fail before any succeeds
    # > 1: each stage's trials share model shapes in blocks, to train as fused arrays (set by Controller.fuse)
    fuse_array_size: int = 0
    fuse_workers: int = 1
    fuse_per_member: frozenset[str] = PER_MEMBER
    # How a stage leads to the next (narrowing, promotion, edge extension): orchestrator/search/stage_policy.py
    stage_policy: StagePolicy = field(default_factory=NarrowAndPromote)


@dataclass
class Controller:
    space: SearchSpace
    plan: Sequence[Stage]
    make_pruner: Callable[[Stage], Pruner]
    options: ControllerOptions = field(default_factory=ControllerOptions)

    def __post_init__(self) -> None:
        self.trials: dict[int, TrialState] = {}
        self.pending: deque[int] = deque()
        self.stage_spaces: list[SearchSpace] = []
        self.events: list[dict[str, Any]] = []  # drained by the writer
        # The same events, never drained, numbered from 1: whoever watches the sweep (the live view) reads on.
        self.event_feed: deque[tuple[int, dict[str, Any]]] = deque(maxlen=10_000)
        self.events_emitted = 0
        self.stage = -1
        self.pruner: Pruner | None = None
        self.abort_reason: str | None = None
        # (column, mode) the scores stand for, for display only (decisions compare scores): set once known.
        self.objective: tuple[str, str] | None = None
        self._any_success = False
        self._next_id = 0
        self._stop_errors: dict[int, str] = {}  # why a stop decided at a report fails its trial, until it ends
        # Restore: trials a stored decision stopped whose end was cut short train again to that epoch, then stop for
        # the stored reason, so their worker writes the end (orchestrator.decide.restore).
        self._stop_when_back: dict[int, str] = {}
        self._started_once: set[int] = set()  # back in the queue because their worker never started: no new start
        self._begin_stage(0, self.space)

    # -- stages ---------------------------------------------------------------------------
    def _begin_stage(self, index: int, space: SearchSpace, promoted: Sequence[dict[str, Any]] = ()) -> None:
        stage = self.plan[index]
        fresh = stage.trials - len(promoted)  # fresh samples first: the same ids and configs when a resume re-samples
        # The plug-ins first, the state after: one that raises leaves the controller at the stage before, whole, so
        # the tables are still written and a resume begins this stage again.
        pruner = self.make_pruner(stage)
        # Conditions apply after shapes are shared: a block's shared optimizer decides which of each member's
        # own draws (momentum, betas) are active, so the draws are kept until then.
        sampler = self.options.sampler
        with plugin_code("sampler", sampler_name(sampler), sampler, "stage_configs", f"drawing stage {index + 1}"):
            sampled, drawn_by = stage_configs(
                space, fresh, seed=self.options.seed, stage=index, kind=sampler,
                history=self.scored_history(index), keep_inactive=True,
            )
        self.stage = index
        self.stage_spaces.append(space)
        self.pruner = pruner
        self._full_samples = dict(zip(range(self._next_id, self._next_id + fresh), sampled))
        configs = [space.deactivate(c) for c in (self._shared_shapes(sampled, fresh) if fresh else [])]
        configs += [dict(c) for c in promoted]
        first = self._next_id
        for config in configs:
            tid = self._next_id
            self._next_id += 1
            self.trials[tid] = TrialState(tid, index, config, trial_seed(self.options.seed, tid), stage.epochs)
            self.pending.append(tid)
        self.event(
            "stage_started",
            stage=index,
            detail={
                "trials": stage.trials,
                "epochs": stage.epochs,
                "first_trial_id": first,
                "space": space.to_dict(),
                "promoted": len(promoted),
                "sampler": drawn_by,  # how the fresh trials were drawn ("tpe": density ratio on finished trials)
            },
        )

    def scored_history(self, before_stage: int) -> list[tuple[dict[str, Any], float, int]]:
        """(config, best score, stage) of every trial of the earlier stages that ended with a score, by trial id."""
        return [
            (t.config, t.best_score, t.stage)
            for t in sorted(self.trials.values(), key=lambda t: t.trial_id)
            if t.stage < before_stage and t.status in SUCCEEDED and math.isfinite(t.best_score)
        ]

    def _shared_shapes(self, configs: list[dict[str, Any]], stage_trials: int) -> list[dict[str, Any]]:
        o = self.options
        if o.fuse_array_size <= 1:
            return configs
        return share_shapes(configs, block_size(stage_trials, o.fuse_workers, o.fuse_array_size), o.fuse_per_member)

    def fuse(self, array_size: int, workers: int, per_member: frozenset[str] = PER_MEMBER) -> None:
        """Share model shapes in blocks from now on; this stage too, if none of its trials has started."""
        self.options.fuse_array_size, self.options.fuse_workers = array_size, workers
        self.options.fuse_per_member = frozenset(per_member)
        if any(t.status != TrialStatus.PENDING or t.attempt for t in self.trials.values() if t.stage == self.stage):
            return
        ids = [tid for tid in self.pending if self.trials[tid].stage == self.stage]
        drawn = [self._full_samples.get(t, self.trials[t].config) for t in ids]
        for tid, before, config in zip(ids, drawn, self._shared_shapes(drawn, len(ids))):
            # A promoted config the block left alone keeps exactly what it trained with.
            fresh_or_changed = tid in self._full_samples or config != before
            self.trials[tid].config = self.stage_spaces[-1].deactivate(config) if fresh_or_changed else config

    def apply_fusing(self, plan: FusePlan) -> None:
        """What the fused backend's set-up decided: shapes shared in blocks when fused; its event either way."""
        if plan.fused:
            self.fuse(plan.block_cap, plan.workers, plan.per_member)
        self.event(plan.event_kind, reason=plan.reason, detail=plan.detail)

    def _maybe_next_stage(self) -> None:
        if self.pending or self.stage + 1 >= len(self.plan) or self.abort_reason or self.any_running:
            return
        space = self.stage_spaces[-1]
        if self.plan[self.stage + 1].reseed:
            self._begin_reseed(space)
            return
        results = self.stage_results(self.stage)
        policy = self.stage_policy
        after = f"after stage {self.stage + 1}"
        with plugin_code("stage policy", stage_policy_name(policy), policy, "next_space", after):
            narrowed = next_space_of(policy, space, results, self.stage + 2)
        if narrowed is not None:
            for notice in narrowed.edges:
                kind, trial_id, message = edge_event(self, notice)
                # The stage whose best trial sat on the edge; its trial; the value, old and new range.
                self.event(kind, trial_id, stage=self.stage, reason=message, detail=notice_detail(notice))
            kept = narrowed.space.to_dict() == space.to_dict()  # e.g. options each tried too rarely to drop
            why = f"stage {self.stage + 1}'s results left every range as it was" if kept else None
            self.event("range_narrowed", stage=self.stage + 1, reason=why, detail={"space": narrowed.space.to_dict()})
            space = narrowed.space
        trials = self.plan[self.stage + 1].trials
        with plugin_code("stage policy", stage_policy_name(policy), policy, "promoted", after):
            promoted = policy.promoted(results, trials)
        if len(promoted) > trials:  # fresh = trials - promoted would go negative: numpy's "negative dimensions"
            raise ConfigError(f"stage policy {stage_policy_name(policy)!r}: promoted returned {len(promoted)} configs "
                              f"for stage {self.stage + 2}, which trains {trials} trials; return at most "
                              "next_stage_trials")
        for config in promoted:
            misfit = space.misfit(config)
            if misfit is not None:
                raise ConfigError(f"stage policy {stage_policy_name(policy)!r}: promoted returned a config for stage "
                                  f"{self.stage + 2} that {misfit}")
        self._begin_stage(self.stage + 1, space, promoted)

    def _begin_reseed(self, space: SearchSpace) -> None:
        """The best config so far, once per trial of the stage; each trial's id gives it a new seed."""
        best, stage = self.best(), self.plan[self.stage + 1]
        if best is None:  # nothing finished to copy: the sweep ends here
            self.event("reseed_skipped", stage=self.stage + 1, reason="no trial finished with a score")
            self.plan = list(self.plan[: self.stage + 1])
            return
        self.event("reseed", stage=self.stage + 1, detail={"config_of_trial": best.trial_id, "copies": stage.trials})
        self._begin_stage(self.stage + 1, space, [dict(best.config)] * stage.trials)

    @property
    def stage_policy(self) -> StagePolicy:
        return self.options.stage_policy

    def stage_results(self, stage: int) -> list[tuple[dict[str, Any], float]]:
        """(config, best score) of the stage's finished trials; completed ones rank first."""
        return [(t.config, t.best_score) for t in self.judged_trials(stage)]

    def judged_trials(self, stage: int) -> list[TrialState]:
        """The trials the next stage is decided on (:func:`judged`)."""
        in_stage = [t for t in self.trials.values() if t.stage == stage]
        return judged(in_stage, lambda t: (t.status, t.reason, t.best_score))

    # -- dispatch -------------------------------------------------------------------------
    @property
    def running(self) -> list[int]:
        return [t.trial_id for t in self.trials.values() if t.status == TrialStatus.RUNNING]

    @property
    def any_running(self) -> bool:
        # Newest first: running trials are mostly the latest ids, so the scan stops early (the driver asks every loop).
        return any(t.status == TrialStatus.RUNNING for t in reversed(self.trials.values()))

    @property
    def finished(self) -> bool:
        if self.abort_reason:
            return not self.any_running
        return not self.pending and self.stage + 1 >= len(self.plan) and not self.any_running

    def next_assignment(self) -> Assignment | None:
        if not self.pending or self.abort_reason:
            return None
        trial = self.trials[self.pending.popleft()]
        resume = trial.status == TrialStatus.PENDING and trial.attempt > 0
        trial.move_to(TrialStatus.RUNNING)
        trial.started = trial.started or now_ms()
        if not resume and trial.trial_id not in self._started_once:
            self.event("trial_started", trial.trial_id, detail={"config": trial.config, "seed": trial.seed})
        until = self._next_decision(trial)
        if trial.trial_id in self._stop_when_back:
            until = trial.epochs_run  # only back to where the stored decision stopped it
        return Assignment(  # the stage as the tables number it: workers write it into their rows
            trial.trial_id, trial.stage + 1, trial.config, trial.seed, trial.max_epochs, until, trial.attempt, resume
        )

    # -- reports --------------------------------------------------------------------------
    def on_report(self, report: Report) -> Decision | None:
        """Digest a report; a decision for a trial still running, ``None`` when it has ended."""
        trial = self.trials[report.trial_id]
        if report.node:
            trial.node = report.node
        reason = None
        for row in report.rows:
            reason = self._observe(trial, row) or reason
        if report.lost:
            return self._retry(trial, report.error or "executor lost")
        if report.ended:
            status = TrialStatus(report.status or TrialStatus.COMPLETED)
            if reason == OBJECTIVE_NAN and status != TrialStatus.FAILED:  # the worker ran past that epoch
                self._end(trial, TrialStatus.FAILED, reason, self._stop_errors.pop(trial.trial_id, None))
            else:
                self._end(trial, status, report.reason, report.error)
            return None
        if trial.trial_id in self._stop_when_back:
            return Decision(stop=True, reason=self._stop_when_back.pop(trial.trial_id))
        if reason is not None:
            return Decision(stop=True, reason=reason)
        if trial.epochs_run >= trial.max_epochs:
            return Decision(stop=True, reason="max_epochs")
        return Decision(stop=False, until_epoch=self._next_decision(trial))

    def _next_decision(self, trial: TrialState) -> int:
        assert self.pruner is not None
        return decision_epoch(self.pruner, trial.epochs_run, trial.max_epochs)

    def pruner_code(self, method: str, when: str) -> AbstractContextManager[None]:
        """A user's pruner that raises in ``method``: one line naming it (:func:`plugin_code`)."""
        return plugin_code("pruner", pruner_name(type(self.pruner)), self.pruner, method, when)

    def interrupt_running(self) -> list[int]:
        """A stop signal: running trials become ``interrupted`` (a resume continues them); their ids."""
        stopped = list(self.running)
        for tid in stopped:
            self.trials[tid].move_to(TrialStatus.INTERRUPTED)
            self.trials[tid].reason = "interrupted"
        self.event("sweep_interrupted", detail={"trials": stopped})
        return stopped

    def on_stopped(self, trial_id: int, reason: str | None) -> None:
        """The driver told the executor to stop the trial: record the end now."""
        trial = self.trials[trial_id]
        self._end(trial, stop_status(reason), reason, self._stop_errors.pop(trial_id, None))

    # -- restore: orchestrator.decide.restore rebuilds a controller from stored rows with these ---------
    def reopen(self, stage_spaces: Sequence[SearchSpace]) -> None:
        """Begin the stored stages again with their stored ranges: same seed and plan, same trial ids and configs.

        The events this emits were written the first time, so they are dropped, and nothing is
        queued: the caller queues what the tables say is left.
        """
        self.trials.clear()
        self._stop_errors.clear()
        self.stage_spaces = []
        self._next_id = 0
        for index, space in enumerate(stage_spaces):
            self._begin_stage(index, space)
        self.events.clear()
        self.event_feed.clear()
        self.pending.clear()

    def replay(self, trial_id: int, row: Mapping[str, Any]) -> str | None:
        """Digest a stored metrics row as if it had just been reported: the trial's progress and the pruner."""
        return self._observe(self.trials[trial_id], row)

    def settle(self) -> None:
        """After a rebuild: apply fail-fast, and begin the next stage when the current one has ended."""
        self._check_failures()
        self._maybe_next_stage()

    def restore_trial(self, row: Mapping[str, Any]) -> bool:
        """A stored trials-table row onto its trial; False when the trial's stage has not begun here yet."""
        trial = self.trials.get(row["trial_id"])
        if trial is None:
            return False
        if trial.stage != row["stage"]:
            raise StorageError(f"{TRIALS_PATH}: trial {row['trial_id']} is in stage {row['stage'] + 1} "
                               f"but the stored plan puts it in stage {trial.stage + 1}")
        # The stored config wins (a fused sweep shares shapes within blocks), with each choice's own option types.
        options = {name: dist.options for name, dist in self.space.searched.items() if isinstance(dist, Choice)}
        trial.config = typed_config(row["config"], options)
        trial.status = stored_status(row["status"], TRIALS_PATH)  # as written, not a move
        for name in RESTORED_FIELDS:
            setattr(trial, name, row[name])
        if trial.best_score is None:
            trial.best_score = -math.inf
        return True

    def restore_abort(self, reason: str | None) -> None:
        """The sweep had stopped early (fail-fast): it stays stopped."""
        self.abort_reason = reason

    def forget_progress(self, trial_id: int) -> None:
        """Before replaying its stored epochs: an interrupted trial's progress comes back from its metrics rows."""
        trial = self.trials[trial_id]
        trial.epochs_run, trial.best_score, trial.best_epoch = 0, -math.inf, None
        trial.best_val_loss = trial.best_val_accuracy = None
        trial.train_seconds = 0.0

    def hold_running(self, trial_id: int) -> None:
        """An interrupted trial whose stored epochs already end it: running until ``on_stopped`` closes it."""
        self.trials[trial_id].move_to(TrialStatus.RUNNING)

    def resume_trial(self, trial_id: int, attempt: int) -> None:
        """Back to the queue under a fresh attempt: its files never overwrite the lost attempt's."""
        trial = self.trials[trial_id]
        trial.move_to(TrialStatus.PENDING)
        trial.attempt = attempt
        self.event("trial_resumed", trial_id, detail={"attempt": attempt, "from_epoch": trial.epochs_run})

    def resume_to_stop(self, trial_id: int, attempt: int, reason: str) -> None:
        """Back to the queue to train to its stored epochs again and be stopped there for ``reason``."""
        self.resume_trial(trial_id, attempt)
        self._stop_when_back[trial_id] = reason

    def requeue(self, first: Sequence[int]) -> None:
        """The current stage's queue after a restore: ``first`` (resumed, then waiting trials), then other stages'."""
        others = [tid for tid in self.pending if self.trials[tid].stage != self.stage]
        self.pending.clear()
        self.pending.extend([*first, *others])

    def drain_events(self) -> list[dict[str, Any]]:
        """The events since the last drain, for the writer; the live view's feed keeps them."""
        drained, self.events = self.events, []
        return drained

    def _observe(self, trial: TrialState, row: Mapping[str, Any]) -> str | None:
        epoch = int(row["epoch"])
        if epoch <= trial.epochs_run:  # a retried attempt re-running epochs we have already judged
            return None
        trial.epochs_run = epoch
        trial.train_seconds += float(row.get("epoch_seconds") or 0.0)
        score = float(row["score"]) if row.get("score") is not None else math.nan
        if math.isfinite(score) and score > trial.best_score:
            trial.best_score, trial.best_epoch = score, epoch
            trial.best_val_accuracy = row.get("val_accuracy")
        val_loss = row.get("val_loss")  # the lowest validation loss, whatever the objective
        if val_loss is not None and math.isfinite(val_loss) and (trial.best_val_loss is None
                                                                 or val_loss < trial.best_val_loss):
            trial.best_val_loss = val_loss
        assert self.pruner is not None
        with self.pruner_code("observe", f"at trial {trial.trial_id}'s epoch {epoch}"):
            reason = self.pruner.observe(observation_of(trial.trial_id, row))
        if reason == OBJECTIVE_NAN and trial.trial_id not in self._stop_errors:
            self._stop_errors[trial.trial_id] = objective_nan_error(self.objective, row)
        return reason

    def _retry(self, trial: TrialState, error: str) -> None:
        if error.startswith(START_FAILED):
            # Its worker never started, so the trial never ran there: no attempt of the trial, no retry spent. A
            # worker that keeps failing to start is given up by its backend (MAX_REPLACEMENTS), ending the sweep.
            trial.move_to(TrialStatus.PENDING)
            self.pending.appendleft(trial.trial_id)
            self._started_once.add(trial.trial_id)
            self.event("trial_retried", trial.trial_id, reason="worker_not_started",
                       detail={"attempt": trial.attempt, "from_epoch": trial.epochs_run, "error": error})
            return None
        if trial.attempt >= self.options.max_retries:
            self._end(trial, TrialStatus.FAILED, "executor_lost", error)
            return None
        trial.attempt += 1
        trial.move_to(TrialStatus.PENDING)
        self.pending.appendleft(trial.trial_id)
        self.event(
            "trial_retried",
            trial.trial_id,
            reason="executor_lost",
            detail={"attempt": trial.attempt, "from_epoch": trial.epochs_run, "error": error},
        )
        return None

    def _end(self, trial: TrialState, status: TrialStatus, reason: str | None, error: str | None) -> None:
        trial.move_to(status)
        trial.reason, trial.error, trial.finished = reason, error, now_ms()
        self.event(
            f"trial_{status}",
            trial.trial_id,
            reason=reason,
            detail={
                "epochs": trial.epochs_run,
                "best_score": trial.best_score if math.isfinite(trial.best_score) else None,
            },
        )
        if self.pruner is not None:
            self.pruner.forget(trial.trial_id)
        self._check_failures()
        self._maybe_next_stage()

    def _check_failures(self) -> None:
        if self._any_success or self.abort_reason:
            return  # fail-fast fires once, and only before the first success
        statuses = Counter(t.status for t in self.trials.values())
        succeeded = sum(statuses[s] for s in SUCCEEDED)
        if succeeded > 0:
            self._any_success = True
            return
        failed = statuses[TrialStatus.FAILED]
        # Fewer trials than fail_fast that all failed leave nothing to rank either: the sweep stops the same way.
        # (Not when some were interrupted or wait to run: a resume goes on with those.)
        all_failed = 0 < failed == len(self.trials)
        if failed >= self.options.fail_fast or all_failed:
            errors = Counter(
                exception_line(t.error) if t.error else (t.reason or "?")
                for t in self.trials.values()
                if t.status == TrialStatus.FAILED
            )
            common, count = errors.most_common(1)[0]
            which = f"all {failed} trials" if all_failed else f"the first {failed} trials all"
            self.abort_reason = f"{which} failed; most common error ({count}x): {common}"
            self.event("sweep_aborted", reason="failures", detail={"message": self.abort_reason})

    # -- results ---------------------------------------------------------------------------
    def best(self) -> TrialState | None:
        done = [t for t in self.trials.values() if math.isfinite(t.best_score)]
        ended = completed_stages((t.stage, t.status) for t in self.trials.values())
        return max(done, key=lambda t: best_trial_rank(t.max_epochs, t.best_score, t.stage, t.stage in ended),
                   default=None)

    def final_edge_warnings(self) -> list[str]:
        best = self.best()
        if best is None:
            return []
        space = explored_space(self.stage_spaces, self.stage_spaces[best.stage])
        notices = edge_warnings(space, best.config)
        out = []
        for n in notices:
            dist = space[n.param]
            message = (f"stage {best.stage + 1}'s best trial {best.trial_id}: {n.param} = {_g(best.config[n.param])} "
                       f"sits at the {n.side} edge of [{_g(dist.low)}, {_g(dist.high)}]"
                       + (" (a hard limit)" if n.hard_limit else ""))
            out.append(message)
            self.event("edge_warning", best.trial_id, reason=message, detail=notice_detail(n))
        return out

    def event(
        self,
        kind: str,
        trial_id: int | None = None,
        *,
        stage: int | None = None,
        reason: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        if stage is None:
            stage = self.trials[trial_id].stage if trial_id is not None else self.stage
        self.events.append(
            {
                "time": now_ms(),
                "kind": kind,
                "trial_id": trial_id,
                "stage": stage,
                "reason": reason,
                "detail": dict(detail or {}),
            }
        )
        self.events_emitted += 1
        self.event_feed.append((self.events_emitted, self.events[-1]))


def stop_status(reason: str | None) -> TrialStatus:
    """How a stop decision ends a trial: its last epoch completes it, a NaN objective fails it (the task's
    metric is broken, not the config: it must neither rank nor count as a success), any other reason prunes it."""
    if reason == "max_epochs":
        return TrialStatus.COMPLETED
    return TrialStatus.FAILED if reason == OBJECTIVE_NAN else TrialStatus.PRUNED


def objective_nan_error(objective: tuple[str, str] | None, row: Mapping[str, Any]) -> str:
    """The error of a trial stopped for ``objective_nan``: the epoch's numbers, then one line naming the metric.

    The last line is the same for every such trial, so fail-fast and the failure summary group them as one error.
    """
    name = objective[0] if objective and objective[0] else "the objective"
    score = float(row["score"]) if row.get("score") is not None else math.nan
    value = "NaN" if math.isnan(score) else "infinite"
    facts = (f"epoch {int(row['epoch'])}: {name} {value} while train_loss {_g(float(row['train_loss']))} "
             f"and val_loss {_g(float(row['val_loss']))} are finite")
    # A row without an accuracy is a regression's (or a custom kind's): no class goes unpredicted there, but an R²
    # over validation targets that do not vary (a split of one row) divides by zero
    cause = ("a precision or F1 over a class never predicted?" if row.get("val_accuracy") is not None
             else "an R² or a correlation over validation targets that do not vary, as one row's?")
    return (f"{facts}\nobjective {name} was {value} while the losses were finite: the task's metrics returns "
            f"{value} ({cause}); make it return a number every epoch")


def observation_of(trial_id: int, row: Mapping[str, Any]) -> Observation:
    """A metrics row (reported, or read back from the tables on resume) as the pruner sees it."""

    def number(key: str) -> float:
        value = row.get(key)
        return math.nan if value is None else float(value)

    return Observation(
        trial_id=trial_id,
        epoch=int(row["epoch"]),
        score=number("score"),
        train_loss=number("train_loss"),
        val_loss=number("val_loss"),
        val_accuracy=row.get("val_accuracy"),
        num_classes=row.get("num_classes"),
        baseline_val_loss=row.get("baseline_val_loss"),
    )


def _g(value: Any) -> str:
    return shown_value(value, 4)


def edge_event(controller: Controller, notice: Any) -> tuple[str, int | None, str]:
    """(event kind, the trial whose value sat on the edge, one line naming stage, value, old and new range)."""
    stage = controller.stage
    scored = controller.judged_trials(stage)  # the trials the stage policy ranked, not a pruned or failed one
    trial = max((t for t in scored if t.config.get(notice.param) == notice.value), key=lambda t: t.best_score,
                default=None)
    (lo, hi), (new_lo, new_hi) = notice.old_range, notice.new_range
    moved = new_lo < lo if notice.side == "low" else new_hi > hi
    trial_id = trial.trial_id if trial else None
    who = f"stage {stage + 1}'s best trial" + (f" {trial_id}" if trial else "")
    if trial and trial.best_score < max(t.best_score for t in scored):  # a conditional parameter: its best is not
        who = f"the best of stage {stage + 1}'s trials that use {notice.param}, trial {trial_id}"  # the stage's best
    where = f"{who}: {notice.param} = {_g(notice.value)} at the {notice.side} edge of [{_g(lo)}, {_g(hi)}]"
    after = f"stage {stage + 2} samples [{_g(new_lo)}, {_g(new_hi)}]"
    if moved:
        return "range_extended", trial_id, f"{where}: {after}"
    if notice.hard_limit:
        return "edge_at_hard_limit", trial_id, f"{where}, a hard limit: {after}"
    return "edge_not_extended", trial_id, f"{where}: not extended (extend_edges = false): {after}"


def notice_detail(notice: Any) -> dict[str, Any]:
    return (
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(notice).items()}
        if hasattr(notice, "__dict__")
        else {"notice": repr(notice)}
    )
