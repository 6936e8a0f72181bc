"""The Ray actor: a thin shell around :class:`worker.session.WorkerSession`.

One actor per slot lives for the whole sweep: torch is imported and the data set loaded
once, then it trains trial after trial as the master asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray

from orchestrator.backend import Assignment, Report


@ray.remote
class TrialActor:
    def __init__(self, task_ref: str, storage_uri: str, sweep: str, options: Mapping[str, Any]):
        from worker.session import WorkerSession  # torch loads here, in the actor, once

        self.session = WorkerSession(task_ref, storage_uri, sweep, options)
        # The Ray node id, not the hostname: one machine can host several Ray nodes, and ids match `ray list nodes`.
        self.session.node = ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        return self.session.node

    def start(self, assignment: Assignment) -> Report:
        return self.session.start(assignment)

    def advance(self, trial_id: int, until_epoch: int) -> Report:
        return self.session.advance(trial_id, until_epoch)

    def stop(self, trial_id: int, status: str, reason: str) -> Report:
        return self.session.stop(trial_id, status, reason)
