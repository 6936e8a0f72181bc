"""Globals a task's load_data sets travel with the data to workers that never call it (worker/data/task_globals.py)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from worker.data import task_globals


def test_rebound_added_and_changed_in_place_globals_are_recorded_and_applied(caplog):
    ns = SimpleNamespace(WIDTH=None, VOCAB={}, NAMES=["x"], SEED=3, helper=lambda: 1)
    before = task_globals.snapshot(ns)
    ns.WIDTH = 64  # rebound
    ns.VOCAB["the"] = 0  # changed in place
    ns.ADDED = (1, 2)  # new
    ns.BIG = np.zeros(9 << 20)  # 72 MiB of data: left out, and never copied to find its size
    with caplog.at_level("WARNING", logger="caviar"):
        ns.LOCK = threading.Lock()  # cannot travel: one warning naming it
        recorded = task_globals.set_since(ns, before)
    assert recorded == {"WIDTH": 64, "VOCAB": {"the": 0}, "ADDED": (1, 2)}  # SEED, NAMES, helper: unchanged
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "load_data: the task global 'LOCK' it sets cannot be sent to workers that skip load_data"]
    worker_import = SimpleNamespace(WIDTH=None, VOCAB={})
    task_globals.apply(worker_import, recorded)
    assert worker_import.WIDTH == 64 and worker_import.VOCAB == {"the": 0} and worker_import.ADDED == (1, 2)


def test_stored_globals_come_back_with_their_types_and_what_json_cannot_hold_is_named():
    import collections

    values = {"WIDTH": 64, "SHAPE": (1, 8, 8), "VOCAB": {"the": 0, 3: "x", (1, 2): [1.5, None]}, "TAGS": {"a", "b"},
              "MEAN": np.arange(4, dtype=np.float32) / 3, "SCALE": np.float32(0.1), "NAMES": np.array(["ab", "c"]),
              "POINT": collections.namedtuple("Point", "x y")(1, 2), "LOCK": threading.Lock(),
              "DATA": np.zeros(1 << 20)}  # 8 MiB of floats: data, not a setting
    text, left_out = task_globals.encode(values)
    assert left_out == ["DATA", "LOCK", "POINT"]
    back = task_globals.decode(text)
    assert back.keys() == values.keys() - set(left_out)
    for name, value in back.items():
        assert type(value) is type(values[name]), name
        if isinstance(value, np.ndarray):
            assert value.dtype == values[name].dtype and np.array_equal(value, values[name]), name
        else:
            assert value == values[name], name
    assert task_globals.decode(None) == {}  # a sweep from before they were stored
