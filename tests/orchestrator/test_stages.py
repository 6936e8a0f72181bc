from __future__ import annotations

from itertools import pairwise

import pytest

from orchestrator.errors import ConfigError
from orchestrator.stages import Stage, default_plan, parse_plan, plan_to_str, stage_budget_epochs


def test_parse_and_print_round_trip():
    plan = parse_plan("64x1, 24X5 ,8x20")
    assert plan == [Stage(64, 1), Stage(24, 5), Stage(8, 20)]
    assert plan_to_str(plan) == "64x1,24x5,8x20"
    assert parse_plan(plan_to_str(plan)) == plan
    assert parse_plan("10x3") == [Stage(10, 3)]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "plan: empty"),
        ("   ", "plan: empty"),
        ("64x1,", "plan: stage 2 ''"),
        ("64*1", "plan: stage 1 '64\\*1'"),
        ("64x1,24", "plan: stage 2 '24'"),
        ("64x-1", "plan: stage 1"),
        ("1.5x2", "plan: stage 1"),
        ("0x5", "plan: stage 1 '0x5': stage.trials"),
        ("4x0", "plan: stage 1 '4x0': stage.epochs"),
    ],
)
def test_parse_errors_name_the_plan(text, fragment):
    with pytest.raises(ConfigError, match=f"^{fragment}"):
        parse_plan(text)


@pytest.mark.parametrize(
    "trials, epochs, field",
    [(0, 1, "stage.trials"), (1, -2, "stage.epochs"), (True, 1, "stage.trials"), (2.0, 1, "stage.trials")],
)
def test_stage_validation(trials, epochs, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        Stage(trials, epochs)


@pytest.mark.parametrize(
    "trials, epochs, expected",
    [
        (96, 20, "64x1,24x5,8x20"),
        (100, 50, "67x2,25x10,8x50"),
        (1000, 100, "667x5,250x23,83x100"),
        (24, 20, "16x1,6x5,2x20"),
        (23, 20, "15x1,8x20"),
        (10, 10, "7x1,3x10"),
        (30, 2, "20x1,10x2"),  # only two epoch levels exist
        (7, 20, "7x20"),  # too few trials to refine
        (96, 1, "96x1"),  # one epoch: nothing to refine
        (1, 1, "1x1"),
    ],
)
def test_default_plan_shapes(trials, epochs, expected):
    assert plan_to_str(default_plan(trials, epochs)) == expected


@pytest.mark.parametrize("trials", [1, 2, 7, 8, 9, 23, 24, 25, 50, 96, 97, 333, 10_000])
@pytest.mark.parametrize("epochs", [1, 2, 3, 5, 20, 21, 100])
def test_default_plan_invariants(trials, epochs):
    plan = default_plan(trials, epochs)
    assert sum(s.trials for s in plan) == trials  # never more (nor fewer) than asked
    assert plan[-1].epochs == epochs
    assert all(a.epochs < b.epochs for a, b in pairwise(plan))
    assert all(a.trials >= b.trials for a, b in pairwise(plan))


def test_default_plan_with_explicit_stages():
    assert plan_to_str(default_plan(96, 20, stages=2)) == "64x1,32x20"
    assert plan_to_str(default_plan(96, 20, stages=1)) == "96x20"
    plan = default_plan(96, 20, stages=4)
    assert len(plan) == 4 and sum(s.trials for s in plan) == 96 and plan[-1].epochs == 20
    assert plan_to_str(default_plan(4, 4, stages=4)) == "1x1,1x2,1x3,1x4"


@pytest.mark.parametrize(
    "args, field",
    [
        ((0, 5), "trials"),
        ((5, 0), "epochs"),
        ((10, 5, 0), "stages"),
        ((3, 20, 4), "stages"),
        ((50, 2, 3), "stages"),
    ],
)
def test_default_plan_errors(args, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        default_plan(*args)


def test_stage_budget_epochs():
    assert stage_budget_epochs(parse_plan("64x1,24x5,8x20")) == 64 + 120 + 160
    assert stage_budget_epochs([]) == 0
