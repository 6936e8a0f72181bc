"""Every table folder of a sweep is a table: pandas, Polars, DuckDB and pyarrow each read it as a folder.

Weights (trial checkpoints, the soup) live under ``weights/``, never inside a table folder. Tried on a
classifier with every ensemble (the soup included) and on a regression task (no predictions, no ensembles).
"""

from __future__ import annotations

import os

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from orchestrator import load_ensemble
from orchestrator.app.api import load, run_sweep
from tests.conftest import ROOT, TINY_TASK

REGRESSION_TASK = os.path.join(ROOT, "tests", "tasks", "linear_regression_task.py")
TABLES = ("sweep", "stages", "trials", "metrics", "checkpoints", "events", "diagnostics", "predictions", "dataset",
          "ensembles")


@pytest.fixture(scope="module", params=["classifier", "regression"])
def sweep_dir(request, ray_session, tmp_path_factory):
    task = TINY_TASK if request.param == "classifier" else REGRESSION_TASK
    result = run_sweep(task, plan="4x1,3x2", slots=2, storage=str(tmp_path_factory.mktemp("runs")),
                       name=request.param, seed=2, ensemble=request.param == "classifier")
    return result.path, request.param


def table_folders(path: str) -> list[str]:
    # weights/ holds safetensors; task/ the task's source copy and its manifest (orchestrator/spec/task_source.py)
    return [name for name in sorted(os.listdir(path))
            if os.path.isdir(os.path.join(path, name)) and name not in ("weights", "task")]


def test_every_folder_but_weights_is_a_known_table_of_parquet_files_only(sweep_dir):
    path, kind = sweep_dir
    folders = table_folders(path)
    assert set(folders) <= set(TABLES), folders
    expected = {"sweep", "stages", "trials", "metrics", "checkpoints", "events"}
    if kind == "classifier":
        expected |= {"predictions", "dataset", "ensembles"}
    assert expected <= set(folders)
    for folder in folders:
        for root, _dirs, files in os.walk(os.path.join(path, folder)):
            assert all(f.endswith(".parquet") for f in files), (root, files)  # nothing else a reader would trip on


def test_each_reader_reads_each_folder_as_is(sweep_dir):
    path, _ = sweep_dir
    for folder in table_folders(path):
        where = os.path.join(path, folder)
        rows = pq.read_table(where).num_rows
        assert rows > 0, folder
        assert len(pd.read_parquet(where)) == rows, folder
        assert pl.read_parquet(where).height == rows, folder
        assert duckdb.sql(f"select count(*) from read_parquet('{where}/*.parquet')").fetchall()[0][0] == rows, folder


def test_the_tables_agree_with_the_api_and_the_soup_still_loads(sweep_dir):
    path, kind = sweep_dir
    tables = load(path)
    assert len(tables.to_pandas("metrics")) == tables.metrics.num_rows  # the README's line
    assert sorted(pd.read_parquet(os.path.join(path, "stages"))["stage"]) == [1, 2]  # one numbering
    if kind != "classifier":
        return
    ensembles = pd.read_parquet(os.path.join(path, "ensembles"))
    soup = ensembles[ensembles["method"] == "soup"]
    if len(soup):  # a soup that accepted a second ingredient wrote its weights, outside the table folder
        assert soup.iloc[0]["weights_path"].startswith("weights/ensembles/")
        assert os.path.exists(os.path.join(path, soup.iloc[0]["weights_path"]))
        model = load_ensemble(path, name="soup", task=TINY_TASK)
        assert model.record.method == "soup"
