"""The fused backend on Ray: trials trained as fused arrays on long-lived actors.

The bookkeeping (placing trials by shape, one call per actor, deaths and retries) is
:class:`orchestrator.decide.fused_slots.FusedSlots`; this module hosts its workers as Ray actors, one
per slot, each holding a :class:`worker.arrays.fused_session.FusedSession`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from cluster.actor import enter_master_folder
from cluster.pool import Resources, failure_text
from orchestrator.decide.backend import Assignment, Report
from orchestrator.decide.fused_slots import FusedSlots, WorkerLost
from orchestrator.decide.fusing import PER_MEMBER
from orchestrator.errors import WorkerStartError


@ray.remote
class FusedActor:
    def __init__(self, task_ref: str, storage_uri: str, sweep: str, options: Mapping[str, Any], splits: Any = None):
        enter_master_folder()
        from worker.arrays.fused_session import FusedSession  # torch loads here, in the actor, once
        from worker.check.contract import describe

        # As TrialActor: a failing start is kept and raised by each call, so the master reads the user's line.
        self.start_error: str | None = None
        try:
            self.session = FusedSession(task_ref, storage_uri, sweep, options, splits)
        except Exception as exc:
            self.start_error = describe(exc)
            return
        # As TrialActor: the Ray node id, not the hostname that several Ray nodes of one machine share.
        self.session.node = ray.get_runtime_context().get_node_id()

    def _live(self) -> Any:
        if self.start_error is not None:
            raise WorkerStartError(self.start_error)
        return self.session

    def ready(self) -> str:
        return self._live().node

    def run_call(self, starts: list[Assignment], targets: dict[int, int], stops: list[tuple[int, str, str]]
                 ) -> tuple[list[Report], bool]:
        return self._live().run_call(starts, targets, stops)

    def probe(self, config: Mapping[str, Any], sizes: list[int]) -> dict[str, Any]:
        return self._live().probe(config, sizes)

    def set_array_size(self, size: int) -> None:
        self._live().set_array_size(size)


class FusedBackend(FusedSlots):
    """Fused slots on Ray actors; ``splits`` (the master's checked data, in the object store) spare each a load."""

    worker_kind = "fused trial actor"

    def __init__(self, task_ref: str, storage_uri: str, sweep: str, actors: int, resources: Resources,
                 worker_options: Mapping[str, Any], array_size: int = 32, engine: str = "auto",
                 per_member: Iterable[str] = PER_MEMBER, splits: Any = None):
        self._args = (task_ref, storage_uri, sweep, {**worker_options, "engine": engine}, splits)
        self._actor_options = resources.actor_options()
        super().__init__(actors, array_size, per_member)

    def _new_worker(self) -> Any:
        task_ref, storage_uri, sweep, options, splits = self._args
        return FusedActor.options(**self._actor_options, max_concurrency=1).remote(
            task_ref, storage_uri, sweep, {**options, "array_size": self.array_size}, splits)

    def _send(self, worker: Any, method: str, *args: Any) -> Any:
        return getattr(worker, method).remote(*args)

    def _wait_any(self, handles: list[Any], timeout: float | None) -> list[Any]:
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:  # take everything else that is already done as well
            ready, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return list(ready)

    def _result(self, handle: Any) -> Any:
        try:
            return ray.get(handle)
        except (RayActorError, RayTaskError) as exc:
            raise WorkerLost(failure_text(exc)) from None

    def _end_worker(self, worker: Any) -> None:
        ray.kill(worker)
