"""A resumed attempt keeps the checkpoints its trial kept before the crash: real torch, real files."""

from __future__ import annotations

import pytest
import torch

from orchestrator.ensemble.ensemble_run import best_checkpoint
from orchestrator.spec.task import load_task
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import TINY_TASK
from worker.data.splits import prepare
from worker.train.recorder import TrialRecorder, load_resume_state, load_safetensors
from worker.train.trainer import TrialRun, TrialSpec

CONFIG = {"lr": 0.03, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": 0.9}


def make_run(attempt: int) -> TrialRun:
    task = load_task(TINY_TASK)
    return TrialRun(task, prepare(task.get("load_data")()), TrialSpec(0, 0, CONFIG, 3, 3, attempt), torch.device("cpu"))


def record(recorder: TrialRecorder, run: TrialRun, score: float) -> None:
    recorder.record(run, {**run.train_epoch(), "score": score})


def test_a_resumed_attempt_keeps_the_best_checkpoint_of_the_lost_one(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    lost_run = make_run(0)
    lost = TrialRecorder(storage, 0, 0, keep_best=1, checkpoint_seconds=0.0)
    record(lost, lost_run, 0.9)  # epoch 1: the trial's best
    record(lost, lost_run, 0.5)  # epoch 2: persisted as "last"; then the worker dies
    stale_last = schema.weights_path(0, 0, 2, "raw")
    assert storage.exists(stale_last)

    run = make_run(1)
    run.load_resume_state(load_resume_state(storage, 0))
    recorder = TrialRecorder(storage, 0, 1, keep_best=1, checkpoint_seconds=0.0)
    recorder.adopt(run.epoch)
    record(recorder, run, 0.6)  # epoch 3, better than epoch 2 but not than epoch 1
    index = recorder.finish(run)

    kept = {(r["epoch"], r["weights"]): (r["attempt"], r["kept_as"]) for r in index}
    assert kept == {(1, "raw"): (0, "best"), (1, "ema"): (0, "best"), (3, "raw"): (1, "last"), (3, "ema"): (1, "last")}
    assert not storage.exists(stale_last)  # the lost attempt's superseded "last" is cleaned up
    predictions = storage.read_table(schema.predictions_path(0))
    assert set(predictions["epoch"].to_pylist()) == {1, 3}  # ensembles can still use the best epoch


def test_an_ema_checkpoints_index_row_holds_the_ema_weights_own_numbers(tmp_path):
    """Its val loss, accuracy and score are the EMA weights', not the epoch's raw ones: a custom kind's answer
    (``best_checkpoint``) and anyone ranking the index by score would otherwise take EMA weights at the raw score."""
    storage = Storage.from_uri(str(tmp_path))
    run = make_run(0)
    recorder = TrialRecorder(storage, 0, 0, keep_best=1, checkpoint_seconds=0.0)
    rows = []
    for _ in range(2):
        rows.append(run.train_epoch())
        recorder.record(run, rows[-1])
    mid = {r["weights"]: r for r in storage.read_table(schema.checkpoint_index_path(0)).to_pylist()
           if r["epoch"] == 2}
    assert mid["ema"]["score"] is None  # mid-trial: not scored yet, never the raw weights' score
    assert mid["ema"]["val_loss"] == rows[-1]["ema_val_loss"] != rows[-1]["val_loss"]
    index = recorder.finish(run)
    for row in index:
        own = dict(row["metrics"])
        assert row["val_loss"] == own["val_loss"] and row["val_accuracy"] == own["val_accuracy"]
        assert row["score"] == pytest.approx(own["val_accuracy"])  # the tiny task ranks on val accuracy
    by_weights = {(r["epoch"], r["weights"]): r for r in index}
    assert by_weights[(2, "ema")]["val_loss"] == pytest.approx(rows[-1]["ema_val_loss"], rel=1e-6)
    assert by_weights[(2, "raw")]["score"] == rows[-1]["score"]
    assert best_checkpoint(index)["score"] == max(r["score"] for r in index)


def test_a_trial_retrained_after_its_end_was_cut_short_leaves_no_unindexed_weight_files(tmp_path):
    """Killed between its end's weight files and its index: before, the retrained attempt's index named its own
    files and the first attempt's stayed on disk, reachable by nothing, for ever."""
    storage = Storage.from_uri(str(tmp_path))
    cut = make_run(0)
    first = TrialRecorder(storage, 0, 0, keep_best=1, checkpoint_seconds=3600.0)  # no persist before the end
    record(first, cut, 0.9)
    record(first, cut, 0.5)
    first.begin_finish(cut)  # weight files written; the kill comes before end_finish writes the index
    orphans = set(storage.list_files("weights/trial-000000", suffix=".safetensors"))
    assert orphans and not storage.exists(schema.checkpoint_index_path(0))
    storage.write_bytes("weights/trial-000000/notes.safetensors", b"the user's")  # not caviar's naming: stays

    run = make_run(1)
    recorder = TrialRecorder(storage, 0, 1, keep_best=1, checkpoint_seconds=3600.0)
    recorder.adopt(run.epoch)
    record(recorder, run, 0.8)
    index = recorder.finish(run)
    on_disk = set(storage.list_files("weights/trial-000000", suffix=".safetensors"))
    assert on_disk == {row["path"] for row in index} | {"weights/trial-000000/notes.safetensors"}


def record_nondeterministic(recorder: TrialRecorder, run: TrialRun, score: float) -> None:
    """An epoch whose weights differ from run to run, as a GPU's nondeterministic kernels or an unseeded augmentation
    make them: a re-run epoch is another model than the lost attempt's."""
    row = run.train_epoch()
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    recorder.record(run, {**row, "score": score})


@pytest.mark.parametrize("resume_state", ["older than the index", "none"])
def test_an_epoch_a_resumed_attempt_trains_again_is_indexed_with_its_own_weights(tmp_path, resume_state):
    """The lost attempt's index names epoch 2 (written just before its kill), its resume state is epoch 1's (the kill
    came before the state's write) or missing: the new attempt trains epoch 2 again. Before, the index kept the lost
    attempt's epoch-2 file and score under the new attempt's predictions and test numbers, so load_ensemble loaded
    another model than the one the ensembles table scored."""
    storage = Storage.from_uri(str(tmp_path))
    lost_run = make_run(0)
    lost = TrialRecorder(storage, 0, 0, keep_best=1, checkpoint_seconds=0.0)
    record_nondeterministic(lost, lost_run, 0.5)  # epoch 1
    state_after_epoch_1 = storage.read_bytes("weights/trial-000000/resume.pt")
    record_nondeterministic(lost, lost_run, 0.9)  # epoch 2: the best; index written, then the kill
    if resume_state == "none":
        storage.delete("weights/trial-000000/resume.pt")
    else:
        storage.write_bytes("weights/trial-000000/resume.pt", state_after_epoch_1)

    run = make_run(1)
    state = load_resume_state(storage, 0)
    if state is not None:
        run.load_resume_state(state)
    recorder = TrialRecorder(storage, 0, 1, keep_best=1, checkpoint_seconds=3600.0)  # its end is its first persist
    recorder.adopt(run.epoch)
    while run.epoch < 2:
        record_nondeterministic(recorder, run, 0.7)
    trained = {kind: run.weights_state(kind) for kind in ("raw", "ema")}
    index = recorder.finish(run)

    epoch_2 = {r["weights"]: r for r in index if r["epoch"] == 2}
    assert {r["attempt"] for r in epoch_2.values()} == {1}
    assert epoch_2["raw"]["score"] == 0.7
    for kind, row in epoch_2.items():
        stored = load_safetensors(storage.read_bytes(row["path"]), row["path"])
        assert all(torch.equal(stored[k], trained[kind][k]) for k in trained[kind]), kind
    on_disk = set(storage.list_files("weights/trial-000000", suffix=".safetensors"))
    assert on_disk == {row["path"] for row in index}  # the lost attempt's epoch-2 files are gone


def test_the_readmes_latest_attempt_filter_keeps_one_row_per_epoch_of_a_retrained_trial(tmp_path):
    """An epoch run again by a later attempt has a row per attempt in the folder: DuckDB and Polars users averaging
    it counted it twice; the README's filters (run here as printed) keep the row `load()` keeps."""
    import os
    import re

    import duckdb
    import polars as pl

    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    [duckdb_filter] = re.findall(r"`(qualify row_number\(\) over \(partition by trial_id,\s+epoch order by attempt "
                                 r"desc\) = 1)`", readme)
    assert '`.sort("attempt").unique(["trial_id", "epoch"], keep="last")`' in readme
    storage = Storage.from_uri(str(tmp_path))
    cut = make_run(0)
    first = TrialRecorder(storage, 0, 0, keep_best=1, checkpoint_seconds=3600.0)
    record(first, cut, 0.9)
    record(first, cut, 0.5)
    first.begin_finish(cut)  # its end cut short: the trial is trained again from the start
    run = make_run(1)
    again = TrialRecorder(storage, 0, 1, keep_best=1, checkpoint_seconds=3600.0)
    again.adopt(run.epoch)
    record(again, run, 0.8)
    record(again, run, 0.7)
    again.finish(run)
    folder = f"read_parquet('{tmp_path}/metrics/*.parquet')"
    assert duckdb.sql(f"select count(*) from {folder}").fetchall() == [(4,)]  # both attempts' rows are kept
    latest = duckdb.sql(f"select epoch, attempt, score from {folder} {' '.join(duckdb_filter.split())} order by epoch")
    assert latest.fetchall() == [(1, 1, 0.8), (2, 1, 0.7)]
    frame = pl.read_parquet(str(tmp_path / "metrics")).sort("attempt").unique(["trial_id", "epoch"], keep="last")
    assert sorted(frame.select("epoch", "attempt").rows()) == [(1, 1), (2, 1)]
    schema_row = schema.effective_metrics(schema.read_dir(storage, "metrics", schema.METRICS))
    assert schema_row.select(["epoch", "attempt"]).to_pylist() == [{"epoch": 1, "attempt": 1},
                                                                    {"epoch": 2, "attempt": 1}]


SCRIPTED_LOSSES_TASK = '''
import numpy as np
import torch
from torch import nn

space = {"lr": 0.01, "batch_size": 32}
LOSSES = [2.0, 0.4, 0.5, 0.9, 4.0, 0.8]  # epoch 5's spike: 10x epoch 2's loss, 2x epoch 1's


def load_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=120)
    x = (np.eye(3, 4)[y] * 3 + rng.normal(size=(120, 4))).astype(np.float32)
    return (x[:60], y[:60]), (x[60:90], y[60:90]), (x[90:], y[90:])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))  # saved with the weights

    def forward(self, x):
        return self.body(x)


def build_model(config):
    return Net()


def train_epoch(model, optimizer, batches, config):
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.epochs_seen += 1
    return {"train_loss": LOSSES[int(model.epochs_seen) - 1]}
'''


def test_a_resumed_attempt_judges_divergence_and_early_stopping_on_the_whole_curve(tmp_path):
    # A trial whose worker was lost after epoch 3 went on from its resume state; the divergence rule then took
    # epoch 4's loss (0.9) as the first, so epoch 5's 4.0 ended it as diverged, while the uninterrupted trial
    # (first loss 2.0) and the master's pruner go on. Early stopping judged the resumed epochs alone the same way.
    from orchestrator.decide.backend import Assignment
    from worker.train.session import WorkerSession

    task = tmp_path / "scripted.py"
    task.write_text(SCRIPTED_LOSSES_TASK)
    options = {"device": "cpu", "checkpoint_seconds": 0.0}
    straight = WorkerSession(str(task), str(tmp_path), "straight", options).start(
        Assignment(0, 1, {"lr": 0.01, "batch_size": 32}, 5, 6, 6))
    assert (straight.status, straight.reason) == ("completed", "max_epochs"), straight.error
    lost = WorkerSession(str(task), str(tmp_path), "s", options).start(
        Assignment(0, 1, {"lr": 0.01, "batch_size": 32}, 5, 6, 3))
    assert not lost.ended and [r["epoch"] for r in lost.rows] == [1, 2, 3]
    state = load_resume_state(Storage.from_uri(str(tmp_path)).child("s"), 0)  # early stopping's scores go along too
    assert state["curve_score"] == [r["score"] for r in lost.rows] and state["curve_train_loss"] == [2.0, 0.4, 0.5]
    resumed = WorkerSession(str(task), str(tmp_path), "s", options).start(
        Assignment(0, 1, {"lr": 0.01, "batch_size": 32}, 5, 6, 6, attempt=1, resume=True))
    assert [r["epoch"] for r in resumed.rows] == [4, 5, 6]
    assert (resumed.status, resumed.reason) == ("completed", "max_epochs"), resumed.error
