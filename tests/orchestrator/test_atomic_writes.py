"""The Parquet writer is atomic: a write cut off at any point leaves the old table or the new one, never a mix.

Two kinds of interruption: a file system that dies after a chosen number of bytes (a crash
at every point of the write, chosen by Hypothesis: nothing after it runs, so its temp file stays),
and a real writer process SIGKILLed at random moments while it rewrites one table over and over.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.store import schema
from orchestrator.store.storage import Storage, parquet_bytes
from tests.conftest import ROOT

TABLE_PATH = "trials/trials.parquet"


class Crash(BaseException):
    """The process died: not an error anything in caviar may catch and handle."""


class DyingFileSystem(pafs.LocalFileSystem):
    """A local file system whose process dies once ``budget`` bytes have been written; after that, every call fails."""

    def __init__(self, budget: int, die_before_rename: bool = False):
        super().__init__()
        self.budget, self.die_before_rename, self.dead = budget, die_before_rename, False

    def _alive(self) -> None:
        if self.dead:
            raise Crash

    def open_output_stream(self, path, *args, **kwargs):
        self._alive()
        return _DyingStream(self, super().open_output_stream(path, *args, **kwargs))

    def move(self, src, dest):
        self._alive()
        if self.die_before_rename:
            self.dead = True
            raise Crash
        return super().move(src, dest)

    def delete_file(self, path):
        self._alive()  # a dead process cleans nothing up
        return super().delete_file(path)

    def create_dir(self, path, *args, **kwargs):
        self._alive()
        return super().create_dir(path, *args, **kwargs)


class _DyingStream:
    def __init__(self, fs: DyingFileSystem, stream):
        self.fs, self.stream = fs, stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()  # what reached the file before the crash stays there
        return False

    def write(self, data: bytes) -> None:
        if len(data) > self.fs.budget:
            self.stream.write(data[: self.fs.budget])
            self.fs.dead = True
            raise Crash
        self.fs.budget -= len(data)
        self.stream.write(data)


def table_of(rows: list[tuple[int, float, str]]) -> pa.Table:
    return pa.table(
        {
            "trial_id": pa.array([r[0] for r in rows], pa.int32()),
            "score": pa.array([r[1] for r in rows], pa.float64()),
            "status": pa.array([r[2] for r in rows], pa.string()),
        }
    )


row_lists = st.lists(st.tuples(st.integers(0, 10_000), st.floats(allow_nan=False), st.text(max_size=20)), max_size=40)


@settings(max_examples=80, deadline=None)
@given(old=row_lists, new=row_lists, cut=st.floats(0.0, 1.0), before_rename=st.booleans())
def test_a_write_cut_off_anywhere_leaves_the_old_table_whole(tmp_path_factory, old, new, cut, before_rename):
    root = str(tmp_path_factory.mktemp("atomic"))
    Storage(pafs.LocalFileSystem(), root, root).write_table(TABLE_PATH, table_of(old))
    new_bytes = len(serialized(table_of(new)))
    dying = Storage(
        DyingFileSystem(new_bytes if before_rename else int(cut * (new_bytes - 1)), before_rename), root, root
    )
    with pytest.raises(Crash):
        dying.write_table(TABLE_PATH, table_of(new))

    reader = Storage.from_uri(root)
    assert reader.read_table(TABLE_PATH).equals(table_of(old))
    assert schema.read_dir(reader, "trials").equals(table_of(old))  # the dead write's temp file is never read
    assert reader.list_files("trials") == [TABLE_PATH]
    assert os.listdir(os.path.join(root, "trials")) == ["trials.parquet"]  # the table folder holds whole files only
    leftovers = [n for n in os.listdir(root) if n != "trials"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".trials.parquet.tmp-")  # the crash left it; nothing read it

    reader.write_table(TABLE_PATH, table_of(new))  # and the next write, after a restart, replaces the table whole
    assert schema.read_dir(reader, "trials").equals(table_of(new))


def serialized(table: pa.Table) -> bytes:
    """The bytes write_table puts on disk for ``table``."""
    return parquet_bytes(table)


WRITER = """
import sys
import pyarrow as pa
from orchestrator.store.storage import Storage

root, rows = sys.argv[1], int(sys.argv[2])
tables = [pa.table({"trial_id": pa.array(range(rows), pa.int32()), "score": pa.array([float(v)] * rows)})
          for v in (1, 2)]
storage = Storage.from_uri(root)
storage.write_table("trials/trials.parquet", tables[0])
print("ready", flush=True)
i = 0
while True:
    i += 1
    storage.write_table("trials/trials.parquet", tables[i % 2])
"""


def test_a_writer_killed_at_random_moments_never_leaves_a_partial_table(tmp_path):
    """A real process rewriting a 2-MB table is SIGKILLed at random moments; readers only ever see whole tables."""
    rows = 200_000
    whole = {
        float(v): pa.table({"trial_id": pa.array(range(rows), pa.int32()), "score": pa.array([float(v)] * rows)})
        for v in (1, 2)
    }
    rng = random.Random(7)
    root = str(tmp_path)
    reader = Storage.from_uri(root)
    env = {**os.environ, "PYTHONPATH": ROOT}
    reads = 0
    for _ in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, root, str(rows)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        while time.monotonic() < deadline:  # read while it writes: every read is one whole table
            table = reader.read_table(TABLE_PATH)
            assert table.equals(whole[table["score"][0].as_py()])
            reads += 1
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        writer.stdout.close()
        table = schema.read_dir(reader, "trials")  # temp files a kill left behind are skipped
        assert table.equals(whole[table["score"][0].as_py()])
    assert reads >= 4


def test_a_write_killed_before_its_rename_leaves_a_table_folder_every_reader_takes_as_it_is(tmp_path):
    """Polars reads a folder's hidden files too; before, the dead write's temp file sat in the table folder and
    pl.read_parquet("metrics/") failed ("directory contained paths with different file extensions"), as did
    DuckDB's read_parquet('metrics/*') ("No magic bytes found")."""
    import pyarrow.dataset as pads

    duckdb = pytest.importorskip("duckdb")
    polars = pytest.importorskip("polars")
    root = str(tmp_path / "sweep")
    rows = [{"trial_id": 0, "attempt": 0, "epoch": 1, "stage": 1, "train_loss": 0.5}]
    Storage.from_uri(root).write_table(schema.metrics_path(0), schema.to_table(rows, schema.METRICS))
    dying = Storage(DyingFileSystem(10**9, die_before_rename=True), root, root)
    with pytest.raises(Crash):
        dying.write_table(schema.metrics_path(1), schema.to_table(rows, schema.METRICS))
    folder = os.path.join(root, "metrics")
    assert polars.read_parquet(folder + "/").height == 1
    assert duckdb.sql(f"select count(*) from read_parquet('{folder}/*')").fetchall() == [(1,)]
    assert pads.dataset(folder).to_table().num_rows == 1
