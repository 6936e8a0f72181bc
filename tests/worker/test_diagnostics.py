"""Per-layer diagnostics on a tiny task: what they measure, that training never notices, how they are stored."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from orchestrator.errors import TaskError
from orchestrator.spec.task import Task, load_task
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import TINY_TASK
from worker.data.splits import prepare
from worker.train.diagnostics import Diagnostics, DiagnosticsOptions
from worker.train.recorder import TrialRecorder
from worker.train.trainer import TrialRun, TrialSpec

CONFIG = {"lr": 0.05, "optimizer": "sgd", "hidden": 8, "batch_size": 32, "ema_decay": 0.9}


def tiny_task(**extra) -> Task:
    task = load_task(TINY_TASK)
    if extra:
        namespace = SimpleNamespace(**{k: getattr(task.namespace, k) for k in ("space", "load_data", "build_model")},
                                    **extra)
        task = Task(task.ref, namespace, task.space)
    return task


def make_run(task: Task, epochs: int = 6, config=CONFIG) -> TrialRun:
    splits = prepare(task.get("load_data")())
    return TrialRun(task, splits, TrialSpec(7, 1, config, 3, epochs), torch.device("cpu"))


def test_rows_per_parameter_and_layer_with_sparse_histograms():
    run = make_run(tiny_task(diagnostics={"hist_every": 3}), epochs=4)
    by_epoch = {}
    for _ in range(4):
        run.train_epoch()
        by_epoch[run.epoch] = run.diagnostics.take()
    rows = by_epoch[2]
    params = {r["layer"]: r for r in rows if r["kind"] == "parameter"}
    acts = {r["layer"]: r for r in rows if r["kind"] == "activation"}
    assert list(params) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert {k: r["module"] for k, r in acts.items()} == {"0": "Linear", "1": "ReLU", "2": "Linear"}
    for r in params.values():
        assert r["trial_id"] == 7 and r["stage"] == 1 and r["epoch"] == 2
        assert r["grad_norm"] > 0 and r["weight_norm"] > 0 and 1e-6 < r["update_ratio"] < 1
    assert 0 <= acts["1"]["zero_fraction"] <= 1 and acts["1"]["mean"] >= 0
    assert acts["0"]["zero_fraction"] == 0
    # Histograms on the first epoch, every third, and the last; none in between.
    kept = {e for e, rs in by_epoch.items() if all(r.get("hist_counts") for r in rs)}
    bare = {e for e, rs in by_epoch.items() if not any(r.get("hist_counts") for r in rs)}
    assert kept == {1, 3, 4} and bare == {2}
    counts = by_epoch[1][0]["hist_counts"]
    assert len(counts) == 20 and sum(counts) == 8 * 4 and len(by_epoch[1][0]["hist_edges"]) == 21


def test_sgd_update_ratio_is_lr_times_gradient_over_weight():
    run = make_run(tiny_task(), config={**CONFIG, "batch_size": 500})  # one step per epoch: no momentum, no decay
    run.train_epoch()
    for r in run.diagnostics.take():
        if r["kind"] == "parameter":
            assert r["update_ratio"] == pytest.approx(CONFIG["lr"] * r["grad_norm"] / r["weight_norm"], rel=1e-4)


def test_diagnostics_leave_training_bit_for_bit_unchanged():
    with_diagnostics = make_run(tiny_task(), config={**CONFIG, "optimizer": "adam"})
    without = make_run(tiny_task(diagnostics=False), config={**CONFIG, "optimizer": "adam"})
    assert without.diagnostics is None
    a = [with_diagnostics.train_epoch()["val_loss"] for _ in range(3)]
    b = [without.train_epoch()["val_loss"] for _ in range(3)]
    assert a == b


def test_dead_relus_are_counted():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias[:3] = -1e3  # three units can never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    diagnostics = Diagnostics(model, opt, torch.randn(64, 4), {"trial_id": 0, "attempt": 0, "stage": 0}, 1,
                              DiagnosticsOptions(probe_size=32))
    diagnostics.epoch_end(1)
    relu = next(r for r in diagnostics.take() if r["layer"] == "1")
    assert relu["dead_fraction"] == pytest.approx(0.5) and relu["zero_fraction"] >= 0.5
    assert relu["numel"] == 6


def test_recorder_writes_one_compacted_file_per_trial(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    run = make_run(tiny_task(), epochs=3)
    recorder = TrialRecorder(storage, 7, 0, checkpoint_seconds=0.0)  # a part on every epoch
    for _ in range(3):
        recorder.record(run, run.train_epoch())
    assert len(storage.list_files("diagnostics")) == 3
    recorder.finish(run)
    assert storage.list_files("diagnostics") == [schema.diagnostics_path(7)]
    table = storage.read_table(schema.diagnostics_path(7))
    assert table.schema == schema.DIAGNOSTICS
    assert table.num_rows == 3 * 7 and sorted(set(table["epoch"].to_pylist())) == [1, 2, 3]
    ratios = [r for r, k in zip(table["update_ratio"].to_pylist(), table["kind"].to_pylist()) if k == "parameter"]
    assert all(math.isfinite(r) for r in ratios)


def test_a_trial_that_ends_before_any_flush_writes_straight_to_the_final_file(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    run = make_run(tiny_task(), epochs=2)
    recorder = TrialRecorder(storage, 2, 0, checkpoint_seconds=1e9)
    for _ in range(2):
        recorder.record(run, run.train_epoch())
    recorder.finish(run)
    assert storage.list_files("diagnostics") == [schema.diagnostics_path(2)]
    assert storage.read_table(schema.diagnostics_path(2)).num_rows == 2 * 7


class _PaddedEncoder(nn.Module):
    """Token ids (0 = padding) through a transformer encoder given the padding mask: in eval mode torch's fast path
    makes the layers inside return nested tensors."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8, padding_idx=0)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x), src_key_padding_mask=x == 0).mean(dim=1))


def test_a_transformer_encoders_nested_activations_are_measured_on_their_real_positions():
    torch.manual_seed(0)
    model = _PaddedEncoder()
    x = torch.randint(1, 10, (16, 6))
    x[:, 4:] = 0  # every sequence padded after 4 tokens
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    diagnostics = Diagnostics(model, opt, x, {"trial_id": 0, "attempt": 0, "stage": 0}, 1,
                              DiagnosticsOptions(probe_size=16))
    diagnostics.epoch_end(1)  # raised torch's "NestedTensorImpl doesn't support sizes", failing every trial
    acts = {r["layer"]: r for r in diagnostics.take() if r["kind"] == "activation"}
    assert diagnostics.probe_error is None
    norm = acts["encoder.layers.0.norm2"]
    assert norm["numel"] == 8 and sum(norm["hist_counts"]) == 16 * 4 * 8  # the real positions only, no padding
    assert abs(norm["mean"]) < 1e-5  # a layer norm's output, padding zeros left out


REGRESSION_TASK = '''
import numpy as np
from torch import nn
from orchestrator.search.space import loguniform

kind = "regression"
diagnostics = DIAGNOSTICS
space = {"lr": loguniform(1e-3, 1e-1), "batch_size": 16}

def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype("float32")
    y = (x @ np.array([[1.0], [2.0], [-1.0]]) + 5).astype("float32")
    return {"train": (x[:40], y[:40]), "val": (x[40:50], y[40:50]), "test": (x[50:], y[50:])}

def build_model(config):
    return nn.Linear(3, 1)
'''


@pytest.mark.parametrize(("value", "named"), [
    ('{"probe": 64}', "no option 'probe' (options: probe_size, hist_every, bins)"),  # ignored: 256 examples probed
    ('{"bins": 0}', "'bins' must be a positive integer, got 0"),  # every trial failed in torch.histogram
    ('{"hist_every": 2.5}', "'hist_every' must be a positive integer, got 2.5"),  # int() made it 2
    ('"off"', "must be True, False or a dict"),  # a string read as on
])
def test_a_bad_diagnostics_option_is_refused_with_the_task(tmp_path, value, named):
    path = tmp_path / "task.py"
    path.write_text(REGRESSION_TASK.replace("DIAGNOSTICS", value))
    with pytest.raises(TaskError, match="diagnostics") as caught:
        load_task(str(path))
    assert named in str(caught.value)


def test_caviar_run_refuses_a_misspelt_diagnostics_option_in_one_line_before_the_sweep(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = tmp_path / "task.py"
    path.write_text(REGRESSION_TASK.replace("DIAGNOSTICS", '{"probe": 64}'))
    result = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", "run", str(path), "--trials", "1",
                             "--epochs", "1", "--storage", str(tmp_path / "runs"), "--name", "bad", "--plain"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("caviar: error: task ") and "diagnostics has no option 'probe'" in line, line
    assert not (tmp_path / "runs" / "bad").exists()


def test_the_options_a_task_may_give_are_the_ones_diagnostics_read():
    from dataclasses import fields

    from orchestrator.spec.task import DIAGNOSTICS_OPTIONS

    assert DIAGNOSTICS_OPTIONS == tuple(f.name for f in fields(DiagnosticsOptions))
