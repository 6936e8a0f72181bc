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

import pytest

from cluster.jobs import Jobs, entrypoint, plan_job
from orchestrator.app.api import load
from orchestrator.app.cli_cluster import run_args
from orchestrator.errors import ClusterError, ConfigError
from tests.cluster.conftest import caviar, one_error_line
from tests.cluster.raycluster import VENV_BIN
from tests.conftest import TINY_TASK

pytestmark = pytest.mark.timeout(420)


def test_submit_follow_and_read_the_parquet_results(ray_cluster, submitted_sweep):
    job_id, sweep_dir, submit_output = submitted_sweep
    assert f"results (Parquet) will land in {sweep_dir}" in submit_output  # said up front

    followed = caviar("logs", job_id, "--address", ray_cluster.dashboard, "--follow")
    assert followed.returncode == 0, followed.stdout[-4000:] + followed.stderr[-2000:]
    assert "orchestrator.app.cli run tiny_task.py --address auto --plain" in followed.stdout  # the job's entrypoint
    assert f"job {job_id} SUCCEEDED" in followed.stdout

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


def test_stop_ends_a_running_job(ray_cluster, tmp_path):
    submitted = caviar("submit", TINY_TASK, "--address", ray_cluster.dashboard, "--storage", str(tmp_path),
                       "--name", "stopped", "--trials", "40", "--epochs", "20", "--shared-storage")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    stopped = caviar("stop", job_id, "--address", ray_cluster.dashboard)
    assert stopped.returncode == 0 and f"stopping job {job_id}" in stopped.stdout, stopped.stderr
    assert ray_cluster.jobs().wait(job_id, timeout=120) == "STOPPED"


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
    with pytest.raises(ConfigError, match="Ray Client"):
        Jobs("ray://127.0.0.1:10001")


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
    assert '"$PY" -u -m orchestrator.app.cli run task.py --address auto --plain' in plan.entrypoint
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
