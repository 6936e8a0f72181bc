"""A worker node pulled out of a real multi-node Ray cluster mid-sweep: its trial finishes on the nodes left.

Three nodes on this machine (``ray start`` processes): a head with no CPUs, which only
coordinates, and two one-CPU workers, so the two trials at a time run one per worker node. The
slow test task pauses the first trial to begin its second epoch (its first epoch is persisted)
and writes its process id; the test finds that trial's node and SIGKILLs the node's whole
``ray start`` process tree. The master (``caviar run --address``) must retry the trial from its
checkpoint on the surviving node and finish the sweep there with one effective row per epoch.
"""

from __future__ import annotations

import os
import subprocess
import time

import pyarrow.compute as pc
import pytest

from orchestrator.app.api import load
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.cluster.raycluster import VENV_BIN, LocalRayCluster, auth_headers, cluster_env
from tests.conftest import ROOT

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # own clusters end to end: the second CI tier (.ci/test-slow)

SLOW_TASK = os.path.join(ROOT, "tests", "tasks", "slow_task.py")


@pytest.fixture(scope="module")
def three_nodes():
    cluster = LocalRayCluster(nodes=3, cpus_per_node=1, head_cpus=0).start()
    yield cluster
    cluster.stop()
    assert not cluster.own_processes(), "processes of the test cluster outlived it"


def paused_trial(folder) -> tuple[int, float] | None:
    marker = folder / "paused"
    if not marker.exists():
        return None
    pid, lr = marker.read_text().split()
    return int(pid), float(lr)


def test_a_node_killed_mid_sweep_loses_no_trial_and_duplicates_no_row(three_nodes, tmp_path):
    folder = tmp_path / "pause"
    folder.mkdir()
    config = tmp_path / "pause.toml"
    config.write_text(f'[space]\npause_dir = "{folder}"\npause_epoch = 2\n')
    storage = tmp_path / "runs"
    command = [
        os.path.join(VENV_BIN, "caviar"),
        "run",
        SLOW_TASK,
        "--address",
        three_nodes.gcs_address,
        "--storage",
        str(storage),
        "--shared-storage",
        "--name",
        "node-lost",
        "--trials",
        "4",
        "--epochs",
        "3",
        "--stages",
        "1",
        "--pruner",
        "none",
        "--seed",
        "3",
        "--fuse",
        "off",
        "--no-ensemble",
        "--plain",
        "--config",
        str(config),
    ]
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        master = subprocess.Popen(command, cwd=ROOT, env=cluster_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while paused_trial(folder) is None and master.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        paused = paused_trial(folder)
        assert paused is not None, log_path.read_text()[-3000:]
        node = three_nodes.node_of(paused[0])
        assert node in (1, 2), f"the paused trial (pid {paused[0]}) is on node {node}, not a worker node"
        three_nodes.kill_node(node)
        master.wait(timeout=400)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(10)
    assert master.returncode == 0, log_path.read_text()[-3000:]

    tables = load(str(storage / "node-lost"))
    trials = tables.trials.to_pylist()
    assert [(t["status"], t["epochs_run"]) for t in trials] == [("completed", 3)] * 4
    [victim] = [t for t in trials if t["config"]["lr"] == paused[1]]
    assert victim["attempt"] == 1 and all(t["attempt"] == 0 for t in trials if t is not victim)
    retried = [e for e in tables.events.to_pylist() if e["kind"] == "trial_retried"]
    assert [(e["trial_id"], e["reason"]) for e in retried] == [(victim["trial_id"], "executor_lost")]

    # Every (trial, epoch) once: epoch 1 from the lost attempt (persisted before the kill), 2-3 from the retry.
    effective = tables.metrics.to_pylist()
    assert sorted((r["trial_id"], r["epoch"]) for r in effective) == [(t, e) for t in range(4) for e in (1, 2, 3)]
    assert [(r["epoch"], r["attempt"]) for r in effective if r["trial_id"] == victim["trial_id"]] == [
        (1, 0),
        (2, 1),
        (3, 1),
    ]
    raw = schema.read_dir(Storage.from_uri(str(storage / "node-lost")), "metrics", schema.METRICS)
    keys = list(zip(raw["trial_id"].to_pylist(), raw["attempt"].to_pylist(), raw["epoch"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)), "a (trial, attempt, epoch) row was written twice"
    victim_rows = raw.filter(pc.equal(raw["trial_id"], victim["trial_id"]))
    assert (1, 1) not in set(zip(victim_rows["epoch"].to_pylist(), victim_rows["attempt"].to_pylist(), strict=True))

    # The retry ran on a node that is still alive; the killed node ran none of the finished attempts.
    # (Ray declares a node dead only after missed health checks, possibly after the sweep has ended.)
    dead = wait_for_dead_node(three_nodes.dashboard)
    assert victim["node"] != dead and dead not in {t["node"] for t in trials}
    # One caviar line says what happened, among Ray's own noise: the node, the trial moved, its attempts.
    said = [line for line in log_path.read_text().splitlines() if line.startswith("caviar: lost the trial actor")]
    assert len(said) == 1 and dead in said[0], said
    assert f"trial {victim['trial_id']} (attempt 0 -> 1) goes back to the queue" in said[0]


def wait_for_dead_node(dashboard: str, timeout: float = 180.0) -> str:
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = StateApiClient(address=dashboard, headers=auth_headers())  # the cluster runs with token auth
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = client.list(StateResource.NODES, options=ListApiOptions(limit=100), raise_on_missing_output=False)
        dead = [n.node_id for n in nodes if n.state == "DEAD"]
        if dead:
            assert len(dead) == 1 and len(nodes) == 3, nodes
            return dead[0]
        time.sleep(2.0)
    raise AssertionError(f"Ray never declared the killed node dead in {timeout:.0f} s")
