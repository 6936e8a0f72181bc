"""Hyperparameter importance in the report: main effects of a random forest, one predict call per parameter."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from orchestrator.app.report_data import _unit, importance
from orchestrator.search.space import SearchSpace, parse_param

SPACE = SearchSpace({
    "lr": parse_param("lr", {"dist": "loguniform", "low": 1e-4, "high": 1.0}),
    "dropout": parse_param("dropout", {"dist": "uniform", "low": 0.0, "high": 0.5}),
    "optimizer": parse_param("optimizer", {"dist": "choice", "options": ["sgd", "adam"]}),
})


def sweep(n=40, seed=0):
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, 0))
        config = {"lr": lr, "dropout": float(rng.uniform(0, 0.5)), "optimizer": ["sgd", "adam"][i % 2]}
        score = 1.0 - (math.log10(lr) + 2) ** 2 / 4 + float(rng.normal(0, 0.01))  # best at lr = 1e-2
        trials.append({"stage": 1, "best_score": score, "config": config})
    return SimpleNamespace(space=SPACE, trials=trials)


def reference(data, seed=0):
    """The definition, one forest predict per grid value."""
    params = data.space.searched
    x = np.array([[_unit(d, t["config"].get(n)) for n, d in params.items()] for t in data.trials])
    y = np.array([t["best_score"] for t in data.trials])
    forest = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed).fit(x, y)
    total = float(np.var(forest.predict(x)))
    out = {}
    for i, (name, dist) in enumerate(params.items()):
        grid = ([dist.to_unit(o) for o in dist.options] if hasattr(dist, "options")
                else np.linspace(x[:, i].min(), x[:, i].max(), 16))
        curve = []
        for g in grid:
            probe = x.copy()
            probe[:, i] = g
            curve.append(forest.predict(probe).mean())
        out[name] = float(np.var(curve)) / total
    return out


def test_importance_equals_the_per_grid_value_definition():
    data = sweep()
    got, stage = importance(data)
    assert stage == 1
    want = reference(data)
    assert got.keys() == want.keys()
    for name in want:
        assert math.isclose(got[name], want[name], rel_tol=1e-9, abs_tol=1e-12), name


def test_the_parameter_that_drives_the_score_ranks_first():
    got, _ = importance(sweep(seed=3))
    assert max(got, key=got.get) == "lr"
    assert got["lr"] > 5 * max(got["dropout"], got["optimizer"])


def test_a_parameter_held_at_one_value_in_the_stage_is_not_scored_as_unimportant():
    # a fused sweep's blocks share their leader's optimizer: every stage-1 trial was "adam", so the momentum that
    # only "sgd" reads was never active there; both got a 0.00 bar, read as "does not matter", though never varied
    from orchestrator.app.report_figures import plot_importance

    space = SearchSpace({**SPACE, "momentum": parse_param(
        "momentum", {"dist": "uniform", "low": 0.5, "high": 0.95, "when": {"optimizer": ["sgd"]}})})
    data = sweep()
    for t in data.trials:
        t["config"].update(optimizer="adam", momentum=None)
    data.space = space
    got, stage = importance(data)
    assert set(got) == {"lr", "dropout"} and stage == 1
    assert max(got, key=got.get) == "lr"
    figure, _ = plot_importance(data, (got, stage))
    assert "Not scored, as each held one value in stage 1's trials (or was never active there): optimizer, " \
           "momentum." in figure.caption
    for t in data.trials:
        t["config"].update(lr=0.01, dropout=0.1)
    assert importance(data) == ({}, 1)
    assert plot_importance(data, ({}, 1)) == (None, "no searched parameter took two different values in stage 1's "
                                                    "trials")
