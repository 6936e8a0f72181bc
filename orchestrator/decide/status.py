"""A trial's status and the moves between statuses the controller may make (as Optuna's ``TrialState``).

::

    pending ──start──> running ──> completed | pruned | failed      (ended: final)
       ^                  │
       └──retry/resume────┤
                          └──Ctrl-C──> interrupted ──resume──> pending | running (closed at once)

``TrialStatus`` is a ``str`` enum: the trials table stores its value, and comparing with the
plain word (``status == "completed"``) still holds.
"""

from __future__ import annotations

from enum import StrEnum

from orchestrator.errors import IllegalTransition, StorageError


class TrialStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # written when a signal stopped the sweep; a resume takes it up

    # Hash as the word, as equality already compares: a status and its word are one key in a set or dict
    # (Enum hashes the member's name, so TrialStatus.PRUNED in {"pruned"} would be False).
    __hash__ = str.__hash__

    @property
    def ended(self) -> bool:
        return self in ENDED


ENDED = frozenset({TrialStatus.COMPLETED, TrialStatus.PRUNED, TrialStatus.FAILED})
SUCCEEDED = frozenset({TrialStatus.COMPLETED, TrialStatus.PRUNED})  # ended with a result

LEGAL = {
    TrialStatus.PENDING: frozenset({TrialStatus.RUNNING}),
    # back to pending: a lost worker's retry, or a resume that requeues the trial from its checkpoint
    TrialStatus.RUNNING: frozenset({*ENDED, TrialStatus.PENDING, TrialStatus.INTERRUPTED}),
    TrialStatus.INTERRUPTED: frozenset({TrialStatus.PENDING, TrialStatus.RUNNING}),
    TrialStatus.COMPLETED: frozenset(),
    TrialStatus.PRUNED: frozenset(),
    TrialStatus.FAILED: frozenset(),
}


def checked_move(trial_id: int, old: TrialStatus | str, new: TrialStatus | str) -> TrialStatus:
    """``new`` if a trial may go there from ``old`` (staying put is allowed); else IllegalTransition."""
    old, new = TrialStatus(old), TrialStatus(new)
    if new != old and new not in LEGAL[old]:
        raise IllegalTransition(f"trial {trial_id}: {old} -> {new} is not a legal move")
    return new


def stored_status(value: object, where: str) -> TrialStatus:
    """A status read back from a table; an unknown word is named (the table is not one caviar wrote)."""
    try:
        return TrialStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in TrialStatus)
        raise StorageError(f"{where}: unknown trial status {value!r} (one of {known})") from None
