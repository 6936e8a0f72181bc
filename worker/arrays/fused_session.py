"""A worker that trains its trials as fused arrays: many assignments per call, one Report per trial.

It is a :class:`~worker.train.session.WorkerSession` (same task, data, storage and options, loaded
once) whose trials live in :class:`~worker.arrays.fused.FusedArray` s. One call, :meth:`FusedSession.run`,
carries everything the master has decided since the last one (stops, new trials, new target
epochs) and trains until at least one trial reaches its target or ends, so the master hears
about each trial as soon as a decision is due. Trials waiting for a decision stay in their
array at no cost; a stopped trial is persisted and compacted out; a new trial joins an array
that fits it (or starts one). Trials that cannot be fused (a task with its own
``train_epoch`` or ``build_optimizer``) run as plain :class:`~worker.train.trainer.TrialRun` s.

Extra options (besides :class:`~worker.train.session.WorkerOptions`): ``array_size`` (most trials in
one array, default 32) and ``engine`` (``auto``, ``bmm`` or ``vmap``).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from orchestrator.decide.backend import Assignment, Report
from orchestrator.decide.fusing import choose_array_size
from orchestrator.decide.pruning import EARLY_STOPPED, divergence_reason, plateau_reason
from orchestrator.decide.status import TrialStatus
from orchestrator.errors import NotFusable
from worker.arrays.fused import FusedArray, FusedMember, contract_blocker
from worker.data.splits import Splits
from worker.train.recorder import Ending, TrialRecorder, load_resume_state
from worker.train.session import WorkerSession
from worker.train.trainer import TrialSpec

Stop = tuple[int, str, str]  # (trial_id, status, reason)


class _Ended(NamedTuple):
    """A member on its way out: its end's first half (``None`` if that failed) and the report it will get."""

    tid: int
    array: FusedArray
    recorder: TrialRecorder
    ending: Ending | None
    status: str
    reason: str
    error: str | None


class FusedSession(WorkerSession):
    def __init__(self, task_ref: str, storage_uri: str, sweep: str, options: Mapping[str, Any] | None = None,
                 splits: Splits | None = None):
        super().__init__(task_ref, storage_uri, sweep, options, splits)
        extra = dict(options or {})
        self.array_size = int(extra.get("array_size", 32))
        self.engine = str(extra.get("engine", "auto"))
        self.arrays: list[FusedArray] = []
        self.array_of: dict[int, FusedArray] = {}
        self.recorders: dict[int, TrialRecorder] = {}
        self.targets: dict[int, int] = {}
        self.unreported: dict[int, list[dict[str, Any]]] = {}

    # -- the one call ----------------------------------------------------------------------
    def run(self, starts: Sequence[Assignment] = (), targets: Mapping[int, int] | None = None,
            stops: Sequence[Stop] = ()) -> list[Report]:
        """Apply the master's decisions, then train until some trial is due for the next one."""
        ended = {r.trial_id: r for r in self._end_members([(tid, status, reason, None)
                                                            for tid, status, reason in stops if tid in self.array_of])}
        reports = [ended[tid] if tid in ended else super(FusedSession, self).stop(tid, status, reason)
                   for tid, status, reason in stops]
        for tid, until in (targets or {}).items():
            if tid in self.array_of:
                self.targets[tid] = until
            elif tid in self.runs:
                reports.append(self.advance(tid, until))  # a plain trial: trained as WorkerSession does
        for assignment in starts:
            report = self._start(assignment)
            if report is not None:
                reports.append(report)
        return reports + self._train_until_due()

    def run_call(self, starts: Sequence[Assignment] = (), targets: Mapping[int, int] | None = None,
                 stops: Sequence[Stop] = ()) -> tuple[list[Report], bool]:
        """What a host answers the master for one call: :meth:`run`'s reports, and whether trials still wait."""
        reports = self.run(starts, targets, stops)
        return reports, bool(self.waiting)

    def set_array_size(self, size: int) -> None:
        """The probe's choice of K, before the first trial."""
        self.array_size = int(size)

    @property
    def waiting(self) -> list[int]:
        """Trials with epochs left before their target (the caller should call ``run`` again)."""
        return [tid for tid, until in self.targets.items() if self._behind(tid, until)]

    def _behind(self, tid: int, until: int) -> bool:
        member = self.array_of[tid].member(tid)
        return member.epoch < min(until, member.spec.max_epochs)

    # -- joining and leaving ---------------------------------------------------------------
    def _start(self, a: Assignment) -> Report | None:
        try:
            if getattr(self.options, "precision", "fp32") != "fp32":
                raise NotFusable("precision: fused arrays train in fp32")
            spec = TrialSpec(a.trial_id, a.stage, dict(a.config), a.seed, a.max_epochs, a.attempt)
            resume = load_resume_state(self.storage, a.trial_id) if a.resume else None
            array = self._join(spec, {a.trial_id: resume} if resume is not None else None)
        except NotFusable:
            return self.start(a)  # WorkerSession's plain trial
        except Exception:
            return Report(a.trial_id, ended=True, status=TrialStatus.FAILED, reason="error",
                          error=traceback.format_exc(), node=self.node)
        recorder = self.recorders[a.trial_id] = self._recorder(a)
        if a.resume:  # the checkpoints earlier attempts kept stay in the index, as a plain trial's do
            try:
                recorder.adopt(array.member(a.trial_id).epoch)
            except Exception:  # an index it cannot read: the trial fails, as a plain one does, and leaves the array
                del self.recorders[a.trial_id]
                array.drop([a.trial_id])
                if not len(array) and array in self.arrays:
                    self.arrays.remove(array)
                return Report(a.trial_id, ended=True, status=TrialStatus.FAILED, reason="error",
                              error=traceback.format_exc(), node=self.node)
        if resume is not None:
            recorder.take_curve(resume)
        self.array_of[a.trial_id] = array
        self.targets[a.trial_id] = a.until_epoch
        self.unreported[a.trial_id] = []
        return None

    def _recorder(self, a: Assignment) -> TrialRecorder:
        o = self.options
        extra = {"prediction_dtype": o.prediction_dtype} if hasattr(o, "prediction_dtype") else {}
        return TrialRecorder(self.storage, a.trial_id, a.attempt, keep_best=o.keep_best, keep_last=o.keep_last,
                             checkpoint_seconds=o.checkpoint_seconds, **extra)

    def _join(self, spec: TrialSpec, resume: Mapping[int, Mapping[str, Any]] | None) -> FusedArray:
        """The first array with room whose shape, batch size and optimizer fit; else a new array."""
        for array in self.arrays:
            if len(array) >= self.array_size:
                continue
            try:
                array.add([spec], resume)
                return array
            except NotFusable:
                continue
        array = FusedArray(self.task, self.splits, [spec], self.device, engine=self.engine, resume_states=resume)
        self.arrays.append(array)
        return array

    def stop(self, trial_id: int, status: str, reason: str) -> Report:
        if trial_id in self.array_of:
            return self._end_members([(trial_id, status, reason, None)])[0]
        return super().stop(trial_id, status, reason)

    def _end_members(self, ends: Sequence[tuple[int, str, str, str | None]]) -> list[Report]:
        """Persist the ended members (``(trial id, status, reason, error)``) and compact them out, in that order.

        Their kept checkpoints run on val and test in one stacked pass per array
        (:meth:`FusedArray.checkpoint_results_many`) instead of one plain model per checkpoint: when a stage's
        arrays end together, that pass was a fifth of a worker's time. Should it fail, each member runs its own
        as before, so a failure stays the member's.
        """
        endings: list[_Ended] = []
        for tid, status, reason, error in ends:
            array, recorder = self.array_of.pop(tid), self.recorders.pop(tid)
            self.targets.pop(tid, None)
            ending = None
            try:
                ending = recorder.begin_finish(FusedMember(array, tid))
            except Exception:
                if error is None:
                    status, reason, error = TrialStatus.FAILED, "storage", traceback.format_exc()
            endings.append(_Ended(tid, array, recorder, ending, status, reason, error))
        by_array: dict[int, list[_Ended]] = {}
        for e in endings:
            if e.ending is not None:
                by_array.setdefault(id(e.array), []).append(e)
        stacked: dict[tuple[int, tuple[int, str]], Any] = {}  # (trial id, (epoch, weights)) -> results
        for group in by_array.values():
            wanted = [(e.tid, key, state) for e in group for key, state in e.ending.states.items()]
            try:
                outs = group[0].array.checkpoint_results_many([state for *_, state in wanted])
                stacked.update({(tid, key): out for (tid, key, _), out in zip(wanted, outs, strict=True)})
            except Exception:
                pass  # each member below runs its own checkpoints
        reports = []
        for e in endings:
            status, reason, error = e.status, e.reason, e.error
            if e.ending is not None:
                try:
                    results = {key: stacked.get((e.tid, key)) or e.array.checkpoint_results(state)
                               for key, state in e.ending.states.items()}
                    e.recorder.end_finish(FusedMember(e.array, e.tid), e.ending, results)
                except Exception:
                    if error is None:
                        status, reason, error = TrialStatus.FAILED, "storage", traceback.format_exc()
            e.array.drop([e.tid])  # compaction: it stops costing compute now
            if not len(e.array) and e.array in self.arrays:
                self.arrays.remove(e.array)
            reports.append(Report(e.tid, self.unreported.pop(e.tid, []), ended=True, status=status, reason=reason,
                                  error=error, node=self.node))
        return reports

    # -- training ---------------------------------------------------------------------------
    def _train_until_due(self) -> list[Report]:
        while True:
            due = {tid for tid, until in self.targets.items() if self._behind(tid, until)}
            if not due:
                return []
            reports: list[Report] = []
            for array in list(self.arrays):
                ids = [tid for tid in array.trial_ids if tid in due]
                if ids:
                    reports += self._epoch(array, ids)
            if reports:
                return reports

    def _epoch(self, array: FusedArray, ids: list[int]) -> list[Report]:
        try:
            rows = array.train_epoch(ids)
        except Exception:  # a user model that fails fails every member that ran it
            error = traceback.format_exc()
            return self._end_members([(tid, "failed", "error", error) for tid in ids])
        reports: list[Report | int] = []  # a trial id holds the place of a report its end writes below
        ends = []
        for row in rows:
            tid = row["trial_id"]
            recorder = self.recorders[tid]
            recorder.record(FusedMember(array, tid), row)  # type: ignore[arg-type]
            self.unreported[tid].append({**row, **self.not_learning_facts})
            reason = divergence_reason(recorder.curve("train_loss"), max_ratio=self.options.max_loss_ratio)
            member = array.member(tid)
            if reason or not math.isfinite(row["val_loss"]):
                ends.append((tid, "pruned", reason or "diverged", None))
            elif member.epoch >= member.spec.max_epochs:
                ends.append((tid, "completed", "max_epochs", None))
            elif self.options.early_stopping and plateau_reason(
                    recorder.curve("score"), self.options.early_stopping):
                ends.append((tid, "completed", EARLY_STOPPED, None))
            else:
                if member.epoch >= self.targets[tid]:
                    reports.append(Report(tid, self.unreported[tid], node=self.node))
                    self.unreported[tid] = []
                continue
            reports.append(tid)
        ended = {r.trial_id: r for r in self._end_members(ends)}
        return [ended[r] if isinstance(r, int) else r for r in reports]

    # -- whether, and how wide ---------------------------------------------------------------
    def probe(self, config: Mapping[str, Any], sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), steps: int = 8,
              keep: float = 0.9, repeats: int = 2) -> dict[str, Any]:
        """Can ``config``'s model train as an array here, and how many trials per second at each size?

        First trains a two-member array for a short epoch: an error there is the reason it cannot
        (``error``, naming the layer where it can). Then times ``steps`` training batches per size
        (best of ``repeats``); on a GPU also each size's peak memory and the free memory. The choice
        itself is ``orchestrator.decide.fusing.choose_array_size`` on these numbers (``array_size``).
        """
        batch = int(config.get("batch_size", 64))
        s = self.splits
        out: dict[str, Any] = {"error": None, "engine": None, "trials_per_second": {}, "peak_bytes": None,
                               "free_bytes": None, "array_size": 1, "device": str(self.device)}
        out["error"] = contract_blocker(self.task, s.target_kind, s.streams)
        if out["error"]:  # another kind, a task's own metrics, streamed data: the plain path, a fusing_off reason
            return out
        assert s.x_train is not None and s.x_val is not None and s.x_test is not None
        n = min(len(s.x_train), batch * steps)
        small = Splits(s.x_train[:n], s.y_train[:n], s.x_val[:batch], s.y_val[:batch], s.x_test[:1], s.y_test[:1],
                       s.num_classes, target_kind=s.target_kind)
        if getattr(self.options, "precision", "fp32") != "fp32":
            out["error"] = "precision: fused arrays train in fp32"
            return out
        out["error"], out["engine"] = fusability(self.task, small, config, self.device, self.engine)
        if out["error"]:
            return out
        cuda = self.device.type == "cuda"
        rates, peaks = out["trials_per_second"], {}
        for k in sizes:
            specs = [TrialSpec(-1 - i, 0, dict(config), 10_000 + i, 2) for i in range(k)]
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            with torch.random.fork_rng(devices=[self.device] if cuda else []):
                array = FusedArray(self.task, small, specs, self.device, engine=self.engine, diagnostics=False)
                array.train_epoch()  # first-use costs
                best = math.inf
                for _ in range(repeats):
                    started = time.perf_counter()
                    array.train_epoch()
                    if cuda:
                        torch.cuda.synchronize(self.device)
                    best = min(best, time.perf_counter() - started)
            rates[k] = k / max(best, 1e-9)
            del array
            if cuda:
                peaks[k] = float(torch.cuda.max_memory_allocated(self.device))
                out["free_bytes"] = float(torch.cuda.mem_get_info(self.device)[0])
                if out["free_bytes"] < 2 * peaks[k]:
                    break
        out["peak_bytes"] = peaks or None
        if rates:
            out["array_size"] = choose_array_size(rates, keep=keep, peak_bytes=out["peak_bytes"],
                                                  free_bytes=out["free_bytes"])
        return out


def fusability(task: Any, splits: Splits, config: Mapping[str, Any], device: torch.device,
               engine: str = "auto") -> tuple[str | None, str | None]:
    """``(why not, engine)``: train two members of ``config`` for an epoch; the first error is the reason."""
    specs = [TrialSpec(-1 - i, 0, dict(config), 20_000 + i, 1) for i in range(2)]
    array = None
    entered: list[str] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            array = FusedArray(task, splits, specs, device, engine=engine, diagnostics=False)
            with _track_layers(array, entered):
                array.train_epoch()
        return None, array.engine.name if array.engine is not None else None
    except Exception as exc:
        where = f"layer {entered[-1]}: " if entered else ""
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{where}{type(exc).__name__}: {detail}" if not isinstance(exc, NotFusable) else detail, None


class _track_layers:
    """Keeps the names of modules entered and not yet left (vmap engine), so a failure names its layer."""

    def __init__(self, array: FusedArray, entered: list[str]):
        self.array, self.entered, self.handles = array, entered, []

    def __enter__(self) -> _track_layers:
        base = getattr(self.array.engine, "base", None)
        if base is not None:
            for name, module in base.named_modules():
                if name:
                    label = f"{name} ({type(module).__name__})"
                    self.handles.append(module.register_forward_pre_hook(
                        lambda *_, n=label: self.entered.append(n)))
                    self.handles.append(module.register_forward_hook(
                        lambda *_, n=label: self.entered.remove(n) if n in self.entered else None))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
