"""Run a sweep on Ray: connect (or start Ray locally), build the actor pool, drive it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import ray

from cluster.pool import RayBackend, Resources
from orchestrator.controller import Controller
from orchestrator.driver import drive
from orchestrator.errors import ConfigError
from orchestrator.settings import RunSettings
from orchestrator.storage import Storage
from orchestrator.sweeplog import SweepLog
from orchestrator.task import Task

log = logging.getLogger("caviar")


def connect(address: str | None, *, dashboard: bool = False, dashboard_host: str = "127.0.0.1",
            num_cpus: int | None = None) -> None:
    """Join ``address`` (``auto``, ``ray://host:10001``), or start Ray here, listening on loopback only."""
    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True, logging_level=logging.WARNING)
        return
    if dashboard_host not in ("127.0.0.1", "localhost"):
        log.warning("the Ray dashboard will listen on %s: anyone who reaches it can run code on this machine", dashboard_host)
    ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host, runtime_env=env,
             log_to_driver=True, logging_level=logging.WARNING, configure_logging=False)


def slots_for(settings: RunSettings) -> int:
    if settings.slots:
        return settings.slots
    cpus = ray.cluster_resources().get("CPU", 1.0)
    slots = int(cpus // settings.cpus_per_trial)
    if settings.gpus_per_trial:
        slots = min(slots, int(ray.cluster_resources().get("GPU", 0.0) // settings.gpus_per_trial))
    if slots < 1:
        raise ConfigError("setting 'slots': the cluster cannot fit one trial with the requested resources")
    return slots


def execute(task: Task, settings: RunSettings, root: Storage, name: str, controller: Controller, sweep_log: SweepLog,
            on_tick: Callable[[Controller], None] | None = None) -> None:
    connect(settings.address, dashboard=settings.dashboard, dashboard_host=settings.dashboard_host)
    slots = slots_for(settings)
    worker_options: dict[str, Any] = {
        "device": settings.device, "keep_best": settings.keep_best,
        "checkpoint_seconds": settings.checkpoint_seconds, "max_loss_ratio": settings.max_loss_ratio,
        "threads": max(1, int(settings.cpus_per_trial)),
    }
    backend = RayBackend(task.ref, root.uri, name, slots,
                         Resources(settings.cpus_per_trial, settings.gpus_per_trial, settings.resources), worker_options)
    try:
        drive(controller, backend, sweep_log, on_tick=on_tick)
    finally:
        backend.close()
