"""The report's plot children die with the process that forked them: a report helper killed by an interrupted
``caviar run`` left two of them blocked forever on a pipe, holding the command's output open."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

# In a fresh interpreter: the test session may run Ray, whose threads make forking unsafe.
SCRIPT = """
import multiprocessing, os, signal, time
from orchestrator.app import report

context = multiprocessing.get_context("fork")
pids_out, pids_in = context.Pipe(duplex=False)

def slow_plot(_data):
    pids_in.send(os.getpid())
    time.sleep(120)

def drawing_parent():
    report.draw_all([slow_plot, slow_plot], None, workers=2)

parent = context.Process(target=drawing_parent)
parent.start()
children = [pids_out.recv(), pids_out.recv()]
os.kill(parent.pid, signal.SIGKILL)
parent.join()
time.sleep(1.0)

def running(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\\tZ" not in f.read()  # a zombie has died; only its reaping is left
    except FileNotFoundError:
        return False

alive = [pid for pid in children if running(pid)]
for pid in alive:
    os.kill(pid, signal.SIGKILL)
print("ALIVE", len(alive))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_plot_children_die_when_the_process_that_forked_them_is_killed():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("ALIVE")[1].split() == ["0"]
