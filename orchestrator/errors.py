"""Every exception class of caviar's. ``CaviarError`` and its subclasses are what caviar refuses, each
with a one-line message the CLI prints as ``caviar: error: ...`` (exit 2)."""

from __future__ import annotations

import difflib
import signal
from collections.abc import Iterable


class CaviarError(Exception):
    """Base class: a user-facing problem with a one-line message."""


class SpaceError(CaviarError, ValueError):
    """An invalid search-space definition; the message names the parameter."""


class TaskError(CaviarError):
    """A task file or attribute that cannot be loaded or lacks required pieces."""


class StorageError(CaviarError):
    """Storage that cannot be reached, written, or read back intact."""


class ConfigError(CaviarError, ValueError):
    """A bad option value from the CLI, TOML or Python API; names the field."""


class ClusterError(CaviarError):
    """A Ray cluster that cannot be reached, or that refused a request; the message names its address."""


class NotFusable(CaviarError):
    """These trials cannot share a fused array; the message names what differs."""


class WorkerStartError(Exception):
    """A trial actor could not load the task or its data; the message names the user's exception and line.

    Not a CaviarError: it is the user's own exception, carried from the actor, and it fails the trial.
    """


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was stopped by a signal; ``path`` is the sweep to resume (set once the tables are written)."""

    def __init__(self, signum: int, path: str = "", during: str = "sweep"):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.path = path
        self.during = during  # "sweep": resume it; "ensembles": the trials are whole, only the ensembles are not

    def __str__(self) -> str:
        """What a notebook shows under the traceback: where the sweep is and how to go on (the CLI prints its own)."""
        stopped = signal.Signals(self.signum).name
        if not self.path:
            return f"{stopped}: the sweep stopped before it began; nothing was written"
        if self.during == "ensembles":
            return (f"{stopped}: stopped while building ensembles (the trials are complete); "
                    f"caviar ensemble {self.path} builds them")
        return (f"{stopped}: sweep {self.path} stopped, its tables written; resume_sweep({self.path!r}, "
                "task=YOUR_TASK) continues it")


class IllegalTransition(RuntimeError):
    """A trial asked to move between statuses its state machine does not allow (a bug, never user input)."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'trials'?"`` for a near miss of a known name; empty when none is near."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


def exception_line(traceback_text: str) -> str:
    """The line of a formatted traceback that names its exception (``ValueError: message``): the first line after
    the last frame. Not the traceback's last line: a message of several lines (torch's "Could not run ... with
    arguments from the 'SparseCPU' backend" lists every backend after it) would put one of its own there. Text that
    is no traceback (caviar's own reasons, whose last line says most): its last line."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    last_frame = max((i for i, line in enumerate(lines) if line.lstrip().startswith('File "')), default=None)
    if last_frame is None:
        return lines[-1] if lines else ""
    return next((line for line in lines[last_frame + 1:] if not line.startswith((" ", "\t"))), lines[-1])
