"""The one small interface between the master's decisions and whatever executes trials.

The controller never sees a backend; the driver passes values between them. Ray actors
(``cluster.pool.RayBackend``) and a replay of recorded or synthetic learning curves
(``orchestrator.decide.simulate.SimulatedBackend``) both implement it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import CaviarError

MAX_REPLACEMENTS = 3  # deaths in a row of one slot's workers before a backend gives the slot up
START_FAILED = "the worker could not start: "  # how a backend marks an error raised while a worker started
# ...and one that refused the task's data or settings (labels other than the sweep stored): every replacement would
# load the same and refuse again, so the slot is not restarted
START_REFUSED = START_FAILED + "refused: "


@dataclass(frozen=True)
class Assignment:
    """Train ``trial_id`` from its current epoch up to ``until_epoch`` (or to a stop)."""

    trial_id: int
    stage: int  # as the tables number it: 1 is the first stage
    config: Mapping[str, Any]
    seed: int
    max_epochs: int
    until_epoch: int
    attempt: int = 0
    resume: bool = False  # continue from the trial's persisted state


@dataclass
class Report:
    """What came back from one call: new metric rows, and whether the trial has ended."""

    trial_id: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    ended: bool = False  # the worker closed the trial (completed, diverged, failed, or stopped)
    status: str | None = None
    reason: str | None = None
    error: str | None = None
    node: str | None = None
    lost: bool = False  # the executor died: retry from the last checkpoint


class Backend(ABC):
    @property
    @abstractmethod
    def free_slots(self) -> int: ...

    @abstractmethod
    def start(self, assignment: Assignment) -> None:
        """Begin (or resume) a trial on a free slot and train it to ``until_epoch``."""

    @abstractmethod
    def advance(self, trial_id: int, until_epoch: int) -> None:
        """Keep training a running trial."""

    @abstractmethod
    def stop(self, trial_id: int, status: str, reason: str) -> None:
        """End a running trial at its current epoch: persist, then free its slot."""

    @abstractmethod
    def poll(self, timeout: float | None = None) -> list[Report]:
        """Block until at least one report is ready (or the timeout passes); never on one trial."""

    def close(self, finished: bool = False) -> None:
        """Release executors; ``finished``: the sweep ended cleanly, so a backend may keep them for the next."""


def slots_given_up(last_error: str, workers: str) -> CaviarError:
    """The one line a backend raises once every slot is given up: the workers could not start, or kept dying."""
    if last_error.startswith(START_REFUSED):
        return CaviarError(f"no {workers} could start: {last_error.removeprefix(START_REFUSED)}")
    if last_error.startswith(START_FAILED):
        return CaviarError(f"no {workers} could start ({MAX_REPLACEMENTS + 1} tries per slot): "
                           f"{last_error.removeprefix(START_FAILED)}")
    last = last_error.splitlines()[0] if last_error else "unknown"
    return CaviarError(f"every {workers} died {MAX_REPLACEMENTS + 1} times in a row; the last: {last}")
