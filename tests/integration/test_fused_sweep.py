"""Whole sweeps with fused arrays on a real local Ray: the same trials as unfused, each a full trial.

With the model's shape held fixed (a TOML ``[space]``), fusing changes no config, so a sweep
with ``fuse="on"`` and one with ``fuse="off"`` on the same seed train the same trials: the
trials table and every epoch's metrics agree (float tolerance). A sweep over the whole digits
space then shows what fusing does to sampling (shapes shared in blocks) and that every member
keeps what a plain trial leaves: rows, checkpoints that load into the plain model, predictions
for ensembles, diagnostics. Models that cannot fuse fall back (``auto``) or are refused (``on``).
"""

from __future__ import annotations

import io
import math
import os

import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch

from orchestrator.app.api import load, run_sweep
from orchestrator.decide.fusing import shape_key
from orchestrator.errors import ConfigError
from orchestrator.spec.task import load_task
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import DIGITS_TASK, ROOT

UNFUSABLE_TASK = os.path.join(ROOT, "tests", "tasks", "unfusable_task.py")
FIXED_SHAPE = """[space]
layers = 1
hidden = 32
activation = "relu"
batch_norm = false
dropout = 0.0
batch_size = 64
optimizer = "adam"
lr = { dist = "loguniform", low = 1e-3, high = 2e-2 }  # stable: chaos at huge rates would magnify float rounding
"""
COMPARED = ("train_loss", "val_loss", "val_accuracy", "lr", "grad_norm", "ema_val_loss")


@pytest.fixture(scope="module")
def fixed_shape_pair(ray_session, tmp_path_factory):
    """The same seed and plan, fused and not; pruning off so both take the same decisions."""
    root = tmp_path_factory.mktemp("fused")
    config = root / "shape.toml"
    config.write_text(FIXED_SHAPE)
    common = dict(config_file=str(config), plan="6x2", pruner="none", slots=2, storage=str(root), seed=11)
    fused = run_sweep(DIGITS_TASK, name="on", fuse="on", ensemble=True, **common)
    plain = run_sweep(DIGITS_TASK, name="off", fuse="off", ensemble=False, **common)
    return load(fused.path), load(plain.path), fused


def test_fused_and_plain_sweeps_train_the_same_trials_to_float_tolerance(fixed_shape_pair):
    fused, plain, _ = fixed_shape_pair
    on, off = fused.trials.to_pylist(), plain.trials.to_pylist()
    assert [t["config"] for t in on] == [t["config"] for t in off]
    assert [(t["seed"], t["status"], t["epochs_run"]) for t in on] == [
        (t["seed"], t["status"], t["epochs_run"]) for t in off
    ]
    assert all(t["status"] == "completed" and t["epochs_run"] == 2 for t in on)
    rows_on = {(r["trial_id"], r["epoch"]): r for r in fused.metrics.to_pylist()}
    rows_off = {(r["trial_id"], r["epoch"]): r for r in plain.metrics.to_pylist()}
    assert rows_on.keys() == rows_off.keys() and len(rows_on) == 12
    for key, row in rows_on.items():
        for column in COMPARED:
            a, b = row[column], rows_off[key][column]
            assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-5), (key, column, a, b)


def test_the_fused_sweep_records_why_and_how_wide(fixed_shape_pair):
    fused, plain, _ = fixed_shape_pair
    events = [e for e in fused.events.to_pylist() if e["kind"].startswith("fusing")]
    assert [e["kind"] for e in events] == ["fusing_on"]
    assert "arrays of up to" in events[0]["reason"]
    assert not [e for e in plain.events.to_pylist() if e["kind"].startswith("fusing")]  # off: as before


def test_fused_members_leave_plain_checkpoints_predictions_and_diagnostics(fixed_shape_pair):
    fused, _, result = fixed_shape_pair
    storage = Storage.from_uri(fused.path)
    task = load_task(DIGITS_TASK)
    x_val = torch.tensor(task.get("load_data")()["val"][0])
    for trial in fused.trials.to_pylist():
        index = storage.read_table(schema.checkpoint_index_path(trial["trial_id"])).to_pylist()
        assert {r["weights"] for r in index} == {"raw", "ema"}
        for row in index:  # a member's checkpoint is a plain state dict: it loads and predicts
            model = task.get("build_model")(trial["config"]).eval()
            model.load_state_dict(safetensors.torch.load(storage.read_bytes(row["path"])))
            assert torch.isfinite(model(x_val)).all()
        assert storage.exists(schema.predictions_path(trial["trial_id"]))
        diagnostics = pq.read_table(io.BytesIO(storage.read_bytes(schema.diagnostics_path(trial["trial_id"]))))
        assert set(diagnostics.column("kind").to_pylist()) == {"parameter", "activation"}
        assert sorted(set(diagnostics.column("epoch").to_pylist())) == [1, 2]
    assert result.ensemble is not None  # ensembles build from the members' stored predictions


def test_a_sweep_over_the_whole_space_shares_shapes_in_blocks_and_prunes(ray_session, tmp_path):
    result = run_sweep(
        DIGITS_TASK,
        plan="8x1,4x2",
        pruner="asha",
        grace_epochs=1,
        reduction_factor=2,
        slots=2,
        storage=str(tmp_path),
        name="blocks",
        seed=5,
        fuse="on",
        array_size=4,
        ensemble=False,
    )
    tables = load(result.path)
    trials = tables.trials.to_pylist()
    assert len(trials) == 12 and not [t for t in trials if t["status"] == "failed"]
    first = [t for t in trials if t["stage"] == 1]
    assert len({shape_key(t["config"]) for t in first}) == 2  # blocks of 4 share a shape, keep their own lr etc.
    assert len({t["config"]["lr"] for t in first}) == 8
    by_trial: dict[int, list[int]] = {}
    for row in tables.metrics.to_pylist():
        by_trial.setdefault(row["trial_id"], []).append(row["epoch"])
    for t in trials:  # every member's own rows, one per epoch it ran
        assert sorted(by_trial[t["trial_id"]]) == list(range(1, t["epochs_run"] + 1))


def test_auto_falls_back_to_plain_trials_and_says_why(ray_session, tmp_path):
    result = run_sweep(
        UNFUSABLE_TASK, trials=4, epochs=1, stages=1, slots=2, storage=str(tmp_path), name="auto", ensemble=False,
        fuse="auto",
    )
    tables = load(result.path)
    assert {t["status"] for t in tables.trials.to_pylist()} == {"completed"}
    events = [e for e in tables.events.to_pylist() if e["kind"].startswith("fusing")]
    assert [e["kind"] for e in events] == ["fusing_off"] and "layer 1 (ClipGate)" in events[0]["reason"]


def test_on_with_a_model_that_cannot_fuse_is_one_line_naming_the_layer(ray_session, tmp_path):
    with pytest.raises(ConfigError) as refused:
        run_sweep(
            UNFUSABLE_TASK,
            trials=4,
            epochs=1,
            stages=1,
            slots=2,
            storage=str(tmp_path),
            name="on",
            fuse="on",
            ensemble=False,
        )
    message = str(refused.value)
    assert message.startswith("setting 'fuse': on") and "layer 1 (ClipGate)" in message and "\n" not in message
    assert not Storage.from_uri(str(tmp_path)).child("on").exists(schema.SWEEP_PATH)  # a re-run needs no --overwrite
