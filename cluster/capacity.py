"""How many trials a cluster can train at once, and whether it can fit one: pure functions of plain dicts.

An autoscaling cluster (``ray up`` with ``cluster/configs/aws.yaml``, KubeRay with autoscaling)
starts with a head that trains nothing; its workers come when trials ask for them. So slots
are sized from what the autoscaler may provide (its config's maximum), not from what exists
at second zero, and a sweep waits, for a bounded time, until some node fits a trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from orchestrator.spec.settings import RunSettings


def per_trial(settings: RunSettings) -> dict[str, float]:
    """What one trial holds: ``{"CPU": 1.0, "GPU": 0.25, "accelerator_type:A100": 0.01}`` (zeros left out)."""
    wanted = {"CPU": float(settings.cpus_per_trial), "GPU": float(settings.gpus_per_trial), **settings.resources}
    return {name: float(amount) for name, amount in wanted.items() if amount}


def fits(node: Mapping[str, float], wanted: Mapping[str, float]) -> bool:
    return all(node.get(name, 0.0) >= amount for name, amount in wanted.items())


def any_fits(nodes: Iterable[Mapping[str, float]], wanted: Mapping[str, float]) -> bool:
    return any(fits(node, wanted) for node in nodes)


def slot_count(wanted: Mapping[str, float], resources: Mapping[str, float]) -> int:
    """Trials that ``resources`` (a cluster's totals) hold at once: the scarcest resource decides."""
    counts = [math.floor(resources.get(name, 0.0) / amount + 1e-9) for name, amount in wanted.items()]
    return min(counts) if counts else 0


def node_slot_count(wanted: Mapping[str, float], nodes: Iterable[Mapping[str, float]]) -> int:
    """Trials the ``nodes`` hold at once: a trial's actor lives on one node, so each node is counted on its own
    (two 1-CPU nodes hold two 0.6-CPU trials, not the three their 2 CPUs together would suggest)."""
    return sum(slot_count(wanted, node) for node in nodes)


def plan_slots(settings: RunSettings, nodes: Iterable[Mapping[str, float]], at_most: Mapping[str, float] | None
               ) -> int:
    """``--slots`` if given, else the larger of what the live ``nodes`` hold and what the autoscaler's maximum
    (its config's totals) fits."""
    if settings.slots:
        return settings.slots
    wanted = per_trial(settings)
    return max(node_slot_count(wanted, nodes), slot_count(wanted, at_most) if at_most else 0)


def describe(wanted: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={amount:g}" for name, amount in wanted.items())
