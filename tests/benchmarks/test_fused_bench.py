"""The fused-array benchmark runs in its tiny mode and writes its table (timings are never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # own Ray or processes end to end: the second CI tier (.ci/test-slow)

COLUMNS = ["case", "runner", "engine", "k", "epochs", "threads", "repeat", "wall_s", "cpu_s", "trials_per_hour",
           "speedup", "cpu_speedup", "same_to_1e-4", "median_rel_diff"]


def test_tiny_fused_benchmark_writes_markdown_and_parquet(tmp_path):
    script = os.path.join(ROOT, "benchmarks", "fused_digits.py")
    done = subprocess.run([sys.executable, script, "--tiny", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pq.read_table(tmp_path / "fused_digits-tiny.parquet")
    assert table.column_names == COLUMNS
    runners = table.column("runner").to_pylist()
    assert "one after another" in runners and any(r.startswith("fused array") for r in runners)
    fused = [r for r in table.to_pylist() if r["runner"].startswith("fused")]
    assert all(r["same_to_1e-4"] == "4/4" for r in fused)  # same trials, same numbers (tiny mode: stable lrs)
    text = (tmp_path / "fused_digits-tiny.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in text and "--tiny" in text
