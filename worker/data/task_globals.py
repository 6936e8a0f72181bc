"""What a task's ``load_data`` leaves in its module for ``build_model``: sent with the data to workers that skip it.

A common task sets a module global in ``load_data`` (the input width, a vocabulary, the class names) and reads it in
``build_model``. Workers that take the master's checked data (Ray actors, through the object store) never call
``load_data``, so in their fresh import of the task that global is still ``None`` and every trial would fail. The
master records the globals ``load_data`` rebound, added or changed in place, and each such worker sets them in its
own import of the task before building a model.
"""

from __future__ import annotations

import copy
import logging
import pickle
import types
from typing import Any

log = logging.getLogger("caviar")

MAX_BYTES = 64 << 20  # a global this large is data, not a setting: left out (the worker's own import keeps its value)
_CODE = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def snapshot(namespace: Any) -> dict[str, tuple[int, Any]]:
    """Each plain global's identity, and a shallow copy of each dict, list or set (to see changes in place)."""
    names = getattr(namespace, "__dict__", {})
    return {name: (id(value), copy.copy(value) if isinstance(value, (dict, list, set)) else None)
            for name, value in list(names.items()) if _plain(name, value)}


def set_since(namespace: Any, before: dict[str, tuple[int, Any]]) -> dict[str, Any]:
    """The globals added, rebound or changed in place since ``before``, that pickle within ``MAX_BYTES``."""
    out: dict[str, Any] = {}
    for name, value in list(getattr(namespace, "__dict__", {}).items()):
        if not _plain(name, value) or not _changed(value, before.get(name)):
            continue
        try:
            size = _pickled_bytes(value)
        except Exception as exc:  # a handle, a lock, a generator: only a worker's own load_data could make it
            log.warning("load_data: the task global %r it sets cannot be sent to workers that skip load_data (%s: "
                        "%s); build_model there sees its value at import", name, type(exc).__name__, exc)
            continue
        if size <= MAX_BYTES:
            out[name] = value
    return out


def apply(namespace: Any, values: dict[str, Any]) -> None:
    """Set ``values`` in a worker's import of the task, as the master's ``load_data`` left them."""
    for name, value in values.items():
        setattr(namespace, name, value)


def _pickled_bytes(value: Any) -> int:
    """Its pickle's size; numpy buffers are counted out of band, not copied (a global holding data costs nothing)."""
    buffers: list[int] = []
    inline = pickle.dumps(value, protocol=5, buffer_callback=lambda b: buffers.append(b.raw().nbytes))
    return len(inline) + sum(buffers)


def _plain(name: str, value: Any) -> bool:
    return not name.startswith("__") and not isinstance(value, _CODE)


def _changed(value: Any, before: tuple[int, Any] | None) -> bool:
    if before is None or before[0] != id(value):
        return True
    if before[1] is None:
        return False
    try:
        return bool(before[1] != value)
    except Exception:  # containers of arrays: == has no single truth value
        return True
