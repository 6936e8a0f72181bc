"""`caviar submit / logs / jobs / stop` against a real Ray head with its dashboard on 127.0.0.1.

The CLI runs in subprocesses and talks to the cluster over HTTP only; the test process never
joins that cluster (it may hold the session's own in-process Ray).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from cluster.jobs import Jobs, entrypoint, plan_job, plan_resume_job
from orchestrator.app.api import load
from orchestrator.app.cli_cluster import run_args
from orchestrator.errors import ClusterError, ConfigError, StorageError, TaskError
from orchestrator.spec.task import load_task
from orchestrator.spec.task_source import copy_stored_task, store_task_source
from orchestrator.store.storage import Storage
from tests.cluster.conftest import SLOW_EPOCHS, caviar, one_error_line, wait_for_a_running_trial
from tests.cluster.raycluster import VENV_BIN
from tests.conftest import TINY_TASK
from tests.orchestrator.test_task_source import TASK_SOURCE, write_sweep_row

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]  # own clusters end to end: the second CI tier (.ci/test-slow)


def test_submit_follow_and_read_the_parquet_results(ray_cluster, submitted_sweep):
    job_id, sweep_dir, submit_output = submitted_sweep
    assert f"results (Parquet) will land in {sweep_dir}" in submit_output  # said up front
    # Ray's job client logged each zipped and uploaded package at INFO, eight lines around submit's three
    assert len(submit_output.splitlines()) == 3, submit_output

    followed = caviar("logs", job_id, "--address", ray_cluster.dashboard, "--follow")
    assert followed.returncode == 0, followed.stdout[-4000:] + followed.stderr[-2000:]
    entry = "orchestrator.app.cli run tiny_task.py --address auto --executor ray --plain"  # the job's entrypoint
    assert entry in followed.stdout
    assert f"job {job_id} SUCCEEDED" in followed.stdout
    assert "WebSocket closed" not in followed.stderr, followed.stderr  # Ray's INFO line after the job's last

    tables = load(sweep_dir)
    trials = tables.trials.to_pylist()
    assert len(trials) == 4
    assert {t["status"] for t in trials} <= {"completed", "pruned"}
    assert tables.metrics.num_rows >= 4 and tables.checkpoints.num_rows >= 1
    settings = json.loads(tables.sweep["settings"][0].as_py())
    assert settings["address"] == "auto" and settings["shared_storage"] is True

    listing = caviar("jobs", "--address", ray_cluster.dashboard)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if job_id in line)
    assert "SUCCEEDED" in row and sweep_dir in row

    logs = caviar("logs", job_id, "--address", ray_cluster.dashboard)
    assert logs.returncode == 0 and "Results (Parquet)" in logs.stdout


def test_stop_marks_running_trials_interrupted_and_submit_resume_finishes_on_the_cluster(ray_cluster, tmp_path):
    """stop -> the tables say `interrupted` -> `caviar submit --resume` runs the stored task copy as a job."""
    project = tmp_path / "project"
    project.mkdir()
    task = project / "slow_tiny_task.py"
    with open(TINY_TASK) as f:
        task.write_text(f.read() + SLOW_EPOCHS)
    storage, sweep = tmp_path / "runs", str(tmp_path / "runs" / "stopped")
    submitted = caviar("submit", str(task), "--address", ray_cluster.dashboard, "--storage", str(storage),
                       "--name", "stopped", "--trials", "4", "--epochs", "12", "--stages", "1", "--pruner", "none",
                       "--no-ensemble", "--shared-storage")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    wait_for_a_running_trial(sweep, job_id, ray_cluster.dashboard)
    stopped = caviar("stop", job_id, "--address", ray_cluster.dashboard)
    assert stopped.returncode == 0 and f"stopping job {job_id}" in stopped.stdout, stopped.stderr
    assert f"caviar submit --resume {sweep} --trust-task-code" in stopped.stdout
    assert ray_cluster.jobs().wait(job_id, timeout=120) == "STOPPED"
    statuses = [t["status"] for t in load(sweep).trials.to_pylist()]
    assert "interrupted" in statuses and "running" not in statuses, statuses  # written on SIGTERM, before SIGKILL
    task.unlink()  # what runs next is the sweep's own copy

    resumed = caviar("submit", "--resume", sweep, "--trust-task-code", "--address", ray_cluster.dashboard,
                     "--follow", cwd=str(tmp_path), timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert "orchestrator.app.cli resume " in resumed.stdout and "--task slow_tiny_task.py" in resumed.stdout
    trials = load(sweep).trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 4 and all(t["epochs_run"] == 12 for t in trials)
    assert {t["node"] for t in trials} <= ray_cluster.node_ids()


def test_a_resume_job_ships_the_verified_stored_copy_or_your_task(tmp_path):
    """Planned before any cluster is contacted: trust is asked for, the sha256 checked, the bytes shipped as is."""
    source = tmp_path / "work" / "regression_task.py"
    source.parent.mkdir()
    source.write_text(TASK_SOURCE)
    sweep = Storage.from_uri(str(tmp_path / "runs")).child("s")
    store_task_source(sweep, load_task(str(source)))
    write_sweep_row(sweep, "regression_task.py")
    staged = tmp_path / "staged"
    staged.mkdir()
    with pytest.raises(TaskError, match="--trust-task-code"):
        copy_stored_task(sweep, str(staged), trust_task_code=False)
    ref = copy_stored_task(sweep, str(staged), trust_task_code=True)
    assert ref == str(staged / "regression_task.py") and (staged / "regression_task.py").read_text() == TASK_SOURCE
    plan = plan_resume_job(sweep.root, ref, run_args=["--slots", "2"])
    assert plan.runtime_env["working_dir"] == str(staged) and plan.name == "s"
    assert plan.entrypoint.endswith(
        f"resume {sweep.root} --task regression_task.py --address auto --executor ray --plain --slots 2")
    mine = plan_resume_job(sweep.root, str(source))  # the user's own task travels with its folder, as submit's does
    assert mine.runtime_env["working_dir"] == str(source.parent) and "--task regression_task.py" in mine.entrypoint
    with pytest.raises(ConfigError, match="'--resume'.*relative"):
        plan_resume_job("runs/s", str(source))
    sweep.write_bytes("task/regression_task.py", b"import os\n" + TASK_SOURCE.encode())  # changed after the run
    with pytest.raises(StorageError, match="sha256 mismatch"):
        copy_stored_task(sweep, str(staged), trust_task_code=True)

    # The CLI refuses before contacting the cluster (nothing listens on port 9): one line each.
    untrusted = one_error_line(caviar("submit", "--resume", sweep.root, "--address", "http://127.0.0.1:9"))
    assert "--trust-task-code" in untrusted and "caviar submit TASK --resume SWEEP" in untrusted
    settings = one_error_line(caviar("submit", "--resume", sweep.root, "--trials", "8", "--address", "http://h:9"))
    assert "'--trials'" in settings and "--slots" in settings
    missing = one_error_line(caviar("submit", "--resume", str(tmp_path / "none"), "--trust-task-code"))
    assert "'--resume'" in missing and "not a sweep" in missing
    edited = tmp_path / "work" / "edited.py"
    edited.write_text(TASK_SOURCE.replace("return None\n", "return 4\n", 1))  # build_model changed since the run
    mixed = one_error_line(caviar("submit", str(edited), "--resume", sweep.root, "--address", "http://127.0.0.1:9"))
    assert f"your task {edited} has sha256" in mixed and "--trust-task-code" in mixed and "new sweep" in mixed


def test_refusals_are_one_line_naming_what_is_wrong(ray_cluster, tmp_path):
    local = one_error_line(caviar("submit", TINY_TASK, "--address", ray_cluster.dashboard, "--storage", str(tmp_path)))
    assert "'--storage'" in local and "2 nodes" in local and "--shared-storage" in local
    unreachable = one_error_line(caviar("jobs", "--address", "http://127.0.0.1:9"))
    assert "http://127.0.0.1:9" in unreachable
    with pytest.raises(ClusterError, match=re.escape(ray_cluster.dashboard) + ".*raysubmit_nosuchjob"):
        ray_cluster.jobs().status("raysubmit_nosuchjob")
    with pytest.raises(ConfigError, match="'--storage'.*relative"):
        plan_job(TINY_TASK, storage="runs")
    with pytest.raises(ConfigError, match="'precision'"):
        run_args({"precision": "fp8"}, None)
    with pytest.raises(ConfigError, match=r"^setting 'resources': expected NAME=AMOUNT, got 'foo'$"):
        run_args({}, ["foo"])  # before the job is sent, not in its master on the cluster
    assert run_args({}, ["accelerator_type_a100=1"]) == ["--resource", "accelerator_type_a100=1"]
    with pytest.raises(ConfigError, match="Ray Client"):
        Jobs("ray://127.0.0.1:10001")


def test_an_address_on_a_head_port_that_is_not_the_job_api_says_which_port_is():
    with pytest.raises(ClusterError, match=r"cannot reach its Job API .*; port 6379 is the GCS port .*: the Job API "
                                           r"is the dashboard's, 8265 unless set otherwise$"):
        Jobs("127.0.0.1:6379")
    with pytest.raises(ClusterError) as other:
        Jobs("http://127.0.0.1:9")
    assert "port" not in str(other.value).split(")")[-1]  # an ordinary wrong address gets no hint


def test_plan_ships_the_task_folder_requirements_and_caviar(tmp_path):
    task = tmp_path / "task.py"
    task.write_text("space = {}\n")
    (tmp_path / "requirements.txt").write_text("# extras for the task\nscikit-learn>=1.3  # digits\n\n")
    plan = plan_job(str(task), storage="s3://AK:SECRET@b/sweeps?endpoint_override=h:9000", name="n",
                    run_args=["--trials", "8"])
    env = plan.runtime_env
    assert env["working_dir"] == str(tmp_path) and ".venv" in env["excludes"] and "caviar-runs" in env["excludes"]
    assert env["pip"] == ["scikit-learn>=1.3"]
    assert int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 10  # time to write the tables after `caviar stop`
    assert sorted(p.rsplit("/", 1)[-1] for p in env["py_modules"]) == ["cluster", "orchestrator", "worker"]
    assert '"$PY" -u -m orchestrator.app.cli run task.py --address auto --executor ray --plain' in plan.entrypoint
    assert plan.entrypoint.endswith("--name n --trials 8")
    assert plan.results == "s3://AK:***@b/sweeps/n?endpoint_override=h:9000"
    assert "SECRET" not in json.dumps(plan.metadata)
    with pytest.raises(ConfigError, match="--config"):
        plan_job(str(task), storage="/shared", config=TINY_TASK)
    assert "py_modules" not in plan_job(str(task), storage="/shared", ship_caviar=False).runtime_env


def run_entrypoint(command: str, parent_loads_ray: bool) -> subprocess.CompletedProcess:
    """Run a job's entrypoint as Ray's job supervisor does: ``sh -c`` from a Python process, PATH without the venv."""
    prelude = "import ray._raylet\n" if parent_loads_ray else ""
    code = prelude + "import subprocess, sys\nr = subprocess.run(['sh', '-c', sys.argv[1]])\nsys.exit(r.returncode)"
    return subprocess.run([sys.executable, "-c", code, command], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=120)


def test_the_job_runs_the_python_that_runs_ray_or_says_which_python_cannot(tmp_path):
    """The master runs under the interpreter of the Ray on the head, even when its venv is not on PATH."""
    shown = run_entrypoint(entrypoint(["-c", "import sys; print(sys.executable)"]), parent_loads_ray=True)
    assert shown.returncode == 0, shown.stderr
    assert os.path.realpath(shown.stdout.strip()) == os.path.realpath(os.path.join(VENV_BIN, "python"))
    bare = tmp_path / "python"  # an interpreter without caviar's dependencies
    bare.write_text("#!/bin/sh\nexit 1\n")
    bare.chmod(0o755)
    refused = run_entrypoint(entrypoint(["-c", "print('ran')"], python=str(bare)), parent_loads_ray=False)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and "ran" not in refused.stdout and len(lines) == 1
    assert lines[0].startswith(f"caviar: error: the head's Python {bare} cannot import") and "--python PATH" in lines[0]


def test_a_stopped_task_that_imports_a_helper_is_resumed_with_its_folder_as_stop_says(ray_cluster, tmp_path):
    """A task importing a module of its folder: `caviar stop` printed `caviar submit --resume SWEEP
    --trust-task-code`, whose job then failed on the cluster with 'No module named 'blobs'' (the sweep stores the
    task file alone). Now stop names the task file to resume with, the stored-copy resume is refused before
    anything is sent, and the printed command finishes the sweep."""
    project = tmp_path / "project"
    project.mkdir()
    with open(TINY_TASK) as f:
        tiny = f.read()
    data_code = tiny[tiny.index("def load_data"):tiny.index("def build_model")]
    (project / "blobs.py").write_text("import numpy as np\n\n\n" + data_code)
    task = project / "helper_task.py"
    task.write_text(tiny.replace(data_code, "from blobs import load_data  # noqa: F401\n\n\n") + SLOW_EPOCHS)
    storage, sweep = tmp_path / "runs", str(tmp_path / "runs" / "helped")
    submitted = caviar("submit", str(task), "--address", ray_cluster.dashboard, "--storage", str(storage),
                       "--name", "helped", "--trials", "2", "--epochs", "8", "--stages", "1", "--pruner", "none",
                       "--no-ensemble", "--shared-storage")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    wait_for_a_running_trial(sweep, job_id, ray_cluster.dashboard)
    stopped = caviar("stop", job_id, "--address", ray_cluster.dashboard)
    assert stopped.returncode == 0, stopped.stderr
    resume_here = f"caviar submit {task} --resume {sweep} --address {ray_cluster.dashboard}"
    assert resume_here in stopped.stdout and "--trust-task-code" not in stopped.stdout, stopped.stdout
    assert f"caviar resume {sweep} --task {task}" in stopped.stdout
    assert ray_cluster.jobs().wait(job_id, timeout=120) == "STOPPED"

    jobs_before = len(ray_cluster.jobs().list())
    refused = one_error_line(caviar("submit", "--resume", sweep, "--trust-task-code", "--address",
                                    ray_cluster.dashboard))
    assert "imports blobs.py from its folder" in refused and "caviar submit TASK --resume SWEEP" in refused
    assert len(ray_cluster.jobs().list()) == jobs_before  # refused before a job was sent

    resumed = caviar(*resume_here.split()[1:], "--follow", timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    trials = load(sweep).trials.to_pylist()
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 8)] * 2


def test_a_local_storage_inside_the_task_folder_stays_behind(tmp_path):
    """--storage /project/runs beside /project/task.py: every submit zipped the earlier sweeps' weights into the
    job's package (and Ray refuses one of 512 MiB); now the storage is excluded, the task's own files still travel."""
    from ray._private.runtime_env.packaging import create_package

    def shipped(plan) -> set[str]:
        package = tmp_path / f"package-{len(list(tmp_path.glob('package-*')))}.zip"
        create_package(plan.runtime_env["working_dir"], package, include_gitignore=True,
                       excludes=plan.runtime_env["excludes"])
        with zipfile.ZipFile(package) as z:
            return {name for name in z.namelist() if not name.endswith("/")}

    project = tmp_path / "project"
    (project / "runs" / "old" / "weights").mkdir(parents=True)
    (project / "runs" / "old" / "weights" / "t0.pt").write_bytes(b"w" * 1000)
    (project / "data").mkdir()
    (project / "data" / "runs.csv").write_text("x\n")  # a file named like the storage, elsewhere: it travels
    task = project / "task.py"
    task.write_text("space = {}\n")
    (project / "helpers.py").write_text("")
    files = {"task.py", "helpers.py", "data/runs.csv"}
    assert shipped(plan_job(str(task), storage=str(project / "runs"), name="new")) == files
    assert shipped(plan_resume_job(str(project / "runs" / "old"), str(task))) == files
    # the storage is the task's folder itself: the sweep's own folder stays behind, the rest travels
    (project / "new").mkdir()
    (project / "new" / "rows.parquet").write_bytes(b"p")
    assert shipped(plan_job(str(task), storage=str(project), name="new")) == files | {"runs/old/weights/t0.pt"}
    assert shipped(plan_job(str(task), storage="s3://b/runs", name="new")) == files | {
        "runs/old/weights/t0.pt", "new/rows.parquet"}


def test_a_task_folder_over_the_job_apis_upload_limit_is_refused_naming_its_largest_file(tmp_path):
    """A 150 MiB data file beside the task: submit zipped it for half a minute, then printed Ray's bare
    'status code 413: Maximum request body size 104857600 exceeded'; now it is refused before anything is zipped,
    in one line naming the file and what to do, and a file listed in .rayignore (as Ray leaves it behind) passes."""
    project = tmp_path / "project"
    project.mkdir()
    task = project / "task.py"
    task.write_text("space = {}\n")
    with open(project / "frames.npy", "wb") as f:
        f.truncate(150 * 1024**2)  # sparse: no disk written
    for plan in (lambda: plan_job(str(task), storage=str(tmp_path / "runs"), name="new"),
                 lambda: plan_resume_job(str(tmp_path / "runs" / "old"), str(task))):
        with pytest.raises(ConfigError, match=r"150 MiB would travel .* over the 100 MiB .*frames\.npy \(150 MiB\)"
                                              r".*\.rayignore"):
            plan()
    (project / ".rayignore").write_text("frames.npy\n")
    assert plan_job(str(task), storage=str(tmp_path / "runs"), name="new").runtime_env["working_dir"] == str(project)


def test_a_percent_encoded_file_uri_storage_inside_the_task_folder_stays_behind(tmp_path):
    """--storage 'file:///work/my%20project%3F/runs' (a folder named 'my project?', as pyarrow reads the URI): the
    exclude was computed from the undecoded path, matched nothing, and every submit zipped the earlier sweeps'
    weights into the job; now the URI's path is percent-decoded first, for a new sweep and a resumed one."""
    from urllib.parse import quote

    from ray._private.runtime_env.packaging import create_package

    from cluster.runner import folder_shipment
    from orchestrator.spec.settings import RunSettings

    def shipped(runtime_env) -> set[str]:
        package = tmp_path / f"package-{len(list(tmp_path.glob('package-*')))}.zip"
        create_package(runtime_env["working_dir"], package, include_gitignore=True, excludes=runtime_env["excludes"])
        with zipfile.ZipFile(package) as z:
            return {name for name in z.namelist() if not name.endswith("/")}

    project = tmp_path / "my project?"
    (project / "runs" / "old" / "weights").mkdir(parents=True)
    (project / "runs" / "old" / "weights" / "t0.pt").write_bytes(b"w" * 1000)
    task = project / "task.py"
    task.write_text("space = {}\n")
    storage = "file://" + quote(str(project / "runs"))
    assert "%20" in storage and "%3F" in storage
    assert Storage.from_uri(storage).root == str(project / "runs")  # the folder pyarrow opens
    assert shipped(plan_job(str(task), storage=storage, name="new").runtime_env) == {"task.py"}
    assert shipped(plan_resume_job(f"{storage}/old", str(task)).runtime_env) == {"task.py"}
    settings = RunSettings(storage=storage, address="ray://head:10001", shared_storage=True)
    assert shipped(folder_shipment(str(task), settings, "new")[0]) == {"task.py"}  # caviar run --address ray://


def test_a_config_file_with_a_bad_setting_is_refused_before_the_job_is_sent(tmp_path):
    """--config sweep.toml with `trails = 8` (or resources = {CPU = 2}) was sent as is: the job failed on the cluster
    after its upload; now its [run] is checked here, under the command line, as `caviar run` checks it (nothing
    listens on port 9: a refusal that names the setting came before any contact)."""
    task = tmp_path / "task.py"
    task.write_text("space = {}\n")
    config = tmp_path / "sweep.toml"
    submit = ("submit", str(task), "--config", str(config), "--storage", str(tmp_path / "runs"), "--address",
              "http://127.0.0.1:9")
    config.write_text("[run]\ntrails = 8\n")
    assert "setting 'trails': unknown; did you mean 'trials'?" in one_error_line(caviar(*submit))
    config.write_text("[run]\nresources = { CPU = 2 }\n")
    assert "setting 'resources.CPU': CPU is not a custom resource" in one_error_line(caviar(*submit))
    config.write_text('[run]\nplan = "4x2"\n')
    assert "setting 'trials': 8, but plan '4x2' gives 4" in one_error_line(caviar(*submit, "--trials", "8"))
    config.write_text('[run]\nsampler = "mine"\nexecutor = "processes"\n')  # the task may register it; the job sets ray
    assert "cannot reach its Job API" in one_error_line(caviar(*submit))


REGRESSION_TASK = '''
import numpy as np
from torch import nn
from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-3, 1e-1), "batch_size": 32, "optimizer": "adam"}
kind = "regression"


def load_data():
    raise FileNotFoundError("sensors.csv")


def build_model(config):
    return nn.Linear(5, 1)
'''


def test_a_failed_job_names_the_task_file_as_submitted(ray_cluster, tmp_path):
    """The job's master loads the task from Ray's unpacked copy of its folder: its error named
    /tmp/ray/session_.../runtime_resources/working_dir_files/_ray_pkg_.../task.py, a file the user cannot find.
    Now it names the file that was submitted."""
    project = tmp_path / "sensors"
    project.mkdir()
    task = project / "sensor_regression.py"
    task.write_text(REGRESSION_TASK)
    failed = caviar("submit", str(task), "--address", ray_cluster.dashboard, "--storage", str(tmp_path / "runs"),
                    "--name", "sensors", "--trials", "2", "--epochs", "1", "--shared-storage", "--follow")
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-2000:]
    error = next(line for line in failed.stdout.splitlines() if line.startswith("caviar: error: "))
    assert error.startswith(f"caviar: error: task '{task}': load_data raised FileNotFoundError"), error
    assert "runtime_resources" not in failed.stdout + failed.stderr


def test_a_taken_name_is_refused_before_the_task_folder_is_uploaded(ray_cluster, tmp_path):
    """`caviar submit --name taken` uploaded the task's folder and started a job whose master then refused the
    name; now the refusal comes first, with nothing sent, when this machine reads the storage."""
    task = tmp_path / "task.py"
    task.write_text(REGRESSION_TASK)
    write_sweep_row(Storage.from_uri(str(tmp_path / "runs")).child("taken"), "task.py")
    jobs_before = len(ray_cluster.jobs().list())
    refused = one_error_line(caviar("submit", str(task), "--address", ray_cluster.dashboard, "--storage",
                                    str(tmp_path / "runs"), "--name", "taken", "--shared-storage"))
    assert f"sweep '{tmp_path / 'runs' / 'taken'}' already exists" in refused and "--overwrite" in refused
    assert len(ray_cluster.jobs().list()) == jobs_before  # no job, no upload


def test_stopping_a_job_before_its_sweep_began_says_there_is_nothing_to_resume(ray_cluster, tmp_path):
    """A job stopped while its master still loaded the data: `caviar stop` printed `caviar submit --resume SWEEP`
    and `caviar resume SWEEP`, which fail (no sweep was written). Now it says nothing was written."""
    task = tmp_path / "slow_load.py"
    task.write_text(REGRESSION_TASK.replace('    raise FileNotFoundError("sensors.csv")',
                                            "    import time\n    time.sleep(60)"))
    sweep = tmp_path / "runs" / "early"
    submitted = caviar("submit", str(task), "--address", ray_cluster.dashboard, "--storage", str(tmp_path / "runs"),
                       "--name", "early", "--trials", "2", "--epochs", "1", "--shared-storage")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    ray_cluster.jobs().wait(job_id, timeout=5)  # its master starts loading the data
    stopped = caviar("stop", job_id, "--address", ray_cluster.dashboard)
    assert stopped.returncode == 0, stopped.stderr
    assert "--resume" not in stopped.stdout and "caviar resume" not in stopped.stdout, stopped.stdout
    assert f"its sweep had not begun: no sweep was written to {sweep}" in stopped.stdout, stopped.stdout
    assert "(the same --name is free)" in stopped.stdout
    assert not sweep.exists()
