"""How tables are encoded: dictionaries for text only, statistics for flat columns only, zstd once large enough."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.store.storage import Storage


def test_text_columns_get_dictionaries_flat_columns_statistics_and_values_round_trip(tmp_path):
    table = pa.table({
        "trial_id": pa.array([1, 1, 2], pa.int32()),
        "split": pa.array(["val", "test", "val"]),
        "loss": pa.array([0.5, 0.25, 0.125]),
        "probs": pa.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]], pa.list_(pa.float32())),
        "metrics": pa.array([[("f1", 0.5)], [], [("f1", 1.0)]], pa.map_(pa.string(), pa.float64())),
    })
    storage = Storage.from_uri(str(tmp_path))
    storage.write_table("t.parquet", table)
    assert storage.read_table("t.parquet").equals(table)
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    dictionary = {path for path, c in columns.items() if c.has_dictionary_page}
    assert dictionary == {"split"}
    assert columns["trial_id"].statistics is not None and columns["trial_id"].statistics.min == 1
    assert columns["loss"].statistics is not None
    assert columns["probs.list.element"].statistics is None


def test_small_tables_are_stored_uncompressed_large_ones_zstd_and_both_round_trip(tmp_path):
    from orchestrator.store.storage import COMPRESS_FROM_BYTES

    storage = Storage.from_uri(str(tmp_path))
    small = pa.table({"epoch": pa.array(range(4), pa.int32()), "val_loss": pa.array([0.5, 0.4, 0.3, 0.2])})
    rows = COMPRESS_FROM_BYTES // 8 + 1
    large = pa.table({"row": pa.array(range(rows), pa.int64()), "split": pa.array(["val"] * rows)})
    assert small.nbytes < COMPRESS_FROM_BYTES <= large.nbytes
    for name, table, codec in (("small", small, "UNCOMPRESSED"), ("large", large, "ZSTD")):
        storage.write_table(f"{name}.parquet", table)
        assert storage.read_table(f"{name}.parquet").equals(table)
        meta = pq.ParquetFile(tmp_path / f"{name}.parquet").metadata.row_group(0)
        assert {meta.column(i).compression for i in range(meta.num_columns)} == {codec}, name


def test_a_float_column_holding_nan_gets_no_min_max_so_duckdb_sees_its_nan(tmp_path):
    """A trial that diverged after finite epochs: its metrics file mixes numbers and NaN in one column. pyarrow's
    min/max leave NaN out, and DuckDB took them as proof of no NaN: isnan(score) was false on the NaN row, `score >
    0.8` dropped it (DuckDB ranks NaN above every number) and max(score) was 0.75."""
    import duckdb

    table = pa.table({"epoch": pa.array([1, 2, 3], pa.int32()), "score": pa.array([0.5, float("nan"), 0.75]),
                      "val_loss": pa.array([0.7, 0.6, 0.5])})
    storage = Storage.from_uri(str(tmp_path))
    storage.write_table("metrics/trial.parquet", table)
    meta = pq.ParquetFile(tmp_path / "metrics" / "trial.parquet").metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert columns["val_loss"].statistics.has_min_max and columns["epoch"].statistics.has_min_max  # kept elsewhere
    path = f"read_parquet('{tmp_path}/metrics/*.parquet')"
    assert duckdb.sql(f"select epoch from {path} where isnan(score)").fetchall() == [(2,)]
    assert duckdb.sql(f"select epoch from {path} where not isnan(score) order by score desc").fetchall() == [(3,), (1,)]
    assert duckdb.sql(f"select count(*) from {path} where score > 0.8").fetchall() == [(1,)]
