"""``executor="processes"``: trials in child processes of the master, no Ray; real processes, real files."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from orchestrator.app.api import load, run_sweep
from orchestrator.decide.backend import MAX_REPLACEMENTS, Assignment
from orchestrator.errors import CaviarError, ConfigError
from orchestrator.spec.settings import RunSettings
from tests.conftest import ROOT, TINY_TASK
from worker.pool.processes import ProcessBackend, local_cpus, start_method

SLOW_TASK = os.path.join(ROOT, "tests", "tasks", "slow_task.py")
CAVIAR = [os.path.join(os.path.dirname(sys.executable), "caviar")]
pytestmark = pytest.mark.timeout(300)


def test_a_sweep_in_forked_processes_writes_the_same_tables_and_never_imports_ray(tmp_path):
    code = ("import sys; from orchestrator import run_sweep; "
            f"r = run_sweep({TINY_TASK!r}, trials=6, epochs=2, stages=1, pruner='none', slots=2, seed=3, "
            f"storage={str(tmp_path)!r}, name='p', executor='processes'); "
            "print(r.counts, 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("False")  # Ray was never imported, let alone started
    tables = load(str(tmp_path / "p"))
    trials = tables.trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 6
    assert tables.metrics.num_rows == 12
    assert {t["node"] for t in trials} == {os.uname().nodename}  # this machine's name, as WorkerSession reports it
    assert tables.checkpoints.num_rows >= 6
    sweep = tmp_path / "p"
    assert len(os.listdir(sweep / "predictions")) == 6 and os.listdir(sweep / "ensembles")  # what ensembles read
    ensembles = tables.to_pandas("ensembles")  # load() holds them too: was "table 'ensembles': unknown"
    assert len(ensembles) >= 3 and ensembles["chosen"].sum() == 1 and set(ensembles["method"]) >= {"single", "top_k"}


@pytest.mark.parametrize("task", ["regression_task", "soft_label_task", "custom_loss_task", "streamed_task",
                                  "batch_norm_task"])
def test_other_kinds_of_task_train_in_processes(task, tmp_path):
    """Regression, soft labels, a custom loss, streamed Datasets (whose workers are spawned, not forked), and batch
    norm whose epochs would end on a batch of one example."""
    path = os.path.join(ROOT, "tests", "tasks", f"{task}.py")
    result = run_sweep(path, stages=1, pruner="none", slots=2, storage=str(tmp_path), name=task,
                       executor="processes")
    tables = load(result.path)
    trials = tables.trials.to_pylist()
    assert {t["status"] for t in trials} == {"completed"}, [t["error"] for t in trials]
    assert tables.metrics.num_rows == sum(t["epochs_run"] for t in trials) > 0
    assert result.best_score is not None


def test_the_same_seed_samples_the_same_configs_as_on_ray(ray_session, tmp_path):
    """Where trials run changes nothing the sweep decides: same seed, same configs, same epochs."""
    runs = {}
    for executor in ("ray", "processes"):
        result = run_sweep(TINY_TASK, trials=4, epochs=2, stages=1, pruner="none", seed=11, slots=2,
                           storage=str(tmp_path), name=executor, executor=executor, ensemble=False)
        runs[executor] = sorted((t["trial_id"], t["status"], t["epochs_run"], tuple(sorted(t["config"].items())))
                                for t in load(result.path).trials.to_pylist())
    assert runs["ray"] == runs["processes"]


@pytest.mark.parametrize("task, settings", [
    ("tiny_task", {"slots": 1}),  # ASHA on one slot: every rung sees the trials in trial order
    ("tiny_task", {"slots": 2, "pruner": "none"}),  # two slots, no decision that depends on who finished first
    ("regression_task", {"slots": 1}),
])
def test_a_rerun_without_timing_dependent_decisions_gives_the_same_trials_table(task, settings, tmp_path):
    """README "Reruns": the seed fixes every later stage too when nothing decides by finish order."""
    path = os.path.join(ROOT, "tests", "tasks", f"{task}.py")

    def table(name: str) -> list[tuple]:
        result = run_sweep(path, trials=12, epochs=3, seed=4, storage=str(tmp_path), name=name, ensemble=False,
                           executor="processes", **settings)
        rows = load(result.path).trials.to_pylist()
        return [(t["trial_id"], t["stage"], t["status"], t["reason"], t["epochs_run"], t["best_score"],
                 sorted(t["config"].items())) for t in rows]

    first = table("first")
    assert len({row[1] for row in first}) > 1  # later stages exist: narrowed and sampled from the first's results
    assert table("again") == first


def test_trials_with_more_than_one_cpu_run_in_spawned_processes(tmp_path):
    """A forked child must stay on one torch thread (GNU OpenMP hangs after a fork): more CPUs per trial spawn."""
    result = run_sweep(TINY_TASK, trials=2, epochs=1, stages=1, pruner="none", slots=1, cpus_per_trial=2,
                       storage=str(tmp_path), name="spawned", executor="processes", ensemble=False)
    assert result.counts == {"completed": 2}
    in_memory = SimpleNamespace(streams=None)  # data that could be forked over: the thread count alone decides
    backend = ProcessBackend(TINY_TASK, str(tmp_path), "direct", 1, {"threads": 2}, in_memory)
    try:
        assert backend.start_method == "spawn"
    finally:
        backend.close()


def test_a_streamed_task_with_loader_workers_trains_in_spawned_processes(tmp_path):
    """``num_workers = 2`` with a Dataset class defined in the task file: the spawned worker's DataLoader workers
    used to be spawned too, died unpickling a class they could not import, and the sweep waited for ever."""
    task = os.path.join(ROOT, "tests", "tasks", "loader_workers_task.py")
    code = ("from orchestrator import run_sweep; "
            f"r = run_sweep({task!r}, stages=1, pruner='none', slots=1, storage={str(tmp_path)!r}, name='w', "
            "executor='processes', ensemble=False); print(r.counts)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("{'completed': 2}")


def test_workers_that_load_augmented_data_themselves_standardise_with_the_masters_statistics(tmp_path):
    """Spawned workers read a randomly augmenting training Dataset themselves: each pass gives other input
    statistics. Every worker must standardise with the master's (the ones stored, which loading applies), or a trial
    of one worker reports numbers its loaded checkpoint does not give."""
    import numpy as np
    import torch

    from orchestrator.ensemble.ensemble_run import read_dataset
    from orchestrator.store.storage import Storage
    from tests.tasks import augmented_task
    from worker.load.ensemble_model import SweepModels

    path = os.path.join(ROOT, "tests", "tasks", "augmented_task.py")
    result = run_sweep(path, trials=4, epochs=1, stages=1, pruner="none", slots=2, storage=str(tmp_path),
                       name="aug", executor="processes", ensemble=False)
    assert result.counts == {"completed": 4}
    storage = Storage.from_uri(result.path)
    stored = read_dataset(storage)
    models = SweepModels(storage, trust_task_code=True)
    val = augmented_task.Noisy("val", False)
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    x = (x - torch.from_numpy(stored.mean).float()) / torch.from_numpy(stored.std).float()
    for key, row in models.checkpoints.items():
        with torch.no_grad():
            log_p = torch.log_softmax(models.model(key).eval()(x).double(), dim=1)
        log_loss = float(-log_p[torch.arange(len(y)), y].mean())
        assert dict(row["metrics"])["val_log_loss"] == pytest.approx(log_loss, rel=1e-5), key
        assert np.isclose(float((log_p.argmax(1) == y).double().mean()), dict(row["metrics"])["val_accuracy"])


def test_resumed_workers_standardise_with_the_statistics_the_master_wrote_before_any_trial(tmp_path):
    """A sweep stopped before any trial stored its predictions, then resumed: the master loads no data, and each
    worker makes its own pass over the augmenting training split; they take the master's statistics, written at
    the start (a pass of another caviar version, or of a split the task draws without a seed, gives others)."""
    from dataclasses import replace

    import torch

    from orchestrator.spec.task import load_task
    from orchestrator.store.storage import Storage
    from worker.data.splits import prepare_task_data
    from worker.train.session import WorkerSession, write_input_statistics

    path = os.path.join(ROOT, "tests", "tasks", "augmented_task.py")
    master = prepare_task_data(load_task(path))
    written = replace(master, mean=master.mean + 0.25)  # statistics no pass here gives: the check is not vacuous
    write_input_statistics(Storage.from_uri(str(tmp_path)).child("s"), written)
    workers = [WorkerSession(path, str(tmp_path), "s", {"device": "cpu"}) for _ in range(2)]
    for worker in workers:
        assert torch.equal(worker.splits.mean, written.mean) and torch.equal(worker.splits.std, written.std)
    # the load-time pass is seeded: another pass over the random augmentation gives the same statistics again
    assert torch.equal(prepare_task_data(load_task(path)).mean, master.mean)


def test_only_one_thread_workers_over_in_memory_data_are_forked():
    in_memory, streamed = SimpleNamespace(streams=None), SimpleNamespace(streams={"train": object()})
    assert start_method(1, in_memory) == "fork"
    assert start_method(2, in_memory) == "spawn"  # GNU OpenMP hangs in a child forked after its threads ran
    assert start_method(1, streamed) == "spawn"  # the task's Datasets may hold open files a fork would share
    assert start_method(1, None) == "spawn"  # a resumed sweep: the master has not loaded the data


def test_the_live_view_redrawing_from_its_thread_does_not_hang_forked_workers(tmp_path):
    """Under a terminal the live view redraws 4 times a second from a thread while the master forks."""
    leader, follower = pty.openpty()
    run = [*CAVIAR, "run", TINY_TASK, "--executor", "processes", "--trials", "12", "--epochs", "2", "--slots", "2",
           "--storage", str(tmp_path), "--name", "tty", "--no-ensemble", "--no-report"]
    proc = subprocess.Popen(run, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    try:
        while True:  # drain the terminal, or a full pty buffer would stall the master
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the last writer closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=180) == 0, seen[-3000:]
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    assert [t["status"] for t in load(str(tmp_path / "tty")).trials.to_pylist()].count("completed") >= 4


@pytest.mark.parametrize(("task", "named", "deaths"), [
    # a crash while the worker starts (here: data the session cannot take) may not happen again: replaced
    (TINY_TASK, "AttributeError", MAX_REPLACEMENTS + 1),
    # a refusal of the task itself (its file gone; a resume's labels other than the sweep stored) would happen in
    # every replacement, each loading the data again (about 80 s of them on a resume): the slot is given up at once
    ("no_such_task.py", "no_such_task.py", 1),
])
def test_a_worker_that_cannot_start_is_replaced_unless_refused_then_its_slot_given_up_with_one_line(tmp_path, task,
                                                                                                     named, deaths):
    task = task if os.path.isabs(task) else str(tmp_path / task)
    in_memory = SimpleNamespace(streams=None)  # forked: no real data, as the session finds when it takes it
    backend = ProcessBackend(task, str(tmp_path), "gone", 1, {"threads": 1}, in_memory)
    backend.start(Assignment(0, 1, {"lr": 0.1}, seed=0, max_epochs=1, until_epoch=1))
    lost, deadline = [], time.monotonic() + 120
    try:
        with pytest.raises(CaviarError, match="no trial worker could start") as refused:
            while time.monotonic() < deadline:
                lost += [r for r in backend.poll(timeout=1.0) if r.lost]
        assert named in str(refused.value) and "\n" not in str(refused.value)
        assert ("tries per slot" in str(refused.value)) == (deaths > 1)
        assert [r.trial_id for r in lost] == [0] and backend.deaths == deaths
    finally:
        backend.close()


@pytest.mark.parametrize(("settings", "field"), [
    ({"address": "auto"}, "address"), ({"gpus_per_trial": 0.5}, "gpus_per_trial"),
    ({"resources": {"tpu": 1.0}}, "resources"), ({"device": "cuda"}, "device"),
    ({"dashboard": True}, "dashboard"),
])
def test_a_setting_only_ray_can_honour_is_refused_by_name(settings, field):
    with pytest.raises(ConfigError, match=f"^setting '{field}': .*only the ray executor does; use --executor ray"):
        RunSettings(executor="processes", **settings).validate()


@pytest.mark.parametrize(("settings", "field"), [
    ({"address": "auto"}, "address"), ({"gpus_per_trial": 0.5}, "gpus_per_trial"),
    ({"resources": {"tpu": 1.0}}, "resources"), ({"device": "cuda:1"}, "device"),
    ({"dashboard": True}, "dashboard"),
])
def test_auto_runs_on_ray_when_a_setting_needs_it(settings, field):
    chosen = RunSettings(**settings).validate()
    assert chosen.executor == "auto" and [name for name, _ in chosen.needs_ray()] == [field]
    assert chosen.resolved_executor(ray_running=False) == "ray"


def test_the_executor_event_says_why():
    assert RunSettings(gpus_per_trial=1).executor_and_why(ray_running=False) == (
        "ray", "auto: setting 'gpus_per_trial' places GPUs, which needs Ray")
    assert RunSettings(executor="processes").executor_and_why(ray_running=True) == (
        "processes", "executor 'processes' as set")


def test_auto_runs_a_cpu_sweep_in_processes_unless_this_process_joined_ray():
    plain = RunSettings(device="cpu", cpus_per_trial=2, slots=3).validate()
    assert plain.resolved_executor(ray_running=False) == "processes"
    assert plain.resolved_executor(ray_running=True) == "ray"  # ray.init in a notebook: the user chose Ray
    # An explicit choice is kept either way (a refusal for conflicts is validate's, tested above).
    assert RunSettings(executor="ray").resolved_executor(ray_running=False) == "ray"
    assert RunSettings(executor="processes").resolved_executor(ray_running=True) == "processes"
    # Fused arrays train in child processes too (worker/pool/fused_processes.py): fusing alone needs no Ray.
    assert RunSettings(fuse="on").validate().resolved_executor(ray_running=False) == "processes"
    assert RunSettings(executor="processes", fuse="auto").validate().executor == "processes"


def test_the_default_slot_count_honours_a_cpu_limit_below_the_affinity_mask(monkeypatch):
    # A container's CPU quota is the same kind of limit (joblib reads cgroup v1 and v2); the variable stands in for it.
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert local_cpus() == 1
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT")
    assert 1 <= local_cpus() <= len(os.sched_getaffinity(0))


def test_a_default_cli_run_trains_in_processes_and_never_imports_ray(tmp_path):
    sitecustomize = tmp_path / "guard" / "sitecustomize.py"
    sitecustomize.parent.mkdir()
    sitecustomize.write_text("import sys\n\nclass NoRay:\n    def find_spec(self, name, path=None, target=None):\n"
                             "        if name == 'ray' or name.startswith('ray.'):\n"
                             "            raise ImportError('ray imported by a default local run')\n\n"
                             "sys.meta_path.insert(0, NoRay())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(sitecustomize.parent), ROOT])}
    done = subprocess.run([*CAVIAR, "run", TINY_TASK, "--trials", "2", "--epochs", "1", "--storage", str(tmp_path),
                           "--name", "auto", "--plain", "--no-ensemble", "--no-report"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "caviar: no Ray;" in done.stdout + done.stderr
    assert "private Ray" not in done.stderr
    tables = load(os.path.join(str(tmp_path), "auto"))
    assert len(tables.trials) == 2
    [executor] = [e for e in tables.events.to_pylist() if e["kind"] == "executor"]  # where they trained, and why
    assert executor["reason"].startswith("auto: one machine and no setting that needs Ray")


def test_an_unknown_executor_is_one_line_from_the_cli(tmp_path):
    done = subprocess.run([*CAVIAR, "run", TINY_TASK, "--executor", "threads", "--storage", str(tmp_path), "--plain"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = done.stderr.strip().splitlines()[-1]
    assert said == "caviar: error: setting 'executor': expected one of auto, ray, processes"
    assert not os.listdir(tmp_path)


def start_paused_sweep(tmp_path, name: str) -> tuple[subprocess.Popen, str, str]:
    """``caviar run --executor processes`` on the slow task; returns once a worker paused mid-epoch 2."""
    folder = tmp_path / "pause"
    folder.mkdir()
    config = tmp_path / "pause.toml"
    config.write_text(f'[space]\npause_dir = "{folder}"\npause_epoch = 2\n')
    storage = str(tmp_path / "runs")
    run = [*CAVIAR, "run", SLOW_TASK, "--executor", "processes", "--trials", "3", "--epochs", "3", "--stages", "1",
           "--slots", "2", "--seed", "5", "--storage", storage, "--name", name, "--no-ensemble", "--plain",
           "--config", str(config)]
    proc = subprocess.Popen(run, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    marker, deadline = folder / "paused", time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1][-3000:] if proc.poll() is not None else "no pause in 120 s"
    pid, lr = marker.read_text().split()
    return proc, pid, os.path.join(storage, name)


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_a_killed_worker_process_loses_its_trial_which_resumes_from_its_checkpoint(tmp_path):
    proc, pid, sweep = start_paused_sweep(tmp_path, "killed")
    try:
        assert int(pid) != proc.pid  # the paused trial trains in a child, not in the master
        os.kill(int(pid), signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
    finally:
        end(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "lost a trial worker process" in err
    trials = load(sweep).trials.to_pylist()
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 3)] * 3
    assert max(t["attempt"] for t in trials) == 1  # the victim went on as a second attempt


def test_ctrl_c_ends_the_workers_and_the_sweep_resumes_in_processes(tmp_path):
    proc, pid, sweep = start_paused_sweep(tmp_path, "stopped")
    try:
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: the whole process group
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        end(proc)
    assert proc.returncode == 130, err[-3000:]
    assert took < 60  # the paused epoch lasts 60 s: the master ended its worker instead of waiting for it
    assert err.strip().splitlines()[-1] == f"interrupted: caviar resume {sweep} --task {SLOW_TASK}"
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")  # no worker outlives its master
    assert "interrupted" in {t["status"] for t in load(sweep).trials.to_pylist()}
    done = subprocess.run([*CAVIAR, "resume", sweep, "--plain", "--task", SLOW_TASK, "--executor", "processes"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(sweep).trials.to_pylist()
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 3)] * 3


def test_a_killed_master_takes_its_workers_with_it_and_the_sweep_resumes(tmp_path):
    """SIGKILL to the master alone (no Ctrl-C to the group): the kernel ends its children (PR_SET_PDEATHSIG)."""
    proc, pid, sweep = start_paused_sweep(tmp_path, "orphaned")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{pid}")  # the paused worker did not sit out its 60-second epoch
    finally:
        end(proc)
    done = subprocess.run([*CAVIAR, "resume", sweep, "--plain", "--task", SLOW_TASK, "--executor", "processes"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(sweep).trials.to_pylist()
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 3)] * 3


def test_workers_are_spawned_once_torch_compile_has_compiled_in_the_master(monkeypatch):
    """The contract check runs a torch.compile'd model in the master; inductor's compile workers do not survive a
    fork, and a forked child compiling its own model waited on them for ever (the end-to-end hang:
    tests/integration/test_model_kinds_sweep.py::test_a_torch_compiled_model_sweeps_in_child_processes)."""
    import types

    in_memory = SimpleNamespace(streams=None)
    assert start_method(1, in_memory) == "fork"
    monkeypatch.setitem(sys.modules, "torch._inductor.async_compile", types.ModuleType("async_compile"))
    assert start_method(1, in_memory) == "spawn"


def test_a_ctrl_c_while_a_spawned_worker_imports_leaves_it_to_the_master(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group. A spawned worker still importing torch (a resume's, or
    one with more than one thread) died of it with a KeyboardInterrupt traceback on the terminal; now it starts with
    SIGINT held and ignores it, as the master decides."""
    backend = ProcessBackend(TINY_TASK, str(tmp_path), "held", 1, {"threads": 2}, None)
    try:
        assert backend.start_method == "spawn"
        child = backend.workers[0].process
        for _ in range(10):  # the child's first second: its interpreter starting, then its imports
            os.kill(child.pid, signal.SIGINT)  # this test's own child, by its id
            time.sleep(0.1)
        deadline = time.monotonic() + 120
        while not backend.workers[0].ready and child.is_alive() and time.monotonic() < deadline:
            backend.poll(timeout=1.0)
        assert child.is_alive() and backend.workers[0].ready and backend.deaths == 0
    finally:
        backend.close()
