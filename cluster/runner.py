"""A sweep's backend on Ray: connect (or start Ray locally), size the slots, build the actor pool.

The application layer drives it (``orchestrator.app.lifecycle.drive_and_finish``): the controller is
never handed to this package, only what the fused set-up reads of its plan and first trial.
"""

from __future__ import annotations

import logging
import os
import posixpath
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pyarrow.fs as pafs
import ray

from cluster import warm_pool
from cluster.actor import MASTER_CWD_ENV
from cluster.capacity import Autoscaler, NodeType, any_fits, describe, fits, per_trial, plan_slots, shortfall
from cluster.fused_setup import choose_backend
from cluster.jobs import EXCLUDES, TOKEN_ADVICE, enable_token_auth, is_local_path, local_folder, storage_excludes
from cluster.pool import RayBackend, Resources
from cluster.ray_logs import apply_deferred, ray_log_path, stderr_to_ray_log
from orchestrator.decide import interrupt
from orchestrator.decide.backend import Backend
from orchestrator.decide.fusing import FusePlan
from orchestrator.errors import CaviarError, ClusterError, ConfigError
from orchestrator.spec.exposure import exposure_warnings
from orchestrator.spec.settings import RunSettings
from orchestrator.spec.task import Task
from orchestrator.spec.task_source import TASK_DIR, name_shipped_folder
from orchestrator.store import schema
from orchestrator.store.storage import Storage

log = logging.getLogger("caviar")


def connect(address: str | None, *, dashboard: bool = False, dashboard_host: str = "127.0.0.1",
            num_cpus: int | None = None, shipped: Mapping[str, Any] | None = None) -> None:
    """Join ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:10001``), or start a private Ray here (no address).

    ``shipped``: runtime-environment fields (the task's folder as ``working_dir``: :func:`client_shipment`).
    """
    with _connecting:  # two sweeps started at once from threads of one process: one Ray, the second joins it
        if ray.is_initialized():
            return
        _connect(address, dashboard=dashboard, dashboard_host=dashboard_host, num_cpus=num_cpus, shipped=shipped)


# ray.init twice at once failed with "called ray.init twice by accident?" and took the process down with it
_connecting = threading.RLock()


def _connect(address: str | None, *, dashboard: bool, dashboard_host: str, num_cpus: int | None,
             shipped: Mapping[str, Any] | None) -> None:
    apply_deferred()  # a CLI run named a log file for Ray's chatter: used from here on
    for warning in exposure_warnings(address, dashboard, dashboard_host):
        log.warning("warning: %s", warning)
    env_vars = {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    if not shipped:  # actors work in this directory when their node has it (a shipped folder is their own instead)
        env_vars[MASTER_CWD_ENV] = os.getcwd()
    env: dict[str, Any] = {"env_vars": env_vars, **(shipped or {})}
    if not address:
        start_private_ray(env, dashboard=dashboard, dashboard_host=dashboard_host, num_cpus=num_cpus)
        return
    check_reachable(address)
    enable_token_auth()  # Ray Client and HOST:PORT send the token only in token mode: as submit/jobs/logs/stop do
    from ray.exceptions import AuthenticationError

    for attempt in range(1, CLIENT_INIT_TRIES + 1):
        try:
            # A wrong token: 20 s of Ray's C++ warnings, then caviar's one line below. Joining draws from Python's
            # global generator too, which is the caller's (as for a private Ray)
            with stderr_to_ray_log(), python_random_kept(), sigterm_stays_caviars():
                ray.init(address=address, runtime_env=env, log_to_driver=True, logging_level=logging.WARNING)
            _joined[:] = [ray.get_runtime_context().get_job_id()]
            return
        except (ConnectionError, RuntimeError, TimeoutError, AuthenticationError) as exc:
            reason = connect_failure(exc)
            if attempt < CLIENT_INIT_TRIES and reason.startswith(CLIENT_SERVER_FAILED):
                # The head's Ray Client proxy starts one server process per client; on a busy head that start
                # can miss the proxy's deadline, and the next try usually finds it ready.
                log.warning("caviar: Ray cluster %r: %s; trying again (%d of %d)", address, reason, attempt + 1,
                            CLIENT_INIT_TRIES)
                ray.shutdown()
                time.sleep(2.0 * attempt)
                continue
            said = f"; Ray's own messages: {ray_log_path()}" if ray_log_path() else ""
            raise ClusterError(f"Ray cluster {address!r}: cannot connect ({reason}){auth_hint(reason)}{said}") from None


def client_shipment(task_ref: str, settings: RunSettings, name: str) -> tuple[dict[str, Any] | None, str]:
    """``(runtime-environment fields, the task as actors load it)``. Over Ray Client (``ray://``) the master runs
    here and the actors on the cluster, whose nodes lack this machine's files: a task file's folder travels as
    Ray's ``working_dir`` (as ``caviar submit`` ships it), and actors load the file by its path inside it."""
    if not str(settings.address or "").startswith("ray://"):
        return None, task_ref
    return folder_shipment(task_ref, settings, name)


def folder_shipment(task_ref: str, settings: RunSettings, name: str) -> tuple[dict[str, Any] | None, str]:
    """A task file's folder as Ray's ``working_dir`` (without caches, venvs and a local storage inside it), and the
    file's path inside it; a module task is imported by name, as wherever it runs: nothing to ship."""
    target, sep, attr = task_ref.partition(":")
    if not target.endswith(".py"):
        return None, task_ref
    folder = os.path.dirname(os.path.abspath(target))
    storage = str(settings.storage)
    sweep_dir = os.path.join(local_folder(storage), name) if is_local_path(storage) else None
    shipped = {"working_dir": folder, "excludes": EXCLUDES + storage_excludes(folder, sweep_dir)}
    name_shipped_folder(folder)  # errors from the actors name it, not Ray's copy of it
    return shipped, os.path.basename(target) + sep + attr


_shipped_folder: list[tuple[Any, str]] = []  # (Ray job, folder) this process's connection ships, if any
_joined: list[Any] = []  # the Ray job of the connection connect() made, if it made the current one


def ship_to_other_nodes(task_ref: str, settings: RunSettings, name: str) -> str:
    """Joined by ``auto`` or ``HOST:PORT`` (on the head of a cluster), the actors on the other machines would load
    the task from this machine's path, which they lack: on a cluster of more than one node (or one an autoscaler
    grows), join again with the task's folder as ``working_dir``, as over Ray Client; the task as actors load it.

    Not inside a Ray job that ships a working_dir already (``caviar submit``: its actors have the folder), nor on a
    one-node cluster (nothing to ship to)."""
    shipped, shipped_ref = folder_shipment(task_ref, settings, name)
    if shipped is None or job_ships_working_dir():
        return task_ref
    if _joined != [ray.get_runtime_context().get_job_id()]:
        return task_ref  # a connection the caller made (a notebook's own ray.init): never ended here
    connection = (ray.get_runtime_context().get_job_id(), shipped["working_dir"])
    if _shipped_folder and _shipped_folder[0] == connection:
        return shipped_ref  # this connection ships it already (an earlier sweep of this process)
    nodes = len(alive_node_resources())
    if nodes < 2 and autoscaler_config() is None:
        return task_ref
    folder = shipped["working_dir"]
    warm_pool.end_all()
    ray.shutdown()
    try:
        connect(settings.address, dashboard=settings.dashboard, dashboard_host=settings.dashboard_host,
                shipped=shipped)
    except ValueError as exc:  # Ray refuses a package over its limit (512 MiB): the nodes must share the folder
        ray.shutdown()
        log.warning("caviar: the task's folder %s cannot travel to the cluster's other nodes (%s); they load %s, "
                    "which must be there (a shared mount): keep large data out of the task's folder", folder,
                    str(exc).splitlines()[0][:160], task_ref)
        connect(settings.address, dashboard=settings.dashboard, dashboard_host=settings.dashboard_host)
        return task_ref
    log.warning("caviar: the cluster has %s nodes: the task's folder %s travels to them as Ray's working_dir",
                nodes if nodes > 1 else "autoscaled", folder)
    _shipped_folder[:] = [(ray.get_runtime_context().get_job_id(), folder)]
    return shipped_ref


def job_ships_working_dir() -> bool:
    """Whether this process is a Ray job's driver whose job ships a working_dir (its runtime env says so)."""
    import json

    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return False
    return bool((config.get("runtime_env") or {}).get("working_dir"))


def leave_ray() -> None:
    """Shut this process's Ray down now, not at exit: a private Ray's processes take about 2 s to stop, which
    the CLI spends while its report helper draws. On a cluster this only disconnects."""
    if ray.is_initialized():
        ray.shutdown()


CLIENT_INIT_TRIES = 3
CLIENT_SERVER_FAILED = "Initialization failure from server"


def connect_failure(exc: BaseException) -> str:
    """Ray's error in one line: its first line, and where that only introduces a server's traceback, its last."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].endswith(":"):  # "Initialization failure from server:" + the head's traceback
        return f"{lines[0]} {lines[-1]}"
    return lines[0]


def start_private_ray(runtime_env: dict[str, Any], *, dashboard: bool = False, dashboard_host: str = "127.0.0.1",
                      num_cpus: int | None = None) -> None:
    """A new Ray for this sweep alone, never one found on the machine.

    Without an address ``ray.init`` would join the cluster named by ``RAY_ADDRESS`` or by
    ``/tmp/ray/ray_current_cluster`` (a ``ray start --head`` someone left running) and put the
    sweep's trials on it; ``address="local"`` always starts a fresh one.
    """
    log.warning("caviar: starting a private Ray on this machine (pass --address auto to join a running cluster, "
                "or --executor processes to train in child processes without Ray)")
    # A Ctrl-C waits the seconds Ray takes to start, then stops the sweep; ray.init draws from Python's global
    # generator, which is the caller's (a notebook's next random.random() would follow from Ray's draws)
    with interrupt.deferred_stop(), python_random_kept(), sigterm_stays_caviars():
        on_a_lasting_thread(lambda: ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host,
            runtime_env=runtime_env, log_to_driver=True, logging_level=logging.WARNING, configure_logging=False))


def on_a_lasting_thread(start: Callable[[], Any]) -> None:
    """``start()`` here on the main thread; from another thread, on a thread that lives as long as the process.

    Ray ties its processes to the thread that starts them (Linux's parent-death signal fires when that thread
    ends): a private Ray started by a sweep in a notebook's background thread died with the thread, and the next
    sweep in the process waited 60 s on Ray's vanished GCS, then Ray ended the whole process.
    """
    if threading.current_thread() is threading.main_thread():
        start()
        return
    done, failed = threading.Event(), []

    def keeper() -> None:
        try:
            start()
        except BaseException as exc:  # raised again in the caller's thread
            failed.append(exc)
        done.set()
        threading.Event().wait()  # never set: Ray's processes live while this thread does

    threading.Thread(target=keeper, name="caviar-ray-keeper", daemon=True).start()
    done.wait()
    if failed:
        raise failed[0]


@contextmanager
def sigterm_stays_caviars() -> Iterator[None]:
    """Within a sweep, ``ray.init`` does not install its own SIGTERM handler (``sys.exit(15)``, set as it begins): a
    SIGTERM while Ray starts exited 15 half-way through it, past caviar's held stop, with no resume line. Outside a
    sweep (or in a Ray without that hook) nothing changes."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    original = getattr(utils, "set_sigterm_handler", None)
    if not interrupt.handling() or original is None:
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original


@contextmanager
def python_random_kept() -> Iterator[None]:
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def auth_hint(reason: str) -> str:
    """What to do when the cluster asked for a token this process did not send (or sent a wrong one)."""
    # The port answered (check_reachable), so a refusal now is most often a missing or wrong token;
    # Ray says so only in its own log lines ("InvalidAuthToken"), not in the exception.
    signs = ("authenticat", "authoriz", "token", "timeout", "failed to connect", "initialization failure")
    if not any(sign in reason.lower() for sign in signs):
        return ""
    return f"; if the cluster uses token authentication, {TOKEN_ADVICE}"


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
    """``--slots``, else what the cluster fits: now, or at its autoscaler's maximum if that is larger. ``--slots``
    above that is cut to it: an actor that can never find room would hold its queued trial for ever (fused arrays
    wait for every actor before the first trial), and a cluster that may grow is counted at its maximum already."""
    now, autoscaler = alive_node_resources(), autoscaler_config()
    slots = plan_slots(settings, now, autoscaler)
    if slots < 1:
        raise ConfigError(f"setting 'slots': the cluster cannot fit one trial ({describe(per_trial(settings))})")
    fit = plan_slots(replace(settings, slots=None), now, autoscaler)
    if slots > fit:
        log.warning("caviar: setting 'slots': %d, but the cluster fits %d trials at once (%s each); using %d",
                    slots, fit, describe(per_trial(settings)), fit)
    return min(slots, fit)


def autoscaler_config() -> Autoscaler | None:
    """The node types the autoscaler may add and its caps, as the cluster publishes them (Ray's ClusterConfig in the
    GCS); None without one (no autoscaler, or one that does not publish it: size from what exists)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a Ray without it
        return None
    if config is None or not config.node_group_configs:
        return None
    types = [NodeType({k: float(v) for k, v in group.resources.items()}, None if group.max_count < 0
                      else int(group.max_count)) for group in config.node_group_configs]
    return Autoscaler(types, {k: float(v) for k, v in config.max_resources.items()})


def alive_node_resources() -> list[dict[str, float]]:
    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]


def wait_for_room(settings: RunSettings, *, can_grow: bool, poll_seconds: float = 5.0,
                  say_every: float = 30.0) -> None:
    """Return once some node fits a trial; on a cluster that may grow, wait up to ``wait_for_cluster_seconds``.

    Right after ``ray up`` an autoscaling cluster has only its head (``CPU: 0`` in the configs):
    the workers come when the sweep's actors ask for them, minutes later.
    """
    wanted = per_trial(settings)
    alive = alive_node_resources()
    if any_fits(alive, wanted):
        return
    autoscaler = autoscaler_config() if can_grow else None
    if autoscaler is not None and not any_fits(autoscaler.offers(), wanted):  # it would wait the whole limit
        raise ConfigError(f"setting 'slots': no node of the cluster, nor any node type its autoscaler may add, can fit "
                          f"one trial ({shortfall(wanted, [*alive, *autoscaler.offers()])}); ask for less per trial or "
                          "give the autoscaler a node type that fits")
    limit = settings.wait_for_cluster_seconds
    if not can_grow or limit <= 0:
        raise ConfigError(f"setting 'slots': no node of the cluster can fit one trial ({describe(wanted)})")
    request_resources(bundles=[wanted])  # no actor exists yet to ask for it: ask the autoscaler (if any) now
    try:
        _wait(wanted, limit, poll_seconds, say_every)
    finally:
        request_resources(bundles=[])  # from here on the sweep's actors ask for what they need


def _wait(wanted: dict[str, float], limit: float, poll_seconds: float, say_every: float) -> None:
    start = time.monotonic()
    said = -say_every
    while not any_fits(alive_node_resources(), wanted):
        waited = time.monotonic() - start
        if waited >= limit:
            raise ConfigError(f"setting 'wait_for_cluster_seconds': no node fit one trial ({describe(wanted)}) in "
                              f"{limit:g} s; check the autoscaler (`ray status`) or ask for less per trial")
        if waited - said >= say_every:
            log.warning("caviar: waiting for the cluster to fit one trial (%s): %.0f s of %g s; an autoscaler may "
                        "be adding nodes (setting wait_for_cluster_seconds)", describe(wanted), waited, limit)
            said = waited
        time.sleep(poll_seconds)


def request_resources(bundles: list[dict[str, float]]) -> None:
    try:
        from ray.autoscaler.sdk import request_resources as ask

        ask(bundles=bundles)
    except Exception:  # no autoscaler: nothing to ask, the wait still applies
        pass


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
    if len(alive) == 1 and fits(alive[0].get("Resources", {}), per_trial(settings)):
        return
    where = (f"the Ray cluster has {len(alive)} nodes" if len(alive) > 1
             else "this Ray node cannot fit a trial, so trials will run on nodes added later")
    raise ConfigError(f"setting 'storage': {settings.storage!r} is a local path but {where}; use a URI every "
                      "node reaches (s3://, gs://, hdfs://) or, if the path is a shared mount (NFS) on every node, "
                      "pass --shared-storage")


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


def forget_new_sweep(sweep: Storage) -> None:
    """A start refused before any trial leaves nothing behind: the sweep row and the task copy go."""
    sweep.delete(schema.SWEEP_PATH)
    sweep.delete_dir(posixpath.dirname(schema.SWEEP_PATH))
    sweep.delete_dir(TASK_DIR)


def shared_data(splits: Any) -> Any:
    """The master's loaded, checked splits in Ray's object store, so no actor calls ``load_data`` again.

    Only in-memory data up to ``SHARE_LIMIT_BYTES``: streamed Datasets are read by each actor,
    and larger arrays are cheaper to load on every node than to push from this process.
    """
    if splits is None or splits.streams:
        return None
    size = sum(t.numel() * t.element_size() for t in vars(splits).values() if hasattr(t, "element_size"))
    return ray.put(splits) if size <= SHARE_LIMIT_BYTES else None


SHARE_LIMIT_BYTES = 512 * 2**20


def open_backend(task: Task, settings: RunSettings, root: Storage, name: str, sweep: Storage,
                 stage_trials: Sequence[int], pending_configs: Sequence[Mapping[str, Any]],
                 resuming: bool = False, splits: Any = None) -> tuple[Backend, FusePlan | None]:
    """The backend the trials run on, and the fused set-up's decision for the controller to apply.

    A refusal (no cluster, no room, fusing asked for but impossible) comes before any trial: a new
    sweep's row and task copy go, so the corrected re-run needs no --overwrite; a resumed sweep keeps its files.
    Actors kept warm by this process's last sweep of the same task serve the plain backend
    (:mod:`cluster.warm_pool`); ``splits`` (the data the master checked) travel to new and kept actors alike.
    """
    kept: list[Any] = []
    try:
        shipped, task_ref = client_shipment(task.ref, settings, name)
        connect(settings.address, dashboard=settings.dashboard, dashboard_host=settings.dashboard_host,
                shipped=shipped)
        check_storage_reach(root, settings)
        wait_for_room(settings, can_grow=bool(settings.address))  # a Ray started here never grows
        if shipped is None and settings.address:
            task_ref = ship_to_other_nodes(task.ref, settings, name)
        # never more actors than the largest stage trains at once: each extra one imports torch and loads the data
        # for nothing, and on an autoscaling cluster asks for a node of its own
        slots = min(slots_for(settings), max(stage_trials, default=1))
        worker_options = settings.worker_options(actor_device(settings))
        resources = Resources(settings.cpus_per_trial, settings.gpus_per_trial, settings.resources)
        key = warm_pool.pool_key(task, resources.actor_options(), worker_options["device"], worker_options["threads"])
        kept = warm_pool.take(key)
        where = root.location  # workers run elsewhere (their own cwd): a local path goes absolute
        # Over Ray Client the client server unpickles what is put: with a folder just shipped, its first torch
        # import crashed it ('Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so'); the actors load the data
        shared = shared_data(splits) if shipped is None else None
        if shared is None and splits is not None:  # actors load the data: standardised with the master's statistics
            from worker.train.session import what_workers_are_sent

            worker_options.update(what_workers_are_sent(splits))
        # fused arrays when the model allows (cluster/fused_setup.py), else one trial per actor
        backend, plan = choose_backend(task, settings, where, name, stage_trials, pending_configs, slots,
                                       worker_options, kept[:slots], shared, task_ref=task_ref)
    except CaviarError:
        _end(kept)
        if not resuming:
            forget_new_sweep(sweep)
        raise
    used = kept[:slots] if isinstance(backend, RayBackend) else []
    _end([a for a in kept if not any(a is u for u in used)])
    if isinstance(backend, RayBackend):
        backend.keep_warm(key, settings.keep_workers)
    return backend, plan


def _end(actors: list[Any]) -> None:
    for actor in actors:
        ray.kill(actor)
