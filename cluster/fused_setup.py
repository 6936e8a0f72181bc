"""The fused set-up on Ray: the plain :class:`~cluster.pool.RayBackend` or the fused
:class:`~cluster.fused_pool.FusedBackend`, as :func:`orchestrator.decide.fusing.setup_fusing` decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cluster.fused_pool import FusedBackend
from cluster.pool import RayBackend, Resources
from orchestrator.decide.backend import Backend
from orchestrator.decide.fusing import FusePlan, setup_fusing
from orchestrator.spec.settings import RunSettings
from orchestrator.spec.task import Task, fusing_limits


def choose_backend(
    task: Task,
    settings: RunSettings,
    storage_uri: str,
    name: str,
    stage_trials: Sequence[int],
    pending_configs: Sequence[Mapping[str, Any]],
    slots: int,
    worker_options: Mapping[str, Any],
    kept: Sequence[Any] = (),
    splits: Any = None,
    task_ref: str | None = None,
) -> tuple[Backend, FusePlan | None]:
    """The backend this sweep runs on, and the fusing decision for the controller (None when fuse is off).

    ``stage_trials``: the plan's trials per stage; ``pending_configs``: the configs of the first trials to start
    (the probe trains the first that builds), empty when no trial waits. ``kept`` (warm actors of an earlier sweep)
    serve the plain backend only; ``splits`` (the master's data in the object store) reach both. ``task_ref``: the
    task as the actors load it, when that differs from ``task.ref`` (a folder shipped over Ray Client).
    """
    ref = task_ref or task.ref
    resources = Resources(settings.cpus_per_trial, settings.gpus_per_trial, settings.resources)
    blocker, per_member = fusing_limits(task, settings.precision)
    return setup_fusing(
        settings.fuse, settings.array_size, blocker, per_member, stage_trials, pending_configs, slots,
        open_fused=lambda k: FusedBackend(ref, storage_uri, name, slots, resources, worker_options,
                                          array_size=k, per_member=per_member, splits=splits),
        open_plain=lambda: RayBackend(ref, storage_uri, name, slots, resources, dict(worker_options), kept,
                                      splits),
    )
