"""`caviar check --config` takes the same TOML as `caviar run --config`: its [space] ranges are what is checked."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT, TINY_TASK

CLI = os.path.join(os.path.dirname(sys.executable), "caviar")
ENV = {**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "200"}


def caviar(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=ENV, timeout=300)


def test_check_reads_the_run_toml(tmp_path):
    toml = tmp_path / "sweep.toml"
    toml.write_text('[run]\ntrials = 4\nepochs = 2\nextend_edges = false\n\n[space]\nhidden = 7\n'
                    'lr = { dist = "loguniform", low = 0.001, high = 0.1, limits = [0.0001, 1.0] }\n')
    checked = caviar("check", TINY_TASK, "--config", str(toml), "--steps", "50")
    assert checked.returncode in (0, 1), checked.stderr  # 1: a check failed, which is a verdict, not an error
    config_line = next(line for line in checked.stdout.splitlines() if line.startswith("config"))
    assert "hidden=7" in config_line and "lr=0.01" in config_line  # the TOML's midpoint, not the task's


def test_the_same_bad_toml_is_refused_by_both_with_one_line(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('[space]\nwidth = 3\n')
    for verb in ("check", "run"):
        refused = caviar(verb, TINY_TASK, "--config", str(toml), "--storage", str(tmp_path)) if verb == "run" \
            else caviar(verb, TINY_TASK, "--config", str(toml))
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            "caviar: error: parameter 'width': not in the search space (known: lr, optimizer, hidden, batch_size, "
            "ema_decay)"]


def test_params_keeps_the_old_choices(tmp_path):
    checked = caviar("check", TINY_TASK, "--params", '{"lr": 0.05, "optimizer": "adam", "hidden": 6}',
                     "--steps", "50")
    assert checked.returncode in (0, 1), checked.stderr
    assert "hidden=6" in checked.stdout
