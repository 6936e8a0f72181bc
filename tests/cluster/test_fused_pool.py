"""The fused backend under the unchanged driver and controller, on a real local Ray."""

from __future__ import annotations

from cluster.fused_pool import FusedBackend
from cluster.pool import Resources
from orchestrator import schema
from orchestrator.api import controller_for
from orchestrator.driver import drive
from orchestrator.settings import RunSettings
from orchestrator.space import SearchSpace, choice, loguniform
from orchestrator.storage import Storage
from tests.conftest import TINY_TASK

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
    for t in trials:  # each member stays a full trial: its own rows and checkpoints
        metrics = storage.read_table(schema.metrics_path(t.trial_id))
        assert metrics.column("epoch").to_pylist() == list(range(1, t.epochs_run + 1))
        assert storage.exists(schema.checkpoint_index_path(t.trial_id))
