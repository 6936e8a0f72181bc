"""run_sweep called from a notebook or a script: what the caller's process holds before a call is what it holds
after it (its random generators, a usable Ray after a stop), with real sweeps of the notebook43_* tasks."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from orchestrator.app.api import run_sweep
from orchestrator.errors import TaskError
from tests.conftest import ROOT

TASKS = os.path.join(ROOT, "tests", "tasks")
CNN_TASK = os.path.join(TASKS, "notebook43_cnn_task.py")


def generator_states() -> tuple[bytes, bytes, tuple]:
    return torch.get_rng_state().numpy().tobytes(), np.random.get_state()[1].tobytes(), random.getstate()


def test_a_sweep_with_ensembles_leaves_the_callers_random_generators_as_they_were(storage_dir):
    # The soup at a sweep's end builds models in the caller's process: their initial weights came from torch's
    # global generator, so a notebook's torch.manual_seed(...) before run_sweep no longer fixed its draws after it.
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    before = generator_states()
    result = run_sweep(CNN_TASK, storage=storage_dir, name="cnn", executor="processes", slots=1)
    assert result.ensemble is not None and result.counts.get("completed", 0) >= 2  # the soup had members to build
    assert generator_states() == before


NOTEBOOK = textwrap.dedent("""
    import os, random, signal, subprocess, sys, threading, time
    import ray
    from orchestrator.app.api import load, run_sweep
    from orchestrator.errors import SweepInterrupted

    def children(name):
        out = subprocess.run(["ps", "--ppid", str(os.getpid()), "-o", "comm="], capture_output=True, text=True).stdout
        return out.split().count(name)

    def stop_button():  # the notebook's stop button, pressed while the private Ray starts
        while children("gcs_server") == 0:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    random.seed(5)
    before = random.getstate()
    threading.Thread(target=stop_button, daemon=True).start()
    try:
        run_sweep(sys.argv[1], storage=sys.argv[2], name="stopped", executor="ray", slots=1)
        print("not stopped")
    except SweepInterrupted:
        pass
    print("random kept", random.getstate() == before)
    print("ray usable", ray.is_initialized())
    result = run_sweep(sys.argv[1], storage=sys.argv[2], name="next", executor="ray", slots=1, ensemble=False)
    print("next", result.counts.get("completed", 0) + result.counts.get("pruned", 0))
    print("gcs servers", children("gcs_server"))
    print("stopped sweep", sorted({t["status"] for t in load(sys.argv[2] + "/stopped").trials.to_pylist()}))
""")


@pytest.mark.slow  # its own private Ray, started and stopped mid-start by a real SIGINT
def test_a_stop_while_the_private_ray_starts_leaves_one_usable_ray_and_the_callers_random_state(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TASKS])}
    out = subprocess.run([sys.executable, str(script), os.path.join(TASKS, "notebook43_regression_task.py"),
                          str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "random kept True" in lines  # ray.init draws from Python's global generator: the caller's
    assert "ray usable True" in lines  # before: a half-started Ray, not initialised, its processes left running
    assert "next 3" in lines
    assert "gcs servers 1" in lines  # before: 2, the stopped start's and the next sweep's own
    assert "stopped sweep ['pending']" in lines  # resumable: nothing ran, nothing lost


def test_a_stop_signal_in_a_deferred_step_lets_the_step_finish_then_stops_the_sweep():
    from orchestrator.decide import interrupt
    from orchestrator.errors import SweepInterrupted

    finished = []
    with pytest.raises(SweepInterrupted), interrupt.stop_on_signals():
        with interrupt.deferred_stop():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("the step")
        finished.append("after it")  # never: the held stop is raised as the step ends
    assert finished == ["the step"]


REGRESSION_TASK = os.path.join(TASKS, "notebook43_regression_task.py")


def test_overwrite_given_as_a_string_is_refused_and_the_sweep_it_would_replace_is_kept(storage_dir):
    from orchestrator.errors import ConfigError
    from tests.conftest import folder_digest

    run_sweep(REGRESSION_TASK, storage=storage_dir, name="kept", executor="processes", slots=1, ensemble=False)
    before = folder_digest(storage_dir)
    # "false" (TOML's overwrite = "false", a notebook's overwrite="no") is a true value: it replaced the sweep
    with pytest.raises(ConfigError, match=r"^setting 'overwrite': expected true or false$"):
        run_sweep(REGRESSION_TASK, storage=storage_dir, name="kept", executor="processes", overwrite="false")
    assert folder_digest(storage_dir) == before


@pytest.mark.parametrize(("given", "named"), [
    ({"ensemble": "no"}, "ensemble"),
    ({"shared_storage": 1}, "shared_storage"),
    ({"storage": 5}, "storage"),
    ({"name": 5}, "name"),
    ({"resources": ["gpu_slot=1"]}, "resources"),
    ({"device": 0}, "device"),
    ({"plan": 4}, "plan"),
])
def test_a_setting_of_the_wrong_type_is_one_line_naming_it_before_anything_is_written(tmp_path, given, named):
    from orchestrator.errors import ConfigError

    storage = str(tmp_path / "runs")
    with pytest.raises(ConfigError) as raised:
        run_sweep(REGRESSION_TASK, **{"storage": storage, "name": "typed", "executor": "processes", **given})
    assert str(raised.value).startswith(f"setting '{named}': expected ") and "\n" not in str(raised.value)
    assert not os.path.exists(os.path.join(storage, "typed"))


def test_a_notebook_passes_pathlib_paths_and_an_imported_task_module(tmp_path, monkeypatch):
    import importlib
    from pathlib import Path

    from orchestrator.app.api import load

    config = tmp_path / "sweep.toml"
    config.write_text("[run]\ntrials = 2\nepochs = 1\n")
    storage = tmp_path / "runs"
    # before: AttributeError 'PosixPath' object has no attribute 'settings', TypeError for the storage
    result = run_sweep(Path(REGRESSION_TASK), storage=storage, config_file=config, name="paths",
                       executor="processes", ensemble=False)
    assert result.path == str(storage / "paths")
    assert load(storage / "paths").trials.num_rows == 2
    monkeypatch.syspath_prepend(TASKS)
    module = importlib.import_module("notebook43_regression_task")
    monkeypatch.chdir(tmp_path)
    result = run_sweep(module, storage="runs", name="module", executor="processes", trials=2, epochs=1)
    monkeypatch.chdir(TASKS)  # a notebook that changes its directory: result.path was "runs/module", now absolute
    assert result.path == str(storage / "module") and load(result.path).trials.num_rows == 2
    # the module that ran the sweep loads its answer too (before: AttributeError: module ... has no attribute
    # 'partition'); so does a pathlib.Path, and anything else is one line naming the argument
    from orchestrator import load_ensemble

    x = module.load_data()[1][0][:4]
    by_module = load_ensemble(result.path, name="best", task=module)
    assert torch.equal(by_module(x), load_ensemble(result.path, name="best", task=Path(module.__file__))(x))
    with pytest.raises(TaskError, match="^task: expected a task file's path, 'module:attr', a module or a loaded "
                                        "Task, got dict$"):
        load_ensemble(result.path, name="best", task={"space": {}})


@pytest.mark.parametrize(("task", "config_file", "says"), [
    (3, None, "task: expected a task file's path, 'module:attr', a module or a loaded Task, got int"),
    ("__main__", 3, "config_file: expected a TOML file's path, got int"),
])
def test_a_task_or_config_file_of_the_wrong_type_is_one_line_naming_it(tmp_path, task, config_file, says):
    from orchestrator.errors import CaviarError

    if task == "__main__":
        task = REGRESSION_TASK
    # before: TypeError; and open() took config_file=3 as a file descriptor, read it, then closed it
    with pytest.raises(CaviarError, match=f"^{re.escape(says)}$"):
        run_sweep(task, config_file=config_file, storage=str(tmp_path / "runs"), executor="processes")


def test_a_module_without_a_file_is_refused_naming_the_task(tmp_path):
    import types

    in_memory = types.ModuleType("notebook_cell_task")
    with pytest.raises(TaskError, match="^task: module 'notebook_cell_task' has no .py file"):
        run_sweep(in_memory, storage=str(tmp_path / "runs"), executor="processes")


def test_an_error_from_the_callers_on_tick_leaves_a_sweep_this_process_can_resume(storage_dir):
    from orchestrator.app.api import load, resume_sweep

    def broken_progress_bar(controller):
        if any(str(t.status) == "running" for t in controller.trials.values()):
            raise ValueError("progress bar broke")

    with pytest.raises(ValueError, match="progress bar broke"):
        run_sweep(REGRESSION_TASK, storage=storage_dir, name="ticked", executor="processes", slots=1,
                  ensemble=False, on_tick=broken_progress_bar)
    path = os.path.join(storage_dir, "ticked")
    assert "running" not in {t["status"] for t in load(path).trials.to_pylist()}
    # before: "sweep ... is being written by process <this process>; stop it first", until the kernel restarted
    result = resume_sweep(path, task=REGRESSION_TASK, executor="processes", slots=1)
    assert sum(result.counts.values()) == 3 and set(result.counts) <= {"completed", "pruned"}


def test_the_stop_button_mid_sweep_says_how_to_resume_and_the_same_process_resumes_it(storage_dir):
    from orchestrator.app.api import load, resume_sweep
    from orchestrator.errors import SweepInterrupted

    def stop_button(controller):  # a notebook's stop button: SIGINT to the kernel while a trial trains
        if any(str(t.status) == "running" for t in controller.trials.values()):
            os.kill(os.getpid(), signal.SIGINT)

    path = os.path.join(storage_dir, "stopped")
    with pytest.raises(SweepInterrupted) as stopped:
        run_sweep(REGRESSION_TASK, storage=storage_dir, name="stopped", executor="processes", slots=1,
                  ensemble=False, on_tick=stop_button)
    # before: "SIGINT" alone under the notebook's traceback
    assert str(stopped.value) == (f"SIGINT: sweep {path} stopped, its tables written; resume_sweep({path!r}, "
                                  "task=YOUR_TASK) continues it")
    assert "interrupted" in {t["status"] for t in load(path).trials.to_pylist()}
    result = resume_sweep(path, task=REGRESSION_TASK, executor="processes", slots=1)
    assert sum(result.counts.values()) == 3 and set(result.counts) <= {"completed", "pruned"}


def test_a_script_without_a_main_guard_runs_once_when_its_workers_are_spawned(tmp_path):
    # The README's scripts have no `if __name__ == "__main__":`; cpus_per_trial 2 spawns the workers (as a resume and
    # streamed data do), and each spawned child ran the script again: its run_sweep died in every worker.
    script = tmp_path / "sweep_script.py"
    script.write_text(textwrap.dedent(f"""
        from orchestrator.app.api import run_sweep
        print("script body", flush=True)
        result = run_sweep({REGRESSION_TASK!r}, storage={str(tmp_path / "runs")!r}, cpus_per_trial=2, slots=1,
                           executor="processes", ensemble=False, trials=2, epochs=1)
        print("trials", sum(result.counts.values()), flush=True)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["script body", "trials 2"]


def test_resume_sweep_takes_pathlib_paths_for_the_sweep_and_the_task(storage_dir):
    from pathlib import Path

    from orchestrator.app.api import resume_sweep

    result = run_sweep(REGRESSION_TASK, storage=storage_dir, name="done", executor="processes", slots=1,
                       ensemble=False, trials=2, epochs=1)
    # before: AttributeError: 'PosixPath' object has no attribute 'partition'
    again = resume_sweep(Path(result.path), task=Path(REGRESSION_TASK), executor="processes")
    assert again.note is not None and "nothing to resume" in again.note


def test_an_on_tick_that_is_not_callable_is_one_line_before_anything_is_written(tmp_path):
    from orchestrator.errors import ConfigError

    storage = str(tmp_path / "runs")
    # before: TypeError: 'int' object is not callable, from inside the sweep, its folder left behind
    with pytest.raises(ConfigError, match="^on_tick: expected a function of the controller, called after every "
                                          "step, got int$"):
        run_sweep(REGRESSION_TASK, storage=storage, name="ticks", executor="processes", on_tick=3)
    assert not os.path.exists(os.path.join(storage, "ticks"))


BACKGROUND_RAY = textwrap.dedent("""
    import sys, threading
    from orchestrator.app.api import run_sweep

    def sweep(name):
        result = run_sweep(sys.argv[1], storage=sys.argv[2], name=name, executor="ray", slots=1, ensemble=False)
        print(name, result.counts.get("completed", 0) + result.counts.get("pruned", 0), flush=True)

    names = sys.argv[3].split(",")
    threads = [threading.Thread(target=sweep, args=(name,)) for name in names]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    sweep("after")  # in the main thread, once the threads that started Ray have ended
""")


def run_background_sweeps(tmp_path, names: str) -> list[str]:
    script = tmp_path / "notebook.py"
    script.write_text(BACKGROUND_RAY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TASKS])}
    out = subprocess.run([sys.executable, str(script), REGRESSION_TASK, str(tmp_path / "runs"), names],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


@pytest.mark.slow  # its own private Ray, started from a thread
def test_a_private_ray_started_by_a_sweep_in_a_background_thread_outlives_the_thread(tmp_path):
    # Ray ties its processes to the thread that starts them: they died with the sweep's thread, and the next sweep
    # waited 60 s for Ray's vanished GCS, then Ray ended the whole process (a notebook's kernel)
    assert run_background_sweeps(tmp_path, "background") == ["background 3", "after 3"]


@pytest.mark.slow  # its own private Ray, started by two threads at once
def test_two_sweeps_on_ray_started_at_once_from_two_threads_share_one_private_ray(tmp_path):
    # One thread found the other's half-imported ray (AttributeError: ... has no attribute 'is_initialized'), or
    # both called ray.init ("Perhaps you called ray.init twice by accident?")
    assert sorted(run_background_sweeps(tmp_path, "one,two")) == ["after 3", "one 3", "two 3"]
