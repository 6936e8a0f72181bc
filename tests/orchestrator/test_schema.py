"""The Parquet contract: round trips, atomic writes, effective metric rows, other readers."""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa
import pyarrow.parquet
import pytest

from orchestrator.decide.sweeplog import possible_values
from orchestrator.errors import StorageError
from orchestrator.search.sampler import sample_configs
from orchestrator.search.space import SearchSpace, choice, one_minus_loguniform
from orchestrator.store import schema
from orchestrator.store.storage import Storage, check_name


def metric_row(trial, epoch, attempt=0, loss=1.0):
    return {"trial_id": trial, "attempt": attempt, "epoch": epoch, "stage": 0, "train_loss": loss,
            "val_loss": loss, "val_accuracy": 0.5, "score": 0.5, "time": schema.now_ms()}


def test_metrics_round_trip_keeps_schema(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    rows = [metric_row(1, e) for e in (1, 2, 3)]
    storage.write_table(schema.metrics_path(1), schema.to_table(rows, schema.METRICS))
    table = schema.read_dir(storage, "metrics", schema.METRICS)
    assert table.schema == schema.METRICS
    assert table.column("epoch").to_pylist() == [1, 2, 3]
    assert table.column("ema_val_loss").null_count == 3  # absent fields are null, not missing columns


def test_trials_config_columns_are_typed():
    config_type = schema.config_type({"lr": [0.1], "layers": [1, 2], "act": ["relu"], "bn": [True, False],
                                      "mixed": [1, 0.5]})
    types = {f.name: f.type for f in config_type}
    assert types == {"lr": pa.float64(), "layers": pa.int64(), "act": pa.string(), "bn": pa.bool_(),
                     "mixed": pa.float64()}


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    storage.write_bytes("a/b.bin", b"first")
    storage.write_bytes("a/b.bin", b"second")
    assert storage.read_bytes("a/b.bin") == b"second"
    assert os.listdir(tmp_path / "a") == ["b.bin"]


def test_failed_write_keeps_the_old_file(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    storage.write_table("t/x.parquet", schema.to_table([metric_row(1, 1)], schema.METRICS))

    class ExplodingTable:
        """Serialisation fails half way: the visible file must stay the old one."""

    with pytest.raises(Exception):  # noqa: B017 (whatever pyarrow raises, the old file must survive)
        storage.write_table("t/x.parquet", ExplodingTable())  # type: ignore[arg-type]
    assert storage.read_table("t/x.parquet").num_rows == 1
    assert [f for f in os.listdir(tmp_path / "t")] == ["x.parquet"]


def test_effective_metrics_keep_the_latest_attempt_per_epoch():
    rows = [metric_row(1, 1, 0, 1.0), metric_row(1, 2, 0, 0.9), metric_row(1, 2, 1, 0.8), metric_row(1, 3, 1, 0.7),
            metric_row(2, 1, 0, 2.0), metric_row(2, 1, 0, 2.0)]  # a part and its compaction seen together
    table = schema.effective_metrics(schema.to_table(rows, schema.METRICS))
    got = sorted(zip(table["trial_id"].to_pylist(), table["epoch"].to_pylist(), table["attempt"].to_pylist()))
    assert got == [(1, 1, 0), (1, 2, 1), (1, 3, 1), (2, 1, 0)]


def test_duckdb_reads_the_tables(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    for trial in range(3):
        storage.write_table(schema.metrics_path(trial), schema.to_table([metric_row(trial, 1)], schema.METRICS))
    count = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/metrics/*.parquet')").fetchall()[0][0]
    assert count == 3


def test_corrupt_parquet_is_named(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    storage.write_bytes("metrics/trial-000001.parquet", b"PAR1 this is not parquet")
    with pytest.raises(StorageError, match="trial-000001.parquet: not a readable Parquet file"):
        schema.read_dir(storage, "metrics", schema.METRICS)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 200, "a..b"])
def test_names_cannot_escape_the_storage_root(name):
    with pytest.raises(StorageError, match="sweep name"):
        check_name("sweep", name)


def test_read_dir_scans_every_file_in_name_order_and_skips_temp_files(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    for trial in (2, 0, 1):
        rows = [metric_row(trial, e) for e in (1, 2)]
        storage.write_table(schema.metrics_path(trial), schema.to_table(rows, schema.METRICS))
    (tmp_path / "metrics" / ".trial-000003.parquet.tmp-1234").write_bytes(b"half a file")
    table = schema.read_dir(storage, "metrics", schema.METRICS)
    assert list(zip(table["trial_id"].to_pylist(), table["epoch"].to_pylist())) == [
        (0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert schema.effective_metrics(table).num_rows == 6


def test_read_dir_without_schema_unifies_the_files(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    storage.write_table("x/a.parquet", pa.table({"k": [1], "a": ["one"]}))
    storage.write_table("x/b.parquet", pa.table({"k": [2], "b": [2.5]}))
    table = schema.read_dir(storage, "x")
    assert sorted(table.column_names) == ["a", "b", "k"]
    assert table.sort_by("k").to_pylist() == [{"k": 1, "a": "one", "b": None}, {"k": 2, "a": None, "b": 2.5}]


def test_inactive_conditional_parameters_are_null_in_the_typed_config(tmp_path):
    space = SearchSpace({"optimizer": choice(["sgd", "momentum"]),
                         "momentum": one_minus_loguniform(0.8, 0.999, when={"optimizer": ["momentum"]})})
    trials = schema.trials_schema(schema.config_type(possible_values(space)))
    configs = sample_configs(space, 12, seed=0)
    table = schema.to_table([{"trial_id": i, "stage": 0, "config": c} for i, c in enumerate(configs)], trials)
    assert table.schema.field("config").type.field("momentum").type == pa.float64()
    pq_path = str(tmp_path / "t.parquet")
    pa.parquet.write_table(table, pq_path)
    back = pa.parquet.read_table(pq_path).column("config").to_pylist()
    assert back == configs and {c["optimizer"] for c in back if c["momentum"] is None} == {"sgd"}


def test_stored_spaces_are_strict_json_that_polars_reads_and_a_resume_reads_back(tmp_path):
    """A randint's open upper limit was stored as Infinity, which strict JSON readers refuse: Polars'
    json_path_match read every stored space (stages, sweep row, stage_started events) as null, so
    ``$.width.high`` came back null instead of 64. An open side is now null, and parses back as unbounded."""
    import json
    import math

    polars = pytest.importorskip("polars")
    from orchestrator.app.resume import read_record, rebuild_controller
    from orchestrator.search.space import parse_param
    from tests.orchestrator.test_resume import settings_for, uninterrupted

    _, storage = uninterrupted(tmp_path, settings_for())
    stages = polars.read_parquet(os.path.join(storage.root, "stages") + "/")
    assert stages.select(polars.col("space").str.json_path_match("$.width.high")).to_series().to_list()[0] == "64"
    events = polars.read_parquet(os.path.join(storage.root, "events") + "/")
    events = events.filter(polars.col("kind") == "stage_started")
    assert events.select(polars.col("detail").str.json_path_match("$.trials")).to_series().null_count() == 0
    stored = json.loads(storage.read_table(schema.stage_path(1))["space"][0].as_py())
    assert stored["width"]["limits"] == [1.0, None]
    assert parse_param("width", stored["width"]).limits == (1.0, math.inf)
    assert parse_param("width", {**stored["width"], "limits": [1.0, math.inf]}).limits == (1.0, math.inf)  # before
    assert rebuild_controller(read_record(storage)).controller.finished  # a resume reads it back


def test_a_diverged_epochs_nan_score_is_kept_and_the_readmes_filter_ranks_the_finite_ones(tmp_path):
    """DuckDB sorts NaN above every number: the README says so and gives the filter; this runs its filter as printed."""
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    [duckdb_filter] = re.findall(r"`(where not\s+isnan\(score\))`", readme)
    storage = Storage.from_uri(str(tmp_path))
    rows = [metric_row(1, 1), {**metric_row(2, 1, loss=float("nan")), "score": float("nan")}, metric_row(3, 1)]
    rows[2]["score"] = 0.75
    storage.write_table(schema.metrics_path(1), schema.to_table(rows, schema.METRICS))
    files = f"read_parquet('{tmp_path}/metrics/*.parquet')"
    plain = duckdb.sql(f"select trial_id from {files} order by score desc").fetchall()
    assert plain[0] == (2,)  # the diverged epoch first: what the README warns of
    assert duckdb.sql(f"select count(*) from {files} where isnan(score)").fetchall() == [(1,)]  # NaN, not null
    ranked = duckdb.sql(f"select trial_id from {files} {' '.join(duckdb_filter.split())} order by score desc")
    assert ranked.fetchall() == [(3,), (1,)]


def test_a_folder_read_while_a_trial_end_folds_its_parts_reads_the_folded_file(tmp_path):
    """`caviar status` (or `load`) while a trial's end folded its metric parts into one file and deleted them one by
    one: a part listed a moment before was gone when read, and the read failed with '...a0.p0001.parquet: no such
    file'. Here the end's steps (real files) run between the reader's listings and reads, as the other process's do."""
    import pyarrow as pa

    parts = [schema.metrics_part_path(7, 0, part) for part in range(3)]

    def fold_and_delete_the_first_part(storage):
        folded = pa.concat_tables([storage.read_table(p) for p in parts])
        storage.write_table(schema.metrics_path(7), folded)
        storage.delete(parts[0])

    def delete_the_other_parts(storage):
        for part in parts[1:]:
            storage.delete(part)

    class EndsMeanwhile(Storage):
        steps = [fold_and_delete_the_first_part, delete_the_other_parts]

        def list_versions(self, rel_dir, suffix=".parquet"):
            listed = super().list_versions(rel_dir, suffix)
            if self.steps:
                self.steps.pop(0)(self)  # the trial's end goes on after this listing, before its files are read
            return listed

    storage = EndsMeanwhile.from_uri(str(tmp_path))
    storage.write_table(schema.metrics_path(3), schema.to_table([metric_row(3, 1)], schema.METRICS))
    for epoch, part in enumerate(parts, start=1):
        storage.write_table(part, schema.to_table([metric_row(7, epoch)], schema.METRICS))
    table = schema.effective_metrics(schema.read_dir(storage, "metrics", schema.METRICS))
    assert [(r["trial_id"], r["epoch"]) for r in table.to_pylist()] == [(3, 1), (7, 1), (7, 2), (7, 3)]


def test_a_folder_read_while_many_trials_end_one_after_another_reads_every_row(tmp_path):
    """`caviar status` or `load()` on a sweep of many short trials, their ends folding metric parts every moment:
    each of the read's five whole new scans met the next trial's fold, and the read failed with '...a0.p0000.parquet:
    no such file' (4 of 36 loads during a real 300-trial sweep). Here a trial ends after every listing, 12 in a row,
    more than any fixed number of whole re-reads outlasts."""
    import pyarrow as pa

    trials = list(range(100, 112))

    def parts_of(trial):
        return [schema.metrics_part_path(trial, 0, part) for part in range(2)]

    def trial_end(trial):
        def step(storage):
            folded = pa.concat_tables([storage.read_table(p) for p in parts_of(trial)])
            storage.write_table(schema.metrics_path(trial), folded)
            for part in parts_of(trial):
                storage.delete(part)
        return step

    class TrialsEndMeanwhile(Storage):
        steps = [trial_end(trial) for trial in trials]

        def list_versions(self, rel_dir, suffix=".parquet"):
            listed = super().list_versions(rel_dir, suffix)
            if self.steps:
                self.steps.pop(0)(self)  # another trial's end runs after this listing, before the read's reads
            return listed

    storage = TrialsEndMeanwhile.from_uri(str(tmp_path))
    storage.write_table(schema.metrics_path(3), schema.to_table([metric_row(3, 1)], schema.METRICS))
    for trial in trials:
        for epoch, part in enumerate(parts_of(trial), start=1):
            storage.write_table(part, schema.to_table([metric_row(trial, epoch)], schema.METRICS))
    table = schema.effective_metrics(schema.read_dir(storage, "metrics", schema.METRICS))
    assert [(r["trial_id"], r["epoch"]) for r in table.to_pylist()] == (
        [(3, 1)] + [(trial, epoch) for trial in trials for epoch in (1, 2)])
    assert not TrialsEndMeanwhile.steps  # every end ran during the read
