"""The TPE-style sampler of later stages, on plain data: pure, drawn toward the good trials, random without data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.search.sampler import stage_configs
from orchestrator.search.space import SearchSpace, choice, loguniform, one_minus_loguniform, randint
from orchestrator.search.tpe import TPEOptions, good_mask, tpe_unit_points

SPACE = SearchSpace({
    "lr": loguniform(1e-5, 1.0),
    "opt": choice(["sgd", "momentum", "adam"]),
    "momentum": one_minus_loguniform(0.8, 0.999, when={"opt": ["momentum"]}),
    "layers": randint(1, 4),
})


def history(n: int = 40, seed: int = 0, best_log_lr: float = -2.0):
    """Random trials of one stage scored by how close log10(lr) is to ``best_log_lr``; adam clearly better."""
    configs, _ = stage_configs(SPACE, n, seed=seed, stage=0)
    scored = []
    for config in configs:
        score = -abs(math.log10(config["lr"]) - best_log_lr) + (1.0 if config["opt"] == "adam" else 0.0)
        scored.append((config, score, 0))
    return scored


def test_good_is_the_top_share_of_each_stage_on_its_own():
    rows = [({}, 0.1, 0), ({}, 0.9, 0), ({}, 0.5, 0), ({}, 0.2, 0), ({}, 0.3, 1), ({}, 0.05, 1)]
    assert good_mask(rows, 0.25) == [False, True, False, False, True, False]


def test_same_history_same_points_and_stages_differ():
    rows = history()
    a = tpe_unit_points(SPACE, rows, 8, seed=3, stage=1)
    assert np.array_equal(a, tpe_unit_points(SPACE, rows, 8, seed=3, stage=1))
    assert not np.array_equal(a, tpe_unit_points(SPACE, rows, 8, seed=3, stage=2))
    assert a.shape == (8, 4) and ((a >= 0) & (a < 1)).all()


def test_points_are_drawn_toward_the_good_region():
    rows = history(60)
    tpe, how = stage_configs(SPACE, 40, seed=1, stage=1, kind="tpe", history=rows)
    rand, _ = stage_configs(SPACE, 40, seed=1, stage=1, kind="random")
    assert how == "tpe"

    def distance(configs):
        return np.mean([abs(math.log10(c["lr"]) + 2.0) for c in configs])

    assert distance(tpe) < 0.6 * distance(rand)
    assert sum(c["opt"] == "adam" for c in tpe) > sum(c["opt"] == "adam" for c in rand)
    for c in tpe:  # conditions still apply to model-based points
        assert (c["momentum"] is None) == (c["opt"] != "momentum")


def test_too_few_finished_trials_fall_back_to_random_and_say_so():
    rows = history(3)
    configs, how = stage_configs(SPACE, 5, seed=1, stage=1, kind="tpe", history=rows)
    assert how == "random"
    assert configs == stage_configs(SPACE, 5, seed=1, stage=1, kind="random")[0]
    first, how0 = stage_configs(SPACE, 5, seed=1, stage=0, kind="tpe", history=history())
    assert how0 == "random"  # the first stage is always random search


def test_values_outside_a_narrowed_space_and_inactive_values_are_tolerated():
    narrowed = SPACE.replace(lr=loguniform(1e-3, 1e-1), opt=choice(["momentum", "adam"]))
    rows = history(40)  # holds sgd trials and lr values outside [1e-3, 1e-1]
    points = tpe_unit_points(narrowed, rows, 6, seed=0, stage=1)
    assert points is not None and np.isfinite(points).all()
    configs, _ = stage_configs(narrowed, 6, seed=0, stage=1, kind="tpe", history=rows)
    assert all(1e-3 <= c["lr"] <= 1e-1 and c["opt"] in ("momentum", "adam") for c in configs)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="gamma"):
        TPEOptions(gamma=1.5)


def test_the_default_sweep_samples_later_stages_by_tpe_and_records_it():
    from orchestrator.app.api import controller_for
    from orchestrator.decide.driver import drive
    from orchestrator.decide.simulate import SimulatedBackend
    from orchestrator.spec.settings import RunSettings

    def quality(config):
        return 0.9 - 0.1 * abs(math.log10(config["lr"]) + 2.0) + (0.05 if config["opt"] == "adam" else 0.0)

    settings = RunSettings().merged({"trials": 32, "epochs": 10, "seed": 3}).validate()
    controller = controller_for(SPACE, settings)
    drive(controller, SimulatedBackend(quality, 2, noise=0.01, seed=3))
    started = [e["detail"] for e in controller.events if e["kind"] == "stage_started"]
    assert [d["sampler"] for d in started] == ["random", "tpe", "tpe"]
    assert [(d["trials"], d["epochs"]) for d in started] == [(16, 1), (8, 4), (8, 10)]


def test_a_stage_after_thousands_of_trials_samples_in_flat_memory_with_the_same_densities():
    """The stage after a 1,200-trial first stage held one (candidates x trials) kernel matrix per parameter and its
    temporaries at once: 100 MiB at its peak here (1.1 GB after 4,000 trials; the master's memory grew with the square
    of the trials). Blocks of rows keep it flat and compute each density exactly as the one matrix did."""
    import tracemalloc

    from orchestrator.search.tpe import numeric_log_density

    rows = history(1200)
    tracemalloc.start()
    try:
        points = tpe_unit_points(SPACE, rows, 300, seed=3, stage=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert points.shape == (300, 4)
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB"
    rng = np.random.default_rng(0)
    u, obs = rng.random(5000), rng.random(900)
    h = 1.06 * np.std(obs) * len(obs) ** -0.2
    whole = np.exp(-0.5 * ((u[:, None] - obs[None, :]) / h) ** 2) / (h * math.sqrt(2 * math.pi))
    assert np.array_equal(numeric_log_density(u, obs, 1.0), np.log((1.0 + whole.sum(axis=1)) / (1.0 + len(obs))))
