"""Sweeps of models unlike the digits MLP, end to end: trained, ensembled, and loaded again from the files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


OWN_LOOP_TASK = f"""
import sys
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, load_data, space  # noqa: F401
from torch import nn


def train_epoch(model, optimizer, batches, config):
    losses = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {{"train_loss": sum(losses) / len(losses)}}
"""


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_with_the_tasks_own_loop_is_refused_before_anything_runs(tmp_path, precision):
    """caviar's autocast wraps its own loop's forward passes: the task's train_epoch trained in fp32 while the
    sweep said bf16 (and fp16 would have had no loss scaler)."""
    from orchestrator.errors import ConfigError

    path = tmp_path / "own_loop.py"
    path.write_text(OWN_LOOP_TASK)
    with pytest.raises(ConfigError, match=f"setting 'precision': {precision} .* train_epoch"):
        run_sweep(str(path), trials=2, epochs=1, storage=str(tmp_path / "runs"), name="own", precision=precision,
                  executor="processes")
    assert not (tmp_path / "runs" / "own").exists()
    run_sweep(str(path), trials=2, epochs=1, slots=1, storage=str(tmp_path / "runs"), name="own", ensemble=False,
              executor="processes")  # fp32: trains


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's inductor needs a C++ compiler on the CPU")
def test_a_torch_compiled_model_sweeps_in_child_processes(tmp_path):
    """With inductor's cache cold, the master compiled during the contract check and the forked worker, compiling
    its own model, waited on the master's compile workers for ever: the sweep hung with one trial running."""
    task = os.path.join(ROOT, "tests", "tasks", "compiled_task.py")
    code = ("from orchestrator import run_sweep; "
            f"r = run_sweep({task!r}, trials=1, epochs=1, stages=1, slots=1, storage={str(tmp_path)!r}, name='c', "
            "executor='processes', ensemble=False); print(r.counts)")
    env = {**os.environ, "PYTHONPATH": ROOT, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # cold cache
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "{'completed': 1}" in done.stdout
