"""Ctrl-C outside a sweep's own signal handlers still ends `caviar run` with one line that says what was left."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from orchestrator.app.api import run_sweep
from tests.conftest import ROOT, TINY_TASK

CAVIAR = [os.path.join(os.path.dirname(sys.executable), "caviar")]

INTERRUPTED_LOAD = f'''
import os, signal, sys
sys.path.insert(0, {os.path.dirname(TINY_TASK)!r})
from tiny_task import build_model, space, settings


def load_data():  # Ctrl-C while the master loads the data, before any trial
    os.kill(os.getpid(), signal.SIGINT)
'''


def test_ctrl_c_while_the_master_loads_the_data_says_no_trial_ran(tmp_path):
    task = tmp_path / "interrupted_load.py"
    task.write_text(INTERRUPTED_LOAD)
    storage = tmp_path / "runs"
    done = subprocess.run([*CAVIAR, "run", str(task), "--storage", str(storage), "--name", "cut", "--plain",
                           "--no-report"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr[-2000:]
    # before: exit 130 and not a word (typer turns a plain KeyboardInterrupt into a silent exit)
    assert done.stderr.strip().splitlines()[-1] == (
        "interrupted before the sweep began (loading the task or its data, or checking them): no trial ran")
    assert not (storage / "cut").exists()


def test_ctrl_c_while_the_report_draws_says_the_sweep_is_complete(tmp_path, monkeypatch, capsys):
    from orchestrator.app import cli_common, report_helper

    result = run_sweep(TINY_TASK, storage=str(tmp_path / "runs"), name="whole", trials=2, epochs=1,
                       executor="processes", slots=1)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_helper, "write_report_of", ctrl_c)
    with pytest.raises(typer.Exit) as stop:
        cli_common.print_result(result, report=True, helper=None)
    assert stop.value.exit_code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted after the sweep ended: its tables are complete in {result.path} "
        f"(caviar report {result.path} draws its report)")


def test_ctrl_c_before_the_sweep_row_is_written_says_to_start_again_not_resume(tmp_path, capsys):
    """Ctrl-C while the master wrote its task copy, before its sweep row: `caviar run` said `interrupted: caviar
    resume SWEEP --task ...`, and that resume refused ('has no tables ... holds nothing to resume'). Now the line says
    to start it again, with the command."""
    import signal

    from orchestrator.app.cli_common import exit_on_interrupt
    from orchestrator.errors import SweepInterrupted

    sweep = tmp_path / "runs" / "early"
    (sweep / "task").mkdir(parents=True)  # its task copy begun, no sweep/ row
    with pytest.raises(typer.Exit):
        with exit_on_interrupt("tiny_task.py"):
            raise SweepInterrupted(signal.SIGINT, path=str(sweep))
    said = capsys.readouterr().err
    assert "caviar resume" not in said
    assert said.strip() == ("interrupted before the sweep's first write: nothing to resume; start it again with "
                            f"caviar run TASK --storage {tmp_path / 'runs'} --name early --overwrite")
