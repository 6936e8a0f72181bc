"""A task's own ``train_epoch`` is run on two batches before the sweep, in a forked child: its errors are refused
before any worker starts, and nothing it changes reaches the master the workers fork from."""

from __future__ import annotations

import sys

import pytest

from orchestrator.errors import TaskError
from orchestrator.spec.task import load_task
from tests.conftest import ROOT
from worker.check.contract import validate_contract

HEADER = f"""
import sys
from torch import nn
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, load_data, space  # noqa: F401

STEPS = []
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check forks; elsewhere trials say it")


def task_with(tmp_path, loop: str):
    path = tmp_path / "own_loop_task.py"
    path.write_text(HEADER + loop)
    return load_task(str(path))


def first_config(task):
    return {"lr": 0.05, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": 0.9}


def test_a_loop_that_steps_leaves_the_masters_module_as_it_was(tmp_path):
    task = task_with(tmp_path, """
def train_epoch(model, optimizer, batches, config):
    for x, y in batches:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        STEPS.append(1)
    return {"train_loss": float(loss)}
""")
    validate_contract(task, [first_config(task)])
    assert task.namespace.STEPS == []  # the two checked steps happened in the child


def test_a_loop_that_fails_is_refused_naming_its_line(tmp_path):
    task = task_with(tmp_path, """
def train_epoch(model, optimizer, batches, config):
    for x, y in batches:
        STEPS.append(1)
        return {"train_loss": config["no_such_key"]}
""")
    with pytest.raises(TaskError, match=r"train_epoch raised KeyError: 'no_such_key' \(own_loop_task\.py:12\)$"):
        validate_contract(task, [first_config(task)])
    assert task.namespace.STEPS == []


def test_device_code_the_cpu_check_cannot_judge_is_left_to_the_trials(tmp_path):
    # xb.cuda() in the loop: the check's model is on the CPU, a trial's on its device
    task = task_with(tmp_path, """
def train_epoch(model, optimizer, batches, config):
    for x, y in batches:
        model(x.to("cuda:7"))
    return {"train_loss": 0.0}
""")
    validate_contract(task, [first_config(task)])
