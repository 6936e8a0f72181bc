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
            f"caviar: error: config {str(toml)!r}: [space] parameter 'width': not in the search space (known: lr, "
            "optimizer, hidden, batch_size, ema_decay)"]


def test_params_keeps_the_old_choices(tmp_path):
    checked = caviar("check", TINY_TASK, "--params", '{"lr": 0.05, "optimizer": "adam", "hidden": 6}',
                     "--steps", "50")
    assert checked.returncode in (0, 1), checked.stderr
    assert "hidden=6" in checked.stdout


def test_params_with_a_key_the_space_lacks_is_refused_naming_it():
    # the misspelt key reached the model as an entry it never read: the check passed a config without the value meant
    refused = caviar("check", TINY_TASK, "--params", '{"lr": 0.05, "optimizer": "adam", "hidden": 6, "hiden": 60}')
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "caviar: error: option '--params': 'hiden' is not a parameter of the task's space; did you mean 'hidden'? "
        "(its parameters: lr, optimizer, hidden, batch_size, ema_decay)"]


def test_an_option_caviars_loop_cannot_use_is_refused_by_run_and_check_before_any_trial(tmp_path):
    toml = tmp_path / "typo.toml"
    toml.write_text('[space]\noptimizer = { dist = "choice", options = ["adam", "adamx"] }\n')
    for verb in ("run", "check"):
        extra = ("--storage", str(tmp_path / "runs"), "--name", "typo") if verb == "run" else ()
        refused = caviar(verb, TINY_TASK, "--config", str(toml), *extra)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines() == [
            "caviar: error: parameter 'optimizer': 'adamx' is not one of sgd, momentum, nesterov, adagrad, rmsprop, "
            "adam, adamw, as caviar's training loop reads it; did you mean 'adam'?"]
    assert not (tmp_path / "runs" / "typo").exists()
    by_params = caviar("check", TINY_TASK, "--params", '{"lr": 0.01, "optimizer": "adam", "hidden": 8, '
                       '"batch_size": -5, "ema_decay": 0.9}')
    assert by_params.returncode == 2 and "parameter 'batch_size': -5 is not a positive integer" in by_params.stderr


def test_run_keeps_the_tomls_ensemble_false_unless_the_command_line_says_otherwise(tmp_path):
    # `caviar run` once passed its --ensemble default (on) over the TOML's `ensemble = false`: ensembles were built
    toml = tmp_path / "sweep.toml"
    toml.write_text("[run]\nensemble = false\ntrials = 2\nepochs = 1\n")
    ran = caviar("run", TINY_TASK, "--config", str(toml), "--storage", str(tmp_path / "runs"), "--name", "quiet",
                 "--plain", "--no-report", "--slots", "1")
    assert ran.returncode == 0, ran.stderr
    assert "Chosen ensemble" not in ran.stdout
    assert not (tmp_path / "runs" / "quiet" / "ensembles").exists()
