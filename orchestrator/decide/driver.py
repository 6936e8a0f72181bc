"""The master loop: carry reports from a backend to the controller and decisions back.

It waits on every running trial at once (the backend's ``poll``) and never on one, and
sends a stop at the first report after the decision, so a pruned trial stops within one
epoch of its last decision point.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.decide.backend import Backend
from orchestrator.decide.controller import Controller, stop_status
from orchestrator.decide.sweeplog import SweepLog


def fill_slots(controller: Controller, backend: Backend) -> None:
    while backend.free_slots > 0:
        assignment = controller.next_assignment()
        if assignment is None:
            return
        backend.start(assignment)


def drive(controller: Controller, backend: Backend, log: SweepLog | None = None,
          on_tick: Callable[[Controller], None] | None = None, poll_timeout: float = 1.0) -> Controller:
    """Run until the controller has nothing left to do; returns it for the results."""
    fill_slots(controller, backend)
    while not controller.finished:
        for report in backend.poll(timeout=poll_timeout):
            decision = controller.on_report(report)
            if decision is None:
                continue
            if decision.stop:
                backend.stop(report.trial_id, stop_status(decision.reason), decision.reason or "")
                controller.on_stopped(report.trial_id, decision.reason)
            else:
                backend.advance(report.trial_id, decision.until_epoch)
        fill_slots(controller, backend)
        if log is not None:
            log.flush(controller)
        if on_tick is not None:
            on_tick(controller)
    if log is not None:
        log.flush(controller, force=True)
    return controller
