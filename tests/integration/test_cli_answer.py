"""`caviar run` ends with the answer: the chosen ensemble against the best single model, the load line, a report.

Then `caviar status` / `top` / `report` find the sweep by name under `--storage`, and `caviar ls` lists it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator.app.api import load
from orchestrator.ensemble.ensemble_run import read_ensembles
from orchestrator.store.storage import Storage
from tests.conftest import ROOT, TINY_TASK

CLI = [os.path.join(os.path.dirname(sys.executable), "caviar")]
ENV = {**os.environ, "PYTHONPATH": ROOT}


CONDITIONAL_TASK = """
from orchestrator.search.space import choice, loguniform, one_minus_loguniform
from tests.tasks.tiny_task import build_model, load_data  # noqa: F401

space = {
    "lr": loguniform(1e-2, 3e-1),
    "optimizer": choice(["adam", "momentum"]),
    "momentum": one_minus_loguniform(0.8, 0.99, when={"optimizer": ["momentum"]}),
    "hidden": 8,
    "batch_size": 32,
}
"""


def caviar(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    # momentum is conditional: trials with adam have momentum=None, which must never be printed
    task = storage / "conditional_task.py"
    task.write_text(CONDITIONAL_TASK)
    run = caviar("run", str(task), "--plan", "4x1,2x2", "--slots", "2", "--seed", "3",
                 "--storage", str(storage), "--name", "answer", "--plain")
    assert run.returncode == 0, run.stderr[-3000:]
    return storage, run


def test_run_ends_with_the_chosen_ensemble_the_load_line_and_the_report(answered):
    storage, run = answered
    out = run.stdout
    records = read_ensembles(Storage.from_uri(f"{storage}/answer"))
    chosen = next(r for r in records if r.chosen)
    single = next(r for r in records if r.method == "single")
    assert f"Chosen ensemble: {chosen.name} ({chosen.method}, {chosen.size} member" in out
    chosen_row = next(line for line in out.splitlines() if "(chosen)" in line)
    assert f"{chosen.val_accuracy:.4f}" in chosen_row and f"{chosen.test_accuracy:.4f}" in chosen_row
    if chosen is not single:
        single_row = next(line for line in out.splitlines() if "best single model" in line)
        assert f"{single.val_accuracy:.4f}" in single_row and f"{single.test_accuracy:.4f}" in single_row
        assert "relative to the best single model" in out
    load_line = next(line for line in out.splitlines() if line.startswith("Load it: "))
    code = load_line.removeprefix("Load it: ")
    # the printed line runs as written and gives the chosen ensemble
    check = subprocess.run([sys.executable, "-c", f"{code}; print(model.record.name)"], capture_output=True,
                           text=True, env=ENV, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.strip().splitlines()[-1] == chosen.name
    report = f"{storage}/answer/report.html"
    assert f"Report: {report}" in out
    assert os.path.getsize(report) > 1000 and "<html" in open(report).read()[:200]


def test_configs_print_only_active_parameters(answered):
    storage, run = answered
    assert "=None" not in run.stdout
    trials = load(f"{storage}/answer").trials.to_pylist()
    assert any(t["config"]["momentum"] is None for t in trials)  # the rule was exercised
    for verb in (("top", "answer", "-k", "6"), ("status", "answer")):
        shown = caviar(*verb, "--storage", str(storage))
        assert shown.returncode == 0, shown.stderr
        assert "=None" not in shown.stdout and "optimizer=" in shown.stdout
    # a trial's lowest val loss may come from another epoch than its best score: the header says which it is
    assert "lowest val loss" in caviar("top", "answer", "--storage", str(storage)).stdout


def test_names_relative_to_storage_and_ls(answered, tmp_path):
    storage, _ = answered
    by_name = caviar("status", "answer", "--storage", str(storage))
    by_path = caviar("status", f"{storage}/answer")
    assert by_name.stdout == by_path.stdout and by_name.returncode == 0
    report = caviar("report", "answer", "--storage", str(storage), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    for where in (str(storage), f"file://{storage}"):
        listed = caviar("ls", where)
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if "answer" in line)
        chosen = next(r for r in read_ensembles(Storage.from_uri(f"{storage}/answer")) if r.chosen)
        assert "finished" in row and " 6 " in row and chosen.name in row
    missing = caviar("status", "nope", "--storage", str(storage))
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_no_report_skips_it(tmp_path):
    run = caviar("run", TINY_TASK, "--plan", "2x1", "--slots", "2", "--storage", str(tmp_path), "--name", "quiet",
                 "--plain", "--no-ensemble", "--no-report")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Report:" not in run.stdout and not os.path.exists(tmp_path / "quiet" / "report.html")
    assert "Chosen ensemble" not in run.stdout  # no ensembles built, none claimed
