"""Load the task's data on a background thread while the trials train.

The soup built after the sweep (``worker.load.soup``) needs the data in the master's process.
Loaded only then, it sat on the sweep's critical path: seconds of ``load_data`` (mostly
imports, for the digits example) after the last trial. Started once the first trial has
reported an epoch (the workers are up, so it does not slow their start), the load overlaps
training and the soup finds it done. A failure is kept and raised where the soup asks, so
it costs the soup only, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from orchestrator.decide.controller import Controller
from orchestrator.spec.task import Task


class DataPrefetch:
    def __init__(self, task: Task):
        self._load: Callable[[], Any] = task.get("load_data")
        self._thread: threading.Thread | None = None
        self._data: Any = None
        self._error: BaseException | None = None

    def on_tick(self, controller: Controller) -> None:
        """Start the load once some trial has trained an epoch; a cheap no-op after that."""
        if self._thread is None and any(t.epochs_run > 0 for t in controller.trials.values()):
            self.start()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="caviar-data-prefetch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._data = self._load()
        except Exception as exc:  # raised again in result(): only the soup, which asked for the data, fails
            self._error = exc

    def result(self) -> Any:
        """The task's ``load_data()`` output (loaded now if the sweep never got far enough to start it).

        One use per load: the reference is dropped (the soup keeps its own tensors), and a second
        call loads again.
        """
        self.start()
        assert self._thread is not None
        self._thread.join()
        data, error = self._data, self._error
        self._thread, self._data, self._error = None, None, None
        if error is not None:
            raise error
        return data


def chain_ticks(*hooks: Callable[[Controller], None] | None) -> Callable[[Controller], None] | None:
    """One ``on_tick`` calling each given hook in order (``None`` entries skipped)."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None

    def tick(controller: Controller) -> None:
        for hook in present:
            hook(controller)

    return tick
