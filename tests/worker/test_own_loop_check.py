"""A task's own ``train_epoch`` is run on two batches before the sweep, in a forked child: its errors are refused
before any worker starts, and nothing it changes reaches the master the workers fork from.

Each case runs in a fresh interpreter: the check forks only a process that has not joined Ray, and this test
session's has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEADER = f"""
import sys
from torch import nn
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, load_data, space  # noqa: F401

STEPS = []
"""
CHECK = """
import json, sys
from orchestrator.errors import TaskError
from orchestrator.spec.task import load_task
from worker.check.contract import validate_contract

task = load_task(sys.argv[1])
config = {"lr": 0.05, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": 0.9}
try:
    validate_contract(task, [config])
    refused = None
except TaskError as exc:
    refused = str(exc)
print(json.dumps({"refused": refused, "steps_in_master": len(task.namespace.STEPS)}))
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check forks; elsewhere trials say it")


def checked(tmp_path, loop: str) -> dict:
    path = tmp_path / "cuda-device-runs" / "own_loop_task.py"  # words of device code in the path change nothing
    path.parent.mkdir()
    path.write_text(HEADER + loop)
    out = subprocess.run([sys.executable, "-c", CHECK, str(path)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_loop_that_steps_leaves_the_masters_module_as_it_was(tmp_path):
    said = checked(tmp_path, """
def train_epoch(model, optimizer, batches, config):
    for x, y in batches:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        STEPS.append(1)
    return {"train_loss": float(loss)}
""")
    assert said == {"refused": None, "steps_in_master": 0}  # the two checked steps happened in the child


def test_a_loop_that_fails_is_refused_naming_its_line(tmp_path):
    said = checked(tmp_path, """
def train_epoch(model, optimizer, batches, config):
    for x, y in batches:
        STEPS.append(1)
        return {"train_loss": config["no_such_key"]}
""")
    assert said["refused"].endswith("train_epoch raised KeyError: 'no_such_key' (own_loop_task.py:12)")
    assert said["steps_in_master"] == 0


def test_device_code_the_cpu_check_cannot_judge_is_left_to_the_trials(tmp_path):
    # xb.to("cuda") in the loop: the check's model is on the CPU, a trial's on its device
    said = checked(tmp_path, """
def train_epoch(model, optimizer, batches, config):
    for x, y in batches:
        model(x.to("cuda:7"))
    return {"train_loss": 0.0}
""")
    assert said["refused"] is None
