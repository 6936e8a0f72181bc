"""A sweep carries its task: a copy of the task's source (and TOML config) with sha256s, and the trust rule.

Layout under ``<storage>/<sweep>/``::

    task/manifest.json     the portable reference, the copies' names and sha256s (one small JSON object), and
                           the sha256 of each module beside the task file that it imports (not copied)
    task/digits_mlp.py     the task file exactly as the sweep ran it
    task/config.toml       the ``--config`` TOML, when one was given

The folder is not a table (nothing reads it as Parquet), so the tables stay uniform.

Loading a model, building a soup or resuming all run a task's code. The rule, as Hugging
Face's ``trust_remote_code``: the code that runs is one the caller chose, either their own
task (``task=`` / ``--task``) or, only when they opt in (``trust_task_code=True`` /
``--trust-task-code``), the copy stored in the sweep after its sha256 matches the manifest.
A path read from a table never resolves against the caller's working directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import sys
from dataclasses import asdict, dataclass
from types import ModuleType

from orchestrator.errors import StorageError, TaskError
from orchestrator.spec.local_modules import local_modules, read_if_there
from orchestrator.spec.task import Task, load_task, task_ref_of
from orchestrator.store import schema
from orchestrator.store.storage import Storage, redact_uri, sha256

TASK_DIR = "task"
MANIFEST_PATH = "task/manifest.json"
# A submitted job's master, and actors sent the task's folder as Ray's working_dir, run in Ray's unpacked copy of
# the folder (/tmp/ray/session_.../runtime_resources/working_dir_files/_ray_pkg_.../): errors name the folder the
# user shipped instead, given here by `caviar submit` (the job's environment) or by the master that shipped it.
SUBMITTED_FROM_ENV = "CAVIAR_SUBMITTED_FROM"
RAY_FOLDER_COPY = re.compile(r"[^\s'\"]*/runtime_resources/working_dir_files/_ray_pkg_[0-9a-f]+")
_shipped: list[str] = []


def name_shipped_folder(folder: str) -> None:
    """The folder this process shipped as Ray's working_dir: :func:`as_submitted` names it for Ray's copy."""
    _shipped[:] = [folder]


TRUST_HINT = "pass your own task (task=... / --task FILE) or opt in to the sweep's stored copy " \
             "(trust_task_code=True / --trust-task-code)"


@dataclass(frozen=True)
class TaskManifest:
    ref: str  # portable: "digits_mlp.py", "digits_mlp.py:attr" or "pkg.module:attr"; never a machine's path
    kind: str  # "file" (a copy is stored) or "module" (imported by name: nothing to copy)
    source: str | None = None  # the copy, relative to the sweep directory
    sha256: str | None = None
    config: str | None = None  # the TOML config's copy, relative to the sweep directory
    config_sha256: str | None = None
    # Modules under the task file's folder that the task imports ("models/resnet.py" -> sha256): not copied, but
    # a resume with one of them edited would mix two versions of the code as an edited task file would.
    modules: dict[str, str] | None = None


def as_submitted(text: str) -> str:
    """``text`` with Ray's temporary copy of a shipped task folder named as the folder the user shipped, so an error
    names a file the user can open; unchanged when nothing was shipped."""
    submitted = os.environ.get(SUBMITTED_FROM_ENV) or (_shipped[0] if _shipped else None)
    if not submitted:
        return text
    return RAY_FOLDER_COPY.sub(lambda _: submitted.rstrip(os.sep), text)


def _is_file_ref(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target


def portable_ref(ref: str) -> str:
    """What the sweep row records: the task file's name (not the head's temp path), or ``module:attr`` as given."""
    target, sep, attr = ref.partition(":")
    return os.path.basename(target) + sep + attr if _is_file_ref(target) else ref


def store_task_source(sweep: Storage, task: Task, config_file: str | None = None) -> TaskManifest:
    """Copy the task file (and config) into ``task/`` with their sha256s; returns the manifest written."""
    target, _, _ = task.ref.partition(":")
    source = digest = config = config_digest = None
    kind = "module"
    if _is_file_ref(target):
        kind = "file"
        data = _read_local(target, "task")
        source, digest = posixpath.join(TASK_DIR, os.path.basename(target)), sha256(data)
        sweep.write_bytes(source, data)
    if config_file:
        data = _read_local(config_file, "config")
        config, config_digest = posixpath.join(TASK_DIR, "config.toml"), sha256(data)
        sweep.write_bytes(config, data)
    modules = None
    if kind == "file":
        try:
            modules = local_modules(task.namespace, os.path.dirname(os.path.abspath(target)))
        except Exception:  # a module whose attributes raise on access: the record is a check, never a failure
            modules = None
    manifest = TaskManifest(portable_ref(task.ref), kind, source, digest, config, config_digest, modules or None)
    sweep.write_bytes(MANIFEST_PATH, json.dumps(asdict(manifest), indent=1).encode())
    return manifest


def _read_local(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TaskError(f"{what} {path!r}: cannot copy it into the sweep ({exc.strerror or exc})") from None


def read_manifest(sweep: Storage) -> TaskManifest | None:
    """The sweep's task manifest; None for a sweep written before sweeps carried their task."""
    if not sweep.exists(MANIFEST_PATH):
        return None
    try:
        raw = json.loads(sweep.read_bytes(MANIFEST_PATH))
        return TaskManifest(**{k: raw.get(k) for k in TaskManifest.__dataclass_fields__})
    except (ValueError, TypeError) as exc:
        raise StorageError(f"{sweep.path(MANIFEST_PATH)}: not a task manifest ({exc})") from None


def read_stored_source(sweep: Storage, manifest: TaskManifest) -> bytes:
    """The stored task file's bytes, refused unless they are inside ``task/`` and match the recorded sha256."""
    rel = manifest.source or ""
    if not rel.startswith(TASK_DIR + "/") or not manifest.sha256:
        raise StorageError(f"{sweep.path(MANIFEST_PATH)}: the task copy {rel!r} is not a file under {TASK_DIR}/ "
                           "with a sha256; refusing to run it")
    data = sweep.read_bytes(rel)  # Storage.path refuses absolute paths and '..'
    if sha256(data) != manifest.sha256:
        raise StorageError(f"{sweep.path(rel)}: sha256 mismatch (the manifest records {manifest.sha256[:16]}..., "
                           f"the file has {sha256(data)[:16]}...); refusing to run a task that changed")
    return data


def cache_dir() -> str:
    """Where trusted task copies are written to be imported: ``$CAVIAR_CACHE`` or ``~/.cache/caviar``."""
    return os.path.join(os.environ.get("CAVIAR_CACHE") or os.path.expanduser("~/.cache/caviar"), "tasks")


def materialize(sweep: Storage, manifest: TaskManifest) -> str:
    """The verified copy as a local file (content-addressed, so workers on this machine find the same path)."""
    data = read_stored_source(sweep, manifest)
    assert manifest.sha256 and manifest.source
    folder = os.path.join(cache_dir(), manifest.sha256[:32])
    path = os.path.join(folder, posixpath.basename(manifest.source))
    if not (os.path.isfile(path) and _file_sha256(path) == manifest.sha256):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return sha256(f.read())


def sweep_task(sweep: Storage, task: Task | str | os.PathLike[str] | ModuleType | None = None, *,
               trust_task_code: bool = False, purpose: str = "to load its models") -> Task:
    """The task to run for a stored sweep: the caller's ``task``, else the sweep's own copy if trusted, else refuse.

    ``purpose`` ends the refusal's first clause: "sweep X runs task code (...) to load its models: ...".
    """
    if isinstance(task, Task):
        return task
    if task:  # the caller's own choice: a path resolves against their working directory, as any argument does; a
        return load_task(task_ref_of(task))  # pathlib.Path or an imported module too, as run_sweep takes them

    manifest = read_manifest(sweep)
    recorded = sweep.read_table(schema.SWEEP_PATH).to_pylist()[0]["task"]
    where = redact_uri(sweep.uri)
    if manifest is None:  # a sweep from before task copies: only the recorded reference
        if not trust_task_code:
            raise TaskError(f"sweep {where!r} runs task code ({recorded}) {purpose}: {TRUST_HINT}")
        target = recorded.partition(":")[0]
        if _is_file_ref(target) and not os.path.isabs(target):
            raise TaskError(f"sweep {where!r}: its task {recorded!r} is a relative path, which never resolves "
                            "against this working directory; pass --task FILE")
        return load_task(recorded)
    if manifest.kind == "module":
        if not trust_task_code:
            raise TaskError(f"sweep {where!r} runs task code (module {manifest.ref}, not copied into the sweep) "
                            f"{purpose}: pass --task {manifest.ref} (task=...) or --trust-task-code "
                            "(trust_task_code=True) to import it by name")
        return load_task(manifest.ref)
    if not trust_task_code:
        raise TaskError(f"sweep {where!r} runs task code ({manifest.source}, sha256 {(manifest.sha256 or '')[:12]}) "
                        f"{purpose}: {TRUST_HINT}")
    path = materialize(sweep, manifest)
    attr = manifest.ref.partition(":")[2]
    try:
        return load_task(path + (f":{attr}" if attr else ""))
    except TaskError as exc:
        if not isinstance(exc.__cause__, ImportError):
            raise
        raise TaskError(f"{exc}; only the task file is stored in the sweep, not the modules beside it: "
                        f"pass your own task (--task FILE / task=...)") from None


def refuse_an_edited_task(sweep: Storage, task: Task | str | None) -> None:
    """Refuse, before anything runs or is written, a caller's task file whose bytes differ from the sweep's copy.

    The sweep's finished trials were built with the stored copy: resuming with other code would
    mix two versions of ``build_model`` in one sweep (and break its soups and ``load_ensemble``).
    Nothing to compare, so nothing refused: no task given (the stored copy runs), a sweep from
    before task copies, a sweep whose task was a module, or a module task whose source is no file.
    """
    manifest = read_manifest(sweep)
    if not task or manifest is None or manifest.kind != "file" or not manifest.sha256:
        return
    path = _caller_task_file(task.ref if isinstance(task, Task) else task)
    data = read_if_there(path) if path else None
    if data is None:  # a missing file: load_task names it
        return
    if sha256(data) == manifest.sha256:
        _refuse_an_edited_module(sweep, manifest, os.path.dirname(path) if path else "")
        return
    raise TaskError(
        f"sweep {redact_uri(sweep.uri)!r} was built with {manifest.source} (sha256 {manifest.sha256[:12]}) but "
        f"your task {path} has sha256 {sha256(data)[:12]}: resuming would mix trials of two versions of the code; "
        "resume with --trust-task-code (trust_task_code=True) to run the stored copy its trials were built with, "
        "or start a new sweep for the edited code; nothing was written")


def edited_since(sweep: Storage, task: Task | str | None) -> str | None:
    """How the caller's task file differs from the copy the sweep ran, in words; None when it is the same file or
    there is nothing to compare (no task given, a sweep from before task copies, a module task)."""
    try:
        manifest = read_manifest(sweep)
    except StorageError:
        return None
    if not task or manifest is None or manifest.kind != "file" or not manifest.sha256:
        return None
    path = _caller_task_file(task.ref if isinstance(task, Task) else task)
    data = read_if_there(path) if path else None
    if data is None or sha256(data) == manifest.sha256:
        return None
    return (f"your task {path} has sha256 {sha256(data)[:12]}, not the {manifest.source} the sweep ran (sha256 "
            f"{manifest.sha256[:12]})")


def _refuse_an_edited_module(sweep: Storage, manifest: TaskManifest, folder: str) -> None:
    """As for the task file: a module beside it that the sweep's trials imported, now with other bytes."""
    for rel, digest in (manifest.modules or {}).items():
        data = read_if_there(os.path.join(folder, *rel.split("/")))
        if data is not None and sha256(data) != digest:  # a missing one: the task's import names it
            raise TaskError(
                f"sweep {redact_uri(sweep.uri)!r} was built with {rel} (sha256 {digest[:12]}) beside its task file, "
                f"but {os.path.join(folder, *rel.split('/'))} now has sha256 {sha256(data)[:12]}: resuming would mix "
                "trials of two versions of the code; restore that file, or start a new sweep for the edited code; "
                "nothing was written")


def _caller_task_file(ref: str) -> str | None:
    """The file a task reference loads: a path as ``load_task`` resolves it, a module's source via its spec."""
    target = ref.partition(":")[0]
    if _is_file_ref(target):
        return os.path.abspath(target)
    if os.getcwd() not in sys.path:  # as load_task imports a module: from the working directory too
        sys.path.append(os.getcwd())
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):  # load_task says what is wrong with the name
        return None
    origin = spec.origin if spec else None
    return origin if origin and origin.endswith(".py") else None


def copy_stored_task(sweep: Storage, folder: str, *, trust_task_code: bool, purpose: str = "to resume") -> str:
    """The sweep's stored task for a job that ships it: the verified copy written into ``folder``, as a ref.

    The bytes are checked against the manifest's sha256 here, on the submitting machine, and
    the job runs exactly those bytes (its working directory), on every node alike. A task that
    was a module (nothing copied) comes back as its ``module:attr``, imported by name as the
    sweep did. Refused, with the way out, without ``trust_task_code`` or without a stored copy.
    """
    manifest = read_manifest(sweep)
    where = redact_uri(sweep.uri)
    if manifest is None:
        raise TaskError(f"sweep {where!r} holds no copy of its task (written before sweeps carried one): "
                        "pass your own task file (caviar submit TASK --resume SWEEP)")
    what = f"module {manifest.ref}" if manifest.kind == "module" else \
        f"{manifest.source}, sha256 {(manifest.sha256 or '')[:12]}"
    if not trust_task_code:
        raise TaskError(f"sweep {where!r} runs task code ({what}) {purpose}: pass your own task file "
                        "(caviar submit TASK --resume SWEEP) or --trust-task-code to run the sweep's stored copy")
    if manifest.kind == "module":
        return manifest.ref
    if manifest.modules:  # the job's folder would hold the task file alone: its first import fails on the cluster
        raise TaskError(f"sweep {where!r}: its task {posixpath.basename(manifest.source or '')} imports "
                        f"{', '.join(sorted(manifest.modules))} from its folder, which the sweep does not store: pass "
                        "your own task file (caviar submit TASK --resume SWEEP), whose folder travels with the job")
    data = read_stored_source(sweep, manifest)
    assert manifest.source
    path = os.path.join(folder, posixpath.basename(manifest.source))
    with open(path, "wb") as f:
        f.write(data)
    attr = manifest.ref.partition(":")[2]
    return path + (f":{attr}" if attr else "")
