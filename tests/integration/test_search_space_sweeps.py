"""Search spaces unlike the digits example's, swept for real: how stages extend and narrow them."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from orchestrator.app.api import load, run_sweep
from orchestrator.app.cli import app
from tests.conftest import ROOT

TASKS = os.path.join(ROOT, "tests", "tasks")


def test_a_uniform_adam_beta_at_its_edge_is_never_extended_to_1_or_past(tmp_path):
    # beta2 = uniform(0.9, 0.999) with the best trial at 0.9987: stage 2 sampled [0.9, 1.048], and each trial that drew
    # beta2 >= 1 failed with torch's "Invalid beta parameter at index 1: 1.0027"
    result = run_sweep(os.path.join(TASKS, "uniform_beta_task.py"), plan="6x1,6x3", slots=1, seed=312,
                       ensemble=False, storage=str(tmp_path), name="beta")
    tables = load(result.path)
    events = tables.events.to_pylist()
    [edge] = [e for e in events if e["kind"] == "range_extended" and json.loads(e["detail"])["param"] == "beta2"]
    assert "high edge of [0.9, 0.999]" in edge["reason"]
    stage_2 = json.loads(tables.stages.to_pylist()[1]["space"])["beta2"]
    assert 0.999 < stage_2["high"] < 1.0
    betas = [t["config"]["beta2"] for t in tables.trials.to_pylist()]
    assert max(betas) < 1.0
    assert result.counts.get("failed", 0) == 0


def test_a_plateau_factor_at_its_edge_is_never_extended_to_1_or_past(tmp_path):
    # decay_rate = uniform(0.1, 0.9) with the best trial at 0.898: stage 2 sampled [0.1, 1.3], and the trials drawing
    # 1 or more failed with torch's "Factor should be < 1.0"
    result = run_sweep(os.path.join(TASKS, "plateau_factor_task.py"), plan="6x1,6x3", slots=1, seed=312,
                       ensemble=False, storage=str(tmp_path), name="plateau")
    tables = load(result.path)
    stage_2 = json.loads(tables.stages.to_pylist()[1]["space"])["decay_rate"]
    assert 0.9 < stage_2["high"] < 1.0
    assert result.counts.get("failed", 0) == 0


def test_trials_failing_past_an_extended_edge_are_told_why(tmp_path):
    # randint(1, 3) pooling blocks on 8x8 images: stage 1's best sat at 3, stage 2 sampled [1, 5], and its trials
    # drawing 4 or 5 failed with torch's "Output size is too small" and no word tying that to the extended range
    run = CliRunner().invoke(app, ["run", os.path.join(TASKS, "pooling_depth_task.py"), "--plan", "6x1,6x2", "--seed",
                                   "12", "--slots", "1", "--storage", str(tmp_path), "--name", "pool", "--plain",
                                   "--no-report", "--no-ensemble"])
    assert run.exit_code == 0, run.output[-3000:]
    assert "edge: stage 1's best trial 0: blocks = 3 at the high edge of [1, 3]: stage 2 samples [1, 5]" in run.output
    advice = ("  what to do: these trials drew blocks = 4, 5 (declared [1, 3]), past the declared range, which a later "
              "stage extended from an edge: if the model cannot take such values, give limits=(1, 3) to blocks in "
              "the task, or set extend_edges = false")
    assert advice in run.output.splitlines()
    status = CliRunner().invoke(app, ["status", str(tmp_path / "pool")])  # caviar status says it again
    assert advice in status.output.splitlines()
