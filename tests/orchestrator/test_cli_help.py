"""Every ``caviar VERB --help`` prints its options' texts as written: TOML table names survive Rich markup."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from orchestrator.app.cli import app

BRACKETED = re.compile(r"\[[A-Za-z_./]+\]")


def test_every_bracketed_word_in_a_help_text_reaches_the_printed_help():
    group = typer.main.get_command(app)
    runner = CliRunner()
    checked = 0
    for name, command in group.commands.items():
        printed = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output
        for param in command.params:
            written = (getattr(param, "help", None) or "").replace("\\[", "[")
            for word in BRACKETED.findall(written):
                assert word in printed, f"caviar {name} --help lost {word!r} from --{param.name}'s help"
                checked += 1
    assert checked >= 3  # run, check and submit name [run] and [space]


def test_every_verb_that_takes_a_sampler_or_pruner_names_each_one_the_settings_accept():
    # `caviar submit --help` listed "random, sobol or lhs" after tpe became the default sampler
    from orchestrator.decide.pruning import PRUNERS
    from orchestrator.search.sampler import SAMPLERS

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            names = {"sampler": SAMPLERS, "pruner": PRUNERS}.get(param.name)
            for known in names or ():
                assert known in (param.help or ""), f"caviar {name} --{param.name}'s help leaves out {known!r}"


def test_caviar_submit_takes_every_sweep_setting_caviar_run_takes():
    # `caviar submit` had no --stage-policy, --fuse or --array-size: a sweep that ran locally with them could not be
    # sent to a cluster as it was, but through a TOML file
    from orchestrator.app.cli_cluster import run_args

    group = typer.main.get_command(app)
    options = {name: {p.name for p in group.commands[name].params} for name in ("run", "submit")}
    how_it_runs_here = {"executor", "plain", "report", "dashboard", "dashboard_host"}  # submit: a Ray job
    assert options["run"] - options["submit"] == how_it_runs_here
    sent = run_args({"stage_policy": "fresh", "fuse": "on", "array_size": 4}, None)
    assert sent == ["--stage-policy", "fresh", "--fuse", "on", "--array-size", "4"]
