"""Search spaces: sampling scales, unit-interval round trips, and one-line errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from orchestrator.errors import ConfigError, SpaceError
from orchestrator.search.sampler import sample_configs, trial_seed
from orchestrator.search.space import (
    SearchSpace,
    choice,
    dropout,
    lograndint,
    loguniform,
    one_minus_loguniform,
    parse_param,
    randint,
    uniform,
)

RNG = np.random.default_rng(0)


def draws(dist, n=20000):
    space = SearchSpace({"p": dist})
    return [c["p"] for c in sample_configs(space, n, seed=1)]


def test_loguniform_is_even_per_decade():
    values = np.log10(draws(loguniform(1e-6, 10.0)))
    counts, _ = np.histogram(values, bins=7, range=(-6, 1))
    assert counts.min() > 0.9 * len(values) / 7  # each decade gets its share
    assert values.min() >= -6 and values.max() <= 1


def test_one_minus_loguniform_is_even_in_averaging_window():
    betas = np.array(draws(one_minus_loguniform(0.9, 0.999)))
    window = -np.log10(1 - betas)  # 1 for 0.9, 2 for 0.99, 3 for 0.999
    below_099 = np.mean(betas < 0.99)
    assert 0.47 < below_099 < 0.53  # half the samples between 0.9 and 0.99, half between 0.99 and 0.999
    assert window.min() >= 1 - 1e-9 and window.max() <= 3 + 1e-9


def test_uniform_and_integers_are_linear():
    values = np.array(draws(uniform(0.0, 1.0)))
    assert abs(values.mean() - 0.5) < 0.02
    layers = np.array(draws(randint(1, 4)))
    assert set(layers) == {1, 2, 3, 4}
    assert np.all(np.abs(np.bincount(layers)[1:] / len(layers) - 0.25) < 0.02)


def test_lograndint_favours_small_values_evenly_in_log():
    units = np.array(draws(lograndint(1, 1000)))
    assert units.min() >= 1 and units.max() <= 1000
    # Each integer owns [v - 0.5, v + 0.5] in log10: P(v <= 10) = (log10 10.5 - log10 0.5) / (log10 1000.5 - log10 0.5)
    expected = (math.log10(10.5) - math.log10(0.5)) / (math.log10(1000.5) - math.log10(0.5))
    assert abs(np.mean(units <= 10) - expected) < 0.02


@pytest.mark.parametrize(
    "dist, value",
    [(loguniform(1e-4, 1.0), 3e-3), (one_minus_loguniform(0.9, 0.999), 0.99), (uniform(-1, 1), 0.25),
     (randint(2, 9), 5), (lograndint(16, 256), 64), (choice(["a", "b", "c"]), "b")],
)
def test_round_trip_through_unit_interval(dist, value):
    dist = SearchSpace({"p": dist})["p"]
    u = dist.to_unit(value)
    assert 0.0 <= u <= 1.0
    back = dist.from_unit(u)
    assert back == value if not isinstance(value, float) else math.isclose(back, value, rel_tol=1e-9)


def test_unit_mapping_is_monotonic_in_beta():
    dist = SearchSpace({"b": one_minus_loguniform(0.9, 0.999)})["b"]
    assert dist.from_unit(0.0) == pytest.approx(0.9)
    assert dist.from_unit(0.5) == pytest.approx(0.99)
    assert dist.from_unit(1.0) == pytest.approx(0.999)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"lr": loguniform(1.0, 0.1)}, "parameter 'lr': low"),
        ({"lr": loguniform(0.0, 0.1)}, "parameter 'lr': log range must be positive"),
        ({"beta": one_minus_loguniform(0.9, 1.0)}, "parameter 'beta': beta range must lie inside (0, 1)"),
        ({"act": choice([])}, "parameter 'act': choice needs at least one option"),
        ({"layers": randint(3, 3)}, "parameter 'layers': low"),
        ({"p": dropout(0.2, 1.5)}, "parameter 'p': range"),
        ({"units": lograndint(0, 10)}, "parameter 'units'"),
    ],
)
def test_invalid_definitions_name_the_parameter(params, message):
    with pytest.raises(SpaceError) as err:
        SearchSpace(params)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_from_toml_data():
    space = SearchSpace({"lr": loguniform(1e-4, 1.0), "hidden": 64, "act": choice(["relu", "tanh"])})
    new = space.with_overrides({"lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-2}, "hidden": 128})
    assert new["lr"].low == 1e-3 and new["hidden"] == 128
    with pytest.raises(SpaceError, match="parameter 'depth': not in the search space"):
        space.with_overrides({"depth": 3})
    with pytest.raises(SpaceError, match="parameter 'lr': unknown dist 'logarithmic'"):
        space.with_overrides({"lr": {"dist": "logarithmic", "low": 1, "high": 2}})
    with pytest.raises(SpaceError, match="parameter 'lr': log range must be positive"):
        space.with_overrides({"lr": {"dist": "loguniform", "low": -1, "high": 2}})
    # a field the dist does not take is named, with the fields it does: not Python's "unexpected keyword argument"
    with pytest.raises(SpaceError, match=r"^parameter 'act': choice has no field 'values' \(its fields: dist, "
                                         r"options, when\)$"):
        space.with_overrides({"act": {"dist": "choice", "values": ["relu", "gelu"]}})
    with pytest.raises(SpaceError, match="parameter 'lr': loguniform has no field 'lo'; did you mean 'low'?"):
        space.with_overrides({"lr": {"dist": "loguniform", "lo": 1e-3, "high": 1e-2}})


def test_to_dict_round_trips_through_parse():
    space = SearchSpace({"lr": loguniform(1e-4, 1.0), "b": one_minus_loguniform(0.9, 0.99), "n": randint(1, 3),
                         "d": dropout(0.0, 0.5), "c": choice([16, 32]), "fixed": "x"})
    again = SearchSpace({}).__class__({k: v for k, v in space.items()}).with_overrides(space.to_dict())
    assert again.to_dict() == space.to_dict()


def test_sampling_is_reproducible_and_trial_seeds_differ():
    space = SearchSpace({"lr": loguniform(1e-4, 1.0), "act": choice(["relu", "tanh"]), "n": randint(1, 5)})
    a = sample_configs(space, 10, seed=7)
    b = sample_configs(space, 10, seed=7)
    c = sample_configs(space, 10, seed=8)
    assert a == b and a != c
    assert sample_configs(space, 10, seed=7, stage=1) != a
    seeds = {trial_seed(7, i) for i in range(1000)}
    assert len(seeds) == 1000
    for kind in ("sobol", "lhs"):
        assert sample_configs(space, 8, seed=7, kind=kind) == sample_configs(space, 8, seed=7, kind=kind)


def test_narrowed_bounds_stay_inside_hard_limits():
    beta = SearchSpace({"b": one_minus_loguniform(0.9, 0.99)})["b"]
    wider = beta.with_scale_bounds(0.0, 10.0)
    assert 0.0 <= wider.low < wider.high < 1.0
    d = SearchSpace({"d": dropout(0.1, 0.5)})["d"].with_scale_bounds(-1.0, 2.0)
    assert d.low == 0.0 and d.high < 1.0
    n = SearchSpace({"n": randint(2, 4)})["n"].with_scale_bounds(-5, 3.2)
    assert n.low == 1 and isinstance(n.high, int)


# -- conditional parameters -------------------------------------------------------------------


def _optimizer_space() -> SearchSpace:
    return SearchSpace(
        {
            "optimizer": choice(["sgd", "momentum", "adam"]),
            "momentum": one_minus_loguniform(0.8, 0.999, when={"optimizer": ["momentum"]}),
            "beta1": one_minus_loguniform(0.8, 0.99, when={"optimizer": ["adam"]}),
            "schedule": choice(["constant", "step"], when={"optimizer": ["momentum", "adam"]}),
            "decay_rate": uniform(0.1, 0.9, when={"schedule": "step"}),  # a chain: schedule is conditional too
            "fixed": 3,
        }
    )


@pytest.mark.parametrize(
    "params, message",
    [
        ({"m": uniform(0, 1, when={"opt": ["a"]})}, "parameter 'm': condition names unknown parameter 'opt'"),
        ({"opt": choice(["a", "b"]), "m": uniform(0, 1, when={"opt": ["a", "c"]})},
         "parameter 'm': condition values ['c'] are not options of 'opt'"),
        ({"x": uniform(0, 1), "m": uniform(0, 1, when={"x": [0.5]})},
         "parameter 'm': condition on 'x' needs a choice or a fixed value"),
        ({"a": choice([1, 2], when={"b": [1]}), "b": choice([1, 2], when={"a": [2]})},
         "parameter 'a': conditions form a cycle (a -> b -> a)"),
        ({"a": choice([1, 2], when={"a": [1]})}, "parameter 'a': conditions form a cycle (a -> a)"),
    ],
)
def test_bad_conditions_name_the_parameter(params, message):
    with pytest.raises(SpaceError) as err:
        SearchSpace(params)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_inactive_parameters_are_none_and_chains_follow_their_parent():
    configs = sample_configs(_optimizer_space(), 200, seed=3)
    for c in configs:
        assert (c["momentum"] is not None) == (c["optimizer"] == "momentum")
        assert (c["beta1"] is not None) == (c["optimizer"] == "adam")
        assert (c["schedule"] is not None) == (c["optimizer"] != "sgd")
        assert (c["decay_rate"] is not None) == (c["schedule"] == "step")
        assert c["fixed"] == 3
    assert {c["optimizer"] for c in configs} == {"sgd", "momentum", "adam"}
    assert any(c["decay_rate"] is not None for c in configs)


def test_conditions_do_not_change_the_values_of_active_parameters():
    """Same seed, same numbers: a condition only blanks values, it never shifts the unit cube."""
    plain = SearchSpace({k: replace(v, when=()) if hasattr(v, "when") else v for k, v in _optimizer_space().items()})
    for kind in ("random", "sobol"):
        for a, b in zip(sample_configs(plain, 32, seed=5, kind=kind), sample_configs(_optimizer_space(), 32, seed=5,
                                                                                   kind=kind)):
            assert all(b[k] is None or b[k] == a[k] for k in a)


def test_conditions_round_trip_through_to_dict_and_toml_overrides():
    space = _optimizer_space()
    data = space.to_dict()
    assert data["momentum"]["when"] == {"optimizer": ["momentum"]}
    assert data["decay_rate"]["when"] == {"schedule": ["step"]}
    assert "when" not in data["optimizer"]
    again = SearchSpace({name: parse_param(name, spec) for name, spec in data.items()})
    assert again.to_dict() == data
    assert sample_configs(again, 16, seed=1) == sample_configs(space, 16, seed=1)
    # TOML: a `when` key on an override; a single value needs no list
    new = space.with_overrides({"beta1": {"dist": "one_minus_loguniform", "low": 0.85, "high": 0.95,
                                          "when": {"optimizer": "adam"}}})
    assert new["beta1"].condition == {"optimizer": ("adam",)} and new["beta1"].low == 0.85
    with pytest.raises(SpaceError, match="parameter 'beta1': condition values \\['adamw'\\]"):
        space.with_overrides({"beta1": {"dist": "uniform", "low": 0.1, "high": 0.9, "when": {"optimizer": ["adamw"]}}})
    with pytest.raises(SpaceError, match="parameter 'beta1': bad fields for uniform: when"):
        space.with_overrides({"beta1": {"dist": "uniform", "low": 0.1, "high": 0.9, "when": ["adam"]}})


def test_narrowing_a_parent_choice_trims_the_conditions_naming_it():
    space = _optimizer_space()
    narrowed = space.with_overrides({"optimizer": {"dist": "choice", "options": ["sgd", "adam"]}})
    assert narrowed["momentum"].condition == {"optimizer": ()}  # never active now, and still a valid space
    assert narrowed["schedule"].condition == {"optimizer": ("adam",)}
    assert all(c["momentum"] is None for c in sample_configs(narrowed, 20, seed=1))
    assert SearchSpace({k: parse_param(k, v) for k, v in narrowed.to_dict().items()}).to_dict() == narrowed.to_dict()
    fixed = space.with_overrides({"optimizer": "momentum"})  # a fixed parent works too
    assert all(c["momentum"] is not None and c["beta1"] is None for c in sample_configs(fixed, 10, seed=1))


def test_to_unit_maps_inactive_parameters_to_nan():
    space = _optimizer_space()
    config = sample_configs(space, 1, seed=2)[0]
    units = dict(zip(space.searched, space.to_unit(config)))
    assert all(math.isnan(u) == (config[k] is None) for k, u in units.items())


def test_a_near_miss_of_a_setting_or_parameter_name_is_named():
    from orchestrator.spec.settings import RunSettings

    with pytest.raises(ConfigError, match=r"^setting 'trails': unknown; did you mean 'trials'\? \(known: "):
        RunSettings().merged({"trails": 8})
    with pytest.raises(SpaceError, match=r"^parameter 'hiden': not in the search space; did you mean 'hidden'\? "):
        SearchSpace({"lr": loguniform(1e-3, 1e-1), "hidden": 8}).replace(hiden=16)
    with pytest.raises(SpaceError, match=r"^parameter 'depth': not in the search space \(known: lr, hidden\)"):
        SearchSpace({"lr": loguniform(1e-3, 1e-1), "hidden": 8}).replace(depth=3)


def test_a_task_field_written_among_the_settings_says_where_it_belongs():
    """settings = {"objective": "val_ece", "mode": "min"} in a task (or objective under [run] in TOML) was refused as
    an unknown setting with the list of the known ones, none of which is the objective: nothing said that it is a
    field of the task itself."""
    from orchestrator.spec.settings import RunSettings

    with pytest.raises(ConfigError, match=r"^setting 'objective': a field of the task, not a run setting: write "
                                          r"objective = 'val_ece' at the top level of the task file, beside "
                                          r"load_data$"):
        RunSettings().merged({"trials": 4, "objective": "val_ece", "mode": "min"})
    with pytest.raises(ConfigError, match=r"^setting 'mode': .*: write mode = \.\.\. at the top level"):
        RunSettings().merged({"mode": None})


def test_numpy_options_bounds_and_fixed_values_become_python_values():
    # np.int64 is no int: the trials table would type the column as text and fail at its first write
    space = SearchSpace({"hidden": choice(np.array([8, 16, 32])), "wd": choice(np.logspace(-5, -3, 3)),
                         "bias": choice(np.array([True, False])), "act": choice(np.array(["relu", "tanh"])),
                         "layers": randint(np.int64(1), np.int64(3)), "batch_size": np.int64(32)})
    assert space["hidden"].options == (8, 16, 32) and space["batch_size"] == 32
    for config in sample_configs(space, 8, seed=0):
        assert {name: type(value) for name, value in config.items()} == {
            "hidden": int, "wd": float, "bias": bool, "act": str, "layers": int, "batch_size": int}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"hidden": choice([(8,), (16, 8), (32,)])},
         "parameter 'hidden': choice options must be str, int, float or bool (got tuple (16, 8)); "
         'name it as a string ("16-8") and parse it in build_model'),
        ({"hidden": choice([[8], [16, 8]])}, "parameter 'hidden': choice options must be str, int, float or bool "
                                             "(got list [16, 8])"),
        ({"act": choice([{"kind": "relu"}])}, "parameter 'act': choice options must be str, int, float or bool "
                                              "(got dict {'kind': 'relu'}); name it as a string and map the name"),
        ({"act": choice([object(), object()])}, "parameter 'act': choice options must be str, int, float or bool "
                                                "(got object)"),
        ({"grad_clip": choice([None, 1.0])}, "parameter 'grad_clip': choice options must be str, int, float or bool "
                                             "(got None); None marks an inactive conditional parameter"),
        ({"hidden": (16, 8)}, "parameter 'hidden': a fixed value must be str, int, float or bool, or a distribution "
                              '(got tuple (16, 8)); name it as a string ("16-8")'),
        ({"hidden": [8, 16]}, "parameter 'hidden': a fixed value must be str, int, float or bool, or a distribution "
                              "(got list [8, 16]); to search options write choice([...])"),
    ],
)
def test_values_the_trials_table_cannot_store_are_refused_in_one_line(params, message):
    with pytest.raises(SpaceError) as err:
        SearchSpace(params)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_toml_choice_of_lists_is_refused_and_a_fixed_none_is_allowed():
    with pytest.raises(SpaceError, match=r"parameter 'hidden': choice options must be str, int, float or bool"):
        SearchSpace({"hidden": 8}).with_overrides({"hidden": {"dist": "choice", "options": [[8], [16, 8]]}})
    assert SearchSpace({"grad_clip": None}).fixed == {"grad_clip": None}  # None: the built-in default


def test_a_string_as_the_options_of_a_choice_is_refused_not_split_into_letters():
    # choice("sgd") (or TOML options = "sgd") once searched "s", "g" and "d" in silence
    with pytest.raises(SpaceError, match=r"choice: options must be a list, got the string 'sgd'; write \['sgd'\]"):
        choice("sgd")
    with pytest.raises(SpaceError, match=r"options must be a list"):
        parse_param("optimizer", {"dist": "choice", "options": "sgd"})


def test_a_toml_parameter_whose_limits_or_options_are_refused_is_named():
    # TOML [space] lr = { ..., limits = [1, 0.1] } once said only "loguniform: limits ...", not which parameter
    with pytest.raises(SpaceError, match=r"^parameter 'lr': loguniform: limits \(1, 0.1\) must be a range"):
        parse_param("lr", {"dist": "loguniform", "low": 1e-3, "high": 1e-1, "limits": [1, 0.1]})
    with pytest.raises(SpaceError, match=r"^parameter 'wd': uniform: limits must be two numbers"):
        parse_param("wd", {"dist": "uniform", "low": 0, "high": 1, "limits": [0.5]})
    with pytest.raises(SpaceError, match=r"^parameter 'optimizer': choice: options must be a list"):
        parse_param("optimizer", {"dist": "choice", "options": "sgd"})
    with pytest.raises(SpaceError, match=r"^parameter 'lr': low \(0.1\) must be below high"):  # named once, not twice
        parse_param("lr", {"dist": "loguniform", "low": 0.1, "high": 0.01})
    # randint(4, 4) said "low (4) must be below high (4)", not how to fix the value it meant
    with pytest.raises(SpaceError, match=r"^parameter 'layers': low and high are both 4, a range of one value; to fix "
                                         r"it, give the value itself \('layers': 4\)$"):
        SearchSpace({"layers": randint(4, 4)})


def test_a_randint_from_zero_without_limits_says_how_to_allow_it():
    # randint(0, 3) once got "range [0, 3] leaves its limits [1.0, inf]": limits the user never wrote
    with pytest.raises(SpaceError, match=r"^parameter 'extra': a randint stays at 1 or more unless its limits say "
                                         r"otherwise \(got low 0\); write limits=\(0, \.\.\.\) to search from 0$"):
        SearchSpace({"extra": randint(0, 3)})
    assert SearchSpace({"extra": randint(0, 3, limits=(0, 8))})["extra"].low == 0
    with pytest.raises(SpaceError, match=r"leaves its limits \[2.0, 8.0\]"):  # limits the user wrote: as before
        SearchSpace({"extra": randint(1, 3, limits=(2, 8))})


def test_a_toml_range_keeps_the_tasks_condition_and_limits_unless_it_gives_its_own():
    """A new range alone dropped them: adam trials drew a momentum (then narrowed and ranked on it), and edge
    extension could take lr past the task's limit of 1."""
    space = SearchSpace({"optimizer": choice(["adam", "momentum"]),
                         "momentum": one_minus_loguniform(0.8, 0.999, when={"optimizer": ["momentum"]}),
                         "lr": loguniform(1e-4, 1, limits=(1e-6, 1.0)), "dropout": uniform(0.0, 0.5)})
    got = space.with_overrides({"momentum": {"dist": "one_minus_loguniform", "low": 0.85, "high": 0.95},
                                "lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-1},
                                "dropout": {"dist": "uniform", "low": 0.1, "high": 0.3, "limits": [0.0, 0.6]}})
    assert got["momentum"].when == (("optimizer", ("momentum",)),) and got["lr"].limits == (1e-6, 1.0)
    assert got["dropout"].limits == (0.0, 0.6)  # its own limits win
    for config in sample_configs(got, 16, seed=0):
        assert (config["momentum"] is None) == (config["optimizer"] == "adam")
    dropped = space.with_overrides({"momentum": {"dist": "one_minus_loguniform", "low": 0.85, "high": 0.95,
                                                 "when": {}}})
    assert not dropped["momentum"].when
    with pytest.raises(SpaceError, match="lr"):  # a range past the task's limit is refused, not extended into
        space.with_overrides({"lr": {"dist": "loguniform", "low": 1e-3, "high": 2.0}})


@pytest.mark.parametrize(("spec", "got"), [({"dist": "randint", "low": True, "high": 3}, "low = True"),
                                           ({"dist": "uniform", "low": 0.0, "high": True}, "high = True"),
                                           ({"dist": "loguniform", "low": "1e-3", "high": 0.1}, "low = '1e-3'")])
def test_a_bound_given_as_true_or_as_text_is_refused_not_read_as_a_number(spec, got):
    # TOML's low = "1e-3" (quoted) was taken as 0.001: a user's value is never cast
    with pytest.raises(SpaceError, match=rf"^parameter 'p': bounds must be numbers, got {got}$"):
        SearchSpace({"p": parse_param("p", spec)})


def test_a_beta_near_1_is_never_shown_as_1():
    # digits' beta2 = one_minus_loguniform(0.99, 0.9999): a third of its adam trials were listed as beta2=1 in caviar
    # top, status, the run's best line and the report, a value Adam refuses when the config is copied from there
    from orchestrator.app.answer import format_config
    from orchestrator.search.narrowing import EdgeNotice
    from orchestrator.search.space import shown_value

    assert format_config({"optimizer": "adam", "beta2": 0.99962, "lr": 0.0123456, "eps": None}) == (
        "optimizer=adam, beta2=0.9996, lr=0.0123")
    assert [shown_value(v) for v in (0.99995, -0.99996, 1.0004, 1.0, 0.999, 2.5e-5)] == [
        "0.99995", "-0.99996", "1.0004", "1", "0.999", "2.5e-05"]
    notice = EdgeNotice("beta2", "high", (0.99, 0.9999), (0.999, 0.9999999999999999), extended=True,
                        hard_limit=True, value=0.99988)
    assert notice.message() == ("best beta2 = 0.99988 sits at the upper edge of [0.99, 0.9999]: range extended to "
                                "[0.999, 0.9999999999999999]")


def test_a_sobol_stage_of_any_size_draws_without_scipys_power_of_two_warning():
    """caviar run --sampler sobol --trials 24 printed scipy's UserWarning with its source path among the run's lines."""
    import warnings

    space = SearchSpace({"lr": loguniform(1e-4, 1e-1), "hidden": randint(8, 64)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drawn = sample_configs(space, 24, seed=7, kind="sobol")
    assert len(drawn) == 24 and len({d["lr"] for d in drawn}) == 24


def test_a_set_of_options_is_refused_since_its_order_and_so_a_seeds_configs_change_between_runs():
    draw = ("from orchestrator.search.space import SearchSpace, choice\n"
            "from orchestrator.search.sampler import sample_configs\n"
            "try:\n"
            "    print([c['act'] for c in sample_configs(SearchSpace({'act': choice(%s)}), 6, seed=0)])\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    runs = {subprocess.run([sys.executable, "-c", draw % "{'relu', 'tanh', 'gelu', 'elu'}"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)}
    assert runs == {"SpaceError choice: options must be a list, got a set, whose order (and so the configs a seed "
                    "draws) changes from run to run; write ['elu', 'gelu', 'relu', 'tanh']\n"}


def test_a_toml_range_keeps_the_limits_the_task_wrote_but_not_the_open_sides_of_its_declared_range():
    task = SearchSpace({"smooth": uniform(-0.2, 0.2), "shift": uniform(0.0, 0.2), "drop": dropout(0.0, 0.5),
                        "blocks": randint(1, 4, limits=(1, 8))})
    toml = task.with_overrides({"smooth": {"dist": "uniform", "low": 0.0, "high": 0.3},
                                "shift": {"dist": "uniform", "low": -0.5, "high": 0.5},
                                "drop": {"dist": "uniform", "low": 0.1, "high": 0.6},
                                "blocks": {"dist": "randint", "low": 2, "high": 3}})
    # uniform(0, 0.3) stays at 0 and up, as in a task file: the task's (-0.2, 0.2) set no limit, and a stage that
    # extended past 0 drew a negative label smoothing
    assert toml["smooth"].limits == uniform(0.0, 0.3).limits == (0.0, math.inf)
    assert toml["shift"].limits == (-math.inf, math.inf)  # was refused: "leaves its limits [0.0, inf]"
    assert toml["drop"].limits == (0.0, 0.999) and toml["blocks"].limits == (1.0, 8.0)  # limits the task set


def test_a_condition_may_list_its_values_as_a_set():
    space = SearchSpace({"opt": choice(["sgd", "adam", "adamw"]),
                         "beta1": one_minus_loguniform(0.8, 0.99, when={"opt": {"adamw", "adam"}})})
    assert space.to_dict()["beta1"]["when"] == {"opt": ["adam", "adamw"]}
    assert space.deactivate({"opt": "adamw", "beta1": 0.9})["beta1"] == 0.9
    assert space.deactivate({"opt": "sgd", "beta1": 0.9})["beta1"] is None


def test_a_toml_range_without_a_dist_is_of_the_tasks_kind():
    # lr = { low = 1e-4, high = 1e-2 } said "unknown dist None": the range's kind is the task's
    space = SearchSpace({"lr": loguniform(1e-4, 1.0, limits=(1e-6, 10.0)), "opt": choice(["sgd", "adam"])})
    narrowed = space.with_overrides({"lr": {"low": 1e-3, "high": 1e-2}})
    assert narrowed.to_dict()["lr"] == SearchSpace({"lr": loguniform(1e-3, 1e-2, limits=(1e-6, 10.0))}).to_dict()["lr"]
    with pytest.raises(SpaceError, match=r"^parameter 'wd': a range needs its dist \(one of uniform, loguniform"):
        parse_param("wd", {"low": 1e-3, "high": 1e-2})


def test_a_fixed_override_of_a_conditional_parameter_keeps_its_condition():
    space = _optimizer_space().with_overrides({"beta1": 0.9, "schedule": "step", "fixed": 4})
    configs = sample_configs(space, 60, seed=2)
    assert {c["beta1"] for c in configs if c["optimizer"] == "adam"} == {0.9}
    assert all(c["beta1"] is None for c in configs if c["optimizer"] != "adam")  # not 0.9 in the sgd trials
    assert {c["schedule"] for c in configs if c["optimizer"] == "sgd"} == {None}
    assert all(c["decay_rate"] is not None for c in configs if c["optimizer"] != "sgd")  # its child still drawn
    assert space["fixed"] == 4 and space.to_dict()["beta1"]["when"] == {"optimizer": ["adam"]}
    # the stored space reads back as it was written
    assert SearchSpace({k: parse_param(k, v) for k, v in space.to_dict().items()}).to_dict() == space.to_dict()
