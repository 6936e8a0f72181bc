"""User code that raises: the trial is ``failed`` with its traceback, the sweep goes on, or stops early by name."""

from __future__ import annotations

import pytest

from orchestrator.api import load, run_sweep
from tests.conftest import ROOT

# tiny_task whose model factory raises for some configs (``hidden`` at or above a threshold in the space).
BROKEN_TASK = f"""
import sys
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model as tiny_model, load_data  # noqa: F401
from tiny_task import space as tiny_space

space = {{**tiny_space, "broken_from": 0}}


def build_model(config):
    if config["hidden"] >= config["broken_from"]:
        raise ValueError(f"no layer of width {{config['hidden']}} in this zoo")
    return tiny_model(config)
"""


@pytest.fixture
def broken_task(tmp_path):
    path = tmp_path / "broken_task.py"
    path.write_text(BROKEN_TASK)
    return str(path)


def test_a_raising_model_factory_fails_its_trial_with_the_traceback_and_the_sweep_goes_on(
    ray_session, broken_task, tmp_path
):
    config = tmp_path / "half.toml"
    config.write_text("[space]\nbroken_from = 10\n")  # hidden is 4..16: some trials build, some raise
    result = run_sweep(
        broken_task,
        config_file=str(config),
        trials=6,
        epochs=1,
        stages=1,
        slots=2,
        seed=1,
        fail_fast=6,
        storage=str(tmp_path / "runs"),
        name="half",
        ensemble=False,
    )
    trials = load(result.path).trials.to_pylist()
    assert len(trials) == 6 and result.aborted is None
    broken = [t for t in trials if t["config"]["hidden"] >= 10]
    assert broken and len(broken) < 6
    for t in trials:
        if t in broken:
            assert t["status"] == "failed" and t["reason"] == "error"
            assert "Traceback" in t["error"] and t["error"].strip().endswith(
                f"ValueError: no layer of width {t['config']['hidden']} in this zoo"
            )
        else:
            assert t["status"] == "completed" and t["error"] is None


def test_when_the_first_trials_all_fail_the_sweep_stops_naming_the_most_common_error(
    ray_session, broken_task, tmp_path
):
    result = run_sweep(
        broken_task,
        trials=8,
        epochs=1,
        stages=1,
        slots=2,
        seed=1,
        fail_fast=3,
        storage=str(tmp_path / "runs"),
        name="all-broken",
        ensemble=False,
    )
    assert result.aborted.startswith("the first ")
    assert "trials all failed; most common error (" in result.aborted
    assert result.aborted.endswith("in this zoo")
    tables = load(result.path)
    statuses = [t["status"] for t in tables.trials.to_pylist()]
    assert statuses.count("failed") >= 3 and "completed" not in statuses
    assert "pending" in statuses  # it stopped before trying them all
    assert "sweep_aborted" in tables.events["kind"].to_pylist()
