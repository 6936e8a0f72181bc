"""The whole-sweep fused benchmark runs `caviar run` twice in tiny mode and writes its table (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # own Ray or processes end to end: the second CI tier (.ci/test-slow)


def test_tiny_fused_sweep_benchmark_runs_caviar_fused_and_not(tmp_path):
    sys.path.insert(0, ROOT)
    from benchmarks.fused_sweep import COLUMNS

    script = os.path.join(ROOT, "benchmarks", "fused_sweep.py")
    done = subprocess.run(
        [sys.executable, script, "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(tmp_path / "fused_sweep-tiny.parquet")
    assert table.column_names == COLUMNS
    rows = {r["fuse"]: r for r in table.to_pylist()}
    assert set(rows) == {"off", "on"}
    assert rows["off"]["k_used"] == 1 and rows["on"]["k_used"] >= 2  # the fused run really fused
    assert all(r["trials"] == 8 and r["failed"] == 0 and r["best_val_accuracy"] > 0.5 for r in rows.values())
    assert "--fuse on" in rows["on"]["command"] and {b"machine", b"date", b"command"} <= set(table.schema.metadata)
