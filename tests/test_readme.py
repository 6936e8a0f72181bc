"""The README's code runs as written, after its set-up: the Quickstart commands, the task, the TOML,
the Python API and ensemble blocks, and the DuckDB query.

Only the sizes shrink (``TINY`` below: 48 trials of 20 epochs would take minutes); every other
character of each block runs as the README prints it. The set-up block (``bash .ci/demo`` / ``.ci/test``)
is what created this environment and is not run again.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import duckdb
import pytest

from orchestrator.app.api import build_settings
from orchestrator.search.space import SearchSpace
from orchestrator.spec.task import load_task
from tests.conftest import ROOT

README = os.path.join(ROOT, "README.md")
TINY = {  # README text -> the same call, tiny
    "--trials 48 --epochs 20": "--trials 6 --epochs 2 --slots 2",
    "trials=48, epochs=20": "trials=6, epochs=2, slots=2",
}


def blocks(language: str) -> list[str]:
    text = open(README).read()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def shrink(code: str) -> str:
    for long, short in TINY.items():
        code = code.replace(long, short)
    return code


@pytest.fixture
def in_repo_copy(tmp_path, monkeypatch):
    """A working directory like a fresh clone's: examples/ and .venv/bin/caviar where the README says."""
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    (tmp_path / ".venv").mkdir()
    os.symlink(os.path.dirname(sys.executable), tmp_path / ".venv" / "bin")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_task_block_defines_a_valid_space():
    task_block = next(b for b in blocks("python") if "def build_model" in b)
    namespace: dict = {}
    exec(compile(task_block, "README task block", "exec"), namespace)
    space = SearchSpace(namespace["space"])
    assert space["layers"].limits == (1.0, 4.0) and callable(namespace["load_data"])


def test_the_toml_blocks_are_what_run_and_check_accept(tmp_path):
    task = load_task(os.path.join(ROOT, "examples", "digits_mlp.py"))
    for i, block in enumerate(blocks("toml")):
        path = tmp_path / f"block{i}.toml"
        path.write_text(block)
        settings, space = build_settings(task, str(path), {})
        assert settings.extend_edges is True and space["lr"].limits == (1e-6, 1.0)


def test_every_run_setting_is_named_in_the_docs():
    # settings with no CLI option (fail_fast, max_retries, ...) were in no document; a TOML user could not find them
    import glob
    from dataclasses import fields

    from orchestrator.spec.settings import RunSettings

    text = "".join(open(path).read() for path in [README, *glob.glob(os.path.join(ROOT, "docs", "*.md"))])
    unnamed = [f.name for f in fields(RunSettings)
               if not any(form in text for form in (f"`{f.name}", f"{f.name} = ", f"--{f.name.replace('_', '-')}"))]
    assert not unnamed, f"run settings README.md and docs/ never name: {unnamed}"


def test_quickstart_commands_run_as_written(in_repo_copy):
    quickstart = next(b for b in blocks("bash") if ".venv/bin/caviar run" in b)
    env = {**os.environ, "PYTHONPATH": ROOT}
    for line in quickstart.strip().splitlines():
        command = shrink(line.split("  #")[0].strip())
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        if " run " in command:
            assert "Report: caviar-runs/digits/report.html" in result.stdout
            # the README's sample of the run's end loads the ensemble as the run prints it: with the task's code
            [load_line] = [line for line in blocks("text")[0].splitlines() if line.startswith("Load it:")]
            assert load_line.split('task="')[0] + 'task="' in result.stdout
            assert os.path.exists(in_repo_copy / "caviar-runs" / "digits" / "report.html")
        if " ls " in command:
            assert "digits" in result.stdout and "finished" in result.stdout


def test_api_ensemble_and_sql_blocks_run_in_order(in_repo_copy, ray_session):
    # Task-file blocks (the task, the kinds/metrics attributes, a load_data) are pieces of a task file, run elsewhere.
    task_parts = [b for b in blocks("python")
                  if "def build_model" in b or "def load_data" in b or b.startswith("kind = ")]
    for part in task_parts:
        compile(part, "README task block", "exec")
    code = [b for b in blocks("python") if b not in task_parts]
    assert len(code) == 2  # the API block, then the ensemble block that uses its `result`
    namespace: dict = {}
    for i, block in enumerate(code):
        exec(compile(shrink(block), f"README python block {i}", "exec"), namespace)
    assert len(namespace["metrics"]) == namespace["tables"].metrics.num_rows
    assert namespace["probs"].shape == (8, 10) and namespace["labels"].shape == (8,)
    [sql] = blocks("sql")
    rows = duckdb.sql(sql.replace("NAME", namespace["result"].name)).fetchall()
    assert len(rows) == namespace["tables"].trials.num_rows
