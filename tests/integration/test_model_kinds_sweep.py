"""Sweeps of models unlike the digits MLP, end to end: trained, ensembled, and loaded again from the files."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from orchestrator import load_ensemble
from orchestrator.app.api import run_sweep
from orchestrator.ensemble.ensemble_run import read_ensembles
from orchestrator.spec.task import load_task
from orchestrator.store.storage import Storage
from tests.conftest import ROOT

LAZY_TASK = os.path.join(ROOT, "tests", "tasks", "lazy_task.py")


@pytest.fixture(autouse=True)
def quiet_lazy_modules():
    with warnings.catch_warnings():  # torch: "Lazy modules are a new feature under heavy development"
        warnings.simplefilter("ignore", UserWarning)
        yield


def test_a_lazy_linear_model_trains_with_ema_and_its_soup_loads(tmp_path):
    """nn.LazyLinear has no shapes until its first input: the EMA copy refused every trial, and the soup (and
    `caviar ensemble`) failed reading the model's architecture."""
    result = run_sweep(LAZY_TASK, plan="2x2", slots=1, storage=str(tmp_path), name="lazy", seed=3, pruner="none",
                       executor="processes", prediction_dtype="float32")
    records = {r.method: r for r in read_ensembles(Storage.from_uri(result.path))}
    assert "single_ema" in records and "soup" in records
    x_val, y_val = load_task(LAZY_TASK).get("load_data")()[1]
    for name in ("single_ema", "soup"):
        model = load_ensemble(result.path, name=name, task=LAZY_TASK)
        accuracy = float((model(torch.as_tensor(x_val)).argmax(1).numpy() == y_val).mean())
        assert accuracy == pytest.approx(records[name].val_accuracy, abs=1e-9), name
