"""Values caviar's own loop reads (optimizer, schedule, batch_size, ema_decay, grad_clip), checked on plain data."""

from __future__ import annotations

import math

import pytest

from orchestrator.errors import SpaceError
from orchestrator.search.narrowing import narrow_space
from orchestrator.search.space import (
    SearchSpace,
    choice,
    dropout,
    lograndint,
    loguniform,
    one_minus_loguniform,
    randint,
    uniform,
)
from orchestrator.spec.builtin_values import check_builtin_values, with_builtin_limits


def refusal(params, **kwargs) -> str:
    with pytest.raises(SpaceError) as info:
        check_builtin_values(params, **kwargs)
    return str(info.value)


def test_every_option_and_bound_is_checked_before_a_trial_draws_it():
    good = SearchSpace({"optimizer": choice(["adam", "momentum"]), "schedule": "cosine", "batch_size":
                        lograndint(16, 256), "ema_decay": one_minus_loguniform(0.9, 0.999), "grad_clip": math.inf,
                        "momentum": None})
    check_builtin_values(good)
    assert refusal(SearchSpace({"optimizer": choice(["adam", "adamx"])})) == (
        "parameter 'optimizer': 'adamx' is not one of sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw, as "
        "caviar's training loop reads it; did you mean 'adam'?")
    assert "'cosin' is not one of constant, step" in refusal({"schedule": choice(["constant", "cosin"])})
    for bad in (-5, 0, 32.5, True, uniform(16, 64)):  # a float range draws fractional batch sizes
        assert refusal({"batch_size": bad}).startswith("parameter 'batch_size': ")
    assert "is not a number in [0, 1)" in refusal({"ema_decay": 1.0})
    assert "is not a number > 0" in refusal({"grad_clip": 0})


def test_a_zero_momentum_that_nesterov_trials_draw_is_refused():
    # Before: every nesterov trial that drew 0 failed mid-sweep (torch: "Nesterov momentum requires a momentum").
    said = refusal({"optimizer": choice(["momentum", "nesterov"]), "momentum": choice([0.0, 0.9])})
    assert said.startswith("parameter 'momentum': 0 beside optimizer 'nesterov': torch's SGD refuses")
    assert refusal({"optimizer": "nesterov", "momentum": 0}) == said
    check_builtin_values({"optimizer": choice(["momentum", "nesterov"]), "momentum": uniform(0.0, 0.9)})
    check_builtin_values({"optimizer": choice(["momentum", "adam"]), "momentum": choice([0.0, 0.9])})
    check_builtin_values(SearchSpace({"optimizer": choice(["momentum", "nesterov"]),
                                      "momentum": choice([0.0, 0.9], when={"optimizer": ["momentum"]})}))
    check_builtin_values({"optimizer": "nesterov", "momentum": 0}, own_optimizer=True)


def test_a_task_with_its_own_build_optimizer_names_its_optimizers_as_it_likes():
    check_builtin_values({"optimizer": choice(["lion", "adam"])}, own_optimizer=True)


def extended_high(space: SearchSpace, name: str) -> float:
    """The next stage's upper bound when the best trial sits on the high edge of ``name``'s range."""
    dist = space[name]
    at_high_edge = [({name: dist.high}, 3.0), ({name: dist.from_unit(0.5)}, 2.0), ({name: dist.low}, 1.0)]
    return narrow_space(SearchSpace({name: dist}), at_high_edge).space[name].high


def test_decay_rates_caviar_reads_are_never_extended_to_1_or_past():
    # a best beta2 of 0.9987 at the high edge of uniform(0.9, 0.999) moved the next stage to [0.9, 1.048], where torch's
    # Adam refuses every draw of 1 or more; momentum and rho above 1 diverge, and the EMA refuses ema_decay >= 1
    space = with_builtin_limits(SearchSpace({
        "beta2": uniform(0.9, 0.999), "beta1": loguniform(0.5, 0.95), "rho": uniform(0.8, 0.99),
        "ema_decay": uniform(0.9, 0.99), "momentum": uniform(0.5, 1.0), "width": uniform(0.9, 0.999),
        "beta": one_minus_loguniform(0.9, 0.999), "dropout": dropout(0.0, 0.5)}))
    for name in ("beta2", "beta1", "rho", "ema_decay"):
        assert space[name].high < extended_high(space, name) < 1.0
    assert extended_high(space, "momentum") == 1.0  # declared up to 1: kept, never extended past it
    assert extended_high(space, "width") > 1.0  # not a value caviar reads: the task's own to bound
    assert space["beta"].limits == (0.0, 1.0) and space["dropout"].limits == (0.0, 0.999)  # already below 1


def test_a_task_with_its_own_optimizer_keeps_its_ranges_but_the_ema_stays_below_1():
    space = with_builtin_limits(SearchSpace({"beta2": uniform(0.9, 0.999), "ema_decay": uniform(0.9, 0.99)}),
                                own_optimizer=True)
    assert extended_high(space, "beta2") > 1.0 and extended_high(space, "ema_decay") < 1.0


def test_schedule_epochs_must_be_whole_not_truncated():
    # step_epochs = uniform(1, 4) drew 3.74, which the step schedule trained as 3 while the trials table said 3.74
    assert refusal({"step_epochs": uniform(1, 4)}) == (
        "parameter 'step_epochs': 1.0 is not a positive integer (a range of them: randint or lograndint), as caviar's "
        "training loop reads it")
    for bad in (0, 2.5, True):
        assert refusal({"step_epochs": bad}).startswith("parameter 'step_epochs': ")
    for bad in (-1, 1.5, False):
        assert refusal({"patience": bad}).startswith("parameter 'patience': ")
    check_builtin_values({"step_epochs": randint(1, 4), "patience": choice([0, 2, 5])})


def test_a_schedules_decay_rate_stays_below_1_unless_inverse_time_may_read_it():
    # decay_rate = uniform(0.1, 0.9) with schedule plateau, extended past 0.9 to 1.3: torch's ReduceLROnPlateau refused
    # every such trial ("Factor should be < 1.0"); a step or exponential factor above 1 grows the learning rate
    for schedule in ("plateau", choice(["step", "exponential", "constant"])):
        space = with_builtin_limits(SearchSpace({"schedule": schedule, "decay_rate": uniform(0.1, 0.9)}))
        assert 0.9 < extended_high(space, "decay_rate") < 1.0
    inverse_time = with_builtin_limits(SearchSpace({"schedule": choice(["inverse_time", "step"]),
                                                     "decay_rate": uniform(0.1, 0.9)}))
    assert extended_high(inverse_time, "decay_rate") > 1.0  # k in lr0 / (1 + k t) may well pass 1
