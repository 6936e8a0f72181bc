"""Fused arrays in child processes of the master (``worker/pool/fused_processes.py``): no Ray; real
processes, real files. The same trials as unfused, the fused set-up's decisions, and a dead child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from orchestrator.app.api import controller_for, load, run_sweep
from orchestrator.decide.backend import Assignment
from orchestrator.decide.driver import drive
from orchestrator.errors import CaviarError, ConfigError
from orchestrator.search.space import SearchSpace, loguniform
from orchestrator.spec.settings import RunSettings
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import DIGITS_TASK, ROOT, TINY_TASK
from tests.fused_checks import assert_killed_array_retried
from tests.integration.test_fused_sweep import COMPARED, FIXED_SHAPE, UNFUSABLE_TASK
from tests.integration.test_user_errors import WORKERS_CANNOT_LOAD_TASK
from worker.pool.fused_processes import FusedProcessBackend

pytestmark = pytest.mark.timeout(300)
OPTIONS = {"threads": 1, "checkpoint_seconds": 3600, "device": "cpu"}


def test_fused_and_plain_sweeps_in_processes_train_the_same_trials_and_never_import_ray(tmp_path):
    """A fixed shape: fusing changes no config, so both sweeps agree row by row (float tolerance)."""
    config = tmp_path / "shape.toml"
    config.write_text(FIXED_SHAPE)
    code = ("import sys; from orchestrator import run_sweep; "
            f"common = dict(config_file={str(config)!r}, plan='6x2', pruner='none', slots=2, seed=11, "
            f"storage={str(tmp_path)!r}, ensemble=False); "
            f"run_sweep({DIGITS_TASK!r}, name='on', fuse='on', **common); "
            f"run_sweep({DIGITS_TASK!r}, name='off', fuse='off', **common); "
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("False")  # fused, and still no Ray
    on, off = load(str(tmp_path / "on")), load(str(tmp_path / "off"))
    assert [(t["config"], t["status"], t["epochs_run"]) for t in on.trials.to_pylist()] == [
        (t["config"], t["status"], t["epochs_run"]) for t in off.trials.to_pylist()]
    rows_on = {(r["trial_id"], r["epoch"]): r for r in on.metrics.to_pylist()}
    rows_off = {(r["trial_id"], r["epoch"]): r for r in off.metrics.to_pylist()}
    assert rows_on.keys() == rows_off.keys() and len(rows_on) == 12
    for key, row in rows_on.items():
        for column in COMPARED:
            assert row[column] == pytest.approx(rows_off[key][column], rel=1e-3, abs=1e-5), (key, column)
    events = {e["kind"]: e for e in on.events.to_pylist()}
    assert "child processes of the master" in events["executor"]["reason"]
    assert "arrays of up to" in events["fusing_on"]["reason"]


def test_data_only_the_master_can_read_still_sweeps_fused(tmp_path, monkeypatch):
    """Forked children train on the data the master loaded and checked: they never call load_data."""
    task = tmp_path / "workers_cannot_load.py"
    task.write_text(WORKERS_CANNOT_LOAD_TASK)
    monkeypatch.setenv("CAVIAR_TEST_MASTER_PID", str(os.getpid()))
    result = run_sweep(str(task), trials=4, epochs=2, stages=1, pruner="none", slots=2, fuse="on", array_size=2,
                       executor="processes", storage=str(tmp_path / "runs"), name="w", ensemble=False)
    tables = load(result.path)
    assert [t["status"] for t in tables.trials.to_pylist()] == ["completed"] * 4
    assert [e["kind"] for e in tables.events.to_pylist() if e["kind"].startswith("fusing")] == ["fusing_on"]


def test_auto_falls_back_to_plain_workers_and_on_is_refused_in_one_line(tmp_path):
    common = dict(trials=4, epochs=1, stages=1, slots=2, storage=str(tmp_path), ensemble=False, executor="processes")
    result = run_sweep(UNFUSABLE_TASK, name="auto", fuse="auto", **common)
    tables = load(result.path)
    assert {t["status"] for t in tables.trials.to_pylist()} == {"completed"}
    events = [e for e in tables.events.to_pylist() if e["kind"].startswith("fusing")]
    assert [e["kind"] for e in events] == ["fusing_off"] and "layer 1 (ClipGate)" in events[0]["reason"]
    with pytest.raises(ConfigError) as refused:
        run_sweep(UNFUSABLE_TASK, name="on", fuse="on", **common)
    message = str(refused.value)
    assert message.startswith("setting 'fuse': on") and "layer 1 (ClipGate)" in message and "\n" not in message
    assert not Storage.from_uri(str(tmp_path)).child("on").exists(schema.SWEEP_PATH)  # a re-run needs no --overwrite


def test_a_killed_fused_child_loses_its_members_to_retries_and_the_sweep_finishes(tmp_path):
    """SIGKILL one child while its array trains (no pruner: one call trains to the end); a replacement retries."""
    space = SearchSpace({"lr": loguniform(1e-2, 3e-1), "optimizer": "adam", "hidden": 8, "batch_size": 32})
    settings = RunSettings(plan="6x6", pruner="none", seed=5, storage=str(tmp_path), name="killed").validate()
    controller = controller_for(space, settings)
    backend = FusedProcessBackend(TINY_TASK, str(tmp_path), "killed", 2, OPTIONS, array_size=3)
    killed: list[int] = []

    def kill_one_child(c) -> None:
        if not killed and any(s.in_flight is not None for s in backend.slots):
            time.sleep(0.05)  # inside its call: the array is training
            pid = next(s.worker.process.pid for s in backend.slots if s.in_flight is not None)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        drive(controller, backend, on_tick=kill_one_child, poll_timeout=0.2)
        children = [s.worker for s in backend.slots]
    finally:
        backend.close()
    assert killed
    assert_killed_array_retried(controller, backend, str(tmp_path), "killed", trials=6, epochs=6)
    assert all(not child.process.is_alive() for child in children)  # closed: no trainer left behind


def test_fused_children_that_cannot_start_end_the_set_up_naming_why(tmp_path):
    missing = str(tmp_path / "no_such_task.py")
    in_memory = SimpleNamespace(streams=None)  # forked: the task's load fails before the data is looked at
    backend = FusedProcessBackend(missing, str(tmp_path), "gone", 2, OPTIONS, splits=in_memory)
    children = [s.worker for s in backend.slots]
    try:
        with pytest.raises(CaviarError, match="^no trial actor could start: ") as refused:
            backend.wait_ready()
        assert "no_such_task.py" in str(refused.value) and "\n" not in str(refused.value)
    finally:
        backend.close()
    assert len(children) == 2 and all(not child.process.is_alive() for child in children)


def test_a_replacement_the_task_refuses_gives_its_slot_up_at_once(tmp_path):
    """A child that died is replaced; when the replacement's task refuses it (here its file is gone; on a resume,
    labels other than the sweep stored) another replacement would refuse again after loading the data: given up."""
    import shutil

    task = str(tmp_path / "tiny_task.py")
    shutil.copy(TINY_TASK, task)
    backend = FusedProcessBackend(task, str(tmp_path), "refused", 1, OPTIONS, array_size=2)
    try:
        backend.wait_ready()
        child = backend.slots[0].worker.process
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        os.remove(task)
        backend.start(Assignment(0, 1, {"lr": 0.1, "hidden": 8, "batch_size": 32}, seed=0, max_epochs=1,
                                 until_epoch=1))
        lost, deadline = [], time.monotonic() + 120
        with pytest.raises(CaviarError, match="^no trial actor could start: ") as given_up:
            while time.monotonic() < deadline:
                lost += [r.trial_id for r in backend.poll(timeout=1.0) if r.lost]
        assert "tiny_task.py" in str(given_up.value) and "refused" not in str(given_up.value)
        assert lost == [0] and backend.deaths == 2  # the killed child, then its one replacement
    finally:
        backend.close()


def test_a_start_queued_before_the_child_is_ready_waits_for_it(tmp_path):
    """A replacement's first answer is its ``ready``; a call sent earlier is answered after it, not lost."""
    backend = FusedProcessBackend(TINY_TASK, str(tmp_path), "early", 1, OPTIONS, array_size=2)
    try:
        backend.start(Assignment(0, 1, {"lr": 0.1, "hidden": 8, "batch_size": 32}, seed=0, max_epochs=1,
                                 until_epoch=1))
        reports, deadline = [], time.monotonic() + 120
        while not any(r.ended for r in reports) and time.monotonic() < deadline:
            reports += backend.poll(timeout=1.0)
        assert [(r.trial_id, r.status) for r in reports if r.ended] == [(0, "completed")]
    finally:
        backend.close()
