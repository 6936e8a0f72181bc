"""A sweep resumed with a task file edited since it started is refused before anything runs; the same bytes resume.

A real tiny sweep in worker processes, its master ended (``CAVIAR_FAULT_AFTER_WRITE``) right after
its first trials table, so the trials are still to train; then ``caviar resume`` and ``resume_sweep``
with an edited copy of its task (refused, nothing written) and with a byte-identical copy elsewhere
(resumed to the end).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from orchestrator.app.api import load, resume_sweep, run_sweep
from orchestrator.errors import TaskError
from tests.conftest import ROOT, TINY_TASK, folder_digest

CAVIAR = [os.path.join(os.path.dirname(sys.executable), "caviar")]
ENV = {**os.environ, "PYTHONPATH": ROOT}


def stopped_sweep(tmp_path, after_write: int = 3) -> str:
    """A sweep whose master died after its ``after_write``-th write (3: its trials table), before any trial trained."""
    storage = tmp_path / "runs"
    run = [*CAVIAR, "run", TINY_TASK, "--trials", "2", "--epochs", "1", "--stages", "1", "--slots", "1", "--seed",
           "2", "--storage", str(storage), "--name", "cut", "--no-ensemble", "--executor", "processes", "--plain"]
    done = subprocess.run(run, cwd=ROOT, env={**ENV, "CAVIAR_FAULT_AFTER_WRITE": str(after_write)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 97, done.stderr[-3000:]  # sweeplog.FAULT_EXIT_CODE
    return str(storage / "cut")


@pytest.mark.slow  # real caviar processes stopped and resumed: the second CI tier
def test_an_edited_task_is_refused_on_resume_and_the_same_bytes_elsewhere_resume(tmp_path):
    sweep = stopped_sweep(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    source = open(TINY_TASK).read()
    (work / "edited.py").write_text(source.replace('int(config["hidden"])', "4"))  # build_model ignores hidden now
    stored = hashlib.sha256(source.encode()).hexdigest()[:12]
    edited = hashlib.sha256((work / "edited.py").read_bytes()).hexdigest()[:12]
    before = folder_digest(sweep)

    refused = subprocess.run([*CAVIAR, "resume", sweep, "--task", "edited.py", "--plain"], cwd=work, env=ENV,
                             capture_output=True, text=True, timeout=300)  # a relative path, from the caller's folder
    assert refused.returncode == 2, refused.stderr[-3000:]
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"caviar: error: sweep '{sweep}' was built with task/tiny_task.py (sha256 {stored})")
    assert f"your task {work / 'edited.py'} has sha256 {edited}" in line
    assert "--trust-task-code" in line and "start a new sweep" in line
    with pytest.raises(TaskError, match=f"sha256 {stored}.*sha256 {edited}"):
        resume_sweep(sweep, task=str(work / "edited.py"))
    assert folder_digest(sweep) == before  # no lease, no event, no trial: nothing was written

    shutil.copy(TINY_TASK, work / "same_bytes.py")  # the stored task's bytes under another name and folder
    done = subprocess.run([*CAVIAR, "resume", sweep, "--task", "same_bytes.py", "--plain", "--no-report"], cwd=work,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(t["status"], t["epochs_run"]) for t in load(sweep).trials.to_pylist()] == [("completed", 1)] * 2
    assert not os.path.exists(os.path.join(sweep, "report.html")) and "Report:" not in done.stdout  # --no-report


def test_status_of_a_sweep_whose_master_died_says_it_is_stopped(tmp_path):
    # the trials a killed master left "running" were shown as running, with nothing to say that no process was
    sweep = stopped_sweep(tmp_path)
    shown = subprocess.run([*CAVIAR, "status", sweep], env=ENV, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert (f"stopped: no caviar process is writing this sweep, so its 2 running or pending trials wait for "
            f"caviar resume {sweep}") in shown.stdout


def test_caviar_run_again_on_a_stopped_sweep_says_resume_continues_it(tmp_path):
    # The same caviar run command again after its master was killed (a reboot, a lost session) was told only
    # 'already exists (pass --overwrite to replace it ...)': the one way offered threw the stopped sweep's trials away
    sweep = stopped_sweep(tmp_path)
    again = subprocess.run([*CAVIAR, "run", TINY_TASK, "--storage", str(tmp_path / "runs"), "--name", "cut", "--plain"],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2, again.stderr[-3000:]
    [line] = again.stderr.strip().splitlines()
    assert line.startswith(f"caviar: error: sweep '{sweep}' already exists (pass --overwrite to replace it, or another "
                           "--name; from Python: overwrite=True or name=...); it stopped before its end, and "
                           f"caviar resume {sweep} --task "), line
    assert line.endswith(" continues it"), line


UNSEEDED_TASK = os.path.join(ROOT, "tests", "tasks", "unseeded_split_task.py")


def test_a_worker_whose_load_data_draws_other_val_labels_than_the_sweep_stored_is_refused(tmp_path):
    # A resume's workers (and spawned ones) call load_data again. With a split drawn without a seed each got other
    # val and test examples, and the ensembles scored every stored prediction against the labels the last worker
    # wrote, row by row: a top_k of 0.73-0.79 trials read 0.63 on validation, in silence.
    from orchestrator.errors import ConfigError
    from worker.train.session import WorkerSession

    done = run_sweep(UNSEEDED_TASK, storage=str(tmp_path), name="unseeded", slots=1, executor="processes",
                     ensemble=False)
    assert load(done.path).trials.num_rows == 2
    with pytest.raises(ConfigError, match=r"load_data: its (val|test) labels differ from those the sweep stored in "
                                          r"dataset/dataset.parquet .*without a fixed seed"):
        WorkerSession(UNSEEDED_TASK, str(tmp_path), "unseeded")
    seeded = run_sweep(TINY_TASK, storage=str(tmp_path), name="seeded", trials=2, epochs=1, stages=1, slots=1,
                       executor="processes", ensemble=False)
    WorkerSession(TINY_TASK, str(tmp_path), "seeded")  # the same data again: nothing to refuse
    assert seeded.path.endswith("seeded")


def test_ensembles_built_on_a_stopped_sweep_are_rebuilt_when_its_resume_ends(tmp_path):
    # A --no-ensemble sweep stopped with trial 3 still to train, caviar ensemble run on it, then resumed: the resume
    # kept the old table, so its answer, caviar ls and load_ensemble(name="best") left out the 2 trials trained since
    from orchestrator.decide.status import TrialStatus

    def stop(controller):
        if sum(t.status == TrialStatus.COMPLETED for t in controller.trials.values()) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(TINY_TASK, storage=str(tmp_path), name="peeked", trials=4, epochs=1, stages=1, slots=1, seed=2,
                  executor="processes", ensemble=False, pruner="none", on_tick=stop)
    sweep = str(tmp_path / "peeked")
    built = subprocess.run([*CAVIAR, "ensemble", sweep], env=ENV, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]

    def top_k_trials():
        rows = pq.read_table(os.path.join(sweep, "ensembles", "ensembles.parquet")).to_pylist()
        return {m["trial_id"] for r in rows if r["name"] == "top_k" for m in r["members"]}

    assert 3 not in top_k_trials()  # still pending when the sweep stopped
    resume_sweep(sweep, trust_task_code=True)  # ensembles off, as the sweep started
    assert [t["status"] for t in load(sweep).trials.to_pylist()] == ["completed"] * 4
    assert top_k_trials() == {0, 1, 2, 3}


def test_status_and_top_of_a_sweep_killed_in_its_first_write_say_so_and_how_to_resume(tmp_path):
    """Killed right after its sweep row (a kill -9 before any trials table): before, status and top said only
    `trials/trials.parquet: no such file`; now both say the sweep stopped and print the resume command, which runs."""
    sweep = stopped_sweep(tmp_path, after_write=1)
    assert not os.path.exists(os.path.join(sweep, "trials"))
    command = f"caviar resume {sweep} --task tiny_task.py"  # the file as the run named it, from its folder
    shown = subprocess.run([*CAVIAR, "status", sweep], env=ENV, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert f"sweep '{sweep}' stopped before it wrote its first trials" in shown.stdout and command in shown.stdout
    top = subprocess.run([*CAVIAR, "top", "cut", "--storage", str(tmp_path / "runs")], env=ENV, capture_output=True,
                         text=True, timeout=120)
    [line] = top.stderr.strip().splitlines()
    assert top.returncode == 2 and "stopped before it wrote its first trials" in line and command in line, line
    resumed = subprocess.run([*CAVIAR, *command.split()[1:], "--plain", "--no-report"], env=ENV, capture_output=True,
                             text=True, timeout=300, cwd=os.path.dirname(TINY_TASK))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [(t["status"], t["epochs_run"]) for t in load(sweep).trials.to_pylist()] == [("completed", 1)] * 2


def test_status_names_ensembles_a_stopped_master_did_not_build_and_resume_builds_them(tmp_path):
    """A master killed while it built the ensembles leaves every trial ended and no ensembles table (what a kill -9
    there leaves on disk: tests/integration/test_faults.py kills one for real). Before: `caviar status` read as a
    finished sweep and said nothing of it; now one line says so and gives the resume command, which builds them."""
    result = run_sweep(TINY_TASK, trials=2, epochs=1, stages=1, pruner="none", slots=1, executor="processes",
                       storage=str(tmp_path / "runs"), name="cut")
    os.remove(os.path.join(result.path, "ensembles", "ensembles.parquet"))
    shown = subprocess.run([*CAVIAR, "status", result.path], env=ENV, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert ("ensembles not built (its master stopped while building them); to build them: "
            f"caviar resume {result.path} --task") in shown.stdout
    resume_sweep(result.path, task=TINY_TASK)
    shown = subprocess.run([*CAVIAR, "status", result.path], env=ENV, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "ensembles" not in shown.stdout, shown.stdout
    plain = run_sweep(TINY_TASK, trials=2, epochs=1, stages=1, pruner="none", slots=1, executor="processes",
                      storage=str(tmp_path / "runs"), name="plain", ensemble=False)
    shown = subprocess.run([*CAVIAR, "status", plain.path], env=ENV, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "ensembles" not in shown.stdout, shown.stdout


DATAFRAME_TASK = '''
import os
import numpy as np
import pandas as pd
from torch import nn

space = {"lr": 0.01, "batch_size": 16}
settings = {"trials": 1, "epochs": 1, "stages": 1}


def load_data():
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(60, 3)).astype("float32"), columns=["a", "b", "c"])
    if os.environ.get("REORDERED"):  # the same table, its columns read in another order
        x = x[["c", "b", "a"]]
    y = (rng.random(60) < 0.5).astype("int64")
    return {"train": (x.iloc[:40], y[:40]), "val": (x.iloc[40:50], y[40:50]), "test": (x.iloc[50:], y[50:])}


def build_model(config):
    return nn.Linear(3, 2)
'''


def test_a_worker_whose_load_data_gives_the_columns_in_another_order_than_the_sweep_is_refused(tmp_path, monkeypatch):
    # A sweep stopped before its trials ran, resumed (on Ray) with load_data giving the DataFrame's columns in another
    # order: its workers trained on them, standardised with the first order's statistics, and load_ensemble, which
    # takes a DataFrame's columns by the stored names, predicted from the wrong inputs (test log loss 0.8192 against
    # the stored 0.8152), in silence.
    from orchestrator.errors import ConfigError
    from worker.train.session import WorkerSession

    task = tmp_path / "frame_task.py"
    task.write_text(DATAFRAME_TASK)
    done = run_sweep(str(task), storage=str(tmp_path), name="frame", slots=1, executor="processes", ensemble=False)
    WorkerSession(str(task), str(tmp_path), "frame")  # the same columns again: nothing to refuse
    monkeypatch.setenv("REORDERED", "1")
    with pytest.raises(ConfigError, match=r"load_data: train X's columns are in another order than the sweep's "
                                          r"\(a, b, c, in sweep/sweep.parquet\)"):
        WorkerSession(str(task), str(tmp_path), "frame")
    assert done.path.endswith("frame")


RESCALED_TASK = os.path.join(ROOT, "tests", "tasks", "rescaled_feature_task.py")


def test_a_worker_whose_load_data_gives_other_inputs_with_the_same_labels_is_refused(tmp_path, monkeypatch):
    # A user who edited the data a task reads (a feature rescaled, a .npy file regenerated) between a stopped run and
    # its caviar resume: only val and test labels were compared, so the resume's trials trained on the new inputs,
    # standardised with the old statistics, and its ensembles mixed models of both data sets, in silence.
    from orchestrator.errors import ConfigError
    from worker.train.session import WorkerSession

    done = run_sweep(RESCALED_TASK, storage=str(tmp_path), name="rescaled", slots=1, executor="processes",
                     ensemble=False)
    WorkerSession(RESCALED_TASK, str(tmp_path), "rescaled")  # the same data again: nothing to refuse
    monkeypatch.setenv("RESCALED_FEATURE", "-1")
    with pytest.raises(ConfigError, match=r"load_data: its train inputs differ from those the sweep began with \(their "
                                          r"sums, in dataset/dataset.parquet\).*restore the data"):
        WorkerSession(RESCALED_TASK, str(tmp_path), "rescaled")
    assert done.path.endswith("rescaled")


def test_caviar_ensemble_with_other_inputs_than_the_sweeps_is_refused(tmp_path):
    # The soup (weights averaged, scored on load_data's val split) compared only the val and test labels: with a
    # feature rescaled since, it was scored on inputs its members never saw (val accuracy 0.73 where the sweep's data
    # gives 0.93) and ranked in the ensembles table beside ensembles scored on the stored predictions, in silence.
    done = run_sweep(RESCALED_TASK, storage=str(tmp_path), name="souped", slots=1, executor="processes")
    built = subprocess.run([*CAVIAR, "ensemble", done.path, "--task", RESCALED_TASK], cwd=ROOT,
                           env={**ENV, "RESCALED_FEATURE": "-1"}, capture_output=True, text=True, timeout=300)
    assert built.returncode == 2, built.stdout[-3000:] + built.stderr[-3000:]
    [line] = built.stderr.strip().splitlines()
    assert line.startswith("caviar: error: load_data: its train inputs differ from those the sweep began with"), line


def test_a_stopped_sweep_caviar_ensemble_ran_on_is_finished_by_resume(tmp_path):
    """A master killed after every trial ended but before its end, then `caviar ensemble` (no task: no soup): `caviar
    ls` said "stopped (caviar resume continues it)" while `caviar resume` said "has finished: nothing to resume", so
    the sweep never got its soup, report or end. Now the resume runs the end, and ls says finished."""
    import socket

    import pyarrow.parquet as pq

    from orchestrator.store.lease import LEASE_PATH, LeaseRecord
    from orchestrator.store.sweeps import list_sweeps

    result = run_sweep(TINY_TASK, trials=2, epochs=1, stages=1, pruner="none", slots=1, executor="processes",
                       storage=str(tmp_path / "runs"), name="cut")
    os.remove(os.path.join(result.path, "ensembles", "ensembles.parquet"))  # killed while building them
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = LeaseRecord("owner", socket.gethostname(), int(gone.stdout), 0, 0)  # never released
    with open(os.path.join(result.path, LEASE_PATH), "wb") as f:
        f.write(killed.encode())
    built = subprocess.run([*CAVIAR, "ensemble", result.path], env=ENV, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [row] = list_sweeps(str(tmp_path / "runs"))
    assert row["state"] == "stopped (caviar resume continues it)"

    resumed = resume_sweep(result.path, task=TINY_TASK)
    assert "nothing to resume" not in (resumed.note or "")
    methods = pq.read_table(os.path.join(result.path, "ensembles", "ensembles.parquet"))["method"].to_pylist()
    assert "soup" in methods  # built by the end the resume ran, with the task
    [row] = list_sweeps(str(tmp_path / "runs"))
    assert row["state"] == "finished"


def test_ensembles_of_a_sweep_stopped_before_any_prediction_say_to_resume_it(tmp_path):
    """Killed before any trial ended: `caviar ensemble` blamed a custom kind or prediction_dtype, and load_ensemble
    said "the sweep's answer is its best trial (caviar top SWEEP_DIR)", which has none. Both now say to resume it."""
    from orchestrator import load_ensemble
    from orchestrator.errors import StorageError

    sweep = stopped_sweep(tmp_path)
    built = subprocess.run([*CAVIAR, "ensemble", sweep], env=ENV, capture_output=True, text=True, timeout=120)
    [line] = built.stderr.strip().splitlines()
    assert built.returncode == 2 and "no trial has stored predictions yet; it stopped before its end" in line, line
    assert f"caviar resume {sweep} --task" in line and "custom" not in line
    with pytest.raises(StorageError, match=f"the sweep stopped before any trial stored predictions; caviar resume "
                                           f"{sweep} --task YOUR_TASK continues it"):
        load_ensemble(sweep, task=TINY_TASK)
