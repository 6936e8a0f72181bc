"""What a user sees while `caviar run` works: a first line at once, a final frame that matches the tables
(on a terminal, driven through a pseudo-terminal), and in plain mode one line per state change to the end."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from orchestrator.app.api import load
from tests.conftest import ROOT, TINY_TASK

CLI = os.path.join(os.path.dirname(sys.executable), "caviar")
ENV = {**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "160", "LINES": "50", "TERM": "xterm-256color"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def run_in_pty(args: list[str], timeout: float = 600) -> tuple[str, float | None, int]:
    """The command's terminal output, seconds until its first line, and its exit code."""
    main, child = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, env=ENV, close_fds=True)
    os.close(child)
    chunks: list[bytes] = []
    first_line = None
    while True:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
            if first_line is None and b"\n" in b"".join(chunks):
                first_line = time.monotonic() - started
        elif proc.poll() is not None:
            break
        if time.monotonic() - started > timeout:
            proc.kill()
            break
    os.close(main)
    return b"".join(chunks).decode("utf-8", "replace"), first_line, proc.wait()


def test_live_view_starts_at_once_and_ends_on_the_tables(tmp_path):
    out, first_line, code = run_in_pty([CLI, "run", TINY_TASK, "--plan", "4x1,2x3", "--slots", "2", "--seed", "4",
                                        "--storage", str(tmp_path), "--name", "live", "--no-ensemble", "--no-report",
                                        "--executor", "ray"])
    text = ANSI.sub("", out)
    assert code == 0, text[-3000:]
    first = text.splitlines()[0]
    assert "caviar: starting local Ray with" in first and "workers will warm up" in first
    # A second-ish on an idle machine: Python and the CLI start, then this line, before Ray or torch load.
    assert first_line is not None and first_line < 4.0, first_line
    assert "workers ready after" in text
    assert "Token authentication" not in text  # Ray's chatter went to the log file the first line names
    log_path = re.search(r"Ray's own messages: (\S+)", first).group(1)
    assert os.path.exists(log_path)

    tables = load(str(tmp_path / "live"))
    trials = tables.trials.to_pylist()
    final = text[text.rindex("caviar sweep: done"):]  # the last frame drawn
    counts = {s: sum(t["status"] == s for t in trials) for s in ("completed", "pruned", "failed")}

    def shown(label: str) -> int:
        return int(re.search(rf"{label}\s+(\d+)", final).group(1))

    assert shown("completed") == counts["completed"] and shown("pruned") == counts["pruned"]
    assert shown("failed") == counts["failed"] and shown("running") == 0
    assert re.search(rf"trials\s+{len(trials)}/{len(trials)}", final)
    assert re.search(r"time left\s+done", final) and re.search(r"stage\s+2/2", final)
    best = tables.top(1).to_pylist()[0]
    # The objective by name, in its units (val_accuracy: the score itself)
    assert re.search(rf"best val_accuracy\s+{best['best_score']:.4f}\s+trial\s+{best['trial_id']} "
                     rf"\(stage {best['stage']}\)", final)
    # stage starts are printed above the view as they happen
    assert "stage 1/2 started" in text and "stage 2/2 started" in text


@pytest.mark.parametrize("task_name", ["tiny"])
def test_plain_mode_prints_one_line_per_state_change_through_the_ensemble(tmp_path, task_name):
    run = subprocess.run([CLI, "run", TINY_TASK, "--plan", "6x1,3x2", "--slots", "2", "--seed", "6", "--storage",
                          str(tmp_path), "--name", "plain", "--plain", "--no-report"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "caviar: no Ray; 2 worker processes started by this one" in lines[0]  # the default on one machine
    assert "Token authentication" not in run.stdout + run.stderr
    tables = load(str(tmp_path / "plain"))
    trials = tables.trials.to_pylist()
    for stage in (1, 2):
        assert sum(f"stage {stage}/2 started" in line for line in lines) == 1
    for t in trials:  # each trial's end, once, with its status (and reason when pruned)
        ends = [line for line in lines if re.search(rf"\] trial {t['trial_id']} (completed|pruned|failed)", line)]
        assert len(ends) == 1, (t["trial_id"], ends)
        assert f"trial {t['trial_id']} {t['status']}" in ends[0]
        if t["status"] == "pruned":
            assert f"({t['reason']})" in ends[0]
    edges = [e for e in tables.events.to_pylist()
             if e["kind"] in ("range_extended", "edge_at_hard_limit", "edge_not_extended")]
    for e in edges:  # live, then again in the answer at the end
        assert sum(e["reason"] in line for line in lines) == 2
    done = next(i for i, line in enumerate(lines) if "sweep done:" in line)
    chosen = next(i for i, line in enumerate(lines) if line.startswith("Chosen ensemble: "))
    assert done < chosen  # the state changes run through the end, then the answer
    assert lines.index(next(line for line in lines if "stage 2/2 started" in line)) < done


def test_a_task_whose_own_settings_choose_ray_still_gets_ray_with_its_chatter_in_the_log(tmp_path):
    # The first line is written before the task is imported, so it cannot know the task's own settings.
    task = tmp_path / "ray_task.py"
    task.write_text(f"import sys\nsys.path.insert(0, {os.path.dirname(TINY_TASK)!r})\n"
                    "from tiny_task import build_model, load_data, space  # noqa: E402,F401\n\n"
                    "settings = {'trials': 2, 'epochs': 1, 'executor': 'ray'}\n")
    run = subprocess.run([CLI, "run", str(task), "--storage", str(tmp_path / "runs"), "--name", "ray", "--plain",
                          "--no-ensemble", "--no-report"], capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "caviar: no Ray;" in run.stdout.splitlines()[0]
    assert "caviar: starting a private Ray on this machine" in run.stderr  # then the run says what it does
    assert "Token authentication" not in run.stdout + run.stderr  # Ray's chatter still went to its log file
    assert len(load(str(tmp_path / "runs" / "ray")).trials) == 2
