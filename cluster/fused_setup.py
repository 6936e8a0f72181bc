"""Whether a sweep trains its trials as fused arrays, and how wide: decided once, before the first trial.

``fuse = "off"`` keeps the plain :class:`~cluster.pool.RayBackend`, as before. With ``auto`` or
``on``, pure pre-checks come first (a task's own training loop or optimizer, mixed precision);
then the :class:`~cluster.fused_pool.FusedBackend`'s first actor, on its own device, trains two
members of the first trial's model (does it fuse at all?) and times a short epoch at a few
array sizes; ``orchestrator.decide.fusing.choose_array_size`` picks K from those numbers. A model that
cannot be fused: with ``auto`` the plain backend, a log line and a ``fusing_off`` plan saying why; with
``on`` a one-line error naming the reason (the layer, where one failed). The decision comes back as a
:class:`~orchestrator.decide.fusing.FusePlan`: the code that owns the controller applies it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cluster.fused_pool import FusedBackend
from cluster.pool import RayBackend, Resources
from orchestrator.decide.backend import Backend
from orchestrator.decide.fusing import (
    AUTO_BLOCK,
    PER_MEMBER,
    TASK_HOOKS_THAT_BLOCK,
    FusePlan,
    choose_array_size,
    fuse_blocker,
    probe_sizes,
    useful_array_size,
)
from orchestrator.errors import ConfigError
from orchestrator.spec.settings import RunSettings
from orchestrator.spec.task import Task, unfusable_reason

log = logging.getLogger("caviar")


def choose_backend(
    task: Task,
    settings: RunSettings,
    storage_uri: str,
    name: str,
    stage_trials: Sequence[int],
    first_pending: Mapping[str, Any] | None,
    slots: int,
    worker_options: Mapping[str, Any],
    kept: Sequence[Any] = (),
    splits: Any = None,
) -> tuple[Backend, FusePlan | None]:
    """The backend this sweep runs on, and the fusing decision for the controller (None when fuse is off).

    ``stage_trials``: the plan's trials per stage; ``first_pending``: the config of the first trial to start
    (the probe trains it), None when no trial waits. ``kept`` (warm actors of an earlier sweep) and
    ``splits`` (the master's data) serve the plain backend only.
    """
    resources = Resources(settings.cpus_per_trial, settings.gpus_per_trial, settings.resources)

    def plain(reason: str | None) -> tuple[Backend, FusePlan | None]:
        plan = None
        if reason is not None:
            if settings.fuse == "on":
                raise ConfigError(f"setting 'fuse': on, but these trials cannot be fused: {reason}")
            log.warning("trials train one per actor, not fused: %s", reason)
            plan = FusePlan(False, reason, {"fuse": settings.fuse})
        return RayBackend(task.ref, storage_uri, name, slots, resources, dict(worker_options), kept, splits), plan

    if settings.fuse == "off":
        return plain(None)
    fixed = settings.array_size if isinstance(settings.array_size, int) else None
    # Shapes are shared in blocks of at most `cap`: a function of the settings and the plan, never of a timing,
    # so the same seed samples the same configs; the probe only picks how many members an actor trains at once.
    cap = fixed or AUTO_BLOCK
    limit = min(useful_array_size(stage_trials, slots), cap)
    blocker = fuse_blocker([h for h in TASK_HOOKS_THAT_BLOCK if task.get(h)], settings.precision)
    blocker = blocker or unfusable_reason(task)  # other kinds, metrics, objectives: the plain path only
    if blocker is None and limit < 2:
        blocker = (
            "array_size 1: one trial per array"
            if fixed == 1
            else f"no stage has more trials than workers ({slots}): nothing to put in one array"
        )
    if blocker or first_pending is None:
        return plain(blocker)
    per_member = PER_MEMBER | frozenset(task.get("fuse_per_member") or ())
    backend = FusedBackend(
        task.ref, storage_uri, name, slots, resources, worker_options, array_size=fixed or 1, per_member=per_member
    )
    try:
        backend.wait_ready()  # the probe times one actor while the others are idle, not importing torch
        result = backend.probe(first_pending, [] if fixed else probe_sizes(limit))
        rates = result["trials_per_second"]
        if result["error"]:
            backend.close()
            return plain(result["error"])
        k = fixed or choose_array_size(
            rates, limit=limit, peak_bytes=result["peak_bytes"], free_bytes=result["free_bytes"], smallest=2
        )
        backend.set_array_size(k)
    except BaseException:
        backend.close()
        raise
    why = "array_size setting" if fixed else f"probe on {result['device']}: trials/s by size {_rounded(rates)}"
    plan = FusePlan(
        True,
        f"arrays of up to {k} trials ({why})",
        {
            "array_size": k,
            "block_cap": cap,
            "workers": slots,
            "engine": result["engine"],
            "device": result["device"],
            "trials_per_second": {str(s): r for s, r in rates.items()},
            "per_member": sorted(per_member),
        },
        block_cap=cap,
        workers=slots,
        per_member=per_member,
    )
    log.info("fused arrays of up to %d trials on %d workers (%s)", k, slots, why)
    return backend, plan


def _rounded(rates: Mapping[int, float]) -> str:
    return ", ".join(f"{k}: {r:.3g}" for k, r in sorted(rates.items()))
