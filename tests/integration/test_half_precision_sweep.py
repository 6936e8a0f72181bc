"""A sweep of a model whose parameters are bfloat16: it trains, stores its predictions and ensembles, and every
table's number is the one numpy computes in float64 from the loaded model's outputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from orchestrator import load_ensemble
from orchestrator.app.api import run_sweep
from orchestrator.ensemble.ensemble_run import read_ensembles
from orchestrator.errors import ConfigError
from orchestrator.spec.task import load_task
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import ROOT

TASK = os.path.join(ROOT, "tests", "tasks", "bf16_regression_task.py")


def test_a_bfloat16_regression_model_sweeps_and_its_tables_hold_numpys_mse(ray_session, storage_dir):
    # its stored predictions were bfloat16 tensors, which numpy cannot take: every trial failed with a TypeError
    result = run_sweep(TASK, storage=storage_dir, name="bf16", trials=2, epochs=2, stages=1, slots=1, seed=0,
                       pruner="none", executor="processes", ensemble=True)
    assert result.counts.get("completed") == 2
    storage = Storage.from_uri(result.path)
    data = load_task(TASK).get("load_data")()
    [single] = [r for r in read_ensembles(storage) if r.name == "single"]
    [member] = single.members
    key = (member.key.trial_id, member.key.epoch, member.key.weights)
    rows = schema.read_dir(storage, "checkpoints", schema.CHECKPOINTS).to_pylist()
    checkpoint = next(dict(r["metrics"]) for r in rows if (r["trial_id"], r["epoch"], r["weights"]) == key)
    model = load_ensemble(result.path, name=single.ensemble_id, task=TASK)
    for split in ("val", "test"):
        x, y = data[split]
        with torch.no_grad():
            mse = float(np.mean((model(x).double().numpy() - y.double().numpy()) ** 2))
        assert abs(checkpoint[f"{split}_mse"] - mse) < 1e-5 * mse
        assert abs(getattr(single, f"{split}_mse") - mse) < 1e-5 * mse
    # numpy has no bfloat16: the refusal of numpy's float64 says how to give it
    with pytest.raises(ConfigError, match=r"pass bfloat16 \(numpy has none: torch.tensor\(x, dtype=torch.bfloat16\)\)"):
        model.predict(np.zeros((2, 8)))
