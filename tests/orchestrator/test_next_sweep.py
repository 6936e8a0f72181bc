"""The next sweep's ranges (coarse to fine across sweeps), decided on plain configs and scores."""

from __future__ import annotations

import math

from orchestrator.search.next_sweep import next_sweep_space
from orchestrator.search.space import SearchSpace, choice, loguniform, one_minus_loguniform, randint

DECLARED = SearchSpace({
    "lr": loguniform(1e-4, 1.0),
    "optimizer": choice(["adam", "momentum", "sgd"]),
    "momentum": one_minus_loguniform(0.8, 0.99, when={"optimizer": ["momentum"]}),
    "layers": randint(1, 4),
    "batch_size": 64,
})


def config(lr, optimizer="adam", layers=2, momentum=None):
    return {"lr": lr, "optimizer": optimizer, "momentum": momentum, "layers": layers, "batch_size": 64}


def test_ranges_close_around_the_last_stages_best_inside_what_every_stage_searched():
    narrowed = DECLARED.replace(lr=loguniform(1e-3, 1e-1))  # stage 2 sampled a narrower lr
    last = [(config(0.01), 0.95), (config(0.012), 0.94), (config(0.008), 0.93), (config(0.09), 0.5),
            (config(0.002), 0.4)]
    found = next_sweep_space(DECLARED, [DECLARED, narrowed], [[(config(0.5), 0.1)] * 3, last])
    assert (found.stage, found.top, found.judged) == (1, 3, 5)
    lr = found.space["lr"]
    # The box of the top three (1e-2.1 .. 1e-1.92) plus 15% of the hull's 4 decades each side: 10^-2.7 .. 10^-1.32
    assert math.isclose(math.log10(lr.low), math.log10(0.008) - 0.6, abs_tol=1e-9)
    assert math.isclose(math.log10(lr.high), math.log10(0.012) + 0.6, abs_tol=1e-9)
    assert found.edges == []


def test_a_best_value_on_the_hulls_edge_moves_past_it_and_a_hard_limit_holds():
    space = DECLARED.replace(lr=loguniform(1e-4, 1e-2, limits=(1e-6, 1e-2)))
    results = [(config(0.0099, layers=1), 0.9), (config(0.008, layers=1), 0.8), (config(0.005, layers=2), 0.7)]
    found = next_sweep_space(space, [space], [results])
    assert found.space["lr"].high == 1e-2  # the limit
    assert found.space["layers"].low == 1
    kinds = {(n.param, n.side): (n.extended, n.hard_limit) for n in found.edges}
    assert kinds == {("lr", "high"): (False, True), ("layers", "low"): (False, True)}
    free = next_sweep_space(DECLARED, [DECLARED], [[(config(0.99), 0.9), (config(0.5), 0.8), (config(0.2), 0.7)]])
    assert free.space["lr"].high > 1.0  # no limit: the next sweep looks past the declared edge
    assert any(n.param == "lr" and n.extended for n in free.edges)
    held = next_sweep_space(DECLARED, [DECLARED], [[(config(0.99), 0.9), (config(0.5), 0.8), (config(0.2), 0.7)]],
                            extend_edges=False)
    assert held.space["lr"].high == 1.0


def test_options_are_judged_on_every_stages_trials_and_a_dropped_parent_drops_its_child():
    first = [(config(0.01, "sgd"), 0.2)] * 3 + [(config(0.01, "momentum", momentum=0.9), 0.3)] * 3
    last = [(config(0.01), 0.9), (config(0.02), 0.8), (config(0.03), 0.7), (config(0.04), 0.6)]
    found = next_sweep_space(DECLARED, [DECLARED, DECLARED], [first, last])
    # sgd and momentum were tried 3 times each (in stage 1), never among the last stage's best
    assert found.space["optimizer"].options == ("adam",)
    assert found.space["momentum"].when == (("optimizer", ()),)
    rarely = [(config(0.01, "sgd"), 0.2)] * 2
    kept = next_sweep_space(DECLARED, [DECLARED, DECLARED], [rarely, last])
    assert kept.space["optimizer"].options == ("adam", "momentum", "sgd")  # too little seen to drop
    # Every sgd trial pruned (not judged, as three completed): still tried, and dropped across sweeps
    pruned = [config(0.01, "sgd")] * 3
    gone = next_sweep_space(DECLARED, [DECLARED, DECLARED], [[], last], tried=[c for c, _ in last] + pruned)
    assert gone.space["optimizer"].options == ("adam", "momentum")


def test_a_stage_that_trained_one_config_again_is_passed_over_and_too_few_configs_decide_nothing():
    stage2 = [(config(0.01), 0.9), (config(0.02), 0.8), (config(0.03), 0.7)]
    reseeded = [(config(0.01), 0.91), (config(0.01), 0.89), (config(0.01), 0.9)]
    found = next_sweep_space(DECLARED, [DECLARED, DECLARED, DECLARED], [[], stage2, reseeded])
    assert found.stage == 1
    assert next_sweep_space(DECLARED, [DECLARED], [[(config(0.01), 0.9), (config(0.02), 0.8)]]) is None
    assert next_sweep_space(DECLARED, [DECLARED], [reseeded]) is None


def test_the_toml_loads_back_as_the_same_ranges_whatever_the_values_look_like():
    import tomllib

    from orchestrator.app.cli_next import next_sweep_toml
    from orchestrator.search.space import uniform

    space = SearchSpace({
        "shift": uniform(-0.2, 0.2),  # open limits on both sides: [-inf, inf]
        "beta": one_minus_loguniform(0.9, 0.99999),
        "head": choice(['say "hi"', "plain"]),
        "bn": choice([False, True]),
        "optimizer": choice(["adam", "sgd"]),
        "momentum": one_minus_loguniform(0.8, 0.99, when={"optimizer": ["sgd"]}),
    })
    configs = [{"shift": s, "beta": b, "head": 'say "hi"', "bn": True, "optimizer": "adam", "momentum": None}
               for s, b in ((0.01, 0.999991), (0.02, 0.99998), (-0.03, 0.99997), (0.1, 0.95))]
    tried = [({**configs[3], "optimizer": "sgd", "momentum": 0.9}, 0.0)] * 3
    found = next_sweep_space(space, [space, space], [tried, [(c, 1.0 - i) for i, c in enumerate(configs)]])
    text = next_sweep_toml(found, space, {"name": "s", "task": "t.py"}, [])
    assert "# momentum: left out, as no trial of these ranges uses it (optimizer is one of ['adam'])" in text
    loaded = space.with_overrides(tomllib.loads(text)["space"])
    for name in ("shift", "beta"):
        assert math.isclose(loaded[name].low, found.space[name].low, rel_tol=1e-3)
        assert math.isclose(loaded[name].high, found.space[name].high, rel_tol=1e-3)
        assert loaded[name].limits == found.space[name].limits
    assert 0.99999 < loaded["beta"].high < 1.0  # moved past its edge; 4 or 6 digits would round it to 1
    assert loaded["head"].options == ('say "hi"', "plain")  # never tried: kept
    assert loaded["bn"].options == (False, True) and loaded["optimizer"].options == ("adam",)


def test_a_child_of_a_left_out_parameter_is_left_out_too():
    from orchestrator.app.cli_next import next_sweep_toml
    from orchestrator.search.space import uniform

    space = SearchSpace({"lr": loguniform(1e-3, 1e-1), "gate": choice(["none", "mul"]),
                         "gate_kind": choice(["sig", "tanh"], when={"gate": ["mul"]}),
                         "gate_temp": uniform(0.5, 2.0, when={"gate_kind": ["sig"]})})
    results = [({"lr": 10 ** (-3 + i / 6), "gate": "none" if i < 6 else "mul",
                 "gate_kind": None if i < 6 else "sig", "gate_temp": None if i < 6 else 1.0}, -i) for i in range(12)]
    found = next_sweep_space(space, [space], [results])
    assert found.space["gate"].options == ("none",)
    text = next_sweep_toml(found, space, {"name": "s", "task": "t.py"}, [{"stage": 0, "max_epochs": 1}])
    # gate_kind is never drawn with gate always 'none', so neither is gate_temp, drawn only when gate_kind is 'sig'
    assert "# gate_kind: left out, as no trial of these ranges uses it (gate is one of ['none'])" in text
    assert "# gate_temp: left out, as no trial of these ranges uses it (gate_kind is left out)" in text
    assert "gate_temp =" not in text


def test_a_value_the_sweep_fixed_stays_fixed_in_the_next_sweep():
    import tomllib

    from orchestrator.app.cli_next import next_sweep_toml

    task = SearchSpace({"lr": loguniform(1e-3, 1e-1), "hidden": randint(4, 64), "act": choice(["tanh", "relu"]),
                        "batch_size": 32})
    swept = task.with_overrides({"hidden": 16, "act": "relu"})  # the sweep's own --config fixed these
    results = [({"lr": 10 ** (-3 + i / 6), "hidden": 16, "act": "relu", "batch_size": 32}, -i) for i in range(12)]
    found = next_sweep_space(swept, [swept], [results])
    text = next_sweep_toml(found, swept, {"name": "s", "task": "t.py"}, [{"stage": 0, "max_epochs": 1}])
    written = tomllib.loads(text)["space"]
    assert (written["hidden"], written["act"], written["batch_size"]) == (16, "relu", 32)
    # Read over the task's space as caviar run --config reads it: only lr is searched, hidden is not searched again
    assert list(task.with_overrides(written).searched) == ["lr"]


def test_an_edge_kept_by_extend_edges_false_is_said_in_the_comment():
    from orchestrator.app.cli_next import next_sweep_toml

    results = [(config(0.95), 0.9), (config(0.9), 0.8), (config(0.7), 0.7), (config(0.01), 0.1)]
    found = next_sweep_space(DECLARED, [DECLARED], [results], extend_edges=False)
    assert found.space["lr"].high == 1.0
    text = next_sweep_toml(found, DECLARED, {"name": "s", "task": "t.py"}, [{"stage": 0, "max_epochs": 1}])
    line = next(line for line in text.splitlines() if line.startswith("lr ="))
    assert line.endswith("# declared [0.0001, 1]; the best trial's 0.95 sits on the high edge, not moved past "
                         "(extend_edges = false)")


def test_a_hard_edge_says_whether_the_task_wrote_the_limit():
    from orchestrator.app.cli_next import next_sweep_toml

    results = [(config(0.01 * (i + 1), layers=1 if i < 3 else 3), -i) for i in range(6)]
    for layers, said in ((randint(1, 4), "(of its kind: no limits= was written)"),
                         (randint(1, 4, limits=(1, 4)), "(limits=)")):
        space = DECLARED.replace(layers=layers)
        found = next_sweep_space(space, [space], [results])
        text = next_sweep_toml(found, space, {"name": "s", "task": "t.py"}, [{"stage": 0, "max_epochs": 1}])
        line = next(line for line in text.splitlines() if line.startswith("layers ="))
        assert line.endswith(f"the best trial's 1 sits on the low edge, a hard limit {said}"), line


def test_a_conditional_parameter_the_best_trial_did_not_use_says_how_many_of_the_best_did():
    from orchestrator.app.cli_next import next_sweep_toml

    results = [(config(0.01), 0.9), (config(0.02, "momentum", momentum=0.95), 0.8), (config(0.03), 0.7),
               (config(0.5, "sgd"), 0.1), (config(0.4, "sgd"), 0.1), (config(0.3, "sgd"), 0.1)]
    found = next_sweep_space(DECLARED, [DECLARED], [results])
    text = next_sweep_toml(found, DECLARED, {"name": "s", "task": "t.py"}, [{"stage": 0, "max_epochs": 1}])
    line = next(line for line in text.splitlines() if line.startswith("momentum ="))
    # The second best trial used momentum: "no best trial used it" would be false
    assert line.endswith("# declared [0.8, 0.99]; the best trial did not use it; 1 of the best 3 did (too few to "
                         "close around: kept as searched)"), line


def test_a_parameter_named_in_greek_is_written_as_a_quoted_key():
    import tomllib

    from orchestrator.app.cli_next import next_sweep_toml
    from orchestrator.search.space import uniform

    space = SearchSpace({"λ": loguniform(1e-3, 1e-1), "opt": choice(["a", "b"]),
                         "β": uniform(0.1, 0.5, when={"opt": ["a"]}), "γ": 0.5})
    results = [({"λ": 10 ** (-3 + i / 6), "opt": "a", "β": 0.1 + i / 40, "γ": 0.5}, -i) for i in range(12)]
    found = next_sweep_space(space, [space], [results])
    text = next_sweep_toml(found, space, {"name": "s", "task": "t.py"}, [{"stage": 0, "max_epochs": 1}])
    written = tomllib.loads(text)["space"]  # before: a bare λ = ... line, invalid TOML, and a traceback
    assert list(written) == ["λ", "opt", "β", "γ"] and written["γ"] == 0.5 and "\n\"λ\" = { dist" in text
    assert space.with_overrides(written)["β"].when == (("opt", ("a",)),)


def test_bounds_round_outward_so_a_best_value_by_an_edge_stays_inside():
    import tomllib

    from orchestrator.app.cli_next import next_sweep_toml
    from orchestrator.search.space import uniform

    declared = SearchSpace({"shift": uniform(-0.5, 0.5)})
    moved = SearchSpace({"shift": uniform(-0.2, 1.0730497755)})  # stage 2 moved past the declared high edge
    first = [({"shift": -0.4 + i * 0.1}, -i) for i in range(9)]
    second = [({"shift": 1.07304}, 1.0), ({"shift": 1.0}, 0.9), ({"shift": 0.95}, 0.8), ({"shift": -0.1}, 0.1)]
    found = next_sweep_space(declared, [declared, moved], [first, second], extend_edges=False)
    text = next_sweep_toml(found, declared, {"name": "s", "task": "t.py"}, [{"stage": 1, "max_epochs": 1}])
    shift = tomllib.loads(text)["space"]["shift"]
    # Before: high = 1.073 (to the nearest), below the best trial's 1.07304, which the next sweep could never draw
    assert shift["low"] <= 0.95 and 1.07304 <= shift["high"] == 1.074


def test_a_beta_near_one_keeps_its_bounds_where_rounding_outward_would_widen_them_many_times():
    from orchestrator.app.cli_next import rounded_spec

    beta = one_minus_loguniform(0.99989, 0.9999)  # 0.04 decades wide: 0.9998 would be 0.3 decades
    assert rounded_spec("beta", beta)["low"] == 0.99989
    assert rounded_spec("beta", one_minus_loguniform(0.95123456, 0.99)) == {
        "dist": "one_minus_loguniform", "low": 0.9512, "high": 0.99}
