"""A two-node Ray cluster on one machine: trials spread over the nodes, results in one shared storage.

Both nodes have one CPU and a trial holds one, so two trials at once can only run on two
nodes. The trials table's ``node`` column is the Ray node id of the actor that trained it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from orchestrator.app.api import load
from orchestrator.store import schema
from tests.cluster.conftest import caviar, one_error_line
from tests.cluster.raycluster import cluster_env
from tests.conftest import ROOT, TINY_TASK

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]  # own clusters end to end: the second CI tier (.ci/test-slow)


def test_trials_run_on_more_than_one_node_and_all_results_land_in_shared_storage(ray_cluster, submitted_sweep):
    job_id, sweep_dir, _ = submitted_sweep
    assert ray_cluster.jobs().wait(job_id, timeout=300) == "SUCCEEDED"

    node_ids = ray_cluster.node_ids()
    tables = load(sweep_dir)
    trials = tables.trials.to_pylist()
    used = {t["node"] for t in trials}
    assert len(used) >= 2 and used <= node_ids, (used, node_ids)

    trained = {t["trial_id"] for t in trials}
    assert {r["trial_id"] for r in tables.metrics.to_pylist()} == trained  # every trial's epochs, from both nodes
    for row in tables.checkpoints.to_pylist():  # and every kept checkpoint's weights, in the one storage
        assert os.path.isfile(os.path.join(sweep_dir, row["path"])), row["path"]
    assert {r["trial_id"] for r in tables.checkpoints.to_pylist()} == trained


def test_local_storage_is_refused_up_front_on_a_multi_node_cluster(ray_cluster, tmp_path):
    """`caviar run` as a master joining the cluster (by its GCS address): refused before any trial starts."""
    refused = caviar("run", TINY_TASK, "--address", ray_cluster.gcs_address, "--storage", str(tmp_path),
                     "--name", "local", "--plain")
    line = one_error_line(refused)
    assert "'storage'" in line and "2 nodes" in line and "--shared-storage" in line
    # Nothing ran, and no sweep was left behind: the corrected command needs no --overwrite.
    assert not os.path.exists(os.path.join(tmp_path, "local", schema.SWEEP_PATH))


def test_local_storage_on_one_node_is_fine_unless_trials_must_go_elsewhere(ray_session, tmp_path):
    """One node that fits a trial may keep a local path; one that fits none (autoscaling) may not."""
    from cluster.runner import check_storage_reach
    from orchestrator.errors import ConfigError
    from orchestrator.spec.settings import RunSettings
    from orchestrator.store.storage import Storage

    local = Storage.from_uri(str(tmp_path))
    check_storage_reach(local, RunSettings(storage=str(tmp_path)))
    elsewhere = RunSettings(storage=str(tmp_path), resources={"accelerator_type_h100": 1})
    with pytest.raises(ConfigError, match="'storage'.*cannot fit a trial"):
        check_storage_reach(local, elsewhere)
    check_storage_reach(local, RunSettings(storage=str(tmp_path), resources={"accelerator_type_h100": 1},
                                           shared_storage=True))


def test_trials_that_fit_the_cpus_together_but_not_one_node_each_do_not_wait_for_ever(ray_cluster, tmp_path):
    """--cpus-per-trial 0.6 on two 1-CPU nodes: 3 slots were counted from the 2 CPUs together, the third actor never
    found room and its trial stayed 'running' ('3 trials started', then no progress until killed); now 2 slots."""
    ran = caviar("run", TINY_TASK, "--address", ray_cluster.gcs_address, "--storage", str(tmp_path), "--name", "frag",
                 "--shared-storage", "--cpus-per-trial", "0.6", "--trials", "3", "--epochs", "1", "--stages", "1",
                 "--pruner", "none", "--no-ensemble", "--no-report", "--plain", timeout=240)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    trials = load(str(tmp_path / "frag")).trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 3


WHERE_TASK = '''
import os

import numpy as np
import numpy as np
import ray
from torch import nn
from orchestrator.search.space import loguniform

if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:  # where each actor imports it from
    with open(IMPORTS, "a") as f:
        f.write(os.path.abspath(__file__) + "\\n")

space = {"lr": loguniform(1e-3, 1e-1), "batch_size": 16, "optimizer": "adam"}
kind = "regression"


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    return {"train": (x[:60], y[:60]), "val": (x[60:75], y[60:75]), "test": (x[75:], y[75:])}


def build_model(config):
    return nn.Linear(3, 1)
'''


def test_a_master_on_the_head_ships_the_task_folder_to_the_other_nodes(ray_cluster, tmp_path):
    """`caviar run --address HOST:PORT` on the head of a multi-node cluster: every actor imported the task from the
    head's own path, which the other machines lack. Now the task's folder travels as Ray's working_dir, as over Ray
    Client. (Both nodes here share one disk: what this shows is where the actors load the task from.)"""
    project = tmp_path / "project"
    project.mkdir()
    imports = tmp_path / "imports.txt"
    (project / "regression_task.py").write_text(f"IMPORTS = {str(imports)!r}\n" + WHERE_TASK)
    ran = caviar("run", "regression_task.py", "--address", ray_cluster.gcs_address, "--storage", str(tmp_path / "runs"),
                 "--name", "shipped", "--shared-storage", "--trials", "2", "--epochs", "1", "--stages", "1",
                 "--no-ensemble", "--no-report", "--plain", cwd=str(project), timeout=240)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert "the task's folder" in ran.stderr and "travels to them as Ray's working_dir" in ran.stderr
    loaded = imports.read_text().split()
    assert loaded and all("runtime_resources" in path and path.endswith("/regression_task.py") for path in loaded)
    assert [t["status"] for t in load(str(tmp_path / "runs" / "shipped")).trials.to_pylist()] == ["completed"] * 2


def test_an_actor_error_names_the_shipped_task_file_not_rays_copy(ray_cluster, tmp_path):
    """The task's folder shipped to the nodes: an actor that could not import the task ended the run with
    task '/tmp/ray/session_.../runtime_resources/working_dir_files/_ray_pkg_.../task.py', a path the user cannot
    open; now the line names the task file that was shipped."""
    project = tmp_path / "project"
    project.mkdir()
    fails_in_actors = ("if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:\n"
                       "    raise RuntimeError('no CUDA driver on this node')\n")
    task = project / "regression_task.py"
    task.write_text(f"IMPORTS = {str(tmp_path / 'imports.txt')!r}\n" + WHERE_TASK + fails_in_actors)
    refused = caviar("run", "regression_task.py", "--address", ray_cluster.gcs_address, "--storage",
                     str(tmp_path / "runs"), "--name", "actor-error", "--shared-storage", "--trials", "2", "--epochs",
                     "1", "--stages", "1", "--no-ensemble", "--no-report", "--plain", cwd=str(project), timeout=240)
    error = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and error.startswith("caviar: error: no trial actor could start"), refused.stderr
    assert f"task '{task}': importing it raised RuntimeError: no CUDA driver on this node" in error
    assert "runtime_resources" not in error


STREAMED_TASK = '''
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-3, 1e-1), "batch_size": 16, "optimizer": "adam"}
kind = "regression"


class Rows(Dataset):  # rows read on demand from a file opened by a path relative to the working directory
    def __init__(self, lo, hi):
        self.x = np.load("data/x.npy", mmap_mode="r")[lo:hi]
        self.y = np.load("data/y.npy", mmap_mode="r")[lo:hi]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self.x[i])), torch.from_numpy(np.array(self.y[i]))


def load_data():
    return {"train": Rows(0, 60), "val": Rows(60, 75), "test": Rows(75, 90)}


def build_model(config):
    return nn.Linear(3, 1)
'''


def test_actors_on_a_joined_node_read_data_relative_to_the_masters_directory(tmp_path):
    """Streamed data opened as "data/x.npy": the master's check read it, but the actors of a cluster joined by
    HOST:PORT started in the directory of the node's `ray start` and failed with FileNotFoundError on every try.
    Now actors work in the master's directory when their node has it."""
    from tests.cluster.raycluster import LocalRayCluster

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3)).astype("float32")
    np.save(project / "data" / "x.npy", x)
    np.save(project / "data" / "y.npy", x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32"))
    (project / "streamed.py").write_text(STREAMED_TASK)
    cluster = LocalRayCluster(nodes=1, cpus_per_node=2).start()  # its `ray start` runs in the test's directory
    try:
        ran = caviar("run", "streamed.py", "--address", cluster.gcs_address, "--storage", str(tmp_path / "runs"),
                     "--name", "streamed", "--trials", "2", "--epochs", "1", "--stages", "1", "--no-ensemble",
                     "--no-report", "--plain", cwd=str(project), timeout=240)
    finally:
        cluster.stop()
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert [t["status"] for t in load(str(tmp_path / "runs" / "streamed")).trials.to_pylist()] == ["completed"] * 2


def test_a_callers_own_ray_connection_is_not_ended_to_ship_the_task(ray_cluster, tmp_path):
    """A notebook that joined the cluster itself (ray.init) keeps its connection and its actors through run_sweep:
    the task's folder is shipped only over a connection caviar made."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "regression_task.py").write_text(f"IMPORTS = {str(tmp_path / 'imports.txt')!r}\n" + WHERE_TASK)
    script = f'''
import ray
from orchestrator.app.api import run_sweep

ray.init(address={ray_cluster.gcs_address!r})
job = ray.get_runtime_context().get_job_id()
run_sweep("regression_task.py", address={ray_cluster.gcs_address!r}, storage={str(tmp_path / "runs")!r}, name="nb",
          trials=2, epochs=1, stages=1, ensemble=False, shared_storage=True)
print("same connection:", ray.is_initialized() and ray.get_runtime_context().get_job_id() == job)
'''
    ran = subprocess.run([sys.executable, "-c", script], cwd=str(project), capture_output=True, text=True, timeout=240,
                         env={**cluster_env(), "PYTHONPATH": ROOT})
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "same connection: True" in ran.stdout, ran.stdout[-2000:]
