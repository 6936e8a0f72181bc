from __future__ import annotations

import math
from itertools import pairwise

import pytest

from orchestrator.errors import ConfigError
from orchestrator.search.stages import (
    Stage,
    default_plan,
    default_plan_for_budget,
    parse_plan,
    plan_to_str,
    promotion_count,
    stage_budget_epochs,
    stage_grace_epochs,
)


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
        # later stages train the best of the earlier ones longer: fewer epochs would make "best" mean two things
        ("8x3,4x1", "plan: stage 2 '4x1' trains 1 epochs, fewer than stage 1's 3; coarse to fine"),
    ],
)
def test_parse_errors_name_the_plan(text, fragment):
    with pytest.raises(ConfigError, match=f"^{fragment}"):
        parse_plan(text)
    assert [s.epochs for s in parse_plan("8x2,4x2,2x5")] == [2, 2, 5]  # equal epochs: more samples, narrowed


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
        (96, 20, "48x1,24x5,24x20"),
        (100, 50, "50x2,25x10,25x50"),
        (1000, 100, "500x5,250x23,250x100"),
        (24, 20, "12x1,6x5,6x20"),
        (23, 20, "12x1,11x20"),
        (10, 10, "5x1,5x10"),
        (30, 2, "15x1,15x2"),  # only two epoch levels exist
        (7, 20, "7x20"),  # too few trials to refine
        (96, 1, "96x1"),  # one epoch: nothing to refine
        (1, 1, "1x1"),
        (32, 10, "16x1,8x4,8x10"),  # the quality benchmark's settings
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
    assert plan_to_str(default_plan(96, 20, stages=2)) == "48x1,48x20"
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


@pytest.mark.parametrize(
    "budget, epochs, expected",
    [
        (192, 12, "21x1,11x4,10x12"),  # what 16 random trials x 12 epochs cost
        (24, 3, "6x1,6x3"),
        (12, 2, "4x1,4x2"),
        (12, 3, "4x3"),  # 7 trials are too few to stage, and 8 staged ones cost 14
        (12, 12, "1x12"),
        (5, 1, "5x1"),
    ],
)
def test_default_plan_for_budget(budget, epochs, expected):
    assert plan_to_str(default_plan_for_budget(budget, epochs)) == expected


@pytest.mark.parametrize("budget", [1, 7, 12, 13, 40, 100, 192, 333])
@pytest.mark.parametrize("epochs", [1, 2, 5, 12])
def test_default_plan_for_budget_is_the_largest_default_plan_that_fits(budget, epochs):
    if budget < epochs:
        with pytest.raises(ConfigError, match="^budget_epochs:"):
            default_plan_for_budget(budget, epochs)
        return
    plan = default_plan_for_budget(budget, epochs)
    trials = sum(s.trials for s in plan)
    assert plan == default_plan(trials, epochs) and plan[-1].epochs == epochs
    assert stage_budget_epochs(plan) <= budget
    assert all(stage_budget_epochs(default_plan(more, epochs)) > budget for more in range(trials + 1, budget + 1))


def test_default_plan_for_budget_errors():
    with pytest.raises(ConfigError, match="^budget_epochs:"):
        default_plan_for_budget(0, 5)
    with pytest.raises(ConfigError, match="^epochs:"):
        default_plan_for_budget(10, 0)


@pytest.mark.parametrize(
    "plan, grace, expected",
    [
        ("64x1,24x5,8x20", 1, [1, 1, 5]),  # the 20-epoch stage prunes from epoch 5 on, not 1
        ("64x1,24x5,8x20", 3, [1, 3, 5]),
        ("64x1,24x5,8x20", 8, [1, 5, 8]),
        ("30x1,30x1,30x1", 1, [1, 1, 1]),
        ("10x5,5x3", 2, [2, 3]),  # capped at the stage's own epochs
        ("10x9", 2, [2]),
    ],
)
def test_stage_grace_epochs(plan, grace, expected):
    stages = [Stage(int(t), int(e)) for t, e in (piece.split("x") for piece in plan.split(","))]  # any order
    assert stage_grace_epochs(stages, grace) == expected


def test_stage_grace_epochs_error():
    with pytest.raises(ConfigError, match="^grace_epochs:"):
        stage_grace_epochs(parse_plan("4x2"), 0)


@pytest.mark.parametrize(
    "stage_trials, candidates, fraction, expected",
    [
        (18, 12, 0.5, 9),  # half the stage
        (6, 5, 0.5, 3),
        (7, 5, 0.5, 3),  # rounded down: at least half stays fresh
        (10, 2, 0.5, 2),  # never more than the candidates
        (10, 5, 0.0, 0),  # off: every trial a fresh sample
        (10, 12, 1.0, 10),
        (1, 3, 0.5, 1),  # a one-trial stage trains the best config again, not a fresh sample
        (10, 5, 0.05, 1),  # any share above 0 retrains at least the best
        (1, 0, 0.5, 0),  # no candidate (every earlier trial failed)
        (1, 3, 0.0, 0),
    ],
)
def test_promotion_count(stage_trials, candidates, fraction, expected):
    assert promotion_count(stage_trials, candidates, fraction) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "half", None])
def test_promotion_count_refuses_a_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="^promote_fraction:"):
        promotion_count(10, 5, fraction)


def test_controller_for_gives_later_stages_the_earlier_stage_grace():
    from orchestrator.app.api import controller_for
    from orchestrator.decide.pruning import ASHAPruner, NoPruner
    from orchestrator.search.space import SearchSpace, loguniform
    from orchestrator.spec.settings import RunSettings

    space = SearchSpace({"lr": loguniform(1e-4, 1.0)})
    controller = controller_for(space, RunSettings(plan="20x1,10x4,5x12", pruner="asha",
                                                   promote_fraction=0.3).validate())
    first, second, last = (controller.make_pruner(stage) for stage in controller.plan)
    assert isinstance(first, NoPruner)
    assert isinstance(second, ASHAPruner) and second.rungs == [1, 3]
    assert isinstance(last, ASHAPruner) and last.rungs == [4]  # not 1, 3, 9: stage 2 already judged 4 epochs
    assert controller.options.stage_policy.promote_fraction == 0.3  # the setting reaches the stage policy


@pytest.mark.parametrize("value", [-0.5, 1.5, "half", True, math.nan])
def test_promote_fraction_setting_is_checked(value):
    from orchestrator.spec.settings import RunSettings

    with pytest.raises(ConfigError, match="^setting 'promote_fraction'"):
        RunSettings(promote_fraction=value).validate()


@pytest.mark.parametrize("name", ["trials", "epochs", "stages", "slots", "seed", "grace_epochs", "keep_best",
                                  "max_retries", "fail_fast"])
def test_true_for_a_count_is_refused_not_read_as_one(name):
    # TOML `stages = true` once ran one stage (plain random search), `seed = true` seed 1, in silence
    from orchestrator.spec.settings import RunSettings

    with pytest.raises(ConfigError, match=f"^setting '{name}'"):
        RunSettings(**{name: True}).validate()


def test_trials_epochs_or_stages_given_beside_a_plan_must_agree_with_it(tmp_path):
    from types import SimpleNamespace

    from orchestrator.app.lifecycle import build_settings
    from orchestrator.search.space import SearchSpace

    def settings(task_settings=None, toml=None, **overrides):
        task = SimpleNamespace(settings=task_settings or {}, space=SearchSpace({"lr": 0.1}))
        path = None
        if toml is not None:
            path = tmp_path / "sweep.toml"
            path.write_text("[run]\n" + toml)
        return build_settings(task, str(path) if path else None, overrides)[0]

    assert settings(plan="4x1,2x3", trials=6, epochs=3, stages=2).plan == "4x1,2x3"  # the same numbers: fine
    for key, value, implied in (("trials", 8, 6), ("epochs", 5, 3), ("stages", 3, 2)):
        with pytest.raises(ConfigError, match=rf"^setting '{key}': {value}, but plan '4x1,2x3' gives {implied}; "
                                              r"give one of the two \(the plan decides trials, epochs and stages\)$"):
            settings(plan="4x1,2x3", **{key: value})
    # A plan given later overrides what an earlier place said (the task's defaults, then the TOML file)...
    assert settings({"trials": 4, "epochs": 2}, plan="4x1,2x3").plan == "4x1,2x3"
    # ...and the settings (the sweep row) hold the plan's numbers, not the task's trials 4 and epochs 2 that did not run
    overridden = settings({"trials": 4, "epochs": 2}, toml='plan = "4x1,2x3"\n')
    assert (overridden.trials, overridden.epochs, overridden.stages) == (6, 3, 2)
    assert settings(toml='trials = 96\nepochs = 20\n', plan="4x1,2x3").plan == "4x1,2x3"
    # ...but beside it, or after it, a number that disagrees is refused: nothing the user wrote is dropped silently.
    with pytest.raises(ConfigError, match="^setting 'trials': 96, but plan"):
        settings(toml='trials = 96\nplan = "4x1,2x3"\n')
    with pytest.raises(ConfigError, match="^setting 'epochs': 10, but plan"):
        settings(toml='plan = "4x1,2x3"\n', epochs=10)
    assert settings(toml='trials = 96\nepochs = 20\nplan = "64x1,24x5,8x20"\n').trials == 96  # the README's file


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64 - 1])
def test_a_seed_the_tables_cannot_hold_is_refused_by_name(seed):
    # --seed 9223372036854775808 (a random 64-bit seed) ended in pyarrow's bare "OverflowError: Python int too large to
    # convert to C long" when the sweep row was written, after the sweep's folder, lease and task copy were
    from orchestrator.spec.settings import RunSettings

    with pytest.raises(ConfigError, match=r"^setting 'seed': expected a non-negative integer below 2\*\*63$"):
        RunSettings(seed=seed).validate()
    RunSettings(seed=2**63 - 1).validate()
