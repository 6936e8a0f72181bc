"""The fused backend: trials trained as fused arrays on long-lived actors, behind the Backend interface.

The driver does not change: it starts, advances and stops trials one at a time. This backend
queues those calls and, at the next ``poll``, sends each idle actor one
:meth:`worker.arrays.fused_session.FusedSession.run` call that carries all of them, so the members of
an array move together and a stop compacts the array before it trains again. A slot here is
one member: an actor holds up to ``array_size`` trials. New trials go to the actor whose
trials share their shape key (``orchestrator.decide.fusing.shape_key``), so freed members are
refilled with trials of the same shape; the actor then fits them into its arrays.

One call per actor in flight: decisions made while it runs wait for it to return (it returns
as soon as one of its trials is due for a decision, at most an epoch later).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from cluster.pool import Resources, failure_text
from orchestrator.decide import interrupt
from orchestrator.decide.backend import MAX_REPLACEMENTS, START_FAILED, Assignment, Backend, Report, slots_given_up
from orchestrator.decide.fusing import PER_MEMBER, Key, shape_key
from orchestrator.errors import CaviarError, WorkerStartError


@ray.remote
class FusedActor:
    def __init__(self, task_ref: str, storage_uri: str, sweep: str, options: Mapping[str, Any]):
        from worker.arrays.fused_session import FusedSession  # torch loads here, in the actor, once
        from worker.check.contract import describe

        # As TrialActor: a failing start is kept and raised by each call, so the master reads the user's line.
        self.start_error: str | None = None
        try:
            self.session = FusedSession(task_ref, storage_uri, sweep, options)
        except Exception as exc:
            self.start_error = describe(exc)

    def _live(self) -> Any:
        if self.start_error is not None:
            raise WorkerStartError(self.start_error)
        return self.session

    def ready(self) -> str:
        return self._live().node

    def run(self, starts: list[Assignment], targets: dict[int, int], stops: list[tuple[int, str, str]]
            ) -> tuple[list[Report], bool]:
        session = self._live()
        reports = session.run(starts, targets, stops)
        return reports, bool(session.waiting)

    def probe(self, config: Mapping[str, Any], sizes: list[int]) -> dict[str, Any]:
        return self._live().probe(config, sizes)

    def set_array_size(self, size: int) -> None:
        self._live().array_size = size


@dataclass
class _Slot:
    """One actor and what the master has decided for its trials since its last call."""

    actor: Any
    # A replacement takes trials only once it has loaded its task: after a node is lost the
    # cluster may have no room for it, and trials queued on it would wait for as long.
    readying: Any = None  # its ready() call, while in flight
    failures: int = 0  # its actors' deaths in a row
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


class FusedBackend(Backend):
    def __init__(self, task_ref: str, storage_uri: str, sweep: str, actors: int, resources: Resources,
                 worker_options: Mapping[str, Any], array_size: int = 32, engine: str = "auto",
                 per_member: Iterable[str] = PER_MEMBER):
        if array_size < 1:
            raise ValueError(f"array_size must be at least 1, got {array_size}")
        options = {**worker_options, "array_size": array_size, "engine": engine}
        self._make = lambda: FusedActor.options(**resources.actor_options(), max_concurrency=1).remote(
            task_ref, storage_uri, sweep, options)
        self.slots = [_Slot(self._make()) for _ in range(actors)]
        self.array_size = array_size
        self.per_member = frozenset(per_member)
        self.slot_of: dict[int, int] = {}
        self.key_of: dict[int, Key] = {}
        self.queued: list[Assignment] = []
        self.deaths = 0
        self.last_error = ""

    def wait_ready(self) -> list[str]:
        """Every actor's node once it has loaded the task; an actor that cannot start ends the sweep naming why."""
        try:
            return ray.get([s.actor.ready.remote() for s in self.slots])
        except (RayActorError, RayTaskError) as exc:
            text = failure_text(exc)
            if text.startswith(START_FAILED):  # the user's exception and line, not Ray's "the actor died"
                raise CaviarError(f"no trial actor could start: {text.removeprefix(START_FAILED)}") from None
            raise

    def probe(self, config: Mapping[str, Any], sizes: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> dict[str, Any]:
        """Ask one actor whether ``config``'s model fuses there and how fast each array size trains (on its device)."""
        result: dict[str, Any] = ray.get(self.slots[0].actor.probe.remote(dict(config), list(sizes)))
        return result

    def set_array_size(self, size: int) -> None:
        """Adopt an array size: before any trial starts."""
        if self.slot_of or self.queued:
            raise RuntimeError("the array size is set before the first trial starts")
        if size < 1:
            raise ValueError(f"array_size must be at least 1, got {size}")
        self.array_size = size
        ray.get([s.actor.set_array_size.remote(size) for s in self.slots])

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

    # -- placing and sending -----------------------------------------------------------------
    def _place(self) -> None:
        """Each queued trial to the actor with room that already trains its shape, else the emptiest one.

        Trials of one shape are placed together, the most numerous shape first, so they share actors.
        """
        keys = {a.trial_id: shape_key(a.config, self.per_member) for a in self.queued}
        count = Counter(keys.values())
        first = {}
        for a in self.queued:
            first.setdefault(keys[a.trial_id], len(first))
        waiting = []
        for a in sorted(self.queued, key=lambda a: (-count[keys[a.trial_id]], first[keys[a.trial_id]])):
            key = keys[a.trial_id]
            rooms = [(i, self.array_size - len(s.members)) for i, s in enumerate(self.slots) if s.ready]
            open_slots = [(i, room) for i, room in rooms if room > 0]
            if not open_slots:  # an actor died after this trial was let in: it waits for a replacement
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
            if slot.in_flight is None and slot.has_work:
                slot.in_flight = slot.actor.run.remote(slot.starts, slot.targets, slot.stops)
                slot.stopping = {tid for tid, _, _ in slot.stops}
                slot.starts, slot.targets, slot.stops, slot.waiting = [], {}, [], False

    def poll(self, timeout: float | None = None) -> list[Report]:
        self._place()
        self._dispatch()
        refs = {s.in_flight: i for i, s in enumerate(self.slots) if s.in_flight is not None}
        refs.update({s.readying: i for i, s in enumerate(self.slots) if s.readying is not None})
        if not refs:
            if not any(s.ready for s in self.slots):  # every slot given up: nothing will ever report again
                started = not self.last_error.startswith(START_FAILED)
                raise slots_given_up(self.last_error, "fused trial actor" if started else "trial actor")
            return []
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
        if ready:  # take everything else that is already done as well
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        reports: list[Report] = []
        for ref in ready:
            index = refs[ref]
            slot = self.slots[index]
            if slot.readying is not None and ref == slot.readying:
                try:
                    ray.get(ref)
                    slot.readying, slot.failures = None, 0
                except (RayActorError, RayTaskError) as exc:
                    reports += self._on_actor_failure(index, failure_text(exc))
                continue
            slot.in_flight = None
            try:
                got, slot.waiting = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                reports += self._on_actor_failure(index, failure_text(exc))
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

    def _on_actor_failure(self, index: int, error: str) -> list[Report]:
        """Replace the dead actor; every trial it held is lost (the controller retries from checkpoints)."""
        self.deaths += 1
        self.last_error = error
        slot = self.slots[index]
        ray.kill(slot.actor)  # after a task error the actor lives on, holding its resources
        lost = sorted(slot.members)
        for tid in lost:
            self.slot_of.pop(tid, None)
            self.key_of.pop(tid, None)
        if slot.failures + 1 > MAX_REPLACEMENTS:  # an actor that cannot even start is not retried forever
            self.slots[index] = _Slot(slot.actor, failures=slot.failures + 1)  # given up: never ready again
        else:
            replacement = _Slot(self._make(), failures=slot.failures + 1)
            replacement.actor.set_array_size.remote(self.array_size)  # the probe's K, not the first guess
            replacement.readying = replacement.actor.ready.remote()
            self.slots[index] = replacement
        return [Report(tid, lost=True, error=error) for tid in lost]

    def close(self, finished: bool = False, drain_seconds: float = 600.0) -> None:
        """Send queued stops (a stop persists the trial's rows and checkpoints), let calls finish, end the actors."""
        if interrupt.requested():  # Ctrl-C or SIGTERM: in-flight epochs are not waited for; resume uses checkpoints
            drain_seconds = 0.0
        self.queued = []
        for slot in self.slots:
            slot.starts, slot.targets, slot.waiting = [], {}, False
        for _ in range(2):  # the calls in flight, then the stops queued behind them
            refs = [s.in_flight for s in self.slots if s.in_flight is not None]
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=drain_seconds)
            for slot in self.slots:
                slot.in_flight = None
            self._dispatch()
        for slot in self.slots:
            ray.kill(slot.actor)
        self.slots = []
