"""The CLI on sweeps in odd states: a damaged lease, a stopped regression sweep, temp files a kill left behind.

Real ``caviar`` processes on a real regression task; the master is ended after a chosen write
(``CAVIAR_FAULT_AFTER_WRITE``), which leaves the sweep as a killed master would.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from orchestrator import load_ensemble
from orchestrator.app.api import load
from orchestrator.errors import StorageError, TaskError
from orchestrator.store.lease import LEASE_PATH, read_lease
from orchestrator.store.storage import Storage
from tests.conftest import ROOT, folder_digest

CAVIAR = [os.path.join(os.path.dirname(sys.executable), "caviar")]
ENV = {**os.environ, "PYTHONPATH": ROOT}
REGRESSION_TASK = os.path.join(ROOT, "tests", "tasks", "regression_task.py")


def caviar(*args: str, cwd: str = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CAVIAR, *args], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=300)


def stopped_regression_sweep(tmp_path, after_write: int = 3, name: str = "reg") -> str:
    """A regression sweep whose master died after its ``after_write``-th write (3: its first trials table)."""
    storage = tmp_path / "runs"
    done = caviar("run", REGRESSION_TASK, "--trials", "2", "--epochs", "1", "--stages", "1", "--slots", "1",
                  "--storage", str(storage), "--name", name, "--no-ensemble", "--executor", "processes", "--plain",
                  env={**ENV, "CAVIAR_FAULT_AFTER_WRITE": str(after_write)})
    assert done.returncode == 97, done.stderr[-3000:]  # sweeplog.FAULT_EXIT_CODE
    return str(storage / name)


DAMAGED_LEASES = {
    "cut_short": b'{"owner": "4f1c", "host": "vm", "pid": 12',  # a copy cut off, an editor's half save
    "a_list": b"[1]",  # valid JSON, no object: before, a traceback (AttributeError)
    "pid_as_text": b'{"owner": "4f1c", "host": "vm", "pid": "12", "started": 1, "heartbeat": 1}',
}
WHAT_TO_DO = "once no caviar process is writing this sweep, delete that file and run the command again"


@pytest.mark.parametrize("damage", sorted(DAMAGED_LEASES))
def test_read_lease_names_a_damaged_lease_and_what_to_do(tmp_path, damage):
    storage = Storage.from_uri(str(tmp_path))
    storage.write_bytes(LEASE_PATH, DAMAGED_LEASES[damage])
    with pytest.raises(StorageError) as refused:
        read_lease(storage)
    assert str(refused.value).startswith(f"{tmp_path / LEASE_PATH}: not a readable lease (")
    assert str(refused.value).endswith(WHAT_TO_DO)


def test_a_damaged_lease_is_one_line_naming_the_file_and_what_to_do(tmp_path):
    """Before: resume and --overwrite stopped on 'not a readable lease (Expecting ...)' with no word of what to do, a
    lease holding a JSON list was a traceback, and status printed half its lines and failed. Now resume and
    --overwrite (and ensemble) refuse in one line naming the file and saying to delete it once no master writes the
    sweep; status shows the sweep and says the same; with the file deleted the sweep resumes."""
    sweep = stopped_regression_sweep(tmp_path)
    lease = os.path.join(sweep, LEASE_PATH)
    with open(lease, "wb") as f:
        f.write(DAMAGED_LEASES["a_list"])
    before = folder_digest(sweep)
    for args in (["resume", sweep, "--trust-task-code", "--plain"],
                 ["run", REGRESSION_TASK, "--storage", os.path.dirname(sweep), "--name", "reg", "--overwrite",
                  "--plain"]):  # `caviar ensemble` reads it through the same read_lease
        refused = caviar(*args)
        assert refused.returncode == 2, (args, refused.stderr[-3000:])
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith(f"caviar: error: {lease}: not a readable lease (") and line.endswith(WHAT_TO_DO), line
        assert "Traceback" not in refused.stderr
        assert folder_digest(sweep) == before  # nothing written, nothing deleted

    shown = caviar("status", sweep)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "stage 1: 1 pending, 1 running" in shown.stdout
    assert f"writer unknown: {lease}: not a readable lease (" in shown.stdout and WHAT_TO_DO in shown.stdout

    os.unlink(lease)  # what the line says to do
    resumed = caviar("resume", sweep, "--trust-task-code", "--plain", "--no-report")
    assert resumed.returncode == 0, resumed.stderr[-3000:]


KILLED_MID_WRITE = """
import os, signal, sys
from orchestrator.store.storage import Storage

class KilledBeforeRename:  # the file system of a master killed (SIGKILL) between a write and its rename
    def __init__(self, fs):
        self.fs = fs
    def __getattr__(self, name):
        return getattr(self.fs, name)
    def move(self, src, dest):
        os.kill(os.getpid(), signal.SIGKILL)

sweep = Storage.from_uri(sys.argv[1])
sweep.fs = KilledBeforeRename(sweep.fs)
sweep.write_bytes(sys.argv[2], b"x" * 4096)
"""


def killed_mid_write(sweep: str, rel: str) -> str:
    """Write ``rel`` in a process SIGKILLed before the rename; the temp file it leaves."""
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, sweep, rel], env=ENV, capture_output=True,
                          timeout=60)
    assert done.returncode == -9, done.stderr
    found = [os.path.join(base, name) for base, _, names in os.walk(sweep) for name in names
             if name.startswith(f".{os.path.basename(rel)}.tmp-")]
    assert len(found) == 1, found
    return found[0]


def test_temp_files_a_kill_left_are_removed_when_the_sweep_is_taken_over(tmp_path):
    """Before: a master killed between a write and its rename left `.trial-000000.parquet.tmp-1a2b3c4d` (and, for a
    checkpoint, a temp file the size of the model's weights) in the sweep for good: resume, --overwrite and the
    sweep's end never removed one. Now taking the sweep over (resume, --overwrite) and releasing it remove the temp
    files untouched for the lease's stale window; a younger one (a write that may still go on) stays."""
    sweep = stopped_regression_sweep(tmp_path)
    stale = [killed_mid_write(sweep, "metrics/trial-000000.parquet"),
             killed_mid_write(sweep, "weights/trial-000000/a0-e0001-raw.safetensors"),
             killed_mid_write(sweep, "trials/trials.parquet")]
    young = killed_mid_write(sweep, "metrics/trial-000001.parquet")
    an_hour_ago = time.time() - 3600
    for path in stale:
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert all(os.path.dirname(p) in (sweep, os.path.join(sweep, "weights")) for p in stale)  # beside their folders

    resumed = caviar("resume", sweep, "--trust-task-code", "--plain", "--no-report")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p for p in stale if os.path.exists(p)] == [] and os.path.exists(young)
    assert [(t["status"], t["epochs_run"]) for t in load(sweep).trials.to_pylist()] == [("completed", 1)] * 2

    os.utime(young, (an_hour_ago, an_hour_ago))
    rerun = caviar("run", REGRESSION_TASK, "--trials", "2", "--epochs", "1", "--stages", "1", "--slots", "1",
                   "--storage", os.path.dirname(sweep), "--name", "reg", "--overwrite", "--no-ensemble", "--plain",
                   "--no-report", "--executor", "processes")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not os.path.exists(young)  # in the sweep folder itself, which --overwrite keeps


CLAIM_AND_WAIT = """
import sys
from orchestrator.store.lease import Lease
from orchestrator.store.storage import Storage

Lease.create(Storage.from_uri(sys.argv[1]))  # what `caviar run` does once the task's data is checked
print("claimed", flush=True)
sys.stdin.read()  # still starting (workers, a cluster) until the test closes stdin; then gone, the lease not released
"""


def test_a_sweep_holding_only_its_lease_is_listed_and_named_starting_or_stopped(tmp_path):
    """Before: a run that had claimed its name but not yet written its sweep row (loading data, starting workers on a
    cluster), or was killed then, was missing from `caviar ls`, while `caviar run` of the name said it already
    exists; status, top and resume said 'not a caviar sweep directory'. Now ls lists it as starting (naming the
    process) or stopped before its first write, and status and resume say so in one line, the latter with the
    command that starts it again."""
    storage = tmp_path / "runs ü"  # a storage folder with a space and a non-ASCII letter
    sweep = str(storage / "reg")
    starting = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, sweep], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=ENV, text=True)
    try:
        assert starting.stdout.readline().strip() == "claimed"
        listed = caviar("ls", str(storage))
        assert listed.returncode == 0, listed.stderr
        assert f"starting (process {starting.pid} on" in listed.stdout
        shown = caviar("status", "reg", "--storage", str(storage))
        assert shown.returncode == 2
        assert shown.stderr.strip() == (f"caviar: error: sweep '{sweep}' has no tables yet: starting (process "
                                        f"{starting.pid} on {socket.gethostname()}); ask again once it has written "
                                        "its first trials")
    finally:
        starting.stdin.close()  # the run ends without releasing its lease, as a killed one would
        starting.wait(timeout=60)

    listed = caviar("ls", str(storage))
    assert listed.returncode == 0 and "stopped before its first write" in listed.stdout, listed.stderr
    again = f"caviar run TASK --storage '{storage}' --name reg --overwrite"
    for args in (["resume", sweep, "--trust-task-code"], ["status", "reg", "--storage", str(storage)]):
        refused = caviar(*args)
        assert refused.returncode == 2
        [line] = refused.stderr.strip().splitlines()
        assert line == (f"caviar: error: sweep '{sweep}' has no tables: its run stopped before its first write "
                        f"(killed, or failed while starting), so it holds nothing to resume; start it again with "
                        f"{again}"), line
    rerun = caviar("run", REGRESSION_TASK, "--storage", str(storage), "--name", "reg", "--overwrite", "--trials", "2",
                   "--epochs", "1", "--stages", "1", "--no-ensemble", "--no-report", "--plain",
                   "--executor", "processes")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "finished" in caviar("ls", str(storage)).stdout


HELPER_TASK = '''
from targets import load_data  # noqa: F401  a module of the task's folder

kind = "regression"
space = {"lr": loguniform(3e-3, 3e-2), "hidden": randint(8, 24), "batch_size": 32, "optimizer": "adam"}


def build_model(config):
    h = int(config["hidden"])
    return nn.Sequential(nn.Linear(4, h), nn.Tanh(), nn.Linear(h, 1))
'''


def test_stops_advice_names_a_resume_jobs_task_file_and_quotes_every_command(tmp_path):
    """Before: stopping a resume job of a task that imports a module of its folder printed `caviar submit TASK
    --resume ...` (a literal placeholder: resume jobs did not record their task file), and no printed command was
    quoted, so a storage path with a space or an s3:// query with '&' broke when pasted. Now the task file is named,
    every path is quoted, and the printed resume command runs as printed in a shell."""
    from cluster.jobs import plan_job, plan_resume_job
    from orchestrator.app.cli_cluster import stop_advice

    project = tmp_path / "my project"
    project.mkdir()
    source = open(REGRESSION_TASK).read()
    (project / "targets.py").write_text("import numpy as np\n\n\n" + source[source.index("def load_data"):
                                                                          source.index("def build_model")])
    task = project / "sensor task.py"
    task.write_text("from torch import nn\n\nfrom orchestrator.search.space import loguniform, randint\n" + HELPER_TASK)
    storage = tmp_path / "runs & more"
    ran = caviar("run", str(task), "--trials", "2", "--epochs", "1", "--stages", "1", "--storage", str(storage),
                 "--name", "helped", "--no-ensemble", "--no-report", "--plain", "--executor", "processes",
                 cwd=str(project))
    assert ran.returncode == 0, ran.stderr[-3000:]
    sweep = str(storage / "helped")

    resume_job = plan_resume_job(sweep, str(task)).metadata  # the metadata `caviar submit --resume` sends
    lines = stop_advice(resume_job, "http://head:8265")
    assert lines == [f"resume it on the cluster: caviar submit '{task}' --resume '{sweep}' --address "
                     "http://head:8265 (the sweep stores its task file, not the modules it imports from that folder)",
                     f"or from anywhere that reaches the storage: caviar resume '{sweep}' --task '{task}'"]
    pasted = lines[1].split("storage: ", 1)[1]
    again = subprocess.run(pasted.replace("caviar", shlex.quote(CAVIAR[0]), 1) + " --plain", shell=True, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has finished: nothing to resume" in again.stdout

    s3 = "s3://AK:SECRET@bucket/runs?endpoint_override=minio:9000&scheme=http"  # masked: never read from here
    new_job = plan_job(str(task), storage=s3, name="new").metadata
    lines = stop_advice(new_job, "http://head:8265")
    assert lines[1] == ("or from anywhere that reaches the storage: caviar resume "
                        "'s3://AK:***@bucket/runs/new?endpoint_override=minio:9000&scheme=http' --trust-task-code")


def test_stops_advice_for_a_job_stopped_after_it_claimed_its_name_says_to_overwrite(tmp_path):
    """The case of `caviar stop` a job stopped between claiming its sweep's name and writing its first table: its
    lease stays, so `caviar submit` of the name again needs --overwrite (no test covered this line)."""
    from cluster.jobs import plan_job
    from orchestrator.app.cli_cluster import stop_advice

    storage = tmp_path / "runs"
    job = plan_job(REGRESSION_TASK, storage=str(storage), name="early").metadata
    free = stop_advice(job, "http://head:8265")
    assert free == [f"its sweep had not begun: no sweep was written to {storage / 'early'}, so there is nothing to "
                    "resume; run it again with `caviar submit` (the same --name is free)"]
    claimed = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(storage / "early")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=ENV, text=True)
    assert claimed.stdout.readline().strip() == "claimed"
    claimed.stdin.close()  # the job's master ends holding its claim, as a stopped one does
    claimed.wait(timeout=60)
    assert stop_advice(job, "http://head:8265") == [
        f"its sweep had not begun: no sweep was written to {storage / 'early'}, so there is nothing to resume; run "
        "it again with `caviar submit` (its master's claim on the name remains: pass --overwrite)"]


def test_weights_that_do_not_fit_an_edited_task_name_the_edit_and_the_stored_copy(tmp_path):
    """Before: a task file edited since its sweep (build_model's width changed) made load_ensemble raise a bare
    RuntimeError ('weights do not fit ... size mismatch') and `caviar ensemble --task` (its soup) print torch's
    multi-part load_state_dict text, neither saying the file was edited. Now both are one TaskError line that names
    the file's and the stored copy's sha256 and trust_task_code; the stored copy loads, and the ensembles table the
    failed rebuild met is kept."""
    soft = tmp_path / "soft_labels.py"  # soft labels: a classification sweep, so `caviar ensemble` builds a soup
    shutil.copy(os.path.join(ROOT, "tests", "tasks", "soft_label_task.py"), soft)
    ran = caviar("run", str(soft), "--trials", "3", "--epochs", "1", "--stages", "1", "--storage",
                 str(tmp_path / "runs"), "--name", "soft", "--no-report", "--plain", "--executor", "processes")
    assert ran.returncode == 0, ran.stderr[-3000:]
    sweep = str(tmp_path / "runs" / "soft")
    stored = hashlib.sha256(soft.read_bytes()).hexdigest()[:12]
    soft.write_text(soft.read_text().replace("nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3)",
                                             "nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 3)"))
    edited = hashlib.sha256(soft.read_bytes()).hexdigest()[:12]
    named = (f"your task {soft} has sha256 {edited}, not the task/soft_labels.py the sweep ran (sha256 {stored}): "
             "load with trust_task_code=True (--trust-task-code)")

    with pytest.raises(TaskError) as refused:
        load_ensemble(sweep, name="best", task=str(soft))
    assert "weights do not fit the model build_model returns: size mismatch" in str(refused.value)
    assert named in str(refused.value)
    assert load_ensemble(sweep, name="best", trust_task_code=True) is not None

    before = folder_digest(os.path.join(sweep, "ensembles"))
    rebuilt = caviar("ensemble", sweep, "--task", str(soft))
    assert rebuilt.returncode == 2
    [line] = rebuilt.stderr.strip().splitlines()
    assert "weights do not fit the model build_model returns" in line and named in line, line
    assert folder_digest(os.path.join(sweep, "ensembles")) == before


FAILS_ONCE_TRAINING = '''"""Regression whose model raises from its fourth training batch on (missed by the checks)."""
import numpy as np
from torch import nn

from orchestrator.search.space import loguniform

kind = "regression"
space = {"lr": loguniform(1e-3, 1e-2), "batch_size": 40, "optimizer": "adam"}


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = x.sum(1).astype(np.float32)
    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.calls = nn.Linear(4, 1), 0

    def forward(self, x):
        self.calls += self.training
        if self.calls > 3:
            raise RuntimeError("index out of range in a bucketing step")
        return self.lin(x)


def build_model(config):
    return Broken()
'''


def test_resume_of_a_sweep_stopped_early_says_so_not_finished(tmp_path):
    """Before: `caviar resume` of a sweep its first failing trials stopped (fail_fast) said 'has finished: nothing to
    resume', then 'error: sweep stopped early'. Now it says the sweep was stopped early, that resume does not continue
    it, and the command that starts it again; nothing is written, exit 2 as before."""
    task = tmp_path / "bucketed.py"
    task.write_text(FAILS_ONCE_TRAINING)
    ran = caviar("run", str(task), "--trials", "6", "--epochs", "2", "--stages", "1", "--slots", "2", "--storage",
                 str(tmp_path / "my runs"), "--name", "bucketed", "--no-report", "--plain", "--executor", "processes")
    assert ran.returncode == 2 and "sweep stopped early: the first 5 trials all failed" in ran.stderr, ran.stderr
    sweep = str(tmp_path / "my runs" / "bucketed")
    before = folder_digest(sweep)
    resumed = caviar("resume", sweep, "--trust-task-code", "--plain")
    assert resumed.returncode == 2
    assert resumed.stdout.startswith(
        f"sweep {sweep} was stopped early, so resume does not continue it (nothing written); once its cause below is "
        f"fixed, start it again: caviar run TASK --storage '{tmp_path / 'my runs'}' --name bucketed --overwrite\n")
    assert "has finished" not in resumed.stdout
    assert folder_digest(sweep) == before

    # status said its pending trials 'wait for caviar resume' (which does not continue it): now it says stopped early
    shown = caviar("status", "bucketed", "--storage", str(tmp_path / "my runs"))
    assert shown.returncode == 0, shown.stderr
    assert ("stopped early: the first 5 trials all failed; most common error (5x): RuntimeError: index out of range "
            "in a bucketing step; resume does not continue it: once its cause is fixed, start it again with caviar run "
            f"TASK --storage '{tmp_path / 'my runs'}' --name bucketed --overwrite") in shown.stdout, shown.stdout
    assert "wait for caviar resume" not in shown.stdout


def test_top_of_a_sweep_with_no_scored_trial_says_where_its_trials_are(tmp_path):
    """Before: `caviar top` (and the end of a run) printed an empty 'top 0 trials' table for a sweep none of whose
    trials had a score: all failed, or still pending and running. Now one line says so, with the counts."""
    task = tmp_path / "bucketed.py"
    task.write_text(FAILS_ONCE_TRAINING)
    ran = caviar("run", str(task), "--trials", "6", "--epochs", "2", "--stages", "1", "--slots", "2", "--storage",
                 str(tmp_path / "runs"), "--name", "bucketed", "--no-report", "--plain", "--executor", "processes")
    assert ran.returncode == 2, ran.stderr[-3000:]
    assert "top 0 trials" not in ran.stdout and "no trial has a score: " in ran.stdout, ran.stdout
    shown = caviar("top", "bucketed", "--storage", str(tmp_path / "runs"))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("no trial has a score: ") and "failed" in shown.stdout, shown.stdout

    waiting = caviar("top", stopped_regression_sweep(tmp_path))
    assert waiting.returncode == 0, waiting.stderr
    assert waiting.stdout == "no trial has a score yet: 1 pending, 1 running\n"


TAKE_OVER_AND_WAIT = """
import sys
from orchestrator.store.lease import Lease
from orchestrator.store.storage import Storage

Lease.take_over(Storage.from_uri(sys.argv[1]))  # what `caviar resume` does before it trains again
print("taken", flush=True)
sys.stdin.read()
"""


def test_ls_tells_a_running_sweep_from_a_stopped_one(tmp_path):
    """Before: `caviar ls` showed 'unfinished' both for a sweep its master still writes and for one whose master was
    killed, so the listing did not say which to resume. Now the first is 'running (process P on HOST)', the second
    'stopped (caviar resume continues it)'."""
    sweep = stopped_regression_sweep(tmp_path)
    storage = os.path.dirname(sweep)
    listed = caviar("ls", storage)
    assert listed.returncode == 0 and "stopped (caviar resume continues it)" in listed.stdout, listed.stderr
    resuming = subprocess.Popen([sys.executable, "-c", TAKE_OVER_AND_WAIT, sweep], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=ENV, text=True)
    try:
        assert resuming.stdout.readline().strip() == "taken"
        listed = caviar("ls", storage)
        assert f"running (process {resuming.pid} on {socket.gethostname()})" in listed.stdout, listed.stdout
    finally:
        resuming.stdin.close()
        resuming.wait(timeout=60)


def test_a_name_not_in_a_relative_storage_names_the_folder_it_looked_in(tmp_path):
    """Before: `caviar status reg --storage runs` from another working directory (where runs/ is another folder, or
    none) said only "'reg' is not a caviar sweep directory", naming neither the storage nor where it was looked for.
    Now the line names the storage, its absolute path here, and what it holds (or that there is no such folder)."""
    from tests.orchestrator.test_sweep_listing import write_sweep

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    write_sweep(project / "runs" / "reg", "reg")
    write_sweep(project / "runs" / "cnn ü", "cnn ü")
    elsewhere.mkdir()
    for verb in ("status", "top", "report"):
        found = caviar(verb, "reg", "--storage", "runs", cwd=str(project))
        assert "no sweep" not in found.stderr, found.stderr
        missing = caviar(verb, "reg", "--storage", "runs", cwd=str(elsewhere))
        assert missing.returncode == 2
        assert missing.stderr == (f"caviar: error: no sweep 'reg' in storage 'runs' ({elsewhere / 'runs'}): no such "
                                  "folder\n")
    other = caviar("status", "nosuch", "--storage", "runs", cwd=str(project))
    assert other.returncode == 2
    assert other.stderr == (f"caviar: error: no sweep 'nosuch' in storage 'runs' ({project / 'runs'}): it holds cnn ü, "
                            "reg (caviar ls runs)\n")


def test_resume_and_ensemble_find_a_sweep_by_name_in_storage_as_status_does(tmp_path):
    """Before: `caviar status NAME --storage runs` worked but `caviar resume NAME --storage runs` and `caviar ensemble
    NAME --storage runs` stopped on 'No such option: --storage'. Now both take it, as status, top and report do."""
    sweep = stopped_regression_sweep(tmp_path)
    storage = os.path.dirname(sweep)
    missing = caviar("resume", "nosuch", "--storage", storage, "--trust-task-code")
    assert missing.returncode == 2 and missing.stderr.startswith("caviar: error: no sweep 'nosuch' in storage ")
    resumed = caviar("resume", "reg", "--storage", storage, "--trust-task-code", "--plain", "--no-report")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [(t["status"], t["epochs_run"]) for t in load(sweep).trials.to_pylist()] == [("completed", 1)] * 2
    built = caviar("ensemble", "reg", "--storage", storage)
    assert built.returncode == 0, built.stderr[-3000:]
    assert os.path.exists(os.path.join(sweep, "ensembles", "ensembles.parquet"))
