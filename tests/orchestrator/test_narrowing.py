from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from orchestrator.app.api import controller_for
from orchestrator.decide.driver import drive
from orchestrator.decide.simulate import SimulatedBackend
from orchestrator.errors import ConfigError
from orchestrator.search.narrowing import edge_warnings, narrow_choice, narrow_space, top_results
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
from orchestrator.spec.settings import RunSettings


def results_for(
    name: str, ranked_values: Sequence[Any], worse: Sequence[Any] = (), **fixed: Any
) -> list[tuple[dict, float]]:
    """Results whose scores rank ``ranked_values`` best first, then ``worse`` below them all."""
    out = [({name: v, **fixed}, 100.0 - i) for i, v in enumerate(ranked_values)]
    out += [({name: v, **fixed}, -100.0 - i) for i, v in enumerate(worse)]
    return out


def test_top_results_take_the_fraction_with_a_floor_and_skip_non_finite():
    res = [({"x": i}, float(i)) for i in range(20)] + [({"x": 99}, math.nan), ({"x": 98}, math.inf)]
    assert [c["x"] for c, _ in top_results(res, 0.25, 3)] == [19, 18, 17, 16, 15]
    assert [c["x"] for c, _ in top_results(res[:6], 0.25, 3)] == [5, 4, 3]


def test_loguniform_box_is_built_in_log10():
    space = SearchSpace({"lr": loguniform(1e-6, 1.0)})  # scale [-6, 0], width 6
    res = results_for("lr", [1e-3, 1e-4, 1e-2], worse=[1e-6, 1.0, 0.5, 2e-6, 0.3])
    out = narrow_space(space, res)  # 8 results -> top max(3, 2) = 3
    lr = out.space["lr"]
    # box [-4, -2] plus 0.15 * 6 on each side, in log10 (a linear box would be [1e-4 - 0.15, 1e-2 + 0.15])
    assert math.log10(lr.low) == pytest.approx(-4.9)
    assert math.log10(lr.high) == pytest.approx(-1.1)
    assert out.edges == []


def test_beta_box_is_built_in_minus_log10_one_minus_beta():
    space = SearchSpace({"beta": one_minus_loguniform(0.9, 0.9999)})  # scale [1, 4], width 3
    res = results_for("beta", [0.995, 0.99, 0.999], worse=[0.9, 0.9999, 0.91])
    beta = narrow_space(space, res).space["beta"]
    assert -math.log10(1 - beta.low) == pytest.approx(2 - 0.45)
    assert -math.log10(1 - beta.high) == pytest.approx(3 + 0.45)


def test_box_never_wider_than_the_old_range_and_keeps_a_minimum_width():
    space = SearchSpace({"x": uniform(0.0, 1.0)})
    res = results_for("x", [0.5, 0.5, 0.5], worse=[0.0, 1.0])
    x = narrow_space(space, res, margin=0.0).space["x"]
    assert (x.low, x.high) == pytest.approx((0.475, 0.525))
    x = narrow_space(space, results_for("x", [0.3, 0.5, 0.55]), margin=0.5).space["x"]
    assert (x.low, x.high) == (0.0, 1.0)


def test_best_at_a_soft_edge_extends_beyond_it():
    space = SearchSpace({"lr": loguniform(1e-4, 1e-1)})  # scale [-4, -1], width 3
    res = results_for("lr", [0.1, 0.05, 0.03], worse=[1e-4, 1e-3])
    out = narrow_space(space, res)
    lr = out.space["lr"]
    assert math.log10(lr.high) == pytest.approx(-1 + 1.5)  # extended by half the old width
    assert math.log10(lr.low) == pytest.approx(math.log10(0.03) - 0.45)  # the other side narrows
    [notice] = out.edges
    assert (notice.param, notice.side, notice.extended, notice.hard_limit) == ("lr", "high", True, False)
    assert notice.old_range == (1e-4, 1e-1)
    assert notice.new_range == (lr.low, lr.high)
    assert "upper edge" in notice.message()


def test_dropout_never_crosses_its_hard_limit():
    space = SearchSpace({"p": dropout(0.0, 0.9)})
    out = narrow_space(space, results_for("p", [0.9, 0.85, 0.8], worse=[0.0, 0.1]))
    assert out.space["p"].high == pytest.approx(0.999)  # would be 1.35 without the limit
    [notice] = out.edges
    assert notice.extended and notice.hard_limit
    # already at the limit: stays there, and says so
    space = SearchSpace({"p": dropout(0.0, 0.999)})
    out = narrow_space(space, results_for("p", [0.999, 0.9, 0.8], worse=[0.0, 0.1]))
    assert out.space["p"].high == 0.999
    [notice] = out.edges
    assert (notice.extended, notice.hard_limit) == (False, True)
    # the lower limit 0 as well
    out = narrow_space(space, results_for("p", [0.0, 0.05, 0.1], worse=[0.9, 0.5]))
    assert out.space["p"].low == 0.0
    assert [(n.side, n.extended, n.hard_limit) for n in out.edges] == [("low", False, True)]


def test_a_uniform_range_on_one_side_of_zero_never_crosses_it_unless_its_limits_allow():
    # uniform(0, 0.5) for a rate (dropout, label smoothing): extending the low edge would sample negative rates
    out = narrow_space(SearchSpace({"p": uniform(0.0, 0.5)}), results_for("p", [0.0, 0.02, 0.05], worse=[0.4, 0.5]))
    assert out.space["p"].low == 0.0
    assert [(n.side, n.extended, n.hard_limit) for n in out.edges] == [("low", False, True)]
    out = narrow_space(SearchSpace({"w": uniform(-2.0, -0.2)}), results_for("w", [-0.2, -0.3, -0.4], worse=[-2.0]))
    assert out.space["w"].high == 0.0  # extended towards zero (by 0.9), stopped there
    # a range across zero, or limits given, extends as before
    out = narrow_space(SearchSpace({"x": uniform(-1.0, 1.0)}), results_for("x", [-1.0, -0.9, -0.8], worse=[1.0]))
    assert out.space["x"].low < -1.0
    out = narrow_space(SearchSpace({"x": uniform(0.0, 1.0, limits=(-5, 5))}),
                       results_for("x", [0.0, 0.1, 0.2], worse=[1.0]))
    assert out.space["x"].low < 0.0


def test_beta_stays_inside_zero_one():
    space = SearchSpace({"beta": one_minus_loguniform(0.9, 0.999)})  # scale [1, 3]
    out = narrow_space(space, results_for("beta", [0.9, 0.92, 0.95], worse=[0.999, 0.99]))
    beta = out.space["beta"]
    assert 0.0 < beta.low < 1e-5  # extended to a hair above the open limit 0, not to 0
    assert [(n.side, n.extended, n.hard_limit) for n in out.edges] == [("low", True, True)]
    # extending upward approaches 1 but never reaches it
    out = narrow_space(space, results_for("beta", [0.999, 0.998, 0.997], worse=[0.9, 0.95]))
    assert out.space["beta"].high == pytest.approx(0.9999)
    assert out.space["beta"].high < 1.0
    assert [(n.side, n.extended, n.hard_limit) for n in out.edges] == [("high", True, False)]


def test_integers_stay_at_or_above_one():
    space = SearchSpace({"layers": randint(1, 8)})
    out = narrow_space(space, results_for("layers", [1, 2, 1], worse=[8, 7]))
    assert (out.space["layers"].low, out.edges[0].hard_limit, out.edges[0].extended) == (1, True, False)
    space = SearchSpace({"layers": randint(3, 8)})  # scale width 6: extension 3 would reach 0
    out = narrow_space(space, results_for("layers", [3, 4, 3], worse=[8, 7]))
    layers = out.space["layers"]
    assert layers.low == 1 and isinstance(layers.low, int)
    assert [(n.side, n.extended, n.hard_limit) for n in out.edges] == [("low", True, True)]
    space = SearchSpace({"hidden": lograndint(1, 64)})
    out = narrow_space(space, results_for("hidden", [1, 2, 3], worse=[64, 30]))
    assert out.space["hidden"].low == 1
    assert out.edges[0].hard_limit


def test_integer_box_does_not_grow_past_the_old_range():
    space = SearchSpace({"layers": randint(1, 8)})
    out = narrow_space(space, results_for("layers", [4, 5, 7], worse=[1, 8]))
    layers = out.space["layers"]
    assert 1 <= layers.low <= 4 and 7 <= layers.high <= 8
    assert out.edges == []


def test_choice_keeps_top_options_and_untried_ones_in_original_order():
    space = SearchSpace({"act": choice(["relu", "tanh", "gelu", "silu"])})
    res = [({"act": "gelu"}, 10.0 - i) for i in range(3)]  # the top 3
    res += [({"act": "relu"}, -float(i)) for i in range(5)]  # tried 5 times, never in the top
    res += [({"act": "tanh"}, -50.0)]  # tried once: too few to judge
    out = narrow_space(space, res)  # 9 results -> top 3, all gelu
    assert out.space["act"].options == ("tanh", "gelu", "silu")
    assert narrow_space(space, res, choice_floor=0).space["act"].options == ("gelu",)


def test_narrow_choice_never_empties():
    dist = choice(["a", "b"])
    assert narrow_choice(dist, ["a", "b"] * 5, [], floor=0).options == ("a",)


def test_fixed_params_and_small_result_sets():
    space = SearchSpace({"lr": loguniform(1e-5, 1.0), "batch": 64, "opt": "adam"})
    res = [({"lr": 1e-3, "batch": 64, "opt": "adam"}, 1.0), ({"lr": 1e-2, "batch": 64, "opt": "adam"}, 0.5)]
    out = narrow_space(space, res)  # fewer than min_top: unchanged
    assert out.space is space and out.edges == []
    res += [({"lr": 3e-3, "batch": 64, "opt": "adam"}, 0.7)]
    out = narrow_space(space, res)
    assert out.space.fixed == {"batch": 64, "opt": "adam"}
    assert list(out.space) == ["lr", "batch", "opt"]


def test_narrowing_is_deterministic():
    space = SearchSpace({"lr": loguniform(1e-6, 1.0), "p": dropout(), "act": choice(["a", "b", "c"])})
    res = [({"lr": 10 ** (-i / 3), "p": (i % 5) / 10, "act": "abc"[i % 3]}, float((i * 37) % 11)) for i in range(18)]
    first, second = narrow_space(space, res), narrow_space(space, list(res))
    assert repr(first.space) == repr(second.space) and first.edges == second.edges


def test_edge_warnings():
    space = SearchSpace({"lr": loguniform(1e-5, 1e-1), "p": dropout(0.0, 0.5), "n": randint(1, 8), "opt": "sgd"})
    notices = edge_warnings(space, {"lr": 0.1, "p": 0.0, "n": 4, "opt": "sgd"})
    assert [(n.param, n.side, n.hard_limit, n.extended) for n in notices] == [
        ("lr", "high", False, False),
        ("p", "low", True, False),
    ]
    assert "upper edge" in notices[0].message()
    assert edge_warnings(space, {"lr": 1e-3, "p": 0.25, "n": 4, "opt": "sgd"}) == []
    # within 5% of the log width counts as the edge: width 4 decades -> 0.2 decade
    assert [n.side for n in edge_warnings(space, {"lr": 10**-4.85, "p": 0.25, "n": 4})] == ["low"]


@pytest.mark.parametrize("options, field", [({"top_fraction": 0.0}, "top_fraction"), ({"min_top": 0}, "min_top")])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        narrow_space(SearchSpace({"x": uniform(0, 1)}), [], **options)


# -- conditional parameters -------------------------------------------------------------------


def _conditional_space() -> SearchSpace:
    return SearchSpace(
        {
            "optimizer": choice(["sgd", "momentum", "adagrad", "adam"]),
            "momentum": one_minus_loguniform(0.8, 0.999, when={"optimizer": ["momentum"]}),
            "beta1": one_minus_loguniform(0.8, 0.99, when={"optimizer": ["adam"]}),
            "lr": loguniform(1e-4, 1.0),
        }
    )


def test_inactive_parameter_keeps_its_range_and_raises_no_edge_notice():
    space = _conditional_space()
    # The best trials all use adagrad: beta1 and momentum were never active among them.
    top = [({"optimizer": "adagrad", "momentum": None, "beta1": None, "lr": 10 ** (-2 - 0.1 * i)}, 100.0 - i)
           for i in range(4)]
    worse = [({"optimizer": "adam", "momentum": None, "beta1": 0.9899, "lr": 1e-3}, -i) for i in range(3)]
    worse += [({"optimizer": "momentum", "momentum": 0.8001, "beta1": None, "lr": 1e-3}, -10.0 - i) for i in range(3)]
    out = narrow_space(space, top + worse, top_fraction=0.3, min_top=3)
    for name in ("momentum", "beta1"):
        assert (out.space[name].low, out.space[name].high) == (space[name].low, space[name].high)
    assert {e.param for e in out.edges} <= {"lr"}
    assert out.space["lr"] != space["lr"]  # the unconditional parameter still narrows
    # adam and momentum: tried 3 times each, never in the top: dropped, and the conditions follow
    assert out.space["optimizer"].options == ("sgd", "adagrad")  # sgd: never tried, kept
    assert out.space["momentum"].condition == {"optimizer": ()}
    assert out.space.to_dict()["beta1"]["when"] == {"optimizer": []}


def test_conditional_parameter_narrows_on_its_active_top_trials_only():
    space = _conditional_space()
    # The top 8: four momentum trials (momentum near 0.95) and four adam trials (momentum inactive).
    rows = []
    for i, m in enumerate([0.95, 0.96, 0.94, 0.955]):
        rows.append(({"optimizer": "momentum", "momentum": m, "beta1": None, "lr": 1e-2}, 100.0 - 2 * i))
        rows.append(({"optimizer": "adam", "momentum": None, "beta1": 0.9, "lr": 1e-2}, 99.0 - 2 * i))
    rows += [({"optimizer": "sgd", "momentum": None, "beta1": None, "lr": 1e-2}, -float(i)) for i in range(24)]
    out = narrow_space(space, rows, top_fraction=0.25, min_top=3)
    narrowed = out.space["momentum"]
    assert space["momentum"].low < narrowed.low < 0.94 and 0.96 < narrowed.high < space["momentum"].high
    assert not [e for e in out.edges if e.param == "momentum"]
    assert narrowed.condition == {"optimizer": ("momentum",)}


def test_too_few_active_top_trials_keep_the_range_even_at_an_edge():
    space = _conditional_space()
    # One momentum trial in the top 4, at the upper edge: one trial is too few to extend the range.
    rows = [({"optimizer": "momentum", "momentum": 0.999, "beta1": None, "lr": 1e-2}, 100.0)]
    rows += [({"optimizer": "sgd", "momentum": None, "beta1": None, "lr": 1e-2}, 99.0 - i) for i in range(3)]
    rows += [({"optimizer": "momentum", "momentum": 0.9, "beta1": None, "lr": 1e-2}, -float(i)) for i in range(12)]
    out = narrow_space(space, rows, top_fraction=0.25, min_top=3)
    assert out.space["momentum"] == space["momentum"]
    assert not [e for e in out.edges if e.param == "momentum"]


def test_edge_warnings_skip_inactive_parameters():
    space = _conditional_space()
    best = {"optimizer": "adagrad", "momentum": None, "beta1": None, "lr": 0.5}
    assert {n.param for n in edge_warnings(space, best)} <= {"lr"}


def test_a_best_value_on_an_edge_that_was_not_extended_is_not_called_extended():
    # extend=0 (extend_edges = false) and the far side narrowed: the notice once read "range extended to
    # [0.0001, 0.00119]" with extended=True (the events table's detail), though the low edge never moved
    space = SearchSpace({"lr": loguniform(1e-4, 1.0)})
    res = results_for("lr", [1e-4, 2e-4, 3e-4], worse=[0.5, 0.3, 0.1, 0.05, 0.01, 0.02, 0.03, 0.04, 0.06])
    kept = narrow_space(space, res, extend=0.0)
    assert kept.space["lr"].low == 1e-4 and kept.space["lr"].high < 0.01
    [notice] = kept.edges
    assert (notice.side, notice.extended, notice.hard_limit) == ("low", False, False)
    assert "extended" not in notice.message() and "the optimum may lie beyond" in notice.message()
    [moved] = narrow_space(space, res).edges  # with extension the low edge moves, and says so
    assert moved.extended and moved.new_range[0] < 1e-4


@pytest.mark.parametrize("dist, best", [
    (randint(1, 4, limits=(1, 4.5)), 4),  # 5 lies past the limit, 4 is the last integer inside it
    (one_minus_loguniform(0.99, 0.9999999999999999), 0.9999999999999999),  # no float lies closer to 1
])
def test_an_extension_its_limits_or_float_precision_stop_is_a_hard_limit_not_extend_edges_off(dist, best):
    space = SearchSpace({"p": dist})
    notice = narrow_space(space, results_for("p", [best] * 3)).edges[0]
    assert (notice.side, notice.extended, notice.hard_limit) == ("high", False, True)
    assert "hard limit" in notice.message()


def test_a_sweep_says_an_integer_range_stopped_by_its_limits_sits_at_a_hard_limit():
    space = SearchSpace({"p": randint(1, 4, limits=(1, 4.5))})
    settings = RunSettings().merged(dict(plan="9x1,4x2", pruner="none", seed=1, slots=1)).validate()
    controller = drive(controller_for(space, settings),
                       SimulatedBackend(lambda c: 0.5 + 0.4 * space["p"].to_unit(c["p"]), 1), None)
    edges = [e for e in controller.events if e["kind"].startswith(("edge", "range_extended")) and e["stage"] == 0]
    assert edges and all(e["kind"] == "edge_at_hard_limit" for e in edges), edges
    assert not any("extend_edges = false" in (e["reason"] or "") for e in controller.events)
