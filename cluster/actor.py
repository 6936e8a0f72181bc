"""The Ray actor: a thin shell around :class:`worker.train.session.WorkerSession`.

One actor per slot lives for the whole sweep: torch is imported and the data set loaded
once, then it trains trial after trial as the master asks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import ray

from orchestrator.decide.backend import Assignment, Report
from orchestrator.errors import WorkerStartError

# The master's working directory, for actors that were shipped no folder of their own: a Ray worker starts in the
# directory its node's `ray start` ran in, so a load_data that opens "data/train.npy" (as the master ran it) failed.
MASTER_CWD_ENV = "CAVIAR_MASTER_CWD"


def enter_master_folder() -> None:
    """Work in the master's directory when this node has it, as the master's checked load_data did."""
    folder = os.environ.get(MASTER_CWD_ENV)
    if folder and os.path.isdir(folder):
        os.chdir(folder)


@ray.remote
class TrialActor:
    def __init__(self, task_ref: str, storage_uri: str, sweep: str, options: Mapping[str, Any], splits: Any = None):
        enter_master_folder()
        began = time.perf_counter()
        from worker.check.contract import describe
        from worker.train.session import WorkerSession  # torch loads here, in the actor, once

        self.import_seconds = time.perf_counter() - began

        # A failing start is kept, not raised: Ray would only report "the actor died" and print the
        # traceback to the driver; each call raises it instead, as an exception the master can read.
        self.start_error: str | None = None
        try:
            self.session = WorkerSession(task_ref, storage_uri, sweep, options, splits)
        except Exception as exc:
            self.start_error = describe(exc)
            return
        # The Ray node id, not the hostname: one machine can host several Ray nodes, and ids match `ray list nodes`.
        self.session.node = ray.get_runtime_context().get_node_id()

    def _live(self) -> Any:
        if self.start_error is not None:
            raise WorkerStartError(self.start_error)
        return self.session

    def ready(self) -> str:
        return self._live().node

    def start_seconds(self) -> dict[str, float]:
        """How long this actor's start took, by phase (torch and caviar's import, then the session's own)."""
        return {"torch_import": self.import_seconds, **self._live().start_seconds}

    def rebind(self, storage_uri: str, sweep: str, options: Mapping[str, Any], splits: Any = None) -> str:
        """A kept actor serves the next sweep of the same task: torch and the task stay imported, the data is new."""
        self._live().bind(storage_uri, sweep, options, splits)
        return self.session.node

    def start(self, assignment: Assignment) -> Report:
        return self._live().start(assignment)

    def advance(self, trial_id: int, until_epoch: int) -> Report:
        return self._live().advance(trial_id, until_epoch)

    def stop(self, trial_id: int, status: str, reason: str) -> Report:
        return self._live().stop(trial_id, status, reason)
