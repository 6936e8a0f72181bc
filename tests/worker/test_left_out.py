"""A task's build_optimizer that gives some trainable parameters to no group is named before the sweep."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import torch

from orchestrator.spec.task import load_task
from tests.conftest import TINY_TASK
from worker.check.contract import validate_contract

CONFIG = {"lr": 0.03, "weight_decay": 0.01, "hidden": 8, "batch_size": 32}


def with_optimizer(build_optimizer):
    base = load_task(TINY_TASK)
    module = base.namespace
    return dataclasses.replace(base, namespace=SimpleNamespace(
        load_data=module.load_data, build_model=module.build_model, build_optimizer=build_optimizer))


def left_out_lines(caplog, task) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(task, [CONFIG])
    return [r.getMessage() for r in caplog.records if "build_optimizer leaves" in r.getMessage()]


def decay_weights_only(config, params):
    weights = [p for p in params if p.ndim > 1]
    return torch.optim.AdamW([{"params": weights, "weight_decay": config["weight_decay"]}], lr=config["lr"])


def test_weight_decay_on_weights_only_that_forgets_the_biases_group_is_named(caplog):
    """Weight decay on weights only, the biases' group forgotten: every bias trained at its initial value and nothing
    said so. Now one warning line names them."""
    lines = left_out_lines(caplog, with_optimizer(decay_weights_only))
    assert lines == ["build_optimizer leaves 2 trainable parameters out of every parameter group (0.bias, 2.bias; 11 "
                     "values): they get gradients and never move; give them a group (weight_decay 0 for biases and "
                     "norms), or freeze them in build_model with requires_grad_(False)"]


def test_groups_that_hold_every_trainable_parameter_say_nothing(caplog):
    def two_groups(config, params):
        params = list(params)
        return torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": config["weight_decay"]},
                                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=config["lr"])

    assert left_out_lines(caplog, with_optimizer(two_groups)) == []


def test_caviar_checks_table_has_a_row_for_the_parameters_optimized():
    from worker.check.preflight import run_preflight

    report = run_preflight(with_optimizer(decay_weights_only), config=CONFIG)
    row = next(c for c in report.checks if c.name == "parameters optimized")
    assert (row.status, row.value) == ("warn", "2 of 4")
    assert [line for line in report.space_notes if line.startswith("build_optimizer leaves 2")]
    tiny = run_preflight(load_task(TINY_TASK))
    assert "parameters optimized" not in [c.name for c in tiny.checks]  # caviar's optimizer takes every one
