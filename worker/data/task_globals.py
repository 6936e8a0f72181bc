"""What a task's ``load_data`` leaves in its module for ``build_model``: sent with the data to workers that skip it.

A common task sets a module global in ``load_data`` (the input width, a vocabulary, the class names) and reads it in
``build_model``. Workers that take the master's checked data (Ray actors, through the object store) never call
``load_data``, so in their fresh import of the task that global is still ``None`` and every trial would fail. The
master records the globals ``load_data`` rebound, added or changed in place, and each such worker sets them in its
own import of the task before building a model.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import types
from typing import Any

import numpy as np

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


# -- stored with the sweep, for load_ensemble in a process that never ran load_data --------------------------------
#
# Tagged JSON, not pickle: loading a sweep never runs code from it. Tuples, sets, non-string dict keys and numpy
# arrays keep their types, so build_model sees what it saw in training.

MAX_STORED_CHARS = 4 << 20  # a global larger than this in JSON is data, not a setting: left out


def encode(values: dict[str, Any]) -> tuple[str, list[str]]:
    """``values`` as tagged JSON text, and the names of those JSON cannot hold (objects, large arrays)."""
    stored: dict[str, Any] = {}
    left_out: list[str] = []
    for name, value in sorted(values.items()):
        try:
            tagged = _tag(value)
            text = json.dumps(tagged)
        except (TypeError, ValueError, RecursionError):
            left_out.append(name)
            continue
        if len(text) > MAX_STORED_CHARS:
            left_out.append(name)
        else:
            stored[name] = tagged
    return json.dumps(stored), left_out


def decode(text: str | None) -> dict[str, Any]:
    """What :func:`encode` stored; empty for ``None`` (a sweep from before these were stored)."""
    return {} if not text else {name: _untag(value) for name, value in json.loads(text).items()}


def _tag(value: Any) -> Any:
    kind = type(value)  # exact types: a namedtuple or an OrderedDict would come back as something else
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [_tag(v) for v in value]
    if kind is tuple:
        return {"tuple": [_tag(v) for v in value]}
    if kind in (set, frozenset):
        return {kind.__name__: [_tag(v) for v in value]}
    if kind is dict:
        return {"dict": [[_tag(k), _tag(v)] for k, v in value.items()]}
    if isinstance(value, (np.ndarray, np.generic)) and kind.__module__ == "numpy" and value.dtype.kind in "biufU":
        return {"ndarray": np.asarray(value).tolist(), "dtype": value.dtype.str, "shape": list(np.shape(value)),
                "scalar": isinstance(value, np.generic)}
    raise TypeError(f"{kind.__name__} is not stored as JSON")


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "ndarray" in value:
        array = np.asarray(value["ndarray"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
        return array[()] if value["scalar"] else array
    if "dict" in value:
        return {_untag(k): _untag(v) for k, v in value["dict"]}
    (tag, items), = value.items()
    return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](_untag(v) for v in items)

