"""Fused arrays in child processes of the master: the fused backend with no Ray (one machine, CPU).

The bookkeeping is :class:`orchestrator.decide.fused_slots.FusedSlots`, as on Ray; each worker here is a
child process (:mod:`worker.pool.processes`: forked after the master's imports and data load, or
spawned) that serves a :class:`~worker.arrays.fused_session.FusedSession` over a pipe. A call's answer
comes back on the pipe in order; a worker owes at most one answer at a time, so a handle is the
worker itself. A child that dies loses its members, which the controller retries, as on Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from orchestrator.decide import interrupt
from orchestrator.decide.backend import START_FAILED, START_REFUSED
from orchestrator.decide.fused_slots import FusedSlots, WorkerLost
from orchestrator.decide.fusing import PER_MEMBER
from worker.arrays.fused_session import FusedSession  # noqa: F401  imported here, in the master: children inherit it
from worker.pool.processes import LIVE_BACKENDS, ChildWorker, child_setup, end_child, has_message, start_worker


@dataclass(eq=False)
class _Call:
    """The one answer a child worker owes: to ``ready`` (its start) or to a call."""

    worker: ChildWorker
    kind: str  # "ready" or "call"


class FusedProcessBackend(FusedSlots):
    """``workers`` child processes, each training up to ``array_size`` trials as fused arrays."""

    def __init__(self, task_ref: str, storage_uri: str, sweep: str, workers: int, worker_options: Mapping[str, Any],
                 array_size: int = 32, engine: str = "auto", per_member: Iterable[str] = PER_MEMBER,
                 splits: Any = None):
        options = {**worker_options, "engine": engine}
        self.start_method, self._context, self._args = child_setup(task_ref, storage_uri, sweep, options, splits)
        super().__init__(workers, array_size, per_member)
        LIVE_BACKENDS.add(self)

    @property
    def workers(self) -> list[ChildWorker | None]:
        """The live children (an interpreter that exits unclosed ends them: ``worker.pool.processes``)."""
        return [slot.worker for slot in self.slots]

    def _new_worker(self) -> ChildWorker:
        task_ref, storage_uri, sweep, options, splits = self._args
        args = (task_ref, storage_uri, sweep, {**options, "array_size": self.array_size}, splits)
        return start_worker(self._context, args, fused=True)

    def _send(self, worker: ChildWorker, method: str, *args: Any) -> _Call:
        if method == "ready":  # a child says it is ready unasked, once its session is built
            return _Call(worker, "ready")
        try:
            worker.conn.send((method, args))
        except OSError:  # the child is gone: its sentinel answers the wait, and _result says so
            pass
        return _Call(worker, "call")

    def _wait_any(self, handles: list[Any], timeout: float | None) -> list[Any]:
        ready = wait([h.worker.conn for h in handles] + [h.worker.process.sentinel for h in handles], timeout)
        return [h for h in handles if h.worker.conn in ready or h.worker.process.sentinel in ready]

    def _result(self, handle: _Call) -> Any:
        worker = handle.worker
        while True:
            if not has_message(worker.conn):
                wait([worker.conn, worker.process.sentinel])
            if not has_message(worker.conn):
                worker.process.join(1)
                raise WorkerLost(f"the worker process exited (code {worker.process.exitcode})")
            try:
                what, value = worker.conn.recv()
            except (EOFError, OSError):
                raise WorkerLost("the worker process closed its pipe") from None
            if what == "refused":  # the task itself refused: every replacement would refuse again
                raise WorkerLost(START_REFUSED + str(value))
            if what == "failed":
                raise WorkerLost(START_FAILED + str(value))
            if what == "error":
                raise WorkerLost(str(value))
            if what == "ready":
                if handle.kind == "ready":
                    return value
                continue  # a call sent before the child had started: its answer follows
            return value

    def _end_worker(self, worker: ChildWorker | None) -> None:
        if worker is None:
            return
        try:
            worker.conn.send(None)  # the child ends after its current call
        except OSError:
            pass
        end_child(worker, timeout=0 if interrupt.requested() else 5)

    def close(self, finished: bool = False, drain_seconds: float = 600.0) -> None:
        super().close(finished, drain_seconds)
        LIVE_BACKENDS.discard(self)
