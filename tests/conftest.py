"""Shared fixtures: one real local Ray instance per test session, tiny data, temp storage."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
DIGITS_TASK = os.path.join(EXAMPLES, "digits_mlp.py")
TINY_TASK = os.path.join(ROOT, "tests", "tasks", "tiny_task.py")

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray, started once: every Ray test in the session shares it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def end_warm_actors():
    """A sweep's actors stay warm for the next sweep in the process: never past the test that made them."""
    yield
    if "cluster.warm_pool" in sys.modules:
        sys.modules["cluster.warm_pool"].end_all()


@pytest.fixture
def storage_dir(tmp_path):
    path = tmp_path / "runs"
    path.mkdir()
    return str(path)


def folder_digest(folder) -> dict[str, str]:
    """Every file under ``folder`` (relative path) and the sha256 of its bytes: "nothing was written" made checkable."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def best_raw_checkpoint_logits(sweep_path: str, task_file: str, best_trial_id: int, standardise: bool = True):
    """The best trial's best raw checkpoint row, and its model's outputs on the task's val inputs standardised as
    the workers standardise them (train-split mean and std; integer token ids are not): what a recorded val loss is
    recomputed from."""
    import torch

    from orchestrator.app.api import load
    from orchestrator.ensemble.ensemble_run import CandidateKey
    from orchestrator.spec.task import load_task
    from orchestrator.store.storage import Storage
    from worker.load.ensemble_model import SweepModels

    rows = load(sweep_path).checkpoints.to_pylist()
    ckpt = max((r for r in rows if r["trial_id"] == best_trial_id and r["weights"] == "raw"), key=lambda r: r["score"])
    model = SweepModels(Storage.from_uri(sweep_path), trust_task_code=True).model(
        CandidateKey(best_trial_id, ckpt["epoch"], "raw"))
    (x_train, _), (x_val, _), _ = load_task(task_file).get("load_data")()
    if not standardise:
        with torch.no_grad():
            return ckpt, model(torch.from_numpy(x_val))
    mean, std = x_train.mean(axis=0), x_train.std(axis=0, ddof=1)
    with torch.no_grad():
        return ckpt, model(torch.from_numpy((x_val - mean) / std).float())
