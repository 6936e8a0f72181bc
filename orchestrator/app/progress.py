"""Live progress: a rich view on a terminal, one line per state change otherwise (CI, pipes, files).

Both start with a line at once (what is starting: child processes, local Ray or which cluster, how many workers),
say when the workers are ready, and end on the sweep's final state. The terminal view keeps one
layout from first frame to last: the sweep's counts, best so far, epochs/s and time left, then
one row per running trial (padded to the most ever running, so nothing jumps). Plain mode prints
stage starts, trial ends with their reason, range changes at edges and the end.

Everything shown comes from the controller (pure state) and its event feed; nothing here
talks to Ray or storage. The snapshot is taken on the master's thread at each tick; rich's
refresh thread only draws the last snapshot (the controller is never read from two threads).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from orchestrator.app.answer import format_value, shown_number, shown_score
from orchestrator.decide.controller import Controller
from orchestrator.decide.status import ENDED, TrialStatus

KEY_PARAMS = 4  # hyperparameters shown per running trial
PLAIN_HEARTBEAT = 30.0  # seconds without a state change before plain mode prints a status line


@dataclass
class RunningRow:
    trial_id: int
    stage: int  # 1-based, as the tables
    epoch: int
    budget: int
    score: float | None
    params: str


@dataclass
class Snapshot:
    """What one frame shows; plain data taken from the controller on the master's thread."""

    stage: int = 0  # 1-based; 0 before the first stage began
    stages: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    total_trials: int = 0
    epochs_done: int = 0
    epochs_left: int = 0
    best: tuple[float, int, int, str] | None = None  # (score, trial, stage, params)
    running: list[RunningRow] = field(default_factory=list)
    objective: tuple[str, str] | None = None  # (column, mode) the scores stand for; None: shown as scores


def snapshot(controller: Controller) -> Snapshot:
    trials = list(controller.trials.values())
    counts = Counter(t.status for t in trials)
    begun = len(controller.stage_spaces)
    future = sum(s.trials * s.epochs for s in controller.plan[begun:])
    left = sum(max(t.max_epochs - t.epochs_run, 0) for t in trials if t.status not in ENDED) + future
    searched = list(controller.stage_spaces[-1].searched) if controller.stage_spaces else []
    best = controller.best()
    running = [
        RunningRow(t.trial_id, t.stage + 1, t.epochs_run, t.max_epochs,
                   t.best_score if t.best_score > -float("inf") else None, key_params(t.config, searched))
        for t in sorted(trials, key=lambda t: t.trial_id) if t.status == TrialStatus.RUNNING
    ]
    return Snapshot(
        stage=controller.stage + 1, stages=len(controller.plan), counts=dict(counts),
        total_trials=sum(s.trials for s in controller.plan[begun:]) + len(trials),
        epochs_done=sum(t.epochs_run for t in trials), epochs_left=left,
        best=(best.best_score, best.trial_id, best.stage + 1, key_params(best.config, searched)) if best else None,
        running=running, objective=controller.objective,
    )


def key_params(config: dict[str, Any], searched: list[str]) -> str:
    """The searched (not fixed) parameters a trial uses, first few: inactive ones (None) say nothing."""
    shown = [(k, config[k]) for k in searched if config.get(k) is not None][:KEY_PARAMS]
    return ", ".join(f"{k}={format_value(v)}" for k, v in shown)


def event_line(event: dict[str, Any], stages: int, objective: tuple[str, str] | None = None) -> str | None:
    """One plain line for an event that changes what the sweep is doing; None for the rest."""
    kind, detail, stage = event["kind"], event.get("detail") or {}, event.get("stage")
    if kind == "stage_started":
        promoted = detail.get("promoted") or 0
        again = f", {promoted} of them best configs of stage {stage} trained again" if promoted else ""  # from scratch
        size = f"{detail.get('trials')} trials x {detail.get('epochs')} epoch{'' if detail.get('epochs') == 1 else 's'}"
        return f"stage {stage + 1}/{stages} started: {size}{again}"
    if kind in ("trial_completed", "trial_pruned", "trial_failed"):
        score = detail.get("best_score")
        status = kind.removeprefix("trial_")
        said = event.get("reason") and (status, event["reason"]) != ("completed", "max_epochs")  # early_stopped is
        why = f" ({event['reason']})" if said else ""
        epochs = detail.get("epochs")
        name, value = shown_score(score, objective) if score is not None else ("score", None)
        after = f"after {epochs} epoch{'' if epochs == 1 else 's'}"
        shown = shown_number(value)
        return f"trial {event['trial_id']} {status}{why} {after}: best {name} {shown}"
    if kind in ("range_extended", "edge_at_hard_limit", "edge_not_extended", "edge_warning"):
        return f"edge: {event['reason']}"
    if kind == "trial_retried":
        return f"trial {event['trial_id']} retried on a new worker ({event.get('reason') or 'worker lost'})"
    if kind == "reseed":
        copies, source = detail.get("copies"), detail.get("config_of_trial")
        return f"stage {stage + 1}/{stages}: {copies} copies of trial {source}'s config, new seeds"
    if kind == "sweep_aborted":
        return f"sweep stopped: {detail.get('message') or event.get('reason')}"
    return None


class Progress:
    """``with Progress(...) as progress: run_sweep(..., on_tick=progress)``."""

    def __init__(self, *, force_plain: bool = False, starting: str | None = None, out: TextIO | None = None):
        self.started = time.monotonic()
        self.out = out or sys.stdout
        self.plain = force_plain or not self.out.isatty()
        self.starting = starting
        self.ready_at: float | None = None  # first tick: the workers are up
        self.rate_from: tuple[float, int] | None = None  # (time, epochs) of the first epoch report
        self.seen_events = 0
        self.last_line = time.monotonic()
        self.most_running = 0
        self.snap = Snapshot()
        self.finished = False
        self.controller: Controller | None = None
        self.live: Any = None
        self.console: Any = None
        self.lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if self.plain:
            if self.starting:
                self._line(self.starting)
            return self
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.out)
        if self.starting:
            self.console.print(self.starting, highlight=False)
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False, redirect_stderr=False)
        self.live.__enter__()
        _LIVE_VIEWS.add(self.live)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            _LIVE_VIEWS.discard(self.live)
        if self.controller is not None:  # the final state: every trial ended, the last events
            self.tick(self.controller)
        self.finished = True
        if self.live is not None:
            self.live.update(self, refresh=True)
            self.live.__exit__(*exc)
        elif self.controller is not None:
            s = self.snap
            ended = "sweep done" if exc[0] is None else "sweep stopped"  # interrupted or failed: the next line says
            self._line(f"{ended}: {self._counts_text(s)}; {s.epochs_done} epochs; {self._best_text(s)}")

    def __call__(self, controller: Controller) -> None:
        self.tick(controller)

    # -- each tick (the master's thread) ----------------------------------------------------------
    def tick(self, controller: Controller) -> None:
        now = time.monotonic()
        self.controller = controller
        snap = snapshot(controller)
        if self.ready_at is None:
            self.ready_at = now
            running = f"{len(snap.running)} trials" if snap.running else "all trials"  # fused: many per worker
            self._say(f"workers ready after {now - self.started:.0f}s; training ({running} started)")
        if self.rate_from is None and snap.epochs_done:
            self.rate_from = (self.ready_at, 0)
        self.most_running = max(self.most_running, len(snap.running))
        for seq, event in list(controller.event_feed):
            if seq <= self.seen_events:
                continue
            self.seen_events = seq
            line = event_line(event, snap.stages, snap.objective)
            if line and (self.plain or not event["kind"].startswith("trial_")):  # trial ends: rows in the table
                self._say(line)
        with self.lock:
            self.snap = snap
        if self.plain and now - self.last_line >= PLAIN_HEARTBEAT:
            self._line(self._status_text(snap))

    def rate(self, snap: Snapshot) -> float | None:
        """Epochs per second since the workers were ready (start-up is not training time)."""
        if self.rate_from is None:
            return None
        since, epochs0 = self.rate_from
        elapsed = time.monotonic() - since
        return (snap.epochs_done - epochs0) / elapsed if elapsed > 0 and snap.epochs_done > epochs0 else None

    # -- output ----------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.plain:
            self._line(text)
        elif self.console is not None:
            self.console.print(f"[{time.monotonic() - self.started:5.0f}s] {text}", highlight=False, markup=False)

    def _line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {text}", file=self.out, flush=True)
        self.last_line = time.monotonic()

    @staticmethod
    def _counts_text(s: Snapshot) -> str:
        c = s.counts
        shown = ("running", "completed", "pruned", "failed", "pending")
        text = ", ".join(f"{c.get(k, 0)} {k}" for k in shown)
        others = [f"{n} {k}" for k, n in c.items() if k not in shown and n]  # interrupted: a resume continues them
        return ", ".join([text, *others])

    @staticmethod
    def _best_text(s: Snapshot) -> str:
        if s.best is None:
            return "best score -"
        score, trial, stage, params = s.best
        name, value = shown_score(score, s.objective)
        return f"best {name} {shown_number(value)} (trial {trial}, stage {stage}" + (f": {params})" if params else ")")

    def _eta_text(self, s: Snapshot) -> str:
        if self.finished:
            return "done"
        rate = self.rate(s)
        if rate is None:
            return "after the first epochs"
        return f"<= {_duration(s.epochs_left / rate)}"  # an upper bound: pruning only shortens it

    def _status_text(self, s: Snapshot) -> str:
        rate = self.rate(s)
        return (f"stage {s.stage}/{s.stages}: {self._counts_text(s)}; {self._best_text(s)}; "
                f"{'-' if rate is None else f'{rate:.2f}'} epochs/s; time left {self._eta_text(s)}")

    def __rich__(self) -> Any:  # rich's refresh thread: draws the last snapshot only
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        with self.lock:
            s = self.snap
        elapsed = time.monotonic() - self.started
        rate = self.rate(s)
        head = Table.grid(padding=(0, 2))
        for _ in range(4):
            head.add_column(min_width=14)
        state = "finished" if self.finished else ("training" if self.ready_at else "starting workers")
        head.add_row("state", state, "elapsed", _duration(elapsed))
        head.add_row("stage", f"{s.stage}/{s.stages}" if s.stage else "-", "trials",
                     f"{sum(s.counts.values())}/{s.total_trials}" if s.total_trials else "-")
        head.add_row("running", str(s.counts.get("running", 0)), "completed", str(s.counts.get("completed", 0)))
        head.add_row("pruned", str(s.counts.get("pruned", 0)), "failed", str(s.counts.get("failed", 0)))
        head.add_row("epochs/s", "-" if rate is None else f"{rate:.2f}", "time left", self._eta_text(s))
        if s.best is None:
            head.add_row("best score", "-", "", "")
            head.add_row("best config", "", "", "")
        else:
            score, trial, stage, params = s.best
            name, value = shown_score(score, s.objective)
            head.add_row(f"best {name}", shown_number(value), "trial", f"{trial} (stage {stage})")
            head.add_row("best config", params, "", "")
        width = min(self.console.width if self.console is not None else 120, 120)  # one width, first to last frame
        rows = Table(expand=True, show_edge=False, pad_edge=False)
        column = shown_score(0.0, s.objective)[0]
        for name, min_width in (("trial", 5), ("stage", 5), ("epoch", 7), (column, 7)):
            rows.add_column(name, min_width=min_width, no_wrap=True)
        rows.add_column("hyperparameters", no_wrap=True, overflow="ellipsis", ratio=1)
        for r in s.running:
            rows.add_row(str(r.trial_id), str(r.stage), f"{r.epoch}/{r.budget}",
                         "-" if r.score is None else shown_number(shown_score(r.score, s.objective)[1]), r.params)
        for _ in range(max(self.most_running - len(s.running), 0)):  # a stable height: no jumping frames
            rows.add_row("", "", "", "", "")
        title = "caviar sweep" + (": done" if self.finished else "")
        return Panel(Group(head, rows), title=title, width=width)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# The live view redraws from its own thread. A fork (executor="processes") while that thread writes would
# hand the child a held console lock: every fork waits for the redraw to finish and holds its lock meanwhile.
_LIVE_VIEWS: weakref.WeakSet[Any] = weakref.WeakSet()
_HELD: list[Any] = []


def _hold_live_views() -> None:
    _HELD[:] = list(_LIVE_VIEWS)
    for live in _HELD:
        live._lock.acquire()


def _release_live_views() -> None:
    for live in _HELD:
        live._lock.release()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_hold_live_views, after_in_parent=_release_live_views,
                        after_in_child=_release_live_views)


def starting_line(address: str | None, slots: int | None, ray_log: str | None, executor: str = "ray") -> str:
    """What the run starts, said before anything slow happens (Ray takes seconds to come up)."""
    from orchestrator.store.storage import redact_uri

    if executor == "processes":
        workers = (f"{slots} worker process{'es' if slots > 1 else ''}" if slots else "one worker process per CPU")
        return f"caviar: no Ray; {workers} started by this one once the task's data is loaded and checked"
    where = (f"joining Ray cluster {redact_uri(address)}" if address
             else f"starting local Ray with {os.cpu_count()} CPUs")
    workers = f"{slots} worker{'s' if slots > 1 else ''}" if slots else "one worker per free CPU"
    logs = f"; Ray's own messages: {ray_log}" if ray_log else ""
    return f"caviar: {where}; {workers} will warm up (torch import, data load){logs}"


def quiet_ray(path: str) -> None:
    """Send Ray's start-up chatter to the log file ``path`` once this run starts or joins Ray (errors still reach
    the terminal); a run in child processes never imports Ray for it."""
    try:
        from cluster.ray_logs import send_ray_logs_if_started
    except ImportError:
        return None
    send_ray_logs_if_started(path)
