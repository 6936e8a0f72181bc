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


def test_over_ray_client_the_task_folder_travels_to_a_cluster_that_lacks_this_machines_files(ray_cluster, tmp_path):
    """The master runs in a mount namespace of its own, whose task folder (a tmpfs) the cluster cannot see: a laptop.
    Every actor failed 'task '/.../helper_task.py': no such file' (4 tries per slot, then the sweep was refused); now
    the task's folder, its helper module with it, travels as Ray's working_dir, as `caviar submit` ships it."""
    import os
    import shlex
    import subprocess

    from tests.cluster.raycluster import VENV_BIN, cluster_env

    source, private = tmp_path / "source", tmp_path / "private"
    source.mkdir()
    private.mkdir()
    with open(TINY_TASK) as f:
        tiny = f.read()
    data_code = tiny[tiny.index("def load_data"):tiny.index("def build_model")]
    (source / "blobs.py").write_text("import numpy as np\n\n\n" + data_code)
    (source / "helper_task.py").write_text(tiny.replace(data_code, "from blobs import load_data  # noqa: F401\n\n\n"))
    run = [os.path.join(VENV_BIN, "caviar"), "run", str(private / "helper_task.py"), "--address",
           ray_cluster.client_address, "--storage", str(tmp_path / "runs"), "--shared-storage", "--name", "laptop",
           "--trials", "2", "--epochs", "1", "--stages", "1", "--pruner", "none", "--no-ensemble", "--no-report",
           "--plain"]
    script = (f"mount -t tmpfs none {shlex.quote(str(private))} && cp {shlex.quote(str(source))}/*.py "
              f"{shlex.quote(str(private))}/ && exec {shlex.join(run)}")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m (a mount namespace of the master's own) needs root")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=cluster_env(), capture_output=True, text=True,
                          timeout=300)
    assert not (private / "helper_task.py").exists()  # the task lived in the master's namespace only
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    trials = load(str(tmp_path / "runs" / "laptop")).trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 2
    assert {t["node"] for t in trials} <= ray_cluster.node_ids()


def test_joining_a_cluster_from_python_leaves_the_callers_random_generator_as_it_was(ray_cluster, tmp_path):
    """ray.init(address=...) drew from Python's global generator: a notebook's next random.random() after a sweep
    on its cluster followed from Ray's draws (the private Ray's start already kept it)."""
    import subprocess
    import sys
    import textwrap

    from tests.cluster.raycluster import cluster_env

    script = textwrap.dedent(f"""
        import random
        from orchestrator.app.api import run_sweep
        random.seed(5)
        expected = random.random()
        random.seed(5)
        run_sweep({TINY_TASK!r}, address={ray_cluster.gcs_address!r}, storage={str(tmp_path)!r}, name="kept",
                  trials=2, epochs=1, stages=1, pruner="none", shared_storage=True, ensemble=False)
        print("kept" if random.random() == expected else "moved")
    """)
    done = subprocess.run([sys.executable, "-c", script], env=cluster_env(), capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "kept"
