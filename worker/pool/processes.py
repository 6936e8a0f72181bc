"""The process-pool backend: each slot is a child process of the master, no Ray (``executor="processes"``).

For sweeps on one machine. A Ray actor starts in seconds: Ray itself, a fresh interpreter that
imports torch, the data sent over, torch's warm-up. A child forked from the master, which has
already imported torch, loaded and checked the data and run one optimizer step (the contract
check), starts in milliseconds with all of that in its memory.

A forked child runs one torch thread: GNU OpenMP does not survive a fork once the parent has used
its thread pool, and a child asking for more threads hangs. So trials with more than one CPU, data
that streams and a resumed sweep start their workers with ``spawn`` (:func:`start_method`): a fresh
interpreter that imports the task and loads its data itself, as a Ray actor does.

Calls to one worker run in order, as on a Ray actor, so a stop and the next trial's start can be
sent back to back. A worker that dies loses its trial (retried from its last checkpoint, as on
Ray) and is replaced; a slot whose workers die ``MAX_REPLACEMENTS + 1`` times in a row is given up.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
import weakref
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from orchestrator.decide import interrupt
from orchestrator.decide.backend import (
    MAX_REPLACEMENTS,
    START_FAILED,
    START_REFUSED,
    Assignment,
    Backend,
    Report,
    slots_given_up,
)
from orchestrator.errors import ConfigError, TaskError, exception_line
from worker.check.contract import describe
from worker.train.forking import start_method
from worker.train.session import (  # imported in the master: forked children inherit torch
    WorkerSession,
    what_workers_are_sent,
)

log = logging.getLogger("caviar")

_MASTER_ENDS: weakref.WeakSet[Connection] = weakref.WeakSet()  # every pipe end the master holds, for children to close


def local_cpus() -> int:
    """CPUs this process may use: its affinity mask and a container's CPU quota (cgroup v1 or v2).

    A pod limited to 4 CPUs on a 64-core node sees 64 in its affinity mask; one worker per core would
    put 64 trials on 4 CPUs. joblib (scikit-learn's) counts both limits, and ``LOKY_MAX_CPU_COUNT``.
    """
    from joblib import cpu_count  # here: only a sweep without --slots asks

    return max(1, int(cpu_count()))


def serve(conn: Connection, master: int, task_ref: str, storage_uri: str, sweep: str, options: Mapping[str, Any],
          splits: Any, fused: bool = False) -> None:
    """A worker's life in its child process: build the session, then answer the master's calls in order.

    ``fused``: a :class:`~worker.arrays.fused_session.FusedSession` (``worker/pool/fused_processes.py``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the master's: it stops the trials, then ends us
    if hasattr(signal, "pthread_sigmask"):  # a forked child inherits the mask ctrl_c_held set: ignored from here on
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the master's handler, which would raise inside a trial
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # a print goes to the terminal, not the live view's proxy
    if sys.platform.startswith("linux") and multiprocessing.get_start_method(allow_none=True) != "fork":
        # A spawned child inherits "spawn" as its default: DataLoader workers (caviar's or the task's own) would be
        # spawned too, could not import a task loaded from its file, and die unpickling its Dataset while the loader
        # waits for ever. Forked, as in a plain script on Linux, they inherit the task.
        multiprocessing.set_start_method("fork", force=True)
    for other in list(_MASTER_ENDS):  # forked copies of the master's pipe ends: the master's exit must reach us
        other.close()
    interrupt.die_with_parent(master)  # a SIGKILLed master leaves no trainer behind
    try:
        if fused:
            from worker.arrays.fused_session import FusedSession  # the master imported it before the fork

            session: WorkerSession = FusedSession(task_ref, storage_uri, sweep, options, splits)
        else:
            session = WorkerSession(task_ref, storage_uri, sweep, options, splits)
    except Exception as exc:
        refused = isinstance(exc, (ConfigError, TaskError))  # the task's data or settings: the same in a replacement
        _answer(conn, ("refused" if refused else "failed", describe(exc)))
        return
    if not _answer(conn, ("ready", session.node)):
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the master has gone
        if message is None:
            return
        method, args = message
        try:
            report = getattr(session, method)(*args)
        except Exception:  # WorkerSession turns a trial's own errors into reports: this is the worker's
            _answer(conn, ("error", traceback.format_exc()))
            return
        if not _answer(conn, ("report", report)):
            return


def _answer(conn: Connection, message: tuple[str, Any]) -> bool:
    """Send to the master; False when it has gone (the pipe is closed)."""
    try:
        conn.send(message)
        return True
    except OSError:
        return False


def child_setup(task_ref: str, storage_uri: str, sweep: str, worker_options: Mapping[str, Any],
                splits: Any) -> tuple[str, Any, tuple[Any, ...]]:
    """How children start (:func:`start_method`), its multiprocessing context, and what each is given."""
    threads = int(worker_options.get("threads") or 1)  # always set: a forked child must not keep torch's default
    method = start_method(threads, splits)
    # A spawned child would get a pickled copy: it loads the data itself, as a Ray actor does, and standardises it
    # with the master's statistics (a randomly augmenting training split gives others at every pass).
    options = {**worker_options, "threads": threads}
    if method != "fork":
        options.update(what_workers_are_sent(splits))
    args = (task_ref, storage_uri, sweep, options, splits if method == "fork" else None)
    return method, multiprocessing.get_context(method), args


def start_worker(context: Any, args: tuple[Any, ...], *, replacement: bool = False, fused: bool = False) -> ChildWorker:
    """One child process running :func:`serve` over ``args`` (task, storage, sweep, options, splits), and its pipe."""
    master_end, child_end = context.Pipe()
    _MASTER_ENDS.add(master_end)
    process = context.Process(target=serve, args=(child_end, os.getpid(), *args, fused), name="caviar-worker")
    with callers_main_left_out(context), ctrl_c_held():
        process.start()
    child_end.close()
    return ChildWorker(process, master_end, replacement=replacement)


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Ctrl-C ignored while a child starts, which keeps an ignored SIGINT through its exec: a terminal's Ctrl-C reaches
    the whole process group, and a spawned child importing torch for seconds before :func:`serve` ignores it died of
    it with a KeyboardInterrupt traceback on the user's terminal. SIGINT is also blocked in this thread meanwhile, so
    on Linux a Ctrl-C in those milliseconds waits for the master's own handler instead of being dropped."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield  # only the main thread may set handlers (a notebook's worker thread leaves the child as it is)
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextmanager
def callers_main_left_out(context: Any) -> Iterator[None]:
    """A spawned child runs the caller's ``__main__`` script (or ``-m`` module) again before :func:`serve`; one without
    an ``if __name__ == "__main__":`` guard called run_sweep again in every worker, which died of it. ``serve`` needs
    nothing from it (the task comes by reference), so the start is told of no main module."""
    main = sys.modules.get("__main__")
    if context.get_start_method() != "spawn" or main is None:
        yield
        return
    file, spec = main.__dict__.pop("__file__", None), getattr(main, "__spec__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__spec__ = spec
        if file is not None:
            main.__file__ = file


@dataclass
class ChildWorker:
    process: Any
    conn: Connection
    calls: deque[tuple[str, int]] = field(default_factory=deque)  # (kind, trial) sent, not yet answered
    ready: bool = False
    replacement: bool = False  # its slot takes a trial only once it is ready


class ProcessBackend(Backend):
    """``slots`` child processes; ``splits`` (the master's checked data) reach forked children in memory."""

    def __init__(self, task_ref: str, storage_uri: str, sweep: str, slots: int, worker_options: Mapping[str, Any],
                 splits: Any = None):
        self.start_method, self._context, self._args = child_setup(task_ref, storage_uri, sweep, worker_options, splits)
        self.workers = [self._make(replacement=False) for _ in range(slots)]
        self.idle = list(range(slots))
        self.slot_of: dict[int, int] = {}
        self.attempt_of: dict[int, int] = {}
        self.failures = [0] * slots
        self.deaths = 0
        self.last_error = ""
        self.node_of_slot: list[str | None] = [None] * slots
        LIVE_BACKENDS.add(self)

    def _make(self, *, replacement: bool) -> ChildWorker:
        return start_worker(self._context, self._args, replacement=replacement)

    @property
    def free_slots(self) -> int:
        return len(self.idle)

    def _send(self, slot: int, kind: str, trial_id: int, method: str, *args: Any) -> None:
        worker = self.workers[slot]
        worker.calls.append((kind, trial_id))
        try:
            worker.conn.send((method, args))
        except OSError:  # the child is gone; poll sees its exit and loses the trial
            pass

    def start(self, assignment: Assignment) -> None:
        slot = self.idle.pop()
        self.slot_of[assignment.trial_id] = slot
        self.attempt_of[assignment.trial_id] = assignment.attempt
        self._send(slot, "run", assignment.trial_id, "start", assignment)

    def advance(self, trial_id: int, until_epoch: int) -> None:
        self._send(self.slot_of[trial_id], "run", trial_id, "advance", trial_id, until_epoch)

    def stop(self, trial_id: int, status: str, reason: str) -> None:
        slot = self.slot_of.pop(trial_id)
        self._send(slot, "stop", trial_id, "stop", trial_id, status, reason)
        self.idle.append(slot)

    def _waiting(self) -> list[int]:
        """Slots whose worker owes an answer: a call, or its start."""
        return [slot for slot, w in enumerate(self.workers) if w is not None and (w.calls or not w.ready)]

    def poll(self, timeout: float | None = None) -> list[Report]:
        waiting = self._waiting()
        if not waiting:
            if not self.idle and not self.slot_of:  # every slot given up: nothing will ever report again
                raise slots_given_up(self.last_error, "trial worker")
            return []
        handles = [self.workers[s].conn for s in waiting] + [self.workers[s].process.sentinel for s in waiting]
        wait(handles, timeout)
        reports: list[Report] = []
        for slot in waiting:
            worker = self.workers[slot]
            while worker is self.workers[slot] and has_message(worker.conn):
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    break
                reports.extend(self._on_message(slot, worker, message))
            if worker is self.workers[slot] and not worker.process.is_alive() and self._owes(worker):
                code = worker.process.exitcode
                reports.extend(self._on_failure(slot, f"the worker process exited (code {code})"))
        return reports

    @staticmethod
    def _owes(worker: ChildWorker) -> bool:
        return bool(worker.calls) or not worker.ready

    def _on_message(self, slot: int, worker: ChildWorker, message: tuple[str, Any]) -> list[Report]:
        what, value = message
        if what == "ready":
            worker.ready = True
            self.node_of_slot[slot] = str(value)
            if worker.replacement:
                self.failures[slot] = 0
                self.idle.append(slot)
            return []
        if what == "refused":
            self.failures[slot] = MAX_REPLACEMENTS  # so _on_failure starts no replacement to refuse again
            return self._on_failure(slot, START_REFUSED + str(value))
        if what == "failed":
            return self._on_failure(slot, START_FAILED + str(value))
        if what == "error":
            return self._on_failure(slot, str(value))
        kind, trial_id = worker.calls.popleft()
        report: Report = value
        if kind == "stop":
            return []  # the controller closed this trial when it decided to stop it
        if report.ended and self.slot_of.get(trial_id) == slot:
            del self.slot_of[trial_id]
            self.idle.append(slot)
        return [report]

    def _on_failure(self, slot: int, error: str) -> list[Report]:
        """Replace a dead worker once; its trial is lost (and retried by the controller)."""
        self.deaths += 1
        self.failures[slot] += 1
        self.last_error = error
        end_child(self.workers[slot], timeout=0)
        lost = [tid for tid, s in self.slot_of.items() if s == slot]
        for tid in lost:
            del self.slot_of[tid]
        if slot in self.idle:
            self.idle.remove(slot)
        if lost:
            step = 0 if error.startswith(START_FAILED) else 1  # a worker that never started ran no attempt
            moved = ", ".join(f"{tid} (attempt {self.attempt_of.get(tid, 0)} -> {self.attempt_of.get(tid, 0) + step})"
                              for tid in lost)
            log.warning("caviar: lost a trial worker process (%s); trial %s goes back to the queue",
                        exception_line(error)[:160], moved)
        self.workers[slot] = self._make(replacement=True) if self.failures[slot] <= MAX_REPLACEMENTS else None
        return [Report(tid, lost=True, error=error) for tid in lost]

    def close(self, finished: bool = False, drain_seconds: float = 600.0) -> None:
        """Let queued calls finish (a stop persists the trial's rows and checkpoints), then end the workers.

        After Ctrl-C or SIGTERM, in-flight epochs are not waited for (a resume starts from the checkpoints).
        """
        if interrupt.requested():
            drain_seconds = 0.0
        for worker in self.workers:
            if worker is not None:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self.workers:
            if worker is not None:
                end_child(worker, timeout=drain_seconds)
        self.workers = [None] * len(self.workers)
        LIVE_BACKENDS.discard(self)


def has_message(conn: Connection) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def end_child(worker: ChildWorker | None, timeout: float) -> None:
    """Wait up to ``timeout`` for the worker to exit by itself, then make it."""
    if worker is None:
        return
    worker.process.join(timeout)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join(5)
    worker.conn.close()


LIVE_BACKENDS: weakref.WeakSet[Any] = weakref.WeakSet()  # backends with a ``workers`` list


@atexit.register
def _end_all() -> None:
    """An interpreter that exits without closing a backend ends its workers (multiprocessing would wait on them)."""
    for backend in list(LIVE_BACKENDS):
        for worker in backend.workers:
            if worker is not None:
                worker.conn.close()
                end_child(worker, timeout=5)
