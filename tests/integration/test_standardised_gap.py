"""A standardised regression sweep (three targets of scales 0.01, 1 and 100; train and val from one draw): its
metrics table holds the training loss in val_loss's units, and the report's gap compares those, never the
standardised train_loss. Child processes, no Ray."""

from __future__ import annotations

import os
import shutil

import pytest

from orchestrator.app.api import load, run_sweep
from orchestrator.app.report import build_report
from orchestrator.app.report_data import read_sweep
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import ROOT

THREE_TARGETS = os.path.join(ROOT, "tests", "tasks", "multi_target_regression_task.py")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return run_sweep(THREE_TARGETS, trials=2, epochs=8, stages=1, pruner="none", seed=5, slots=2, ensemble=False,
                     storage=str(tmp_path_factory.mktemp("runs")), name="units", executor="processes")


def test_the_gap_compares_losses_in_one_unit(sweep):
    data = read_sweep(sweep.path)
    assert data.targets_standardised and not data.accuracy
    last = [rows[-1] for rows in data.curves.values()]
    assert len(last) == 2 and all(r["epoch"] == 8 for r in last)
    for row in last:
        assert row["val_loss"] / row["train_loss"] > 100  # standardised against original units: not a gap
        assert 0.5 < row["val_loss"] / data.train_loss_as_val(row) < 2  # one distribution, one unit: a small gap
    report = build_report(sweep.path, workers=1)
    gap = next(f for f in report.figures if f.id == "fig-gap")
    assert "original units" in gap.caption


def without_the_new_column(path: str, into: str, *, standardised: bool) -> str:
    """The sweep as one written before ``train_loss_original``: its metrics files lack the column; ``standardised``
    False also drops the target statistics, as a sweep without standardize_targets has none."""
    shutil.copytree(path, into)
    storage = Storage.from_uri(into)
    for rel in storage.list_files("metrics"):
        table = storage.read_table(rel)
        storage.write_table(rel, table.drop_columns(["train_loss_original"]))
    if not standardised:
        row = storage.read_table(schema.DATASET_PATH).to_pylist()[0]
        storage.write_table(schema.DATASET_PATH, schema.to_table([{**row, "target_mean": None, "target_std": None}],
                                                                 schema.DATASET))
    return into


def test_an_older_sweep_reads_and_draws_no_gap_it_cannot_measure(sweep, tmp_path):
    older = without_the_new_column(sweep.path, str(tmp_path / "older"), standardised=True)
    metrics = load(older).metrics
    assert metrics.num_rows == 16 and metrics["train_loss_original"].null_count == 16  # read as nulls
    report = build_report(older, workers=1)
    assert "fig-gap" not in {f.id for f in report.figures}
    assert report.skipped["fig-gap"].startswith("no training loss in the targets' original units recorded")
    # Without standardised targets train_loss already is in val_loss's units: the gap is drawn from it.
    plain = without_the_new_column(sweep.path, str(tmp_path / "plain"), standardised=False)
    assert "fig-gap" in {f.id for f in build_report(plain, workers=1).figures}
    data = read_sweep(plain)
    row = data.curves[0][0]
    assert data.train_loss_as_val(row) == row["train_loss"]
