"""`caviar run --address ray://HOST:PORT`: the master runs here and drives an existing cluster over Ray Client."""

from __future__ import annotations

import re

import pytest

from orchestrator.app.api import load
from tests.cluster.conftest import caviar, one_error_line
from tests.conftest import TINY_TASK

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]  # own clusters end to end: the second CI tier (.ci/test-slow)


def test_run_drives_a_remote_cluster_through_ray_client(ray_cluster, tmp_path):
    done = caviar("run", TINY_TASK, "--address", ray_cluster.client_address, "--storage", str(tmp_path),
                  "--name", "client", "--trials", "3", "--epochs", "2", "--stages", "1", "--pruner", "none",
                  "--shared-storage", "--plain", "--no-ensemble")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    tables = load(str(tmp_path / "client"))
    trials = tables.trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 3
    assert all(t["node"] for t in trials)  # trained by the cluster's actors, which report their node
    assert tables.metrics.num_rows == 3 * 2


def test_a_wrong_token_is_one_line_saying_how_to_get_the_heads(ray_cluster, tmp_path):
    """The cluster runs with token auth: a client holding another token is refused, and told what to do."""
    refused = caviar("run", TINY_TASK, "--address", ray_cluster.gcs_address, "--storage", str(tmp_path),
                     "--name", "wrong-token", "--shared-storage", "--plain", env={"RAY_AUTH_TOKEN": "not-the-token"})
    line = one_error_line(refused)  # the only line on stderr: Ray's own warnings went to its log file
    assert ray_cluster.gcs_address in line and "~/.ray/auth_token" in line and "RAY_AUTH_TOKEN" in line
    ray_log = re.search(r"Ray's own messages: (\S+)", line).group(1)  # the error line says where they went
    with open(ray_log) as f:
        assert "InvalidAuthToken" in f.read()  # what Ray said is kept, where the first line pointed
    assert not (tmp_path / "wrong-token" / "sweep").exists()  # refused before the sweep was kept
    # The Job API (caviar jobs, submit, logs) refuses the same token: the same advice, in one line
    jobs = one_error_line(caviar("jobs", "--address", ray_cluster.dashboard, env={"RAY_AUTH_TOKEN": "not-the-token"}))
    assert ray_cluster.dashboard in jobs and "~/.ray/auth_token" in jobs and "RAY_AUTH_TOKEN" in jobs, jobs


def test_a_local_storage_over_ray_client_is_refused_before_connecting(tmp_path):
    """Over ray:// the master runs here and every trial on the cluster: a local --storage on a one-node cluster was
    taken, so this machine got the trials table and the head's disk the metrics and checkpoints, apart. Now one line
    before anything connects (nothing listens on port 9) or is written; --shared-storage says the path is shared."""
    refused = one_error_line(caviar("run", TINY_TASK, "--address", "ray://127.0.0.1:9", "--storage", str(tmp_path),
                                    "--name", "apart", "--plain", timeout=120))
    assert refused.startswith(f"caviar: error: setting 'storage': {str(tmp_path)!r} is a local path but address "
                              "'ray://127.0.0.1:9' drives the cluster over Ray Client")
    assert refused.endswith("pass --shared-storage")
    assert list(tmp_path.iterdir()) == []
    shared = one_error_line(caviar("run", TINY_TASK, "--address", "ray://127.0.0.1:9", "--storage", str(tmp_path),
                                   "--name", "apart", "--shared-storage", "--plain", timeout=120))
    assert "Ray cluster 'ray://127.0.0.1:9': cannot connect" in shared
