"""`caviar next SWEEP`: the next sweep's ranges as TOML, read back by `caviar run --config`.

A regression ranked by its lowest val_mse (scores are negated errors): the ranges must close around the trials with
the lowest errors, and the next sweep must sample inside them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import tomllib

import pytest

from orchestrator.app.api import load
from orchestrator.errors import StorageError
from tests.conftest import ROOT
from tests.integration.test_cli_answer import CLI, ENV, caviar

TASK = f"{ROOT}/tests/tasks/linear_regression_task.py"


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    run = caviar("run", TASK, "--plan", "8x1,4x2", "--slots", "2", "--seed", "5", "--storage", str(storage),
                 "--name", "first", "--plain", "--no-report")
    assert run.returncode == 0, run.stderr[-3000:]
    return storage


def test_next_prints_ranges_around_the_lowest_errors_and_a_run_samples_inside_them(first, tmp_path):
    shown = caviar("next", "first", "--storage", str(first))
    assert shown.returncode == 0, shown.stderr
    toml = tomllib.loads(shown.stdout)["space"]
    trials = load(first / "first").trials.to_pylist()
    # The lowest validation errors of the last stage (its completed trials: pruned ones trained fewer epochs)
    last = sorted((t for t in trials if t["stage"] == 2 and t["status"] == "completed"),
                  key=lambda t: t["best_val_loss"])
    assert "the best 3 of stage 2's" in shown.stdout
    lr = toml["lr"]
    best_lrs = [t["config"]["lr"] for t in last[:3]]
    assert lr["dist"] == "loguniform"
    assert lr["low"] <= min(best_lrs) * 1.001 and max(best_lrs) <= lr["high"] * 1.001
    assert f"best {last[0]['config']['hidden']}" in next(line for line in shown.stdout.splitlines()
                                                          if line.startswith("hidden ="))

    out = tmp_path / "next.toml"
    wrote = caviar("next", "first", "--storage", str(first), "-o", str(out))
    assert wrote.returncode == 0, wrote.stderr
    assert out.read_text() == shown.stdout
    again = caviar("next", "first", "--storage", str(first), "-o", str(out))
    assert again.returncode == 2 and "exists (pass --overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and out.read_text() == shown.stdout

    for where, said in ((tmp_path / "missing" / "next.toml", "no folder"), (tmp_path, "is a folder")):
        refused = caviar("next", "first", "--storage", str(first), "-o", str(where))
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "missing").exists()

    run = caviar("run", TASK, "--config", str(out), "--plan", "4x1", "--seed", "6", "--storage", str(first),
                 "--name", "second", "--plain", "--no-report")
    assert run.returncode == 0, run.stderr[-3000:]
    for t in load(first / "second").trials.to_pylist():
        assert lr["low"] <= t["config"]["lr"] <= lr["high"]
        assert toml["hidden"]["low"] <= t["config"]["hidden"] <= toml["hidden"]["high"]
        assert t["config"]["optimizer"] in toml["optimizer"]["options"]


def test_a_sweep_without_three_scored_configs_is_refused_in_one_line(tmp_path):
    run = caviar("run", TASK, "--plan", "2x1", "--slots", "2", "--seed", "5", "--storage", str(tmp_path),
                 "--name", "small", "--plain", "--no-report")
    assert run.returncode == 0, run.stderr[-3000:]
    shown = caviar("next", "small", "--storage", str(tmp_path))
    assert shown.returncode == 2
    # It ended: no "let it run further" (it never will), but what a next sweep needs
    assert shown.stderr.strip().splitlines() == [
        "caviar: error: sweep 'small': no stage has three different configs that ended with a score: it ended "
        "(finished) with 0 of 2 trials failed, so there is nothing to close the ranges around; a next sweep needs one "
        "whose stages score three configs or more"]


def test_a_sweep_whose_every_trial_failed_is_refused_with_where_to_look(tmp_path):
    task = f"{ROOT}/tests/tasks/second_epoch_failure_task.py"  # hidden 8 or more fails in its second epoch
    run = caviar("run", task, "--config", str(write_config(tmp_path)), "--plan", "5x2", "--slots", "2",
                 "--pruner", "none", "--seed", "5", "--storage", str(tmp_path), "--name", "failing", "--plain",
                 "--no-report")
    assert run.returncode == 2, run.stderr[-3000:]  # stopped early: every trial failed
    shown = caviar("next", "failing", "--storage", str(tmp_path))
    assert shown.returncode == 2
    assert shown.stderr.strip().splitlines() == [
        "caviar: error: sweep 'failing': no stage has three different configs that ended with a score: it ended "
        "(aborted) with 5 of 5 trials failed, so there is nothing to close the ranges around; caviar status shows "
        "why they failed"]


def write_config(folder):
    config = folder / "wide.toml"
    config.write_text('[space]\nhidden = { dist = "randint", low = 8, high = 12 }\n')
    return config


def test_ranges_of_a_sweep_still_running_say_what_they_rest_on(tmp_path):
    """slow_task's first trial to begin epoch 2 (stage 2's first: stage 1 trains one epoch) waits there: the sweep
    runs on, its stage 1 ended. Before, the file read as a finished sweep's."""
    pause = tmp_path / "pause"
    pause.mkdir()
    config = tmp_path / "pause.toml"
    config.write_text(f'[space]\npause_dir = "{pause}"\npause_epoch = 2\n')
    master = subprocess.Popen([*CLI, "run", f"{ROOT}/tests/tasks/slow_task.py", "--config", str(config), "--plan",
                               "5x1,2x2", "--slots", "1", "--seed", "5", "--storage", str(tmp_path), "--name", "live",
                               "--executor", "processes", "--plain", "--no-report"], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (pause / "paused").exists() and time.monotonic() < deadline and master.poll() is None:
            time.sleep(0.5)
        assert (pause / "paused").exists(), "stage 2's first trial never paused"
        while time.monotonic() < deadline and stage_one_ended(tmp_path / "live") < 5:  # the next flush writes it
            time.sleep(0.5)
        shown = caviar("next", "live", "--storage", str(tmp_path))
        assert shown.returncode == 0, shown.stderr
        said = ("live had not ended (running): these ranges rest on stage 1's 5 of 5 trials ended so far; caviar "
                "next after its end closes them around its last stage")
        assert f"# {said}" in shown.stdout.splitlines()
        assert shown.stderr.strip().splitlines() == [f"warning: sweep {said.replace('live', repr('live'), 1)}"]
    finally:
        paused = (pause / "paused").read_text().split() if (pause / "paused").exists() else []
        if paused:  # the paused trial's process, a child of this test's master
            os.kill(int(paused[0]), signal.SIGKILL)
        master.kill()
        master.wait(timeout=60)


def stage_one_ended(sweep) -> int:
    try:
        return sum(t["stage"] == 1 and t["status"] == "completed" for t in load(sweep).trials.to_pylist())
    except StorageError:  # no trials table yet
        return 0
