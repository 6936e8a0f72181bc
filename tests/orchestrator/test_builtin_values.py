"""Values caviar's own loop reads (optimizer, schedule, batch_size, ema_decay, grad_clip), checked on plain data."""

from __future__ import annotations

import math

import pytest

from orchestrator.errors import SpaceError
from orchestrator.search.space import SearchSpace, choice, lograndint, one_minus_loguniform, uniform
from orchestrator.spec.builtin_values import check_builtin_values


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


def test_a_task_with_its_own_build_optimizer_names_its_optimizers_as_it_likes():
    check_builtin_values({"optimizer": choice(["lion", "adam"])}, own_optimizer=True)
