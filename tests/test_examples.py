"""Every bundled example sweeps: two one-epoch trials each, in child processes, so none rots unseen."""

from __future__ import annotations

import glob
import os

import pytest

from orchestrator.app.api import load, run_sweep
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(EXAMPLES, "*.py"))), ids=os.path.basename)
def test_the_example_sweeps_and_its_answer_loads(path, tmp_path):
    result = run_sweep(path, trials=2, epochs=1, stages=1, slots=2, storage=str(tmp_path), name="example",
                       executor="processes")
    trials = load(result.path).trials.to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 2, [t["error"] for t in trials]
    assert result.best_score is not None and result.ensemble is not None
