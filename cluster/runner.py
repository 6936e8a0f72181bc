"""Run a sweep on Ray: connect (or start Ray locally), build the actor pool, drive it."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs
import ray

from cluster.fused_setup import choose_backend
from cluster.jobs import ClusterError
from orchestrator import schema
from orchestrator.controller import Controller
from orchestrator.driver import drive
from orchestrator.errors import CaviarError, ConfigError
from orchestrator.exposure import exposure_warnings
from orchestrator.settings import RunSettings
from orchestrator.storage import Storage
from orchestrator.sweeplog import SweepLog
from orchestrator.task import Task

log = logging.getLogger("caviar")


def connect(address: str | None, *, dashboard: bool = False, dashboard_host: str = "127.0.0.1",
            num_cpus: int | None = None) -> None:
    """Join ``address`` (``auto``, ``ray://host:10001``), or start Ray here (a dashboard only on request)."""
    if ray.is_initialized():
        return
    for warning in exposure_warnings(address, dashboard, dashboard_host):
        log.warning("warning: %s", warning)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}}
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, runtime_env=env, log_to_driver=True, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise ClusterError(f"Ray cluster {address!r}: cannot connect ({reason})") from None
        return
    ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host, runtime_env=env,
             log_to_driver=True, logging_level=logging.WARNING, configure_logging=False)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, on a ``host:port`` nobody listens on (ray.init would retry for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ValueError:
        raise ClusterError(f"Ray cluster {address!r}: expected auto, HOST:PORT or ray://HOST:PORT") from None
    except OSError as exc:
        raise ClusterError(f"Ray cluster {address!r}: cannot connect ({exc.strerror or exc})") from None


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


def check_storage_reach(root: Storage, settings: RunSettings) -> None:
    """Refuse, before any trial starts, a local storage path that some trial's node may not have.

    Workers write their rows and checkpoints straight to the storage, so a path only one node
    has would scatter the sweep over the nodes' disks. A local path is fine on a one-node
    cluster that fits a trial; on more nodes, or on a head that fits none (its trials go to
    nodes the autoscaler adds), it must be declared a shared mount.
    """
    if not isinstance(root.fs, pafs.LocalFileSystem) or settings.shared_storage:
        return
    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) == 1 and _fits(alive[0].get("Resources", {}), settings):
        return
    where = (f"the Ray cluster has {len(alive)} nodes" if len(alive) > 1
             else "this Ray node cannot fit a trial, so trials will run on nodes added later")
    raise ConfigError(f"setting 'storage': {settings.storage!r} is a local path but {where}; use a URI every "
                      "node reaches (s3://, gs://, hdfs://) or, if the path is a shared mount (NFS) on every node, "
                      "pass --shared-storage")


def _fits(resources: dict[str, float], settings: RunSettings) -> bool:
    wanted = {"CPU": settings.cpus_per_trial, "GPU": settings.gpus_per_trial, **settings.resources}
    return all(resources.get(name, 0.0) >= amount for name, amount in wanted.items() if amount)


def actor_device(settings: RunSettings) -> str:
    """``auto`` means CUDA only for actors that hold a GPU share.

    Ray narrows CUDA_VISIBLE_DEVICES to an actor's assigned GPUs (so ``cuda`` is cuda:0, its
    own GPU), but leaves it unset for actors with no GPU: those would all land on GPU 0 unaccounted.
    """
    if settings.device == "auto" and not settings.gpus_per_trial:
        if ray.cluster_resources().get("GPU"):
            log.warning("the cluster has GPUs but gpus_per_trial is 0: trials train on CPU "
                        "(pass --gpus-per-trial, e.g. 0.25 to pack four trials on a GPU)")
        return "cpu"
    return settings.device


def execute(task: Task, settings: RunSettings, root: Storage, name: str, controller: Controller, sweep_log: SweepLog,
            on_tick: Callable[[Controller], None] | None = None, resuming: bool = False) -> None:
    try:
        connect(settings.address, dashboard=settings.dashboard, dashboard_host=settings.dashboard_host)
        check_storage_reach(root, settings)
    except CaviarError:
        if not resuming:  # a new sweep: nothing ran, so the corrected re-run needs no --overwrite
            sweep_log.storage.delete(schema.SWEEP_PATH)
        raise
    slots = slots_for(settings)
    worker_options: dict[str, Any] = {
        "device": actor_device(settings), "precision": settings.precision, "keep_best": settings.keep_best,
        "checkpoint_seconds": settings.checkpoint_seconds, "max_loss_ratio": settings.max_loss_ratio,
        "threads": max(1, int(settings.cpus_per_trial)), "prediction_dtype": settings.prediction_dtype,
    }
    try:  # fused arrays when the model allows (cluster/fused_setup.py), else one trial per actor
        # A relative local path means our folder: workers run elsewhere (their own cwd), so they get it absolute.
        where = root.uri if "://" in root.uri else root.root
        backend = choose_backend(task, settings, where, name, controller, slots, worker_options)
    except CaviarError:
        if not resuming:  # refused before any trial: the corrected re-run needs no --overwrite
            sweep_log.storage.delete(schema.SWEEP_PATH)
        raise
    try:
        drive(controller, backend, sweep_log, on_tick=on_tick)
    finally:
        backend.close()
