"""A sweep that travels: submitted, stopped, resumed and loaded from elsewhere, on the two-node cluster with token auth.

The sweep lives on S3 (a moto server on loopback, credentials in the URI). The task file is
a copy in a project folder of its own; after the job it is deleted, and everything after
(resume, ensembles, loading) runs from another working directory using only what the sweep
folder on S3 holds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from orchestrator.app.api import load
from orchestrator.store.storage import Storage
from tests.cluster.conftest import ACCESS_KEY, BUCKET, SECRET, SLOW_EPOCHS, caviar, wait_for_a_running_trial
from tests.cluster.raycluster import cluster_env
from tests.conftest import ROOT, TINY_TASK

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # own clusters end to end: the second CI tier (.ci/test-slow)


def test_submit_stop_resume_elsewhere_then_load_after_the_task_file_is_gone(ray_cluster, s3_server, tmp_path):
    port, _ = s3_server
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    for folder in (project, elsewhere):
        folder.mkdir()
    task = project / "travel_task.py"  # one file, as the tiny task with slow epochs
    with open(TINY_TASK) as f:
        task.write_text(f.read() + SLOW_EPOCHS)
    env = {"CAVIAR_CACHE": str(tmp_path / "cache")}
    query = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    storage = f"s3://{ACCESS_KEY}:{SECRET}@{BUCKET}/team{query}"
    submitted = caviar("submit", str(task), "--address", ray_cluster.dashboard, "--storage", storage,
                       "--name", "travel", "--trials", "4", "--epochs", "20", "--stages", "1", "--pruner", "none",
                       env=env)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    sweep = f"s3://{ACCESS_KEY}:{SECRET}@{BUCKET}/team/travel{query}"
    wait_for_a_running_trial(sweep, job_id, ray_cluster.dashboard)
    stopped = caviar("stop", job_id, "--address", ray_cluster.dashboard)
    assert stopped.returncode == 0, stopped.stderr
    assert ray_cluster.jobs().wait(job_id, timeout=120) == "STOPPED"
    statuses = {t["status"] for t in load(sweep).trials.to_pylist()}
    assert "interrupted" in statuses and "running" not in statuses  # the master wrote its tables on SIGTERM
    logs = caviar("logs", job_id, "--address", ray_cluster.dashboard)
    assert f"{ACCESS_KEY}:***@{BUCKET}" in logs.stdout and SECRET not in logs.stdout + logs.stderr

    # The sweep names its task portably and holds a copy; the job's temporary path is nowhere.
    row = load(sweep).sweep.to_pylist()[0]
    assert row["task"] == "travel_task.py"
    manifest = json.loads(Storage.from_uri(sweep).read_bytes("task/manifest.json"))
    assert manifest["source"] == "task/travel_task.py" and len(manifest["sha256"]) == 64
    os.remove(task)

    refused = caviar("resume", sweep, "--address", ray_cluster.gcs_address, "--plain", cwd=str(elsewhere), env=env)
    assert refused.returncode == 2 and "--trust-task-code" in refused.stderr and "--task" in refused.stderr
    resumed = caviar("resume", sweep, "--address", ray_cluster.gcs_address, "--plain", "--trust-task-code",
                     "--no-ensemble", cwd=str(elsewhere), env=env, timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    trials = load(sweep).trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 4 and all(t["epochs_run"] == 20 for t in trials)
    assert {t["node"] for t in trials} <= ray_cluster.node_ids()  # resumed on the cluster, not here

    page = elsewhere / "travel.html"
    reported = caviar("report", sweep, "--out", str(page), cwd=str(elsewhere), env=env)
    assert reported.returncode == 0 and page.is_file(), reported.stderr[-3000:]
    assert SECRET not in page.read_text() + reported.stdout + reported.stderr

    built = caviar("ensemble", sweep, "-m", "top_k", "--method", "soup", "--trust-task-code", "--device", "cpu",
                   cwd=str(elsewhere), env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    code = ("import json\nfrom orchestrator import load_ensemble\n"
            f"model = load_ensemble({sweep!r}, 'best', trust_task_code=True)\n"
            "print(json.dumps([model.record.name, len(model.members)]))\n")
    env_py = {**cluster_env(), **env, "PYTHONPATH": ROOT}
    loaded = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env_py, capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    name, members = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert members >= 1 and name
    untrusted = code.replace(", trust_task_code=True", "")
    refused = subprocess.run([sys.executable, "-c", untrusted], cwd=elsewhere, env=env_py, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and "trust_task_code=True" in refused.stderr.strip().splitlines()[-1]


def test_plain_run_starts_its_own_ray_even_with_a_cluster_named_in_the_environment(ray_cluster, tmp_path):
    """RAY_ADDRESS names the running two-node cluster; `caviar run` on Ray without --address must not join it."""
    done = caviar("run", TINY_TASK, "--storage", str(tmp_path), "--name", "local", "--trials", "2", "--epochs", "1",
                  "--stages", "1", "--no-ensemble", "--plain", "--executor", "ray",
                  env={"RAY_ADDRESS": ray_cluster.gcs_address})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "starting a private Ray" in line]
    assert len(said) == 1 and "--address auto" in said[0]
    nodes = {t["node"] for t in load(str(tmp_path / "local")).trials.to_pylist()}
    assert nodes and not nodes & ray_cluster.node_ids()  # trained on a Ray of its own
