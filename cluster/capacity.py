"""How many trials a cluster can train at once, and whether it can fit one: pure functions of plain dicts.

An autoscaling cluster (``ray up`` with ``cluster/configs/aws.yaml``, KubeRay with autoscaling)
starts with a head that trains nothing; its workers come when trials ask for them. So slots
are sized from what the autoscaler may provide (its node types at their maximum counts), not
from what exists at second zero, and a sweep waits, for a bounded time, until some node fits a
trial; when the autoscaler's config is known and none of its node types fits one, it is refused at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class NodeType:
    """A kind of node the autoscaler may add: what each one has, and how many at most (None: no limit)."""

    resources: Mapping[str, float]
    max_count: int | None


@dataclass(frozen=True)
class Autoscaler:
    """The autoscaler's config: its node types, and the cluster-wide caps (``max_resources``) it keeps to."""

    node_types: Sequence[NodeType]
    caps: Mapping[str, float] = field(default_factory=dict)

    def offers(self) -> list[Mapping[str, float]]:
        """One node of each type it may add."""
        return [t.resources for t in self.node_types if t.max_count != 0]


UNLIMITED = 10**6  # slots of a node type with no maximum: the stage's trial count cuts them


def autoscaled_slot_count(wanted: Mapping[str, float], autoscaler: Autoscaler) -> int:
    """Trials the autoscaler's nodes hold at its maximum, each type counted per node (a trial's actor lives on one
    node: 4-CPU trials fit no 2-CPU node, however many of them), within the cluster-wide caps."""
    total = 0
    for node_type in autoscaler.node_types:
        per_node = slot_count(wanted, node_type.resources)
        if per_node:
            total += UNLIMITED if node_type.max_count is None else per_node * node_type.max_count
    capped = [math.floor(autoscaler.caps[name] / amount + 1e-9) for name, amount in wanted.items()
              if name in autoscaler.caps]
    return min([total, UNLIMITED, *capped])


def plan_slots(settings: RunSettings, nodes: Iterable[Mapping[str, float]], autoscaler: Autoscaler | None) -> int:
    """``--slots`` if given, else the larger of what the live ``nodes`` hold and what the autoscaler's node types
    hold at its maximum."""
    if settings.slots:
        return settings.slots
    wanted = per_trial(settings)
    return max(node_slot_count(wanted, nodes), autoscaled_slot_count(wanted, autoscaler) if autoscaler else 0)


def shortfall(wanted: Mapping[str, float], offers: Iterable[Mapping[str, float]]) -> str:
    """Why no offer fits ``wanted``: ``"CPU=4, but the most any has is CPU=2"``, or that none has it all together."""
    offers = list(offers)
    short = [(name, amount, max((o.get(name, 0.0) for o in offers), default=0.0)) for name, amount in wanted.items()]
    lacking = [(name, amount, most) for name, amount, most in short if most < amount]
    if not lacking:
        return f"{describe(wanted)}, which no single node has all of"
    asked = ", ".join(f"{name}={amount:g}" for name, amount, _ in lacking)
    most = ", ".join(f"{name}={most:g}" for name, _, most in lacking)
    return f"{asked}, but the most any has is {most}"


def describe(wanted: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={amount:g}" for name, amount in wanted.items())
