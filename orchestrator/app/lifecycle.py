"""One sweep's life, shared by ``run_sweep`` and ``resume_sweep``: settings and plan, the controller
built from them, then :func:`drive_and_finish` (the trials on Ray or in child processes, the last
writes, ensembles, the result). Run and resume differ only in how they get the controller and the
log: fresh, or restored from the tables."""

from __future__ import annotations

import inspect
import logging
import math
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from orchestrator.app.baseline import nothing_learned
from orchestrator.app.prefetch import DataPrefetch, chain_ticks
from orchestrator.app.tables import SweepTables, load
from orchestrator.decide import interrupt
from orchestrator.decide.backend import Backend
from orchestrator.decide.controller import Controller, ControllerOptions, decision_epoch
from orchestrator.decide.driver import drive
from orchestrator.decide.fusing import PROBED_CONFIGS, FusePlan, setup_fusing
from orchestrator.decide.pruning import (
    PRUNERS,
    UNRECORDED,
    NoPruner,
    Pruner,
    PrunerChoice,
    StageBudget,
    pruner_factory,
    pruner_name,
    recorded_options,
)
from orchestrator.decide.status import SUCCEEDED, TrialStatus
from orchestrator.decide.sweeplog import SweepLog
from orchestrator.ensemble.ensemble_run import SoupResult, build_and_write
from orchestrator.ensemble.ensembles import CandidateKey, Objective
from orchestrator.ensemble.records import EnsembleRecord
from orchestrator.errors import CaviarError, ConfigError, SpaceError, SweepInterrupted
from orchestrator.search.sampler import SAMPLERS, SamplerChoice, sampler_for, sampler_name
from orchestrator.search.space import SearchSpace
from orchestrator.search.stage_policy import STAGE_POLICIES, StagePolicyChoice, stage_policy_for, stage_policy_name
from orchestrator.search.stages import Stage, default_plan, parse_plan, stage_grace_epochs
from orchestrator.spec.builtin_values import check_builtin_values, with_builtin_limits
from orchestrator.spec.settings import RunSettings, ray_joined, read_toml
from orchestrator.spec.task import Task, fusing_limits
from orchestrator.store import schema
from orchestrator.store.lease import LEASE_PATH
from orchestrator.store.storage import Storage, redact_uri

log = logging.getLogger("caviar")


@dataclass
class SweepResult:
    name: str
    path: str  # the sweep directory: an absolute local path (a notebook may change its directory) or the URI
    best_trial_id: int | None
    best_score: float | None
    best_config: dict[str, Any] | None
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    aborted: str | None = None
    ensemble: Any = None  # the ensemble chosen on validation (ensemble_run.EnsembleRecord); None if not built
    note: str | None = None  # e.g. a resume that found the sweep finished and changed nothing

    def tables(self) -> SweepTables:
        return load(self.path)


@dataclass(frozen=True)
class PlugIns:
    """Pruner, sampler and stage policy objects a caller passed instead of names (the settings keep their names)."""

    pruner: PrunerChoice | None = None
    sampler: SamplerChoice | None = None
    stage_policy: StagePolicyChoice | None = None


NO_PLUGINS = PlugIns()
# Each plug-in setting: its registry (the names it knows) and how the sweep row names an object.
PLUGIN_KINDS: dict[str, tuple[Mapping[str, Any], Callable[[Any], str]]] = {
    "pruner": (PRUNERS, pruner_name),
    "sampler": (SAMPLERS, sampler_name),
    "stage_policy": (STAGE_POLICIES, stage_policy_name),
}


def choose_plugins(*layers: Mapping[str, Any]) -> PlugIns:
    """The objects among ``pruner=``, ``sampler=`` and ``stage_policy=`` values; a later layer wins."""
    found: dict[str, Any] = {}
    for values in layers:
        for key in PLUGIN_KINDS:
            if key in values and values[key] is not None:
                found[key] = None if isinstance(values[key], str) else values[key]
    return PlugIns(**found)


def _named(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings values with plug-in objects replaced by the names the sweep row records. A layer that chooses a pruner
    also chooses its options: a configured one's own, else none (an earlier layer's options were for its pruner)."""
    out = dict(values)
    pruner = out.get("pruner")
    if pruner is not None and out.get("pruner_options") is None:
        out["pruner_options"] = recorded_options(pruner) if isinstance(pruner, Pruner) else {}
    for key, (_, name_of) in PLUGIN_KINDS.items():
        if out.get(key) is not None and not isinstance(out[key], str):
            out[key] = name_of(out[key])
    return out


def build_settings(
    task: Task, config_file: str | None, overrides: Mapping[str, Any]
) -> tuple[RunSettings, SearchSpace]:
    """Task defaults, then the TOML file, then explicit overrides; the space with TOML ranges applied."""
    settings = RunSettings().merged(_named(task.settings))
    space = task.space
    layers: list[Mapping[str, Any]] = [task.settings]
    if config_file:
        run_part, space_part = read_toml(config_file)
        settings = settings.merged(_named(run_part))
        try:
            before, space = space, space.with_overrides(space_part)
        except SpaceError as exc:  # the file's range: named with it
            raise SpaceError(f"config {config_file!r}: [space] {exc}") from None
        warn_conditions_emptied(before, space, config_file)
        layers.append(run_part)
    settings = settings.merged(_named(overrides)).validate()
    settings = check_plan_agrees(settings, [*layers, overrides])
    check_precision_reaches_the_loop(task, settings.precision)
    own_optimizer = getattr(getattr(task, "namespace", None), "build_optimizer", None) is not None
    check_builtin_values(space, own_optimizer=own_optimizer)
    return settings, with_builtin_limits(space, own_optimizer=own_optimizer)


def warn_conditions_emptied(before: SearchSpace, after: SearchSpace, config_file: str) -> None:
    """A parent's options changed by the TOML file can leave none its child's condition names: the child is then never
    drawn. Said, not refused: dropping those options may be the point (no beta1 without adam)."""
    for name, condition in after.conditional.items():
        for parent, values in condition.items():
            if not values and before.conditional.get(name, {}).get(parent):
                log.warning(
                    "%s: parameter '%s' is never drawn: its condition %s in %s keeps none of %s's options there; give "
                    "'%s' a 'when' of its own if it should be", config_file, name, parent,
                    list(before.conditional[name][parent]), parent, name)


def check_precision_reaches_the_loop(task: Task, precision: str) -> None:
    """Mixed precision autocasts the forward passes of caviar's own loop; a task's own ``train_epoch`` runs its
    forward and backward passes itself (with no loss scaler for fp16), so the setting would be silently ignored."""
    if precision != "fp32" and task.get("train_epoch") is not None:
        raise ConfigError(f"setting 'precision': {precision} autocasts caviar's own training loop, and the task's "
                          "train_epoch runs its own forward passes, which it would not reach; leave precision fp32 "
                          f"and wrap them in torch.autocast(...) inside train_epoch")


def check_plan_agrees(settings: RunSettings, layers: Sequence[Mapping[str, Any]]) -> RunSettings:
    """A plan fixes the trials, the epochs and the stages: one of those given beside it (in the same place or a
    later one: the task, the TOML file, the command line) that says otherwise is refused, not silently dropped.
    Returns ``settings`` holding the plan's numbers, so the sweep row records what ran, not an earlier place's."""

    def layer_of(key: str) -> int:
        return max((i for i, layer in enumerate(layers) if layer.get(key) is not None), default=-1)

    if settings.plan is None:
        return settings
    plan = parse_plan(settings.plan)
    implied = {"trials": sum(s.trials for s in plan), "epochs": max(s.epochs for s in plan), "stages": len(plan)}
    for key, value in implied.items():
        given = getattr(settings, key)
        if layer_of(key) >= layer_of("plan") and given is not None and given != value:
            raise ConfigError(f"setting '{key}': {given}, but plan {settings.plan!r} gives {value}; give one of "
                              "the two (the plan decides trials, epochs and stages)")
    return replace(settings, **implied)


def plan_for(settings: RunSettings) -> list[Stage]:
    plan = (
        parse_plan(settings.plan) if settings.plan else default_plan(settings.trials, settings.epochs, settings.stages)
    )
    if settings.seed_copies:  # the best config again, from new seeds, as long as the last stage trained
        plan.append(Stage(settings.seed_copies, plan[-1].epochs, reseed=True))
    return plan


def _chosen(kind: str, name: str, given: Any) -> Any:
    """The object passed for ``kind`` if it is the one the settings name; a registered name; else one line."""
    registry, name_of = PLUGIN_KINDS[kind]
    if given is not None and name_of(given) == name:
        return given
    if name in registry:
        return name
    raise ConfigError(f"setting '{kind}': this sweep uses the {kind} {name!r}, which is not registered; pass the "
                      f"same {kind} object ({kind}=...) to run_sweep or resume_sweep")


def controller_for(space: SearchSpace, settings: RunSettings, plugins: PlugIns = NO_PLUGINS) -> Controller:
    plan = plan_for(settings)
    # Later stages never prune before the earlier one's epochs; each stage carries its own grace.
    plan = [replace(stage, grace_epochs=grace) for stage, grace in
            zip(plan, stage_grace_epochs(plan, settings.grace_epochs), strict=True)]
    build_pruner = _pruner_builder(settings, plugins.pruner)

    def pruner_for(stage: Stage) -> Pruner:
        budget = StageBudget(max_epochs=stage.epochs, grace_epochs=stage.grace_epochs or settings.grace_epochs,
                             reduction_factor=settings.reduction_factor, max_loss_ratio=settings.max_loss_ratio)
        if stage.epochs == 1 or stage.reseed:  # nothing to compare at one epoch; seed copies are all kept
            return NoPruner.for_stage(budget)
        return build_pruner(budget)

    check_pruners(plan, pruner_for, settings)
    options = ControllerOptions(
        seed=settings.seed,
        sampler=sampler_for(_chosen("sampler", settings.sampler, plugins.sampler)),
        max_retries=settings.max_retries,
        fail_fast=settings.fail_fast,
        stage_policy=stage_policy_for(_chosen("stage_policy", settings.stage_policy, plugins.stage_policy),
                                      top_fraction=settings.top_fraction, extend_edges=settings.extend_edges,
                                      promote_fraction=settings.promote_fraction),
    )
    return Controller(space, plan, pruner_for, options)


def _pruner_builder(settings: RunSettings, given: Any) -> Callable[[StageBudget], Pruner]:
    """The pruner of each stage, with the options the sweep row records (``pruner_options``), so that a resume with or
    without the object passed to the run prunes as the run did."""
    choice = _chosen("pruner", settings.pruner, given)
    options = settings.pruner_options
    if isinstance(choice, Pruner):  # no options recorded: a sweep from before pruner_options, or none given
        made_with = recorded_options(choice)
        if options and made_with != options:
            raise ConfigError(f"setting 'pruner_options': {options}, but the pruner passed was made with {made_with}; "
                              "give its options in one place")
        return pruner_factory(choice)
    if options.get(UNRECORDED):
        raise ConfigError(f"setting 'pruner': this sweep's {settings.pruner!r} pruner was passed as an object with "
                          f"options its sweep row cannot hold ({options[UNRECORDED]}); pass the same pruner object "
                          "(pruner=...) to resume_sweep")
    return pruner_factory(choice, options)


def check_pruners(plan: Sequence[Stage], pruner_for: Callable[[Stage], Pruner], settings: RunSettings) -> None:
    """Every stage's pruner built once before anything runs: a plug-in's constructor that fails for a later stage's
    budget failed there, after the earlier stages had trained; one line names it here instead. A pruner's own
    ``max_loss_ratio`` other than the setting is refused: the workers stop a diverging trial at the setting's."""
    for number, stage in enumerate(plan, schema.FIRST_STAGE):
        try:
            pruner = pruner_for(stage)
        except CaviarError:
            raise
        except Exception as exc:
            raise ConfigError(f"pruner {settings.pruner!r}: building it for stage {number} ({stage.epochs} epochs) "
                              f"raised {type(exc).__name__}: {exc}") from exc
        decision_epoch(pruner, 0, stage.epochs)  # a hang at its first trial's start, refused before anything runs
        if not takes_loss_ratio(type(pruner)):  # above the setting it never acts: the workers stop such trials first
            if pruner.max_loss_ratio < settings.max_loss_ratio:
                raise ConfigError(f"pruner {settings.pruner!r}: its constructor takes no max_loss_ratio, so it stays "
                                  f"{pruner.max_loss_ratio:g} and stops trials the setting 'max_loss_ratio' "
                                  f"({settings.max_loss_ratio:g}) lets train; take max_loss_ratio in its __init__ and "
                                  "pass it on to Pruner.__init__")
        elif pruner.max_loss_ratio != settings.max_loss_ratio:
            raise ConfigError(f"pruner {settings.pruner!r}: its max_loss_ratio {pruner.max_loss_ratio:g} is not the "
                              f"setting 'max_loss_ratio' ({settings.max_loss_ratio:g}), at which the workers stop a "
                              f"diverging trial; set max_loss_ratio={pruner.max_loss_ratio:g} in the settings "
                              "(run_sweep(max_loss_ratio=...)) and leave it out of the pruner")


def takes_loss_ratio(cls: type[Pruner]) -> bool:
    return "max_loss_ratio" in inspect.signature(cls).parameters


def drive_and_finish(
    task: Task,
    settings: RunSettings,
    root: Storage,
    sweep: Storage,
    name: str,
    controller: Controller,
    log: SweepLog,
    *,
    resumed: bool,
    first_writes: Callable[[], None],
    on_tick: Callable[[Controller], None] | None = None,
    splits: Any = None,
) -> SweepResult:
    """The trials on their backend until the controller is done, then :func:`finish_sweep`; the lease goes at the end.

    ``first_writes`` puts the start on disk before any trial runs (a new sweep's row and task copy, or a
    resumed sweep's restored state). Ctrl-C or SIGTERM ends in a resumable ``SweepInterrupted``; a refusal
    before any trial ran removes a new sweep's folder, never a resumed one's. ``splits``: the data the
    contract check loaded, sent to the actors so they need not load it again (None: each actor loads it).
    """
    try:
        return _drive_and_finish(task, settings, root, sweep, name, controller, log, resumed=resumed,
                                 first_writes=first_writes, on_tick=on_tick, splits=splits)
    finally:  # whatever ended the run, no other thread of this process waits on its lease any more
        if log.lease is not None:
            log.lease.let_go_here()


def _drive_and_finish(task: Task, settings: RunSettings, root: Storage, sweep: Storage, name: str,
                      controller: Controller, log: SweepLog, *, resumed: bool, first_writes: Callable[[], None],
                      on_tick: Callable[[Controller], None] | None, splits: Any) -> SweepResult:
    # The soup at the end needs the data here: the contract check's, else loaded while the trials train.
    prefetch = DataPrefetch(task) if settings.ensemble and splits is None else None
    with interrupt.stop_on_signals():
        try:
            try:
                first_writes()
                if not controller.finished:
                    ticks = chain_ticks(prefetch and prefetch.on_tick, on_tick, interrupt.keep_handlers)
                    _train(task, settings, root, sweep, name, controller, log, ticks, resumed, splits)
            except CaviarError:
                if not resumed:
                    forget_refused_sweep(sweep, controller)
                raise
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: a resumable sweep, said so
            raise interrupt.write_interrupted(stop, controller, log, redact_uri(sweep.uri)) from None
        except BaseException:
            leave_resumable(sweep, controller, log)
            raise
    return finish_sweep(task, settings, sweep, name, controller, log, prefetch=prefetch, splits=splits)


def leave_resumable(sweep: Storage, controller: Controller, log: SweepLog) -> None:
    """After an error ended the trials: what is known written and the lease let go, as a stop signal leaves it.

    The caller's process goes on (a notebook, a script that catches the error): a lease its live process still held
    refused ``resume_sweep`` and ``overwrite`` of the sweep there until the process ended.
    """
    try:
        if sweep.exists(schema.SWEEP_PATH):  # not a refused start whose folder went (forget_refused_sweep)
            interrupt.mark_interrupted(controller)
            log.flush(controller, force=True)
    except Exception as exc:  # the error being raised says more than this one
        logging.getLogger("caviar").warning("caviar: the sweep's last writes after the error failed too: %s: %s",
                                            type(exc).__name__, exc)
    finally:
        if log.lease is not None and sweep.exists(LEASE_PATH):
            log.lease.release()


def _train(task: Task, settings: RunSettings, root: Storage, sweep: Storage, name: str, controller: Controller,
           log: SweepLog, on_tick: Callable[[Controller], None] | None, resumed: bool, splits: Any = None) -> None:
    """The trials on Ray, or in child processes (:meth:`RunSettings.resolved_executor`); the fused set-up's
    decision applied here, by the controller's owner.

    Only a sweep whose trials all ended hands its actors on (``close(finished=True)``); a failure or Ctrl-C
    ends them.
    """
    executor, why = settings.executor_and_why(ray_running=ray_joined())
    controller.event("executor", reason=why, detail={"executor": executor})  # where this run's trials train
    pending_configs = [controller.trials[t].config for t in list(controller.pending)[:PROBED_CONFIGS]]
    stage_trials = [stage.trials for stage in controller.plan]
    if executor == "processes":
        backend, fusing = open_process_backend(task, settings, root, name, stage_trials, pending_configs, splits)
    else:
        from cluster.runner import open_backend  # Ray loads here, never at import time
        from worker.check.machine import check_local_devices

        if not ray_joined():  # a Ray this process joined itself may span machines: its nodes decide
            check_local_devices(settings)

        backend, fusing = open_backend(task, settings, root, name, sweep, stage_trials, pending_configs,
                                       resuming=resumed, splits=splits)
    finished = False
    try:
        if fusing is not None:
            controller.apply_fusing(fusing)
        drive(controller, backend, log, on_tick=on_tick)
        finished = True
    finally:
        backend.close(finished=finished)


def open_process_backend(task: Task, settings: RunSettings, root: Storage, name: str, stage_trials: Sequence[int],
                         pending_configs: Sequence[Mapping[str, Any]], splits: Any) -> tuple[Backend, FusePlan | None]:
    """Trials in child processes of this one (``executor="processes"``): no Ray, this machine's CPUs; fused
    arrays there when ``fuse`` asks and the model allows (:func:`orchestrator.decide.fusing.setup_fusing`)."""
    from worker.pool.processes import ProcessBackend, local_cpus

    slots = settings.slots or max(1, local_cpus() // max(1, int(settings.cpus_per_trial)))
    options = settings.worker_options("cpu")

    def plain() -> Backend:
        return ProcessBackend(task.ref, root.location, name, slots, options, splits)

    if settings.fuse == "off":  # the fused arrays' code is not even imported
        return plain(), None
    from worker.pool.fused_processes import FusedProcessBackend

    blocker, per_member = fusing_limits(task, settings.precision)
    return setup_fusing(
        settings.fuse, settings.array_size, blocker, per_member, stage_trials, pending_configs, slots,
        open_fused=lambda k: FusedProcessBackend(task.ref, root.location, name, slots, options, array_size=k,
                                                 per_member=per_member, splits=splits),
        open_plain=plain,
    )


def forget_refused_sweep(sweep: Storage, controller: Controller) -> None:
    """A start refused before any trial ran leaves nothing behind: the same name works again."""
    untouched = all(t.status == TrialStatus.PENDING and t.attempt == 0 for t in controller.trials.values())
    if untouched or not sweep.list_files("metrics"):
        sweep.delete_dir("")


def finish_sweep(
    task: Task,
    settings: RunSettings,
    sweep: Storage,
    name: str,
    controller: Controller,
    log: SweepLog,
    prefetch: DataPrefetch | None = None,
    splits: Any = None,
) -> SweepResult:
    """After the trials: edge warnings, the last writes, ensembles; the result (shared by run and resume).

    A stop before the last flush is a stopped sweep (resume it); after it, the trials are whole and only the
    ensembles are missing. Either way it is said, with the command that goes on.
    """
    warnings = controller.final_edge_warnings()
    ensemble, flushed = None, False
    try:
        with interrupt.stop_on_signals():
            nothing = nothing_learned(controller.trials.values(), schema.read_dataset_row(sweep),
                                      val_loss_is_log_loss=task is not None and task.get("loss_fn") is None)
            if nothing:
                controller.event("no_trial_learned", reason=nothing)
                warnings.append(nothing)
            log.flush(controller, force=True)
            flushed = True
            log.compact_events()
            # From stored predictions; a failure is a logged warning, never a lost sweep. A table that exists is
            # rebuilt even with ensembles off: one built on a stopped sweep (caviar ensemble) would otherwise stand
            # as the resumed sweep's answer, every trial trained since left out.
            scored = any(t.status in SUCCEEDED for t in controller.trials.values())  # none: nothing to average
            if scored and (settings.ensemble or sweep.exists(schema.ENSEMBLES_PATH)):
                ensemble = build_ensembles(sweep, task, device=settings.device,
                                           load_data=prefetch and prefetch.result, splits=splits)
    except KeyboardInterrupt as stop:
        if not flushed:
            raise interrupt.write_interrupted(stop, controller, log, redact_uri(sweep.uri)) from None
        if log.lease is not None:  # the tables are whole: let the sweep go, and say how to finish
            log.lease.release()
        signum = stop.signum if isinstance(stop, SweepInterrupted) else signal.SIGINT
        raise SweepInterrupted(signum, redact_uri(sweep.uri), during="ensembles") from None
    if log.lease is not None:
        log.lease.release()  # the sweep is whole: a later resume may take it at once
    return result_of(controller, name, sweep.location, warnings, ensemble=ensemble)


def result_of(controller: Controller, name: str, uri: str, warnings: list[str], **extra: Any) -> SweepResult:
    """The sweep's result from its controller: best trial, counts by status, and what ``extra`` adds."""
    best = controller.best()
    counts: dict[str, int] = {}
    for trial in controller.trials.values():
        status = str(trial.status)  # plain strings: {"completed": 3} reads as it prints
        counts[status] = counts.get(status, 0) + 1
    return SweepResult(
        name,
        uri,
        best.trial_id if best else None,
        best.best_score if best and math.isfinite(best.best_score) else None,
        dict(best.config) if best else None,
        counts,
        warnings,
        controller.abort_reason,
        **extra,
    )


def build_ensembles(storage: Storage, task: Any, device: str = "auto",
                load_data: Callable[[], Any] | None = None, splits: Any = None) -> EnsembleRecord | None:
    """What a sweep's end builds: every method, the soup included; the chosen row.

    The sweep's objective chooses (a task metric or a custom ``loss_fn``'s ``val_loss`` runs the
    task's code on the averaged outputs, ``worker.load.objective``). A sweep whose trials stored no
    usable predictions (all failed, a regression task) gets a warning, not an error: its trials are
    still there to read. So does a soup that fails, and an objective that raises on an ensemble.
    ``load_data`` stands in for the task's own (a load that ran during the sweep); ``splits`` (the data the
    contract check prepared) spares the soup any load.
    """
    if getattr(task, "kind", None) == "custom":  # its trials store no predictions: there is nothing to average
        log.warning('ensembles not built: kind = "custom" outputs are the task\'s own, and caviar averages only '
                    "class probabilities or regression outputs; the best checkpoint is the answer "
                    '(load_ensemble(name="best") loads it)')
        return None
    from worker.load.objective import ensemble_objective
    from worker.load.soup import soup_builder  # torch, loaded only when a soup is built

    build_soup = soup_builder(storage, task, device=device, load_data=load_data, splits=splits)

    def guarded_soup(ranked: Sequence[CandidateKey], metric: str, objective: Objective | None,
                     eps: float) -> SoupResult | None:
        try:  # the soup runs user code (load_data, build_model) in this process: its failure costs only the soup
            return build_soup(ranked, metric, objective, eps)
        except Exception as exc:
            log.warning("ensembles: soup not built: %s: %s", type(exc).__name__, exc)
            return None

    try:
        records = build_and_write(storage, soup=guarded_soup,  # ranked as the sweep's objective says (default_metric)
                                  objective_for=partial(ensemble_objective, task))
    except CaviarError as exc:
        log.warning("ensembles not built: %s", exc)
        return None
    return next(r for r in records if r.chosen)
