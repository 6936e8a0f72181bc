"""The staged-versus-random benchmark runs in its tiny mode and writes its table (timings are never asserted).

A subprocess, because the script starts its own Ray (it must not share the session instance).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # own Ray or processes end to end: the second CI tier (.ci/test-slow)


@pytest.mark.timeout(300)
def test_tiny_staged_vs_random_writes_markdown_and_parquet(tmp_path):
    sys.path.insert(0, ROOT)  # benchmarks/ is a folder of scripts, not an installed package
    from benchmarks.staged_vs_random import COLUMNS

    script = os.path.join(ROOT, "benchmarks", "staged_vs_random.py")
    done = subprocess.run(
        [sys.executable, script, "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    table = pq.read_table(tmp_path / "staged_vs_random-tiny.parquet")
    assert table.column_names == COLUMNS
    assert {b"machine", b"versions", b"date", b"command"} <= set(table.schema.metadata)
    rows = table.to_pylist()
    per_seed = {r["arm"]: r for r in rows if r["seed"] == "0"}
    assert set(per_seed) == {"random", "staged_asha"}
    assert per_seed["random"]["plan"] == "6x2" and per_seed["staged_asha"]["plan"] == "4x1,4x2"
    budget = 6 * 2
    assert per_seed["random"]["epochs_trained"] == budget and per_seed["random"]["epochs_ratio"] == 1.0
    assert 0 < per_seed["staged_asha"]["epochs_trained"] <= budget  # the same budget, never more
    for row in rows:
        assert 0.0 <= row["best_val_accuracy"] <= 1.0 and 0.0 <= row["test_accuracy"] <= 1.0
    assert [r["seed"] for r in rows if r["seed"].startswith("mean")] == ["mean of 1", "mean of 1"]
    text = (tmp_path / "staged_vs_random-tiny.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in text and "--tiny" in text
