"""Ray jobs: ship a sweep to a cluster through Ray's Job Submission API, then follow it.

A submitted sweep is ``python -m orchestrator.app.cli run TASK --address auto --executor ray --plain ...`` run
by the cluster as a Ray job: the master runs on the head node, its actors wherever Ray
places them (``caviar submit --resume SWEEP`` runs ``... resume SWEEP --task TASK ...`` the same
way). What travels with the job (its runtime environment):

- ``working_dir``: the task file's folder (or the current directory for a ``module:attr``
  task), without ``.venv``, ``caviar-runs``, ``.git``, caches and a local storage inside it;
- ``pip``: the ``requirements.txt`` in that folder, if there is one (Ray installs it in a
  per-job virtualenv that still sees the image's packages);
- ``py_modules``: caviar's own packages (``orchestrator``, ``worker``, ``cluster``) from
  this machine.

Why ship caviar's source instead of trusting the cluster's copy: the master and every
worker then run exactly the code that planned the submission: no version skew between a
laptop and an image, and a development checkout works as is. Caviar's dependencies
(torch, pyarrow, typer, ...) must be on the cluster: the configs in ``cluster/configs``
install ``caviar-sweep``, which brings them (installing torch per job would take minutes).
``ship_caviar=False`` runs the cluster's installed caviar instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from orchestrator.errors import ClusterError, ConfigError
from orchestrator.spec.task_source import SUBMITTED_FROM_ENV, TASK_DIR
from orchestrator.store.storage import redact_uri, split_query

CAVIAR_PACKAGES = ("orchestrator", "worker", "cluster")
EXCLUDES = [".venv", "venv", "caviar-runs", ".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
            ".mypy_cache", ".ipynb_checkpoints"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The dashboard refuses a request body over 100 MiB (Ray's DASHBOARD_CLIENT_MAX_SIZE) with a bare HTTP 413, after
# the folder was zipped (uncompressed) on this machine: the working dir's upload is one such request.
UPLOAD_LIMIT_BYTES = 100 * 1024**2
STOP_GRACE_SECONDS = 30


@dataclass(frozen=True)
class JobPlan:
    """Everything one submission sends: built without contacting the cluster, so it can be checked first."""

    entrypoint: str
    runtime_env: dict[str, Any]
    name: str  # the sweep's name
    results: str  # where the sweep's tables will land, credentials masked
    metadata: dict[str, str] = field(default_factory=dict)


def normalize_address(address: str | None) -> str:
    """The Job API's URL: ``http://HEAD:8265``; a bare ``HEAD:8265`` gets ``http://``."""
    address = (address or os.environ.get("RAY_API_SERVER_ADDRESS") or "").strip()
    if not address:
        raise ConfigError("option '--address': give the cluster's dashboard (Job API), e.g. http://HEAD:8265")
    if address.startswith("ray://"):
        raise ConfigError(f"option '--address': {address!r} is a Ray Client address; submit to the dashboard, "
                          "e.g. http://HEAD:8265 (or drive the sweep from here: `caviar run --address ray://...`)")
    return address if "://" in address else f"http://{address}"


# Credentials inside URIs in free text (a job's log echoes its entrypoint): values end at '&', space or quote.
_TEXT_SECRETS = re.compile(r"((?:[?&])(?:secret_key|access_key|session_token)=)[^&\s'\"]*", re.IGNORECASE)
_TEXT_PASSWORD = re.compile(r"(://[^/:@\s'\"]+:)[^/@\s'\"]*@")


def redact_text(text: str) -> str:
    """``text`` with every URI credential masked, as :func:`redact_uri` masks one URI: safe to print."""
    return _TEXT_PASSWORD.sub(r"\1***@", _TEXT_SECRETS.sub(r"\1***", text))


def is_local_path(storage: str) -> bool:
    return "://" not in storage or storage.startswith("file://")


def local_folder(storage: str) -> str:
    """The folder a local storage names: a plain path as given (a '%' in it is part of a name), a ``file://`` URI's
    path percent-decoded, as pyarrow opens it (``file:///data/runs%3F`` is ``/data/runs?``)."""
    return unquote(storage.removeprefix("file://")) if storage.startswith("file://") else storage


def _split_task(task: str, working_dir: str | None) -> tuple[str, str]:
    """``(working_dir, task as the job names it)``: a task file travels with its folder."""
    target, sep, attr = task.partition(":")
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise ConfigError(f"task {task!r}: no such file")
        folder = os.path.abspath(working_dir) if working_dir else os.path.dirname(path)
        rel = os.path.relpath(path, folder)
        if rel.startswith(".."):
            raise ConfigError(f"task {task!r}: not inside the working directory {folder!r} that travels with the job")
        return folder, rel + sep + attr
    folder = os.path.abspath(working_dir or os.getcwd())  # a module:attr task is imported from the working dir
    return folder, task


def _requirements(folder: str) -> list[str]:
    path = os.path.join(folder, "requirements.txt")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]


def _caviar_modules() -> list[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(root, package) for package in CAVIAR_PACKAGES]


# The Python that runs Ray on the head: the job's shell is a child of Ray's job supervisor, a Ray
# worker started by that Python, whose memory map names the ray package it loaded; its install
# prefix gives the interpreter (a venv, conda or the image's). Without Linux's /proc: `python`.
RAY_PYTHON = (
    'caviar_prefix=$(sed -n "s#^.* \\(/[^ ]*\\)/lib/python[0-9.]*/[a-z]*-packages/ray/_raylet[^/]*\\.so\\$#\\1#p" '
    '/proc/$PPID/maps 2>/dev/null | head -n 1); PY=python; '
    'for candidate in "$caviar_prefix/bin/python" "$caviar_prefix/bin/python3"; do '
    '[ -n "$caviar_prefix" ] && [ -x "$candidate" ] && PY=$candidate && break; done'
)
MASTER_MODULES = "typer, pyarrow, ray"  # what the master imports before any trial starts


def entrypoint(args: Sequence[str], python: str | None = None) -> str:
    """The job's shell command: pick the interpreter, check it can run caviar, then run ``args`` with it.

    ``python``: an explicit interpreter on the head (``--python``); else the one that runs Ray there.
    A wrong interpreter ends the job at once with one line naming it and the fixes, not 7 s later
    with a ModuleNotFoundError.
    """
    choose = f"PY={shlex.quote(python)}" if python else RAY_PYTHON
    refuse = ('echo "caviar: error: the head\'s Python $PY cannot import caviar\'s dependencies '
              f'({MASTER_MODULES}): pass --python PATH (an interpreter on the head that has them), start Ray from '
              'that environment, or install caviar-sweep in the image" >&2; exit 2')
    return f'{choose}; "$PY" -c "import {MASTER_MODULES}" 2>/dev/null || {{ {refuse}; }}; exec "$PY" {shlex.join(args)}'


def plan_job(task: str, *, storage: str, name: str | None = None, run_args: Sequence[str] = (),
             config: str | None = None, working_dir: str | None = None, ship_caviar: bool = True,
             python: str | None = None) -> JobPlan:
    """The entrypoint and runtime environment of a sweep job; refuses what could only fail on the cluster."""
    folder, job_task = _split_task(task, working_dir)
    if is_local_path(storage) and not os.path.isabs(local_folder(storage)):
        raise ConfigError(f"option '--storage': {storage!r} is relative, but a job runs in a temporary folder on the "
                          "cluster: give an absolute path that every node mounts, or a URI (s3://, gs://, hdfs://)")
    stem = os.path.splitext(os.path.basename(job_task.split(":")[-1] if ":" in job_task else job_task))[0]
    name = name or f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    # --executor ray: the job's trials run on the cluster's actors, whatever a --config file says
    args = ["-u", "-m", "orchestrator.app.cli", "run", job_task, "--address", "auto", "--executor", "ray", "--plain",
            "--storage", storage, "--name", name]
    if config:
        rel = os.path.relpath(os.path.abspath(config), folder)
        if not os.path.isfile(config) or rel.startswith(".."):
            raise ConfigError(f"option '--config': {config!r} must be a file inside {folder!r} (it travels along)")
        args += ["--config", rel]
    args += list(run_args)
    results = redact_uri(_child_uri(storage, name))
    metadata = {"caviar_sweep": name, "caviar_results": results}
    if job_task.partition(":")[0].endswith(".py"):  # `caviar stop` names it when the sweep's copy cannot resume alone
        metadata["caviar_task"] = os.path.join(folder, job_task)
    sweep_dir = os.path.join(local_folder(storage), name) if is_local_path(storage) else None
    return JobPlan(entrypoint(args, python), _runtime_env(folder, ship_caviar, sweep_dir, folder), name, results,
                   metadata)


def storage_excludes(folder: str, sweep_dir: str | None) -> list[str]:
    """A local storage inside the shipped folder stays behind: every submit would upload the earlier sweeps'
    weights, and Ray refuses a folder of 512 MiB. ``["/runs"]`` (anchored, as gitignore reads it), or the sweep's
    own folder when the storage is the shipped folder itself."""
    if not sweep_dir:
        return []
    storage = os.path.dirname(os.path.abspath(sweep_dir))
    left = storage if storage != folder else os.path.abspath(sweep_dir)
    rel = os.path.relpath(left, folder)
    if rel.startswith("..") or os.path.isabs(rel):
        return []
    return ["/" + rel.replace(os.sep, "/")]


def _runtime_env(folder: str, ship_caviar: bool, sweep_dir: str | None, shown_as: str) -> dict[str, Any]:
    """``shown_as``: the folder the master's errors name for its working folder (Ray's temporary copy of ``folder``)."""
    runtime_env: dict[str, Any] = {"working_dir": folder, "excludes": EXCLUDES + storage_excludes(folder, sweep_dir),
                                   # `caviar stop` sends SIGTERM; the master gets this long to write its
                                   # tables before Ray's SIGKILL (Ray's default is 3 s)
                                   "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_SECONDS),
                                                SUBMITTED_FROM_ENV: shown_as}}
    check_upload_size(folder, runtime_env["excludes"])
    requirements = _requirements(folder)
    if requirements:
        runtime_env["pip"] = requirements
    if ship_caviar:
        runtime_env["py_modules"] = _caviar_modules()
    return runtime_env


def _mib(size: int) -> str:
    return f"{size / 1024**2:.0f} MiB"


def check_upload_size(folder: str, excludes: list[str]) -> None:
    """Refuse, before anything is zipped or sent, a working dir the Job API would refuse, naming its largest files.

    The files are those Ray's own packaging walks: ``excludes``, and the folder's ``.gitignore`` / ``.rayignore``.
    """
    from pathlib import Path

    from ray._private.ray_constants import RAY_RUNTIME_ENV_IGNORE_GITIGNORE
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(folder).absolute()
    sizes: list[tuple[int, str]] = []

    def add(path: Path) -> None:
        if path.is_file():
            sizes.append((path.stat().st_size, str(path.relative_to(root))))

    include_gitignore = os.environ.get(RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"  # as Ray's job client decides
    _dir_travel(root, [_get_excludes(root, excludes)], add, include_gitignore=include_gitignore)
    total = sum(size for size, _ in sizes)
    if total <= UPLOAD_LIMIT_BYTES:
        return
    ranked = sorted(sizes, reverse=True)
    largest = ", ".join(f"{name} ({_mib(size)})" for size, name in ranked[:3] if size >= 1024**2) or ranked[0][1]
    raise ConfigError(f"working dir {folder!r}: {_mib(total)} would travel with the job, over the "
                      f"{_mib(UPLOAD_LIMIT_BYTES)} Ray's Job API accepts (largest: {largest}): move data files out "
                      "of the folder (load them from a shared path or s3://), or list them in a .rayignore there")


def check_resume_target(sweep: str) -> None:
    """A sweep a job can reach: a URI, or an absolute path (relative ones mean nothing in a job's folder)."""
    if is_local_path(sweep) and not os.path.isabs(local_folder(sweep)):
        raise ConfigError(f"option '--resume': {sweep!r} is relative, but a job runs in a temporary folder on the "
                          "cluster: give the sweep's absolute path (on a mount every node shares) or its URI")


def plan_resume_job(sweep: str, task: str, *, run_args: Sequence[str] = (), working_dir: str | None = None,
                    ship_caviar: bool = True, python: str | None = None, stored_copy: bool = False) -> JobPlan:
    """A job that continues the sweep at ``sweep`` on the cluster, as ``caviar submit`` runs a new one.

    The master runs ``caviar resume SWEEP --task TASK --address auto --executor ray --plain``; ``task`` travels
    with its folder (the user's file, or the sweep's verified stored copy staged in a folder of
    its own: :func:`orchestrator.spec.task_source.copy_stored_task`, ``stored_copy``), so every node imports the
    same bytes. The master's errors name the user's folder, or the sweep's task copy for a stored one.
    """
    check_resume_target(sweep)
    folder, job_task = _split_task(task, working_dir)
    args = ["-u", "-m", "orchestrator.app.cli", "resume", sweep, "--task", job_task, "--address", "auto",
            "--executor", "ray", "--plain", *run_args]
    name = split_query(sweep)[0].rstrip("/").rsplit("/", 1)[-1]
    results = redact_uri(sweep)
    metadata = {"caviar_sweep": name, "caviar_results": results, "caviar_resume": "1"}
    if not stored_copy and job_task.partition(":")[0].endswith(".py"):  # what `caviar stop` names to resume it again
        metadata["caviar_task"] = os.path.join(folder, job_task)
    sweep_dir = local_folder(sweep) if is_local_path(sweep) else None
    shown_as = f"{results.partition('?')[0].rstrip('/')}/{TASK_DIR}" if stored_copy else folder
    return JobPlan(entrypoint(args, python), _runtime_env(folder, ship_caviar, sweep_dir, shown_as), name, results,
                   metadata)


def _child_uri(uri: str, name: str) -> str:
    """As ``Storage.child`` names it: ``s3://b/p?q`` -> ``s3://b/p/name?q``."""
    base, sep, query = split_query(uri)
    return f"{base.rstrip('/')}/{name}{sep}{query}"


# -- talking to the cluster --------------------------------------------------------------
def enable_token_auth() -> None:
    """Send the Ray auth token when one is configured, as ``ray.init`` does when it joins a cluster."""
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token authentication
        return
    quiet = logging.getLogger(setup.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # Ray's "token authentication is enabled" notice would precede every command
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


# Ray's job client logs each package it zips and uploads, and the closing of a log stream, at INFO on stderr:
# eight lines around submit's three. Its warnings still show.
_CHATTY_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging",
                   "ray.dashboard.modules.job.sdk")


@contextlib.contextmanager
def _ray_client_warnings_only() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# Ports of a Ray head that are not its Job API: the usual mix-up when --address comes from a `ray start` printout.
_NOT_JOB_API_PORTS = {6379: "the GCS port that ray.init and `ray start --address` use",
                      10001: "the Ray Client port (ray://)"}


TOKEN_ADVICE = ("give this machine the head's token: copy the head's ~/.ray/auth_token here, or set RAY_AUTH_TOKEN "
                "/ RAY_AUTH_TOKEN_PATH (see docs/CLUSTER.md)")


def _token_hint(reason: str) -> str:
    """``; give this machine the head's token ...`` when the Job API refused a missing or wrong token."""
    lowered = reason.lower()
    return f"; {TOKEN_ADVICE}" if any(s in lowered for s in ("authenticat", "unauthorized", "token")) else ""


def _port_hint(address: str) -> str:
    """``; 6379 is ...`` when the address names a head port that never serves the Job API."""
    from urllib.parse import urlsplit

    try:
        port = urlsplit(address).port
    except ValueError:
        return ""
    if port not in _NOT_JOB_API_PORTS:
        return ""
    return f"; port {port} is {_NOT_JOB_API_PORTS[port]}: the Job API is the dashboard's, 8265 unless set otherwise"


class Jobs:
    """The Job API of one cluster; every failure becomes one :class:`ClusterError` line naming the address."""

    def __init__(self, address: str | None, headers: dict[str, str] | None = None):
        """``headers``: e.g. ``{"Authorization": "Bearer TOKEN"}`` to send a token other than this machine's."""
        self.address = normalize_address(address)
        self.headers = headers
        enable_token_auth()
        from ray.job_submission import JobSubmissionClient

        try:
            self.client = JobSubmissionClient(self.address, headers=headers)
        except Exception as exc:
            reason = _first_line(exc)
            raise ClusterError(f"Ray cluster {self.address}: cannot reach its Job API ({reason})"
                               f"{_port_hint(self.address)}{_token_hint(reason)}") from None

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            with _ray_client_warnings_only():
                return action()
        except Exception as exc:
            reason = _first_line(exc)
            raise ClusterError(f"Ray cluster {self.address}: {what} failed ({reason}){_token_hint(reason)}") from None

    def alive_nodes(self) -> int | None:
        """How many nodes are alive now, or None when the cluster does not say (the master checks again)."""
        try:
            from ray.util.state.api import StateApiClient
            from ray.util.state.common import ListApiOptions, StateResource

            client = StateApiClient(address=self.address, headers=self.headers)
            nodes = client.list(StateResource.NODES, options=ListApiOptions(filters=[("state", "=", "ALIVE")]),
                                raise_on_missing_output=False)
        except Exception:
            return None
        return len(nodes)

    def submit(self, plan: JobPlan) -> str:
        return self._call("submitting the job", lambda: self.client.submit_job(
            entrypoint=plan.entrypoint, runtime_env=plan.runtime_env, metadata=plan.metadata))

    def list(self) -> list[Any]:
        jobs = self._call("listing jobs", self.client.list_jobs)
        return sorted(jobs, key=lambda job: job.start_time or 0, reverse=True)

    def info(self, job_id: str) -> Any:
        return self._call(f"looking up job {job_id!r}", lambda: self.client.get_job_info(job_id))

    def status(self, job_id: str) -> str:
        return str(self._call(f"looking up job {job_id!r}", lambda: self.client.get_job_status(job_id)))

    def logs(self, job_id: str) -> str:
        return self._call(f"reading the logs of job {job_id!r}", lambda: self.client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        return bool(self._call(f"stopping job {job_id!r}", lambda: self.client.stop_job(job_id)))

    def follow(self, job_id: str, write: Callable[[str], None], poll_seconds: float = 1.0) -> str:
        """Stream the job's logs to ``write`` until it ends; returns its final status."""
        self.status(job_id)  # an unknown id fails here, with one line, not inside the log stream

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        self._call(f"following the logs of job {job_id!r}", lambda: asyncio.run(tail()))
        status = self.status(job_id)
        while status not in TERMINAL:  # the stream closes as the driver exits; the status follows shortly
            time.sleep(poll_seconds)
            status = self.status(job_id)
        return status

    def wait(self, job_id: str, timeout: float, poll_seconds: float = 1.0) -> str:
        deadline = time.monotonic() + timeout
        status = self.status(job_id)
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(poll_seconds)
            status = self.status(job_id)
        return status
