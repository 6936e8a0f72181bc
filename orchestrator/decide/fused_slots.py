"""Fused arrays behind the Backend interface, whatever hosts the workers (Ray actors or child processes).

The driver does not change: it starts, advances and stops trials one at a time. This backend
queues those calls and, at the next ``poll``, sends each idle worker one ``run_call`` (see
:meth:`worker.arrays.fused_session.FusedSession.run_call`) that carries all of them, so the members
of an array move together and a stop compacts the array before it trains again. A slot here is
one member: a worker holds up to ``array_size`` trials. New trials go to the worker whose
trials share their shape key (``orchestrator.decide.fusing.shape_key``), so freed members are
refilled with trials of the same shape; the worker then fits them into its arrays.

One call per worker in flight: decisions made while it runs wait for it to return (it returns
as soon as one of its trials is due for a decision, at most an epoch later).

What hosts a worker is a subclass's business, in five methods: start one (``_new_worker``), send
it a call (``_send``, which returns a handle), wait for handles (``_wait_any``), read a handle's
answer (``_result``, raising :class:`WorkerLost` when the worker died or failed outside a trial), and
end it (``_end_worker``). ``cluster.fused_pool`` implements them with Ray, ``worker.pool.fused_processes``
with child processes of the master.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.decide import interrupt
from orchestrator.decide.backend import (
    MAX_REPLACEMENTS,
    START_FAILED,
    START_REFUSED,
    Assignment,
    Backend,
    Report,
    slots_given_up,
)
from orchestrator.decide.fusing import PER_MEMBER, Key, shape_key
from orchestrator.errors import CaviarError, exception_line


class WorkerLost(Exception):
    """A fused worker died, or raised outside any trial; the text says why (``START_FAILED`` + why, at its start)."""


@dataclass
class FusedSlot:
    """One worker and what the master has decided for its trials since its last call."""

    worker: Any
    # A replacement takes trials only once it has loaded its task: after a node is lost the
    # cluster may have no room for it, and trials queued on it would wait for as long.
    readying: Any = None  # its ready() call, while in flight
    failures: int = 0  # its workers' deaths in a row
    members: set[int] = field(default_factory=set)
    starts: list[Assignment] = field(default_factory=list)
    targets: dict[int, int] = field(default_factory=dict)
    stops: list[tuple[int, str, str]] = field(default_factory=list)
    waiting: bool = False  # its trials have epochs left before their targets
    in_flight: Any = None
    stopping: set[int] = field(default_factory=set)  # stops carried by the call in flight

    @property
    def ready(self) -> bool:
        return self.readying is None and self.failures <= MAX_REPLACEMENTS

    @property
    def has_work(self) -> bool:
        return bool(self.starts or self.targets or self.stops or self.waiting)


class FusedSlots(Backend):
    """The bookkeeping of fused workers: placing trials by shape, one call per worker, deaths and retries."""

    worker_kind = "fused trial worker"  # how errors name one worker

    def __init__(self, workers: int, array_size: int = 32, per_member: Iterable[str] = PER_MEMBER):
        if array_size < 1:
            raise ValueError(f"array_size must be at least 1, got {array_size}")
        self.array_size = array_size  # before the first worker starts: each is told its array size
        self.per_member = frozenset(per_member)
        self.slot_of: dict[int, int] = {}
        self.key_of: dict[int, Key] = {}
        self.queued: list[Assignment] = []
        self.deaths = 0
        self.last_error = ""
        self.slots = [FusedSlot(self._new_worker()) for _ in range(workers)]

    # -- what a host provides ----------------------------------------------------------------
    @abstractmethod
    def _new_worker(self) -> Any:
        """Start one worker whose session trains arrays of up to ``self.array_size`` trials."""

    @abstractmethod
    def _send(self, worker: Any, method: str, *args: Any) -> Any:
        """Call ``method`` on the worker's session (``ready`` answers its node once it has started); a handle."""

    @abstractmethod
    def _wait_any(self, handles: list[Any], timeout: float | None) -> list[Any]:
        """Block until at least one handle is answered (or ``timeout``); every handle answered by then."""

    @abstractmethod
    def _result(self, handle: Any) -> Any:
        """The answer of an answered handle; :class:`WorkerLost` when its worker died or failed."""

    @abstractmethod
    def _end_worker(self, worker: Any) -> None:
        """End the worker now (its resources go back)."""

    # -- before the first trial --------------------------------------------------------------
    def wait_ready(self) -> list[str]:
        """Every worker's node once it has loaded the task; a worker that cannot start ends the sweep naming why."""
        handles = [self._send(s.worker, "ready") for s in self.slots]
        try:
            return [str(self._result(h)) for h in handles]
        except WorkerLost as lost:
            text = str(lost)
            if text.startswith(START_FAILED):  # the user's exception and line, not "the worker died"
                why = text.removeprefix(START_REFUSED).removeprefix(START_FAILED)
                raise CaviarError(f"no trial actor could start: {why}") from None
            last = exception_line(text) or "unknown"
            raise CaviarError(f"a {self.worker_kind} died while it started: {last}") from None

    def probe(self, config: Mapping[str, Any], sizes: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> dict[str, Any]:
        """Ask one worker whether ``config``'s model fuses there and how fast each array size trains (on its device)."""
        handle = self._send(self.slots[0].worker, "probe", dict(config), list(sizes))
        try:
            result: dict[str, Any] = self._result(handle)
        except WorkerLost as lost:
            raise CaviarError(f"the fused array-size probe failed: {exception_line(str(lost))}") from None
        return result

    def set_array_size(self, size: int) -> None:
        """Adopt an array size: before any trial starts."""
        if self.slot_of or self.queued:
            raise RuntimeError("the array size is set before the first trial starts")
        if size < 1:
            raise ValueError(f"array_size must be at least 1, got {size}")
        self.array_size = size
        for handle in [self._send(s.worker, "set_array_size", size) for s in self.slots]:
            self._result(handle)

    # -- the Backend interface ---------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return sum(self.array_size for s in self.slots if s.ready) - len(self.slot_of) - len(self.queued)

    def start(self, assignment: Assignment) -> None:
        self.queued.append(assignment)

    def advance(self, trial_id: int, until_epoch: int) -> None:
        self.slots[self.slot_of[trial_id]].targets[trial_id] = until_epoch

    def stop(self, trial_id: int, status: str, reason: str) -> None:
        slot = self.slots[self.slot_of.pop(trial_id)]
        slot.members.discard(trial_id)
        slot.targets.pop(trial_id, None)
        slot.stops.append((trial_id, status, reason))
        self.key_of.pop(trial_id, None)

    def _place(self) -> None:
        """Each queued trial to the worker with room that already trains its shape, else the emptiest one.

        Trials of one shape are placed together, the most numerous shape first, so they share workers.
        """
        keys = {a.trial_id: shape_key(a.config, self.per_member) for a in self.queued}
        count = Counter(keys.values())
        first: dict[Key, int] = {}
        for a in self.queued:
            first.setdefault(keys[a.trial_id], len(first))
        waiting = []
        for a in sorted(self.queued, key=lambda a: (-count[keys[a.trial_id]], first[keys[a.trial_id]])):
            key = keys[a.trial_id]
            rooms = [(i, self.array_size - len(s.members)) for i, s in enumerate(self.slots) if s.ready]
            open_slots = [(i, room) for i, room in rooms if room > 0]
            if not open_slots:  # a worker died after this trial was let in: it waits for a replacement
                waiting.append(a)
                continue
            same = [(i, room) for i, room in open_slots
                    if any(self.key_of.get(t) == key for t in self.slots[i].members)]
            index = max(same or open_slots, key=lambda ir: ir[1])[0]
            slot = self.slots[index]
            slot.members.add(a.trial_id)
            slot.starts.append(a)
            self.slot_of[a.trial_id], self.key_of[a.trial_id] = index, key
        self.queued = waiting

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.in_flight is None and slot.has_work and slot.failures <= MAX_REPLACEMENTS:
                slot.in_flight = self._send(slot.worker, "run_call", slot.starts, slot.targets, slot.stops)
                slot.stopping = {tid for tid, _, _ in slot.stops}
                slot.starts, slot.targets, slot.stops, slot.waiting = [], {}, [], False

    def poll(self, timeout: float | None = None) -> list[Report]:
        self._place()
        self._dispatch()
        handles = [(s.in_flight, i) for i, s in enumerate(self.slots) if s.in_flight is not None]
        handles += [(s.readying, i) for i, s in enumerate(self.slots) if s.readying is not None]
        if not handles:
            if not any(s.ready for s in self.slots):  # every slot given up: nothing will ever report again
                started = not self.last_error.startswith(START_FAILED)
                raise slots_given_up(self.last_error, self.worker_kind if started else "trial actor")
            return []
        done = self._wait_any([h for h, _ in handles], timeout)
        reports: list[Report] = []
        for handle, index in handles:
            if handle not in done:  # equality: a host may hand back equal handles, not the same objects
                continue
            slot = self.slots[index]
            if slot.readying is not None and slot.readying == handle:
                try:
                    self._result(handle)
                    slot.readying, slot.failures = None, 0
                except WorkerLost as lost:
                    reports += self._on_worker_lost(index, str(lost))
                continue
            slot.in_flight = None
            try:
                got, slot.waiting = self._result(handle)
            except WorkerLost as lost:
                reports += self._on_worker_lost(index, str(lost))
                continue
            for report in got:
                if report.trial_id in slot.stopping:
                    continue  # the controller closed this trial when it decided to stop it
                if report.ended and self.slot_of.get(report.trial_id) == index:
                    del self.slot_of[report.trial_id]
                    self.key_of.pop(report.trial_id, None)
                    slot.members.discard(report.trial_id)
                reports.append(report)
        return reports

    def _on_worker_lost(self, index: int, error: str) -> list[Report]:
        """Replace the dead worker; every trial it held is lost (the controller retries from checkpoints)."""
        self.deaths += 1
        self.last_error = error
        slot = self.slots[index]
        self._end_worker(slot.worker)  # after a raised call a Ray actor lives on, holding its resources
        lost = sorted(slot.members)
        for tid in lost:
            self.slot_of.pop(tid, None)
            self.key_of.pop(tid, None)
        # A worker that cannot even start is not retried for ever, nor at all when the task refused it (a resume's
        # labels other than the sweep stored, its file gone): each replacement would load the data to refuse again.
        if slot.failures + 1 > MAX_REPLACEMENTS or error.startswith(START_REFUSED):
            self.slots[index] = FusedSlot(None, failures=max(slot.failures + 1, MAX_REPLACEMENTS + 1))  # given up
        else:
            replacement = FusedSlot(self._new_worker(), failures=slot.failures + 1)  # told the probe's K
            replacement.readying = self._send(replacement.worker, "ready")
            self.slots[index] = replacement
        return [Report(tid, lost=True, error=error) for tid in lost]

    def close(self, finished: bool = False, drain_seconds: float = 600.0) -> None:
        """Send queued stops (a stop persists the trial's rows and checkpoints), let calls finish, end the workers."""
        if interrupt.requested():  # Ctrl-C or SIGTERM: in-flight epochs are not waited for; resume uses checkpoints
            drain_seconds = 0.0
        self.queued = []
        for slot in self.slots:
            slot.starts, slot.targets, slot.waiting = [], {}, False
        for _ in range(2):  # the calls in flight, then the stops queued behind them
            self._drain([s.in_flight for s in self.slots if s.in_flight is not None], drain_seconds)
            for slot in self.slots:
                slot.in_flight = None
            self._dispatch()
        for slot in self.slots:
            if slot.worker is not None:
                self._end_worker(slot.worker)
        self.slots = []

    def _drain(self, handles: list[Any], seconds: float) -> None:
        """Wait up to ``seconds`` for ``handles`` and read their answers (a dead worker's loss changes nothing now)."""
        deadline = time.monotonic() + seconds
        while handles:
            left = deadline - time.monotonic()
            done = self._wait_any(handles, max(0.0, left))
            for handle in done:
                try:
                    self._result(handle)
                except WorkerLost:
                    pass
            handles = [h for h in handles if h not in done]
            if left <= 0:
                return
