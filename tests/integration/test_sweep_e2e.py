"""A real sweep of the digits example on a real local Ray, read back with pyarrow and DuckDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import duckdb
import pytest

from orchestrator.app.api import load, run_sweep
from tests.conftest import DIGITS_TASK, ROOT, TINY_TASK


@pytest.fixture(scope="module")
def digits_sweep(ray_session, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs"))
    result = run_sweep(
        DIGITS_TASK, plan="6x1,3x3", slots=2, storage=storage, name="digits", seed=5, pruner="asha", ensemble=False
    )
    return result


def test_sweep_writes_every_table_with_expected_rows(digits_sweep):
    tables = load(digits_sweep.path)
    trials = tables.trials.to_pylist()
    assert len(trials) == 9
    assert {t["stage"] for t in trials} == {1, 2}  # numbered as the CLI and the report say
    assert all(t["status"] in ("completed", "pruned", "failed") for t in trials)
    assert sum(t["status"] == "failed" for t in trials) == 0
    # Every epoch a trial ran is one metrics row; stage 0 runs 1 epoch each.
    epochs_by_trial = {t["trial_id"]: t["epochs_run"] for t in trials}
    metrics = tables.metrics.to_pylist()
    assert len(metrics) == sum(epochs_by_trial.values())
    assert all(epochs_by_trial[t] == 1 for t in range(6))
    # Kept checkpoints: raw and EMA for the best and the last epoch of each trial.
    assert set(tables.checkpoints["trial_id"].to_pylist()) == set(range(9))
    kinds = tables.events["kind"].to_pylist()
    assert kinds.count("trial_started") == 9 and kinds.count("stage_started") == 2
    assert "range_narrowed" in kinds
    # The session's ray.init came first, so the default executor trained on that Ray, and says so.
    [executor] = [e for e in tables.events.to_pylist() if e["kind"] == "executor"]
    assert executor["reason"] == "auto: this process had already joined a Ray"
    assert json.loads(executor["detail"]) == {"executor": "ray"}
    assert digits_sweep.best_score is not None and digits_sweep.best_score > 0.5


def test_config_columns_are_typed_and_seeds_distinct(digits_sweep):
    tables = load(digits_sweep.path)
    config_type = tables.trials.schema.field("config").type
    assert str(config_type.field("lr").type) == "double"
    assert str(config_type.field("layers").type) == "int64"
    assert str(config_type.field("batch_norm").type) == "bool"
    seeds = tables.trials["seed"].to_pylist()
    assert len(set(seeds)) == len(seeds)


def test_duckdb_reads_the_sweep_directory(digits_sweep):
    path = digits_sweep.path
    sql = (
        f"select t.trial_id, count(*) as epochs from read_parquet('{path}/metrics/*.parquet') m "
        f"join read_parquet('{path}/trials/*.parquet') t using (trial_id) group by t.trial_id"
    )
    assert len(duckdb.sql(sql).fetchall()) == 9
    nodes = duckdb.sql(f"select distinct node from read_parquet('{path}/trials/*.parquet')").fetchall()
    assert nodes and nodes[0][0]


def test_same_seed_same_configs(digits_sweep, tmp_path):
    again = run_sweep(DIGITS_TASK, plan="6x1", slots=2, storage=str(tmp_path), name="again", seed=5, ensemble=False)
    first = load(digits_sweep.path).trials.to_pylist()[:6]
    second = load(again.path).trials.to_pylist()
    assert [t["config"] for t in first] == [t["config"] for t in second]


def test_huge_learning_rate_is_stopped_as_diverged_within_one_epoch(ray_session, tmp_path):
    config = tmp_path / "huge.toml"
    config.write_text('[space]\nlr = 1e6\noptimizer = "sgd"\n')
    result = run_sweep(
        TINY_TASK,
        config_file=str(config),
        trials=2,
        epochs=6,
        stages=1,
        slots=2,
        storage=str(tmp_path),
        name="huge",
        ensemble=False,
    )
    tables = load(result.path)
    for trial in tables.trials.to_pylist():
        assert trial["status"] == "pruned" and trial["reason"] == "diverged"
        assert trial["epochs_run"] <= 2
    events = [e for e in tables.events.to_pylist() if e["kind"] == "trial_pruned"]
    assert {e["reason"] for e in events} == {"diverged"}


def test_cli_run_status_and_top(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    cli = [os.path.join(os.path.dirname(sys.executable), "caviar")]  # the installed console script
    run = subprocess.run(
        [
            *cli,
            "run",
            TINY_TASK,
            "--trials",
            "2",
            "--epochs",
            "2",
            "--stages",
            "1",
            "--slots",
            "2",
            "--storage",
            str(tmp_path),
            "--name",
            "cli",
            "--plain",
            "--no-ensemble",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"Results (Parquet): {tmp_path}/cli" in run.stdout
    status = subprocess.run([*cli, "status", f"{tmp_path}/cli"], capture_output=True, text=True, env=env)
    assert status.returncode == 0
    stage_line = next(line for line in status.stdout.splitlines() if "stage 1:" in line)
    assert sum(int(part.split()[0]) for part in stage_line.split(":")[1].split(",")) == 2
    assert load(f"{tmp_path}/cli").metrics.num_rows == sum(
        t["epochs_run"] for t in load(f"{tmp_path}/cli").trials.to_pylist()
    )
    top = subprocess.run([*cli, "top", f"{tmp_path}/cli", "-k", "1"], capture_output=True, text=True, env=env)
    assert top.returncode == 0 and "top 1 trials" in top.stdout
    again = subprocess.run(
        [*cli, "run", TINY_TASK, "--storage", str(tmp_path), "--name", "cli", "--plain"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
