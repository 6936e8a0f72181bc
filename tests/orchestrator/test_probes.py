"""Which configs try a space's ends before a sweep (orchestrator/search/probes.py): plain data, no torch."""

from __future__ import annotations

from orchestrator.search.probes import MAX_OPTIONS, edge_probes
from orchestrator.search.space import SearchSpace, choice, lograndint, loguniform, randint, uniform


def test_each_range_gets_its_two_ends_and_each_choice_its_other_options_with_the_base_values_elsewhere():
    space = SearchSpace({"blocks": randint(1, 6), "dropout": uniform(0.0, 0.5), "act": choice(["relu", "gelu", "tanh"]),
                         "classes": 10})
    base = {"blocks": 3, "dropout": 0.0, "act": "relu", "classes": 10}
    probes = edge_probes(space, base)
    assert [(p.param, p.value) for p in probes] == [("blocks", 1), ("blocks", 6), ("dropout", 0.5), ("act", "gelu"),
                                                    ("act", "tanh")]  # dropout's low end is the base's own value
    high = probes[1]
    assert high.config == {**base, "blocks": 6} and high.where == "the high end of [1, 6]"
    assert probes[3].where == "an option of choice(['relu', 'gelu', 'tanh'])"
    assert all(p.config == {**base, p.param: p.value} for p in probes)


def test_what_caviars_own_loop_reads_is_not_probed_as_it_builds_the_same_model():
    space = SearchSpace({"lr": loguniform(1e-4, 1e-1), "batch_size": randint(16, 128), "momentum": uniform(0.5, 0.99),
                         "optimizer": choice(["sgd", "adam"]), "width": randint(8, 64)})
    base = {"lr": 0.01, "batch_size": 32, "momentum": 0.9, "optimizer": "sgd", "width": 16}
    assert [(p.param, p.value) for p in edge_probes(space, base)] == [("width", 8), ("width", 64)]


def test_an_inactive_parameter_is_left_to_its_parent_and_an_option_that_activates_children_gives_them_middles():
    space = SearchSpace({
        "block": choice(["mlp", "conv"]),
        "kernel": randint(3, 7, when={"block": ["conv"]}),
        "hidden": randint(16, 256, when={"block": ["mlp"]}),
    })
    base = space.deactivate({"block": "mlp", "kernel": 5, "hidden": 64})
    assert base == {"block": "mlp", "kernel": None, "hidden": 64}
    probes = edge_probes(space, base)
    assert [(p.param, p.value) for p in probes] == [("block", "conv"), ("hidden", 16), ("hidden", 256)]
    conv = probes[0].config
    assert conv == {"block": "conv", "kernel": 5, "hidden": None}  # the kernel's middle; hidden off


def test_a_long_choice_is_probed_on_its_first_options_only():
    options = [f"act{i}" for i in range(40)]
    probes = edge_probes(SearchSpace({"act": choice(options)}), {"act": "act0"})
    assert [p.value for p in probes] == options[1:MAX_OPTIONS]


def test_an_integer_range_with_whole_float_bounds_probes_and_stores_ints():
    space = SearchSpace({"hidden": randint(1, 1e3), "width": lograndint(8.0, 64.0)})
    probed = [(p.param, p.value) for p in edge_probes(space, {"hidden": 10, "width": 16})]
    assert probed == [("hidden", 1), ("hidden", 1000), ("width", 8), ("width", 64)]
    assert all(type(value) is int for _, value in probed)  # nn.Linear(4, 1000.0) raised in the probe, not in trials
    stored = space.to_dict()
    assert (stored["hidden"]["high"], stored["width"]["low"]) == (1000, 8)
    assert type(stored["hidden"]["high"]) is int and type(stored["width"]["low"]) is int
