"""The fused backend under the unchanged driver and controller, on a real local Ray."""

from __future__ import annotations

import os

from cluster.fused_pool import FusedBackend
from cluster.pool import Resources
from orchestrator.app.api import controller_for
from orchestrator.decide.driver import drive
from orchestrator.search.space import SearchSpace, choice, loguniform
from orchestrator.spec.settings import RunSettings
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import TINY_TASK
from tests.fused_checks import assert_killed_array_retried

SLOW_FORWARD_TASK = os.path.join(os.path.dirname(TINY_TASK), "slow_forward_task.py")
OPTIONS = {"threads": 1, "checkpoint_seconds": 3600, "device": "cpu"}


def sweep(space: SearchSpace, storage_dir: str, name: str, plan: str, array_size: int):
    settings = RunSettings(plan=plan, pruner="asha", grace_epochs=1, reduction_factor=2, seed=3,
                           storage=storage_dir, name=name).validate()
    controller = controller_for(space, settings)
    backend = FusedBackend(TINY_TASK, storage_dir, name, 2, Resources(cpus=1), OPTIONS, array_size=array_size)
    try:
        drive(controller, backend, poll_timeout=0.5)
    finally:
        backend.close()
    return controller, Storage.from_uri(storage_dir).child(name)


def test_a_sweep_runs_as_arrays_with_pruning_under_the_unchanged_driver(ray_session, storage_dir):
    # Two optimizers: two kinds of array; per-trial learning rates and EMA decays inside each.
    space = SearchSpace({"lr": loguniform(1e-2, 3e-1), "optimizer": choice(["adam", "momentum"]), "hidden": 8,
                         "batch_size": 32, "ema_decay": choice([0.9, 0.99])})
    controller, storage = sweep(space, storage_dir, "fused", "8x4", array_size=4)
    trials = list(controller.trials.values())
    assert controller.finished and len(trials) == 8
    assert {t.status for t in trials} <= {"completed", "pruned"} and any(t.status == "pruned" for t in trials)
    assert any(t.status == "completed" and t.epochs_run == 4 for t in trials)
    # The Ray node id, as plain trials record it: the hostname ('vm') named no node of a one-machine cluster.
    assert {t.node for t in trials} == {ray_session.get_runtime_context().get_node_id()}
    for t in trials:  # each member stays a full trial: its own rows and checkpoints
        metrics = storage.read_table(schema.metrics_path(t.trial_id))
        assert metrics.column("epoch").to_pylist() == list(range(1, t.epochs_run + 1))
        assert storage.exists(schema.checkpoint_index_path(t.trial_id))


def test_a_killed_array_actor_loses_its_members_to_retries_and_the_sweep_finishes(ray_session, storage_dir):
    """SIGKILL one fused actor while its array trains: its members are retried on a replacement actor.

    With no pruner an array trains to the end in one call, so the kill lands mid-call. The task's training
    forward passes sleep (about 1.5 s an array), so the kill cannot miss the call or land after its results
    went back, even on a loaded machine.
    """
    import signal

    space = SearchSpace({"lr": loguniform(1e-2, 3e-1), "optimizer": "adam", "hidden": 8, "batch_size": 32,
                         "step_sleep": 0.04})
    settings = RunSettings(plan="6x6", pruner="none", seed=5, storage=storage_dir, name="killed").validate()
    controller = controller_for(space, settings)
    backend = FusedBackend(SLOW_FORWARD_TASK, storage_dir, "killed", 2, Resources(cpus=1), OPTIONS, array_size=3)
    killed: list[int] = []

    def kill_one_actor(c) -> None:
        if killed:
            return
        training = actor_processes("ray::FusedActor.run")  # Ray titles a worker by the method it runs
        if training:
            os.kill(training[0], signal.SIGKILL)
            killed.append(training[0])

    try:
        drive(controller, backend, on_tick=kill_one_actor, poll_timeout=0.2)
    finally:
        backend.close()
    assert killed
    assert_killed_array_retried(controller, backend, storage_dir, "killed", trials=6, epochs=6)


def actor_processes(title: str) -> list[int]:
    """Pids of this machine's processes whose title (Ray's setproctitle) starts with ``title``."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if entry.isdigit() and f.read().startswith(title.encode()):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def test_a_fused_sweep_whose_actors_cannot_start_ends_naming_the_users_line(ray_session, tmp_path, monkeypatch):
    """As the plain pool: the user's exception and task line, one line, not Ray's ActorDiedError; no folder left.

    The actors get the master's data (Ray's object store), so what fails here is the task's import.
    """
    import pytest

    from orchestrator.app.api import run_sweep
    from orchestrator.errors import CaviarError
    from tests.integration.test_user_errors import WORKERS_CANNOT_IMPORT_TASK

    task = tmp_path / "workers_cannot_import.py"
    task.write_text(WORKERS_CANNOT_IMPORT_TASK)
    monkeypatch.setenv("CAVIAR_TEST_MASTER_PID", str(os.getpid()))  # the master imports the task; Ray's workers cannot
    with pytest.raises(CaviarError) as error:
        run_sweep(str(task), trials=4, epochs=1, stages=1, slots=1, fuse="on", executor="ray",
                  storage=str(tmp_path / "runs"), name="fused", ensemble=False)
    message = str(error.value)
    assert message.startswith("no trial actor could start: ") and "\n" not in message, message
    assert "OSError: a module it needs lives on the master's disk only (workers_cannot_import.py:" in message, message
    assert "ActorDiedError" not in message
    assert not (tmp_path / "runs" / "fused").exists()  # refused before any trial: the name is free again


def test_fused_actors_train_on_the_masters_data(ray_session, tmp_path, monkeypatch):
    """Data only the master can read: the fused actors get it through Ray's object store, as plain actors do."""
    from orchestrator.app.api import load, run_sweep
    from tests.integration.test_user_errors import WORKERS_CANNOT_LOAD_TASK

    task = tmp_path / "workers_cannot_load.py"
    task.write_text(WORKERS_CANNOT_LOAD_TASK)
    monkeypatch.setenv("CAVIAR_TEST_MASTER_PID", str(os.getpid()))
    result = run_sweep(str(task), trials=4, epochs=1, stages=1, slots=2, fuse="on", array_size=2, executor="ray",
                       storage=str(tmp_path / "runs"), name="fused", ensemble=False)
    assert [t["status"] for t in load(result.path).trials.to_pylist()] == ["completed"] * 4
