"""Real process kills on a real local Ray: a worker SIGKILLed mid-trial, the master SIGKILLed mid-sweep.

The slow test task (tests/tasks/slow_task.py) pauses the first trial that begins a chosen
epoch and writes its process id to a file; the test then kills a process while that trial is
provably mid-way (its resume state was persisted one epoch before). No timing is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.compute as pc
import pytest

from orchestrator.app.api import load, run_sweep
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.cluster.raycluster import ancestors
from tests.conftest import ROOT

SLOW_TASK = os.path.join(ROOT, "tests", "tasks", "slow_task.py")
CAVIAR = [os.path.join(os.path.dirname(sys.executable), "caviar")]
PAUSE_KEYS = ("pause_dir", "pause_epoch")


def pause_config(tmp_path, epoch: int) -> tuple[str, str]:
    """A TOML file that makes the first trial to begin ``epoch`` pause; the folder its pid appears in."""
    folder = tmp_path / "pause"
    folder.mkdir()
    config = tmp_path / "pause.toml"
    config.write_text(f'[space]\npause_dir = "{folder}"\npause_epoch = {epoch}\n')
    return str(config), str(folder)


def paused_trial(folder: str) -> tuple[int, float] | None:
    """(pid, lr) of the paused trial, once it has paused."""
    marker = os.path.join(folder, "paused")
    if not os.path.exists(marker):
        return None
    pid, lr = open(marker).read().split()
    return int(pid), float(lr)


def trial_with_lr(tables, lr: float) -> dict:
    """The trial with this lr in the latest stage that has one (a later stage retrains the best configs)."""
    matches = [t for t in tables.trials.to_pylist() if t["config"]["lr"] == lr]
    latest = max(t["stage"] for t in matches)
    [trial] = [t for t in matches if t["stage"] == latest]
    return trial


def raw_metrics(path: str):
    return schema.read_dir(Storage.from_uri(path), "metrics", schema.METRICS)


def test_worker_killed_mid_trial_is_retried_from_its_checkpoint_on_a_new_actor(ray_session, tmp_path):
    config, folder = pause_config(tmp_path, epoch=2)
    killed: list[tuple[int, float]] = []

    def kill_the_paused_worker(controller) -> None:
        paused = paused_trial(folder)
        if killed or paused is None:
            return
        pid = paused[0]
        # Only ever a worker of this test's own Ray (a descendant of this process), never anyone else's.
        assert os.getpid() in ancestors(pid)
        os.kill(pid, signal.SIGKILL)
        killed.append(paused)

    result = run_sweep(
        SLOW_TASK,
        config_file=config,
        trials=3,
        epochs=3,
        stages=1,
        slots=2,
        seed=3,
        storage=str(tmp_path / "runs"),
        name="worker-killed",
        ensemble=False,
        on_tick=kill_the_paused_worker,
    )
    assert killed, "the paused trial's worker was never killed"
    tables = load(result.path)
    trials = tables.trials.to_pylist()
    # Every trial finished with all its epochs, the killed one included.
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 3)] * 3
    victim = trial_with_lr(tables, killed[0][1])
    assert victim["attempt"] == 1 and all(t["attempt"] == 0 for t in trials if t["trial_id"] != victim["trial_id"])
    retried = [e for e in tables.events.to_pylist() if e["kind"] == "trial_retried"]
    assert [(e["trial_id"], e["reason"]) for e in retried] == [(victim["trial_id"], "executor_lost")]
    # One effective row per (trial, epoch): epoch 1 from the lost attempt (it was persisted before the
    # kill, and the retry resumed after it), epochs 2-3 from the retry.
    effective = tables.metrics.to_pylist()
    assert sorted((r["trial_id"], r["epoch"]) for r in effective) == [(t, e) for t in range(3) for e in (1, 2, 3)]
    assert [(r["epoch"], r["attempt"]) for r in effective if r["trial_id"] == victim["trial_id"]] == [
        (1, 0),
        (2, 1),
        (3, 1),
    ]
    raw = raw_metrics(result.path).filter(pc.equal(raw_metrics(result.path)["trial_id"], victim["trial_id"]))
    assert (1, 1) not in list(zip(raw["epoch"].to_pylist(), raw["attempt"].to_pylist(), strict=True))
    assert victim["trial_id"] in tables.checkpoints["trial_id"].to_pylist()


def descendants(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and pid in ancestors(int(p))]


def kill_master(proc: subprocess.Popen) -> None:
    """SIGKILL the master's whole process group; then make sure nothing it started lives on."""
    started = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 2
    while (alive := [p for p in started if os.path.exists(f"/proc/{p}")]) and time.monotonic() < deadline:
        time.sleep(0.2)  # Ray's processes follow their driver; its agents linger, so they are killed below
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)  # by id: only what this master started
        except ProcessLookupError:
            pass


def stage_spaces(tables) -> list[dict]:
    spaces = [json.loads(text) for text in tables.stages.sort_by("stage")["space"].to_pylist()]
    return [{k: v for k, v in space.items() if k not in PAUSE_KEYS} for space in spaces]


@pytest.mark.slow  # real caviar processes killed and resumed: the second CI tier
def test_master_killed_mid_sweep_resumes_to_the_tables_of_an_uninterrupted_run(ray_session, tmp_path):
    storage = str(tmp_path / "runs")
    common = dict(plan="4x2,2x3", slots=2, seed=11, storage=storage, ensemble=False)
    straight = load(run_sweep(SLOW_TASK, name="straight", **common).path)

    # The same sweep in a `caviar run` process, killed while a stage-2 trial is in its third epoch
    # (only stage 2 trains 3 epochs): stage 1 is finished, stage 2 is mid-way.
    config, folder = pause_config(tmp_path, epoch=3)
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, never a cluster another test started
    run = [
        *CAVIAR,
        "run",
        SLOW_TASK,
        "--plan",
        common["plan"],
        "--slots",
        "2",
        "--seed",
        "11",
        "--storage",
        storage,
        "--name",
        "killed",
        "--no-ensemble",
        "--plain",
        "--config",
        config,
    ]
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(run, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while paused_trial(folder) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert paused_trial(folder) is not None, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        kill_master(proc)
    sweep = os.path.join(storage, "killed")
    paused_lr = paused_trial(folder)[1]

    done = subprocess.run(
        [*CAVIAR, "resume", sweep, "--plain", "--task", SLOW_TASK],  # it imports its sibling tiny_task
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = load(sweep)

    def summary(tables):
        return [
            (
                t["trial_id"],
                t["stage"],
                t["status"],
                t["epochs_run"],
                {k: v for k, v in t["config"].items() if k not in PAUSE_KEYS},
            )
            for t in tables.trials.to_pylist()
        ]

    # Same trial ids, stages, statuses, epoch counts and configs (so the same narrowed stage-2 ranges).
    assert summary(resumed) == summary(straight)
    assert stage_spaces(resumed) == stage_spaces(straight)
    assert (
        resumed.metrics.num_rows
        == straight.metrics.num_rows
        == sum(t["epochs_run"] for t in straight.trials.to_pylist())
    )
    # The paused trial resumed from its checkpoint (epoch 2) under a new attempt: epochs 1-2 are the
    # killed master's attempt, epoch 3 the resumed one's.
    victim = trial_with_lr(resumed, paused_lr)
    assert victim["stage"] == 2 and victim["attempt"] >= 1  # tables number stages from 1
    rows = [r for r in resumed.metrics.to_pylist() if r["trial_id"] == victim["trial_id"]]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0]["attempt"] == 0 and rows[2]["attempt"] >= 1
    kinds = resumed.events["kind"].to_pylist()
    assert "sweep_resumed" in kinds and "trial_resumed" in kinds
    # Metric values may differ only where a trial was resumed mid-way (a resumed trial continues from
    # its stored optimizer and RNG state, which on one machine gives the same numbers, but nothing
    # promises that); every other trial trained exactly as in the uninterrupted run.
    interrupted = {e["trial_id"] for e in resumed.events.to_pylist() if e["kind"] == "trial_resumed"}
    for ours, theirs in zip(resumed.metrics.to_pylist(), straight.metrics.to_pylist(), strict=True):
        assert (ours["trial_id"], ours["epoch"]) == (theirs["trial_id"], theirs["epoch"])
        if ours["trial_id"] not in interrupted:
            assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-6)


@pytest.mark.slow  # its own private Ray, sent SIGTERM as it starts
def test_a_sigterm_while_the_private_ray_starts_ends_the_run_resumable_with_exit_130(tmp_path):
    # ray.init sets its own SIGTERM handler (sys.exit(15)) as it begins: a scheduler's SIGTERM in those seconds
    # exited 15 half-way through Ray's start, without the resume line, where caviar holds a stop until Ray is up.
    task = os.path.join(ROOT, "tests", "tasks", "notebook43_regression_task.py")
    storage = str(tmp_path / "runs")
    run = [*CAVIAR, "run", task, "--executor", "ray", "--slots", "1", "--storage", storage, "--name", "stopped",
           "--no-ensemble", "--plain"]
    proc = subprocess.Popen(run, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and "gcs_server" not in subprocess.run(
                ["ps", "--ppid", str(proc.pid), "-o", "comm="], capture_output=True, text=True).stdout.split():
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # Ray's first process is up; its start goes on for seconds
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            kill_master(proc)
    sweep = os.path.join(storage, "stopped")
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == f"interrupted: caviar resume {sweep} --task {task}", err[-3000:]
    assert {t["status"] for t in load(sweep).trials.to_pylist()} <= {"pending", "interrupted"}


@pytest.mark.slow  # real caviar processes killed and resumed: the second CI tier
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_stop_signal_ends_the_run_in_seconds_marks_trials_interrupted_and_resume_finishes(tmp_path, signum):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM (to the master, as
    `caviar stop` and schedulers do) while a trial sits in a 60-second epoch: the master does not wait
    for that epoch; it writes the trials table, names the resume command and exits 130."""
    storage = str(tmp_path / "runs")
    config, folder = pause_config(tmp_path, epoch=2)
    env = {**os.environ, "RAY_ADDRESS": "local"}
    run = [*CAVIAR, "run", SLOW_TASK, "--trials", "3", "--epochs", "3", "--stages", "1", "--slots", "2", "--seed",
           "5", "--storage", storage, "--name", "stopped", "--no-ensemble", "--plain", "--config", config]
    proc = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while paused_trial(folder) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert paused_trial(folder) is not None, proc.stderr.read()[-3000:] if proc.poll() is not None else ""
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            kill_master(proc)
    sweep = os.path.join(storage, "stopped")
    print(f"{signal.Signals(signum).name}: exited {took:.1f} s after the signal")
    assert proc.returncode == 130, err[-3000:]
    hint = f"interrupted: caviar resume {sweep} --task {SLOW_TASK}"  # names the task code a resume runs
    assert err.strip().splitlines()[-1] == hint, err[-3000:]
    assert took < 60  # the paused epoch lasts 60 s: the master did not wait for it
    trials = load(sweep).trials.to_pylist()
    paused_lr = paused_trial(folder)[1]
    [victim] = [t for t in trials if t["config"]["lr"] == paused_lr]
    assert victim["status"] == "interrupted" and victim["reason"] == "interrupted"
    assert "running" not in {t["status"] for t in trials}
    assert "sweep_interrupted" in load(sweep).events["kind"].to_pylist()

    done = subprocess.run([*CAVIAR, "resume", sweep, "--plain", "--task", SLOW_TASK], cwd=ROOT, env=env,
                          capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(sweep).trials.to_pylist()
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 3)] * 3
    victim = next(t for t in trials if t["trial_id"] == victim["trial_id"])
    assert victim["attempt"] >= 1  # it went on from its checkpoint as a new attempt


@pytest.mark.slow  # real caviar processes killed and resumed: the second CI tier
def test_two_runs_of_one_name_at_once_one_claims_it_the_other_gets_one_line(tmp_path):
    """Both pass the 'already exists' check inside a 3-second window (injected before the claim); the
    exclusive create lets exactly one through, and the winner holds its lease 8 s more, so a loser whose
    start lagged (a loaded CI machine) still meets it. The winner then fails to reach its (closed) Ray
    address, so neither starts Ray and the test stays fast; its refused start leaves no folder."""
    from tests.cluster.raycluster import free_port

    storage = tmp_path / "runs"
    env = {**os.environ, "CAVIAR_FAULT_DELAY_CLAIM": "3", "CAVIAR_FAULT_DELAY_HOLD": "8"}
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{free_port()}"
    run = [*CAVIAR, "run", os.path.join(ROOT, "tests", "tasks", "tiny_task.py"), "--storage", str(storage),
           "--name", "same", "--address", address, "--plain"]
    procs = [subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read().strip().splitlines()) for p in procs)
    sweep = storage / "same"
    # Lost at the exclusive create, or (when it lagged past the winner's claim) at the check before it.
    losses = ("is taken by another caviar run (process ", "already exists (pass --overwrite")
    lost = [lines for code, lines in outcomes if any(loss in line for loss in losses for line in lines)]
    won = [lines for code, lines in outcomes if any("cannot connect" in line for line in lines)]
    assert [code for code, _ in outcomes] == [2, 2], outcomes
    assert len(lost) == 1 and len(won) == 1, outcomes
    assert len(lost[0]) == 1 and lost[0][0].startswith(f"caviar: error: sweep '{sweep}' "), lost
    assert len(won[0]) == 1 and won[0][0].startswith(f"caviar: error: Ray cluster '{address}': cannot connect")
    assert not sweep.exists()  # the winner's refused start removed what it had written


@pytest.mark.slow  # real caviar processes killed and resumed: the second CI tier
def test_a_real_master_killed_between_the_trials_table_and_its_stage_row_resumes(tmp_path):
    """`CAVIAR_FAULT_AFTER_WRITE=3`: the master writes the sweep row, the first events and the first trials
    table, then `os._exit`s before the stage row. `caviar resume` begins the stage again from the table
    and finishes it (tests/orchestrator/test_resume_faults.py covers every boundary, in-process)."""
    storage = tmp_path / "runs"
    env = {**os.environ, "RAY_ADDRESS": "local"}
    run = [*CAVIAR, "run", os.path.join(ROOT, "tests", "tasks", "tiny_task.py"), "--trials", "3", "--epochs", "1",
           "--stages", "1", "--slots", "2", "--seed", "2", "--storage", str(storage), "--name", "cut", "--no-ensemble",
           "--plain"]
    with open(tmp_path / "killed.log", "w") as log:  # a file, not a pipe: Ray's children may hold it open
        killed = subprocess.Popen(run, cwd=ROOT, env={**env, "CAVIAR_FAULT_AFTER_WRITE": "3"}, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        killed.wait(timeout=300)
    err = (tmp_path / "killed.log").read_text()
    try:
        os.killpg(killed.pid, signal.SIGKILL)  # what the dead master's Ray left in its group, as a SIGKILL would
    except ProcessLookupError:
        pass
    assert killed.returncode == 97, err[-3000:]  # sweeplog.FAULT_EXIT_CODE
    sweep = storage / "cut"
    assert (sweep / "trials" / "trials.parquet").exists() and not (sweep / "stages").exists()
    done = subprocess.run([*CAVIAR, "resume", str(sweep), "--plain", "--trust-task-code"], cwd=ROOT, env=env,
                          capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tables = load(str(sweep))
    assert [(t["status"], t["epochs_run"]) for t in tables.trials.to_pylist()] == [("completed", 1)] * 3
    assert tables.stages.num_rows == 1


ENDS_SLOWLY = '''
import os
import time

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform, randint

space = {"lr": loguniform(1e-2, 1e-1), "hidden": randint(4, 16), "batch_size": 32}


MASTER = []  # the process whose pre-flight check scores the test split once, before any trial


def metrics(outputs, targets):
    if len(targets) == 100:  # the test split: in a worker, scored only when a trial ends; its end stays open
        MASTER[:] = MASTER or [os.getpid()]
        if os.getpid() != MASTER[0]:  # a forked worker inherits MASTER: only the master's own calls are skipped
            with open(os.environ["ENDING_MARKER"], "a") as marker:
                marker.write(f"{os.getpid()}\\n")
            time.sleep(float(os.environ.get("ENDING_SECONDS", "0")))
    return {"top": float((outputs.argmax(1) == targets).float().mean())}


objective = "val_top"
mode = "max"


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(420, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return (x[:240], y[:240]), (x[240:320], y[240:320]), (x[320:], y[320:])


def build_model(config):
    return nn.Sequential(nn.Linear(6, int(config["hidden"])), nn.ReLU(), nn.Linear(int(config["hidden"]), 2))
'''


@pytest.mark.slow  # real caviar processes killed and resumed: the second CI tier
def test_a_sweep_killed_while_trials_write_their_end_resumes_with_their_checkpoints_and_predictions(tmp_path):
    """SIGKILL while a trial scores its kept checkpoints on test (its metrics file written, its index and
    predictions not yet): before, the resume closed it as completed from its stored epochs, and the sweep
    ended without its checkpoints or predictions, so the ensembles and their "best single model" left it out."""
    task = tmp_path / "ends_slowly.py"
    task.write_text(ENDS_SLOWLY)
    marker = tmp_path / "ending"
    storage = str(tmp_path / "runs")
    env = {**os.environ, "ENDING_MARKER": str(marker), "ENDING_SECONDS": "60"}
    run = [*CAVIAR, "run", str(task), "--trials", "4", "--epochs", "2", "--stages", "1", "--pruner", "none",
           "--slots", "2", "--executor", "processes", "--storage", storage, "--name", "cut", "--plain", "--no-report"]
    proc = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else ""
    finally:
        kill_master(proc)
    sweep = os.path.join(storage, "cut")
    cut_short = {t["trial_id"] for t in load(sweep).trials.to_pylist() if t["status"] != "completed"}
    assert any(Storage.from_uri(sweep).exists(schema.metrics_path(tid)) for tid in cut_short)  # its end had begun

    done = subprocess.run([*CAVIAR, "resume", sweep, "--task", str(task), "--plain", "--no-report"], cwd=ROOT,
                          env={**env, "ENDING_SECONDS": "0"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tables = load(sweep)
    trials = tables.trials.to_pylist()
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 2)] * 4
    stored = Storage.from_uri(sweep)
    for t in trials:  # every trial's end is on disk: its index with test metrics, and its predictions
        index = stored.read_table(schema.checkpoint_index_path(t["trial_id"]))
        assert index.num_rows and index["metrics"].null_count == 0, t["trial_id"]
        assert stored.exists(schema.predictions_path(t["trial_id"])), t["trial_id"]
        # the cut-short attempt's weight files that no index named are gone, not left on disk for ever
        on_disk = set(stored.list_files(f"weights/trial-{t['trial_id']:06d}", suffix=".safetensors"))
        assert on_disk == set(index["path"].to_pylist()), (t["trial_id"], on_disk)
    best = max(trials, key=lambda t: t["best_score"])
    single = next(e for e in stored.read_table(schema.ENSEMBLES_PATH).to_pylist() if e["method"] == "single")
    assert single["members"][0]["trial_id"] == best["trial_id"]


FLAKY_START_TASK = '''
import os
import numpy as np
import ray
from torch import nn
from orchestrator.search.space import loguniform

if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
    try:  # the first actor to import the task fails to, as on a node whose driver did not load
        os.close(os.open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "failed_once"),
                         os.O_CREAT | os.O_EXCL))
        raise RuntimeError("this node's driver did not load")
    except FileExistsError:
        pass

space = {"lr": loguniform(1e-3, 1e-1), "batch_size": 32, "optimizer": "adam"}
kind = "regression"


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32"))
    return {"train": (x[:80], y[:80]), "val": (x[80:100], y[80:100]), "test": (x[100:], y[100:])}


def build_model(config):
    return nn.Linear(3, 1)
'''


def test_a_trial_on_an_actor_that_never_started_keeps_its_attempt(ray_session, tmp_path):
    """The first trial actor failed to import the task: its queued trial came back as attempt 1 (a retry spent,
    the table saying it ran twice) though it never ran. Now it runs on the replacement as attempt 0."""
    task = tmp_path / "flaky_start.py"
    task.write_text(FLAKY_START_TASK)
    result = run_sweep(str(task), trials=2, epochs=1, stages=1, slots=1, executor="ray", max_retries=0,
                       storage=str(tmp_path / "runs"), name="flaky", ensemble=False)
    assert (tmp_path / "failed_once").exists()  # an actor did fail to start
    tables = load(result.path)
    assert [(t["status"], t["attempt"]) for t in tables.trials.to_pylist()] == [("completed", 0)] * 2
    retried = [(e["trial_id"], e["reason"]) for e in tables.events.to_pylist() if e["kind"] == "trial_retried"]
    assert [reason for _, reason in retried] == ["worker_not_started"]


MULTILABEL_HOLDS = '''
import multiprocessing
import os
import time

import numpy as np
from torch import nn

from orchestrator.search.space import loguniform, randint

space = {"lr": loguniform(1e-2, 1e-1), "hidden": randint(8, 24), "batch_size": 32, "optimizer": "adam",
         "ema_decay": 0.9}


def hold(marker):  # says it holds, then holds until the test kills this process
    with open(marker, "a") as out:
        out.write(f"{os.getpid()}\\n")
    time.sleep(120)


def load_data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(360, 5)).astype(np.float32)
    noise = rng.normal(scale=0.5, size=(360, 3))
    y = np.stack([x[:, 0] + noise[:, 0] > 0.3, x[:, 1] + noise[:, 1] > 0, x[:, 2] * x[:, 3] + noise[:, 2] > 0],
                 axis=1).astype(np.int64)
    return (x[:200], y[:200]), (x[200:280], y[200:280]), (x[280:], y[280:])


def build_model(config):
    folder = os.environ["HOLD_DIR"]
    if multiprocessing.parent_process() is not None:  # a trial worker: the first stage-2 trial holds
        with open(os.path.join(folder, "builds"), "a") as out:
            out.write("x")
        if os.path.getsize(os.path.join(folder, "builds")) > 4 and os.path.exists(os.path.join(folder, "hold_stage2")):
            hold(os.path.join(folder, "held_stage2"))
    elif os.path.exists(os.path.join(folder, "hold_soup")):  # the master's soup, the trials over
        hold(os.path.join(folder, "held_soup"))
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(5, h), nn.ReLU(), nn.Linear(h, 3))
'''


def wait_for(path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), proc.stdout.read()[-3000:] if proc.poll() is not None else f"no {path.name} in {timeout} s"


@pytest.mark.slow  # real caviar processes killed and resumed: the second CI tier
def test_a_resume_killed_while_it_rebuilds_the_ensembles_of_a_stopped_sweep_rebuilds_them_when_run_again(tmp_path):
    """A sweep stopped after stage 1 got its ensembles (`caviar ensemble`); the resume that trained stage 2 was
    SIGKILLed while it rebuilt them. Before: the next `caviar resume` found the old table, said the sweep had
    finished with nothing to resume, and answered with stage 1's trials (load_ensemble(name="best") too)."""
    task = tmp_path / "multilabel_holds.py"
    task.write_text(MULTILABEL_HOLDS)
    folder = tmp_path / "hold"
    folder.mkdir()
    (folder / "hold_stage2").touch()
    env = {**os.environ, "HOLD_DIR": str(folder)}
    storage = str(tmp_path / "runs")
    sweep = os.path.join(storage, "stale")
    run = [*CAVIAR, "run", str(task), "--plan", "4x1,2x2", "--pruner", "none", "--slots", "1", "--seed", "3",
           "--executor", "processes", "--storage", storage, "--name", "stale", "--plain", "--no-report"]
    proc = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_for(folder / "held_stage2", proc)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: stage 1 done, stage 2's first trial building
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            kill_master(proc)
    os.remove(folder / "hold_stage2")
    built = subprocess.run([*CAVIAR, "ensemble", sweep, "--task", str(task)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]

    (folder / "hold_soup").touch()
    resume = [*CAVIAR, "resume", sweep, "--task", str(task), "--plain", "--no-report"]
    proc = subprocess.Popen(resume, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_for(folder / "held_soup", proc)  # every trial ended; the rebuild's soup is building
    finally:
        kill_master(proc)
    os.remove(folder / "hold_soup")
    trials = load(sweep).trials.to_pylist()
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 1)] * 4 + [("completed", 2)] * 2
    shown = subprocess.run([*CAVIAR, "status", sweep], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "ensembles built before trials 4, 5 ended (its master stopped while building them)" in shown.stdout

    done = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nothing to resume" not in done.stdout + done.stderr
    rows = Storage.from_uri(sweep).read_table(schema.ENSEMBLES_PATH).to_pylist()
    best = max(trials, key=lambda t: t["best_score"])
    assert best["stage"] == 2  # the answer an uninterrupted run gives is a stage-2 trial
    single = next(r for r in rows if r["method"] == "single")
    assert single["members"][0]["trial_id"] == best["trial_id"]
    assert all(r["created"] >= max(t["finished"] for t in trials) for r in rows)
    again = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to resume, nothing written" in again.stdout + again.stderr
