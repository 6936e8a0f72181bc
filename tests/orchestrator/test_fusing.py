"""Grouping trials into fused arrays: pure functions of configs, no torch."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.fusing import group_trials, mean_array_size, shape_key, share_shapes
from orchestrator.sampler import sample_configs
from orchestrator.task import load_task
from tests.conftest import DIGITS_TASK

BASE = {"layers": 2, "hidden": 64, "activation": "relu", "batch_size": 32, "optimizer": "adam", "dropout": 0.2,
        "lr": 0.01, "beta1": 0.9, "weight_decay": 1e-4, "schedule": "step", "ema_decay": 0.99, "init": "he"}


def test_per_member_hyperparameters_do_not_split_arrays_and_shape_ones_do():
    same = {**BASE, "lr": 0.3, "beta1": 0.5, "weight_decay": 0.0, "schedule": "cosine", "ema_decay": 0.9,
            "init": "xavier", "dropout": 0.4}
    assert shape_key(BASE) == shape_key(same)
    for change in ({"hidden": 65}, {"layers": 3}, {"activation": "tanh"}, {"batch_size": 64}, {"optimizer": "sgd"},
                   {"dropout": 0.0}, {"unknown_knob": 1}):
        assert shape_key(BASE) != shape_key({**BASE, **change}), change


def test_a_task_can_declare_more_per_member_parameters():
    a, b = {**BASE, "label_smoothing": 0.1}, {**BASE, "label_smoothing": 0.2}
    assert shape_key(a) != shape_key(b)
    from orchestrator.fusing import PER_MEMBER

    assert shape_key(a, PER_MEMBER | {"label_smoothing"}) == shape_key(b, PER_MEMBER | {"label_smoothing"})


def test_groups_hold_equal_keys_up_to_the_array_size_in_trial_order():
    configs = {0: BASE, 1: {**BASE, "hidden": 8}, 2: {**BASE, "lr": 0.5}, 3: {**BASE, "lr": 0.1},
               4: {**BASE, "hidden": 8, "lr": 1.0}, 5: {**BASE, "lr": 0.2}}
    assert group_trials(configs, max_size=2) == [[0, 2], [1, 4], [3, 5]]
    assert group_trials(configs, max_size=32) == [[0, 2, 3, 5], [1, 4]]
    assert mean_array_size(group_trials(configs, 32)) == 3.0
    with pytest.raises(ConfigError, match="^fuse"):
        group_trials(configs, max_size=0)


def test_random_digits_configs_rarely_fuse_until_blocks_share_a_shape():
    space = load_task(DIGITS_TASK).space
    configs = sample_configs(space, 64, seed=1)
    alone = group_trials(dict(enumerate(configs)), max_size=32)
    assert mean_array_size(alone) < 1.2  # width and batch size alone have hundreds of values
    shared = share_shapes(configs, 32)
    groups = group_trials(dict(enumerate(shared)), max_size=32)
    assert [len(g) for g in groups] == [32, 32]
    for original, fused in zip(configs, shared):  # the per-member draws are untouched
        assert (original["lr"], original["beta2"], original["ema_decay"]) == (fused["lr"], fused["beta2"],
                                                                                fused["ema_decay"])
    assert shared[33]["hidden"] == configs[32]["hidden"] and shared[1]["hidden"] == configs[0]["hidden"]


def test_share_shapes_keeps_dropout_rates_but_not_a_disagreement_about_zero():
    configs = [{**BASE, "dropout": 0.3}, {**BASE, "dropout": 0.1}, {**BASE, "dropout": 0.0}]
    shared = share_shapes(configs, 3)
    assert [c["dropout"] for c in shared] == [0.3, 0.1, 0.3]
    explicit = share_shapes([{**BASE, "hidden": 8}, {**BASE, "hidden": 9, "batch_size": 7}], 2, shape_params=["hidden"])
    assert [c["hidden"] for c in explicit] == [8, 8] and explicit[1]["batch_size"] == 7
