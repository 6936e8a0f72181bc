"""The actor-pool backend: one long-lived actor per slot, ``ray.wait`` over every call.

Calls to one actor run in order, so a stop followed by the next trial's start can be sent
back to back: the slot is reused without waiting for the stop to finish.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from cluster import warm_pool
from cluster.actor import TrialActor
from orchestrator.decide import interrupt
from orchestrator.decide.backend import MAX_REPLACEMENTS, START_FAILED, Assignment, Backend, Report, slots_given_up
from orchestrator.errors import WorkerStartError

log = logging.getLogger("caviar")


@dataclass(frozen=True)
class Resources:
    """What one trial (one actor) holds: CPUs, GPUs (fractional allowed), custom resources."""

    cpus: float = 1.0
    gpus: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)

    def actor_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.custom:
            opts["resources"] = dict(self.custom)
        return opts


@dataclass
class _Call:
    kind: str  # "run", "stop", or "ready" (a replacement actor has loaded its task: its slot can take a trial)
    trial_id: int
    slot: int
    actor: Any


def failure_text(exc: Exception) -> str:
    """What a failed actor call says: the user's exception when the worker could not start, else Ray's error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, WorkerStartError):
        return f"{START_FAILED}{cause}"
    return f"{type(exc).__name__}: {exc}"


def node_of(actor: Any) -> str:
    """The node a (dead) actor was placed on, from Ray's state API; ``?`` when Ray cannot say in seconds."""
    try:
        from ray.util.state import get_actor

        state = get_actor(actor._actor_id.hex(), timeout=5)
        return str(state.node_id) if state and state.node_id else "?"
    except Exception:
        return "?"


class RayBackend(Backend):
    """``kept`` actors (from :mod:`cluster.warm_pool`, same task and resources) are rebound to this sweep
    instead of starting new ones; ``splits`` is the master's loaded data in Ray's object store, or None."""

    def __init__(self, task_ref: str, storage_uri: str, sweep: str, slots: int, resources: Resources,
                 worker_options: Mapping[str, Any], kept: Sequence[Any] = (), splits: Any = None):
        self._make = lambda: TrialActor.options(**resources.actor_options(), max_concurrency=1).remote(
            task_ref, storage_uri, sweep, dict(worker_options), splits)
        kept = list(kept)[:slots]
        self.actors = kept + [self._make() for _ in range(slots - len(kept))]
        self.idle = list(range(slots))
        self.slot_of: dict[int, int] = {}
        self.calls: dict[Any, _Call] = {}
        self.deaths = 0
        self.failures = [0] * slots  # deaths in a row per slot, reset when its replacement is ready
        self.last_error = ""
        self.node_of_slot: list[str | None] = [None] * slots  # the Ray node id each slot's actor reported
        for slot, actor in enumerate(self.actors):  # runs before the slot's first trial: a lost node is named
            first = (actor.rebind.remote(storage_uri, sweep, dict(worker_options), splits) if slot < len(kept)
                     else actor.ready.remote())
            self.calls[first] = _Call("node", -1, slot, actor)
        self.attempt_of: dict[int, int] = {}
        self.warm_key: Any = None
        self.keep_seconds = 0.0

    def wait_ready(self) -> list[str]:
        """Block until every actor has loaded its task and data; returns their node names."""
        nodes = ray.get([a.ready.remote() for a in self.actors])
        self.node_of_slot = list(nodes)
        return nodes

    @property
    def free_slots(self) -> int:
        return len(self.idle)

    def _call(self, kind: str, trial_id: int, slot: int, ref: Any) -> None:
        self.calls[ref] = _Call(kind, trial_id, slot, self.actors[slot])

    def start(self, assignment: Assignment) -> None:
        slot = self.idle.pop()
        self.slot_of[assignment.trial_id] = slot
        self.attempt_of[assignment.trial_id] = assignment.attempt
        self._call("run", assignment.trial_id, slot, self.actors[slot].start.remote(assignment))

    def advance(self, trial_id: int, until_epoch: int) -> None:
        slot = self.slot_of[trial_id]
        self._call("run", trial_id, slot, self.actors[slot].advance.remote(trial_id, until_epoch))

    def stop(self, trial_id: int, status: str, reason: str) -> None:
        slot = self.slot_of.pop(trial_id)
        self._call("stop", trial_id, slot, self.actors[slot].stop.remote(trial_id, status, reason))
        self.idle.append(slot)

    def poll(self, timeout: float | None = None) -> list[Report]:
        if not self.calls:
            if not self.idle and not self.slot_of:  # every slot given up: nothing will ever report again
                raise slots_given_up(self.last_error, "trial actor")
            return []
        ready, _ = ray.wait(list(self.calls), num_returns=1, timeout=timeout)
        if ready:  # take everything else that is already done as well
            ready, _ = ray.wait(list(self.calls), num_returns=len(self.calls), timeout=0)
        reports: list[Report] = []
        for ref in ready:
            call = self.calls.pop(ref)
            try:
                report: Report = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                error = failure_text(exc)
                if call.kind == "node" and not error.startswith(START_FAILED):
                    # Died before its first call of this sweep returned (a kept actor killed while idle): calls run
                    # in order, so its slot's trial never began there and spends no attempt.
                    error = START_FAILED + error
                reports.extend(self._on_actor_failure(call, error))
                continue
            if call.kind == "node":
                if self.actors[call.slot] is call.actor:
                    self.node_of_slot[call.slot] = str(report)
                continue
            if call.kind == "ready":
                if self.actors[call.slot] is call.actor:
                    self.node_of_slot[call.slot] = str(report)
                    self.failures[call.slot] = 0
                    self.idle.append(call.slot)
                continue
            if getattr(report, "node", None):  # the first actors report their node with their first trial
                self.node_of_slot[call.slot] = report.node
            if call.kind == "stop":
                continue  # the controller closed this trial when it decided to stop it
            if report.ended and self.slot_of.get(call.trial_id) == call.slot:
                del self.slot_of[call.trial_id]
                self.idle.append(call.slot)
            reports.append(report)
        return reports

    def _on_actor_failure(self, call: _Call, error: str) -> list[Report]:
        """Replace a dead actor once, however many of its calls fail; its trial is lost.

        The slot takes a trial again only when the replacement is ready: after a node is lost
        the cluster may have no room for it (it waits for the autoscaler, or forever), and a
        trial queued on it would wait as long instead of running on the actors left.
        """
        if self.actors[call.slot] is not call.actor:
            return []
        self.deaths += 1
        self.failures[call.slot] += 1
        self.last_error = error
        ray.kill(call.actor)  # "unavailable" may still be alive somewhere: free what it holds
        lost = [tid for tid, slot in self.slot_of.items() if slot == call.slot]
        for tid in lost:
            del self.slot_of[tid]
        if call.slot in self.idle:
            self.idle.remove(call.slot)
        if lost:  # one line a user can act on, among Ray's own noise about the dead node
            step = 0 if error.startswith(START_FAILED) else 1  # a worker that never started ran no attempt
            moved = ", ".join(f"{tid} (attempt {self.attempt_of.get(tid, 0)} -> {self.attempt_of.get(tid, 0) + step})"
                              for tid in lost)
            log.warning("caviar: lost the trial actor on node %s (%s); trial %s goes back to the queue",
                        self.node_of_slot[call.slot] or node_of(call.actor), error.splitlines()[0][:160], moved)
        if self.failures[call.slot] <= MAX_REPLACEMENTS:  # an actor that cannot even start is not retried forever
            self.actors[call.slot] = self._make()
            self.calls[self.actors[call.slot].ready.remote()] = _Call("ready", -1, call.slot, self.actors[call.slot])
        return [Report(tid, lost=True, error=error) for tid in lost]

    def keep_warm(self, key: Any, seconds: float) -> None:
        """When the sweep finishes cleanly, hand the actors to :mod:`cluster.warm_pool` under ``key``."""
        self.warm_key, self.keep_seconds = key, seconds

    def close(self, finished: bool = False, drain_seconds: float = 600.0) -> None:
        """Let queued calls (a stop persists the trial's rows and checkpoints) finish, then end the actors.

        The actors of a sweep that ``finished`` cleanly (every call answered, no trial left on them)
        stay alive in :mod:`cluster.warm_pool` for the next sweep when :meth:`keep_warm` asked for it.
        """
        if interrupt.requested():  # Ctrl-C or SIGTERM: in-flight epochs are not waited for; resume uses checkpoints
            drain_seconds = 0.0
        pending = [ref for ref, call in self.calls.items() if call.kind != "ready"]  # a replacement may never start
        done: list[Any] = []
        if pending:
            done, _ = ray.wait(pending, num_returns=len(pending), timeout=drain_seconds)
        keep = finished and self.keep_seconds > 0 and not interrupt.requested()
        # Only actors whose every call answered: a failed call leaves its actor in doubt.
        clean = keep and len(done) == len(pending) and not self.slot_of and all(_answered(ref) for ref in done)
        unready = {id(call.actor) for call in self.calls.values() if call.kind == "ready"}
        self.calls.clear()
        kept = [a for a in self.actors if id(a) not in unready] if clean else []
        for actor in self.actors:
            if not any(actor is k for k in kept):
                ray.kill(actor)
        self.actors = []
        if kept:
            warm_pool.keep(self.warm_key, kept, self.keep_seconds)


def _answered(ref: Any) -> bool:
    try:
        ray.get(ref, timeout=0)
        return True
    except Exception:
        return False
