"""A space's ends and options built before the sweep (worker/check/edges.py, via the contract check): a value the
model cannot take is named in one warning line, and the sweep still starts."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import SearchSpace, choice, loguniform, randint
from orchestrator.spec.task import Task
from worker.check.contract import validate_contract, warn_about_failing_values
from worker.check.edges import SLOW_CHECK_SECONDS
from worker.data.splits import prepare_task_data

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def images():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=90)
    return (x[:60], y[:60]), (x[60:75], y[60:75]), (x[75:], y[75:])


def cnn(config):
    """Each block halves 8x8 images: a fourth block pools 1x1 down to nothing."""
    layers, size = [], 8
    for _ in range(int(config["blocks"])):
        layers += [nn.Conv2d(layers[-3].out_channels if layers else 1, 4, 3, padding=1),
                   ACTIVATIONS[config["act"]](), nn.MaxPool2d(2)]
        size //= 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * size * size, int(config["outputs"])))


def cnn_task(space: dict) -> Task:
    return Task("inline", SimpleNamespace(build_model=cnn, load_data=images), SearchSpace(space))


SPACE = {"lr": loguniform(1e-3, 1e-1), "optimizer": "adam", "batch_size": 16, "blocks": randint(1, 4),
         "act": choice(["relu", "gelu", "swish"]), "outputs": choice([3, 2])}
BASE = {"lr": 0.01, "optimizer": "adam", "batch_size": 16, "blocks": 2, "act": "relu", "outputs": 3}


def test_the_values_a_model_cannot_take_are_named_one_line_each_and_the_check_still_passes(caplog):
    task = cnn_task(SPACE)
    notes: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="caviar"):
        splits = validate_contract(task, [BASE], space=task.space, notes=notes)
    assert splits.n_train == 60
    assert [(n["param"], n["values"]) for n in notes] == [("blocks", [4]), ("act", ["swish"]), ("outputs", [2])]
    blocks, act, outputs = (n["message"] for n in notes)
    assert blocks.startswith("space: blocks = 4 fails with the other values of a config that passed the check (the "
                             "high end of [1, 4]): the model's forward pass or loss_fn raised RuntimeError: ")
    assert "Output size is too small" in blocks and blocks.endswith("narrow the range, or make build_model take it")
    assert "build_model raised KeyError: 'swish' (test_edges.py:" in act and "drop the option" in act
    assert outputs.startswith("space: outputs = 2 fails with the other values of a config that passed the check (an "
                              "option of choice([3, 2])): the model outputs 2 scores per example but the targets have "
                              "3 classes: give the model 3 outputs"), outputs
    assert all("\n" not in m for m in (blocks, act, outputs))
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("space: ")] == [blocks, act, outputs]


def test_a_space_whose_every_end_builds_says_nothing(caplog):
    task = cnn_task({**SPACE, "blocks": randint(1, 3), "act": choice(["relu", "gelu"]), "outputs": 3})
    notes: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(task, [BASE], space=task.space, notes=notes)
    assert notes == [] and not [r for r in caplog.records if r.getMessage().startswith("space: ")]


def test_a_task_whose_one_check_was_slow_is_not_probed():
    builds = []
    task = Task("inline", SimpleNamespace(load_data=images, build_model=lambda c: builds.append(
        (c["blocks"], c["act"], c["outputs"], torch.get_default_device().type)) or cnn(c)), SearchSpace(SPACE))
    splits = prepare_task_data(task)
    assert warn_about_failing_values(task, splits, task.space, BASE, checked_in=SLOW_CHECK_SECONDS + 1) == []
    assert builds == []
    assert [n["param"] for n in warn_about_failing_values(task, splits, task.space, BASE, checked_in=0.1)] == [
        "blocks", "act", "outputs"]
    # On the meta device first (no memory: a high end of gigabytes costs nothing); what fails there, on the CPU.
    assert builds == [(1, "relu", 3, "meta"), (4, "relu", 3, "meta"), (4, "relu", 3, "cpu"), (2, "gelu", 3, "meta"),
                      (2, "swish", 3, "meta"), (2, "swish", 3, "cpu"), (2, "relu", 2, "meta"), (2, "relu", 2, "cpu")]


def test_caviar_check_shows_the_same_failures_as_a_warned_row_and_whole_lines():
    from worker.check.preflight import run_preflight

    task = cnn_task(SPACE)
    report = run_preflight(task, config=BASE, overfit_steps=20)
    row = next(c for c in report.checks if c.name == "space ends build")
    assert (row.status, row.value) == ("warn", "2 of 5 build")  # blocks 1 and 4, act gelu and swish, outputs 2
    assert row.detail == "blocks = 4; act = 'swish'; outputs = 2 (below)" and row.passed  # a warning, not a failure
    assert [line.split(" fails ")[0] for line in report.space_notes] == [
        "space: blocks = 4", "space: act = 'swish'", "space: outputs = 2"]
    assert "with the other values of the checked config (the high end of [1, 4])" in report.space_notes[0]
    fine = run_preflight(cnn_task({**SPACE, "blocks": randint(1, 3), "act": "relu", "outputs": 3}), config=BASE,
                         overfit_steps=20)
    assert [(c.status, c.value) for c in fine.checks if c.name == "space ends build"] == [("pass", "2 of 2 build")]


def test_a_high_end_of_gigabytes_is_built_on_the_meta_device_and_costs_no_memory():
    """A 30000-wide MLP holds 3.6 GB of float32 weights: built for real on the master at every such probe."""
    def mlp(config):
        width = int(config["width"])
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                             nn.Linear(width, 3))

    task = Task("inline", SimpleNamespace(build_model=mlp, load_data=images), SearchSpace(
        {"lr": 0.01, "optimizer": "adam", "batch_size": 16, "width": randint(4, 30_000)}))
    notes: list[dict] = []
    validate_contract(task, [{"lr": 0.01, "optimizer": "adam", "batch_size": 16, "width": 8}], space=task.space,
                      notes=notes)
    assert notes == []


def test_code_that_reads_values_fails_on_meta_tensors_and_is_then_judged_on_the_cpu():
    class Gated(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 3))

        def forward(self, x):
            if float(x.abs().max()) > 1e6:  # reads a value: impossible on the meta device
                raise ValueError("inputs out of range")
            return self.net(x)

    task = Task("inline", SimpleNamespace(build_model=lambda c: Gated(int(c["width"])), load_data=images),
                SearchSpace({"lr": 0.01, "optimizer": "adam", "batch_size": 16, "width": randint(4, 64)}))
    notes: list[dict] = []
    validate_contract(task, [{"lr": 0.01, "optimizer": "adam", "batch_size": 16, "width": 8}], space=task.space,
                      notes=notes)
    assert notes == []  # both ends run on the CPU
