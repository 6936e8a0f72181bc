"""Actors kept warm between sweeps in one Python process (a notebook, a script with several sweeps).

A trial actor's start is mostly fixed cost: a Ray worker process, importing torch and the
task, torch's lazy first-use imports. A sweep that ends cleanly leaves its actors here for
``keep_workers`` seconds; the next sweep of the *same task source* (the task file and the
Python files beside it, which it may import) with the same resources rebinds them (new
storage, options and data) instead of starting new ones. Anything else that differs, or the
time running out, ends them, so idle actors never hold a cluster's resources for long.
Kept actors never keep a sweep's data: each sweep sends its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections.abc import Hashable
from typing import Any

import ray

from orchestrator.spec.task import Task

_lock = threading.Lock()
_kept: dict[Hashable, list[Any]] = {}
_timer: threading.Timer | None = None


def task_fingerprint(task: Task) -> str | None:
    """sha256 over the task's source file and the Python files beside it (the helpers it may import).

    None when there is no file to read, or too much beside it to read cheaply: never reused then.
    """
    target = task.ref.partition(":")[0]
    path = target if target.endswith(".py") else _module_file(target)
    if not path:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    digest = hashlib.sha256()
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
        if len(names) > MAX_FILES_HASHED:
            return None
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    except OSError:
        return None
    try:  # and the modules of sub-folders it imports (`from models.net import make`), which a kept actor keeps
        from orchestrator.spec.local_modules import local_modules

        digest.update(repr(local_modules(task.namespace, folder)).encode())
    except Exception:
        return None
    return digest.hexdigest()


MAX_FILES_HASHED = 200


def _module_file(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec else None
    return origin if origin and os.path.isfile(origin) else None


def pool_key(task: Task, actor_options: dict[str, Any], device: str, threads: int) -> Hashable | None:
    """What must match for a kept actor to serve a sweep: this Ray, the task source, resources, device, threads."""
    fingerprint = task_fingerprint(task)
    if fingerprint is None:
        return None
    context = ray.get_runtime_context()  # a new ray.init is a new session: the old handles are dead
    resources = repr(sorted(actor_options.items()))
    return (context.get_session_name(), context.get_job_id(), task.ref, fingerprint, resources, device, threads)


def take(key: Hashable | None) -> list[Any]:
    """The actors kept for ``key`` (removed from the pool); every other kept actor is ended now."""
    with _lock:
        _cancel_timer()
        found = _kept.pop(key, []) if key is not None else []
        _end_all_locked()
        return found


def keep(key: Hashable | None, actors: list[Any], seconds: float) -> None:
    """Hold ``actors`` for the next sweep with ``key``, ending them after ``seconds`` idle."""
    global _timer
    if key is None or seconds <= 0 or not actors:
        for actor in actors:
            ray.kill(actor)
        return
    with _lock:
        _cancel_timer()
        _end_all_locked()  # one pool at a time: the last sweep's is the one a next sweep most likely matches
        _kept[key] = list(actors)
        _timer = threading.Timer(seconds, end_all)
        _timer.daemon = True
        _timer.start()


def end_all() -> None:
    """End every kept actor (idle time out, or a sweep of another task or shape)."""
    with _lock:
        _end_all_locked()


def kept_count() -> int:
    with _lock:
        return sum(len(actors) for actors in _kept.values())


def _end_all_locked() -> None:
    for actors in _kept.values():
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # Ray already shut down: the actors went with it
                pass
    _kept.clear()


def _cancel_timer() -> None:
    global _timer
    if _timer is not None:
        _timer.cancel()
        _timer = None
