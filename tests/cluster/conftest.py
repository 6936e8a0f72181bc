"""A real two-node Ray cluster (``ray start`` processes on this machine) shared by the cluster tests."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tests.cluster.raycluster import VENV_BIN, LocalRayCluster, cluster_env, free_port
from tests.conftest import ROOT, TINY_TASK


@pytest.fixture(scope="session")
def ray_cluster():
    """Two nodes with one CPU each: two one-CPU trials can only run on different nodes.

    Token auth is on, with a token of the test run's own (:func:`cluster_env`), whether or not
    this machine has a ``~/.ray/auth_token``.
    """
    cluster = LocalRayCluster(nodes=2, cpus_per_node=1).start()
    yield cluster
    cluster.stop()
    assert not cluster.own_processes(), "processes of the test cluster outlived it"
    import ray

    if ray.is_initialized():  # the session's in-process Ray must not have been touched
        assert ray.cluster_resources().get("CPU", 0) > 0


@pytest.fixture(scope="session")
def submitted_sweep(ray_cluster, tmp_path_factory):
    """One tiny sweep submitted as a Ray job to the two-node cluster, with (tmp, so shared) local storage.

    ``(job id, sweep directory, submit's stdout and stderr)``; the job has not necessarily finished.
    """
    storage = tmp_path_factory.mktemp("submitted")
    submitted = caviar("submit", TINY_TASK, "--address", ray_cluster.dashboard, "--storage", str(storage),
                       "--name", "submitted", "--trials", "4", "--epochs", "2", "--shared-storage")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    match = re.search(r"submitted job (\S+)", submitted.stdout)
    assert match, submitted.stdout
    return match.group(1), str(storage / "submitted"), submitted.stdout + submitted.stderr


def caviar(*args: str, timeout: float = 300, cwd: str = ROOT, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """The ``caviar`` command in a subprocess: the test process never calls ``ray.init`` for these clusters."""
    return subprocess.run([os.path.join(VENV_BIN, "caviar"), *args], env={**cluster_env(), **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


SLOW_EPOCHS = """

import time

import torch.nn.functional as F


def train_epoch(model, optimizer, batches, config):  # slow epochs: the job is still training when it is stopped
    total, seen = 0.0, 0
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item() * len(yb), seen + len(yb)
    time.sleep(0.3)
    return {"train_loss": total / max(seen, 1)}
"""


def running_trial_recorded(sweep_dir: str) -> bool:
    from orchestrator.app.api import load

    try:
        return any(t["status"] == "running" for t in load(sweep_dir).trials.to_pylist())
    except Exception:  # not written yet
        return False


def wait_for_a_running_trial(sweep_dir: str, job_id: str, dashboard: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not running_trial_recorded(sweep_dir) and time.monotonic() < deadline:
        time.sleep(1)
    assert running_trial_recorded(sweep_dir), caviar("logs", job_id, "--address", dashboard).stdout[-3000:]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``caviar: error: ...`` line a refused command prints (exit code 2)."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("caviar: error: "), result.stderr
    return lines[0]


ACCESS_KEY = "CAVIARTESTKEY"
SECRET = "caviar-test-secret-5f3a"
BUCKET = "caviar-sweeps"


@pytest.fixture
def s3_server():
    """A moto S3 server on loopback with one bucket: ``(port, boto3 client)``."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[test]')")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET)
    client.create_bucket(Bucket=BUCKET)
    yield port, client
    server.stop()
