"""The configs that try each searched parameter's ends before a sweep starts (worker/check/edges.py builds them).

The contract check builds one config. A range whose high end the model cannot take (more pooling blocks than
the inputs have pixels), or a choice option ``build_model`` does not know, fails only the trials that draw it,
and only once the sweep has started. Each probe here moves one parameter to one end of its range (or to one
option of a choice) and keeps the checked config's other values. Pure: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.search.space import Choice, SearchSpace

# What caviar's own loop reads (worker/train/optim.py, trainer.py), not build_model: probing them builds the same model.
LOOP_KEYS = frozenset({
    "optimizer", "lr", "weight_decay", "momentum", "beta1", "beta2", "eps", "rho", "schedule", "decay_rate",
    "step_epochs", "patience", "batch_size", "ema_decay", "grad_clip",
})
MAX_OPTIONS = 16  # a choice's options probed, at most


@dataclass(frozen=True)
class Probe:
    param: str
    value: Any
    where: str  # "the low end of [1, 6]", "an option of choice([...])"
    config: dict[str, Any]


def edge_probes(space: SearchSpace, base: Mapping[str, Any]) -> list[Probe]:
    """One probe per searched parameter's end or option that differs from ``base`` (a config of ``space``).

    A parameter inactive in ``base`` is left out (its condition's parent decides); a probe that activates
    conditional parameters gives them their range's middle.
    """
    probes = []
    for name, dist in space.searched.items():
        if name in LOOP_KEYS or base.get(name) is None:
            continue
        if isinstance(dist, Choice):
            values = [(v, f"an option of {dist.describe()}") for v in dist.options[:MAX_OPTIONS]]
        else:
            bounds = f"[{dist.low:g}, {dist.high:g}]"
            values = [(dist.low, f"the low end of {bounds}"), (dist.high, f"the high end of {bounds}")]
        for value, where in values:
            if value == base[name]:
                continue
            middles = {k: d.from_unit(0.5) for k, d in space.searched.items() if base.get(k) is None}
            config = space.deactivate({**base, **middles, name: value})
            probes.append(Probe(name, value, where, config))
    return probes
