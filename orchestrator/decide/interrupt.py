"""Ctrl-C and SIGTERM: stop within seconds, write what is known, tell the user how to go on.

While a sweep runs, the first SIGINT or SIGTERM (how ``caviar stop`` and batch schedulers end
a job) raises :class:`SweepInterrupted` in the master's main thread; the backend then kills
its actors without waiting for in-flight epochs (a resume continues from their
checkpoints), the master marks running trials ``interrupted``, writes the tables and
exits 130. A second signal exits at once.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from orchestrator.errors import SweepInterrupted

EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C
_state: dict[str, Any] = {"requested": False, "active": False, "signum": 0, "entered": 0}


def requested() -> bool:
    """Whether a stop signal arrived: the backend's close then skips draining in-flight calls."""
    return _state["requested"]


def handling() -> bool:
    """Whether a sweep's handlers are in place in this thread (inside :func:`stop_on_signals`, main thread)."""
    return _state["active"] and threading.current_thread() is threading.main_thread()


def times_entered() -> int:
    """How often :func:`stop_on_signals` has begun in this process: a plain KeyboardInterrupt with the count unchanged
    since a command began came before its sweep did (the checks first), when no trial had run."""
    return _state["entered"]


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state["requested"]:  # the second signal: no more writes, no more waiting
        os.write(2, b"caviar: interrupted again: exiting now\n")
        os._exit(EXIT_CODE)
    _state["requested"], _state["signum"] = True, signum
    raise SweepInterrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`SweepInterrupted` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _state["requested"] = False
    _state["active"] = True
    _state["entered"] += 1
    for signum in previous:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        _state["active"] = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def deferred_stop() -> Iterator[None]:
    """Within the block a first SIGINT or SIGTERM is held, then raised as :class:`SweepInterrupted` when it ends.

    For a step that must not stop half-way: ``ray.init`` stopped while it starts a private Ray leaves that Ray's
    processes running with nothing to reach or end them, and a notebook's next sweep starts another beside them.
    A second signal still exits at once. Outside :func:`stop_on_signals` (or off the main thread) a no-op.
    """
    if not _state["active"] or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if held or _state["requested"]:
            _handler(signum, frame)  # the second: exits now
        held.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _handler)
    if held:
        _handler(held[0], None)


def keep_handlers(controller: Any = None) -> None:
    """Put the handlers back where another took them over (``ray.init`` installs its own SIGTERM handler).

    Called on every tick of the master loop; a no-op outside :func:`stop_on_signals`.
    """
    if not _state["active"] or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not _handler:
            signal.signal(signum, _handler)


def mark_interrupted(controller: Any) -> list[int]:
    """Running trials become ``interrupted`` (a resume continues them from their checkpoints)."""
    return controller.interrupt_running()


def write_interrupted(stop: KeyboardInterrupt, controller: Any, log: Any, path: str) -> SweepInterrupted:
    """The master's last writes after a stop signal: running trials marked, tables flushed, the lease let go.

    ``stop`` may be a plain KeyboardInterrupt: Ray's compiled calls (``ray.wait``) re-raise the
    exception a signal handler raised inside them as a new one. Returns the exception to raise.
    """
    if not isinstance(stop, SweepInterrupted):
        stop = SweepInterrupted(_state["signum"] or signal.SIGINT)
    mark_interrupted(controller)
    log.flush(controller, force=True)
    if log.lease is not None:
        log.lease.release()
    stop.path = path
    return stop


def print_hint(path: str, task_ref: str | None = None) -> None:
    """The command that continues the sweep, naming the task code it runs (resume never picks one itself)."""
    code = f"--task {shlex.quote(task_ref)}" if task_ref else "--trust-task-code"  # pasted into a shell: s3://...&...
    sys.stderr.write(f"interrupted: caviar resume {shlex.quote(path)} {code}\n")
    sys.stderr.flush()


def print_ensembles_hint(path: str, task_ref: str | None = None) -> None:
    """Stopped while building ensembles: the trials are complete; the ensembles come from one command."""
    code = f" --task {shlex.quote(task_ref)}" if task_ref else ""
    sys.stderr.write("interrupted while building ensembles (the trials are complete): caviar ensemble "
                     f"{shlex.quote(path)}{code}\n")
    sys.stderr.flush()


def die_with_parent(parent: int) -> None:
    """In a forked child: have the kernel kill it when ``parent`` dies (Linux), so no child outlives a killed or
    interrupted parent, blocked on a pipe that only it still holds open."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a closed pipe ends the child after its current call
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
