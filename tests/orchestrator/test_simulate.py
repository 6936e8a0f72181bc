"""Staged search on replayed curves: stages converge, edges get extended, divergence is pruned."""

from __future__ import annotations

import math

from orchestrator.controller import Controller, ControllerOptions
from orchestrator.driver import drive
from orchestrator.pruning import make_pruner
from orchestrator.simulate import SimulatedBackend
from orchestrator.space import SearchSpace, choice, loguniform, one_minus_loguniform
from orchestrator.stages import parse_plan


def peak(log_lr_opt: float, width: float = 1.0):
    """Quality peaks at lr = 10**log_lr_opt, falling off as a Gaussian in log10(lr)."""
    def quality(config):
        d = (math.log10(config["lr"]) - log_lr_opt) / width
        return 0.3 + 0.65 * math.exp(-0.5 * d * d)
    return quality


def run(space, plan, quality, *, seed=0, pruner="asha", slots=4, diverges=None):
    def pruner_for(stage):
        if stage.epochs == 1:
            return make_pruner("none", max_epochs=1)
        return make_pruner(pruner, max_epochs=stage.epochs)

    controller = Controller(space, parse_plan(plan), pruner_for, ControllerOptions(seed=seed))
    backend = SimulatedBackend(quality, slots, diverges=diverges)
    drive(controller, backend)
    return controller, backend


def lr_range(controller, stage):
    dist = controller.stage_spaces[stage]["lr"]
    return math.log10(dist.low), math.log10(dist.high)


def test_stages_narrow_toward_the_optimum():
    space = SearchSpace({"lr": loguniform(1e-6, 10.0), "act": choice(["relu", "tanh"])})
    controller, _ = run(space, "60x1,20x3,10x9", peak(-2.0, 0.7))
    widths = [lr_range(controller, s)[1] - lr_range(controller, s)[0] for s in range(3)]
    assert widths[0] > widths[1] > widths[2]
    low, high = lr_range(controller, 2)
    assert low < -2.0 < high  # the optimum stays inside the narrowed box
    best = controller.best()
    assert abs(math.log10(best.config["lr"]) + 2.0) < 0.5
    kinds = [e["kind"] for e in controller.events]
    assert kinds.count("stage_started") == 3 and kinds.count("range_narrowed") == 2


def test_an_optimum_outside_the_range_is_reached_through_edge_extension():
    space = SearchSpace({"lr": loguniform(1e-5, 1e-2)})  # optimum at 1e-1, above the initial range
    controller, _ = run(space, "30x1,30x1,30x1,30x1,30x1,20x3", peak(-1.0, 0.5))
    extended = [e for e in controller.events if e["kind"] == "range_extended"]
    assert extended and all(e["detail"]["side"] == "high" for e in extended)
    assert lr_range(controller, 5)[1] > -1.0  # the last stage's range now covers the optimum
    assert abs(math.log10(controller.best().config["lr"]) + 1.0) < 0.5


def test_hard_limits_are_never_crossed():
    space = SearchSpace({"lr": loguniform(1e-3, 1e-1), "beta": one_minus_loguniform(0.9, 0.999)})

    def quality(config):  # better the closer beta gets to 1: the edge is a hard limit
        return 0.5 + 0.4 * (-math.log10(1 - config["beta"])) / 6

    controller, _ = run(space, "20x1,20x1,20x1,20x1", quality)
    for stage_space in controller.stage_spaces:
        assert 0.0 < stage_space["beta"].low < stage_space["beta"].high < 1.0


def test_diverging_trials_are_pruned_and_rungs_cut_the_rest():
    space = SearchSpace({"lr": loguniform(1e-4, 10.0)})
    controller, backend = run(space, "27x9", peak(-2.0), diverges=lambda c: c["lr"] > 1.0, pruner="asha", slots=27)
    statuses = {t.status for t in controller.trials.values()}
    assert statuses <= {"completed", "pruned"}
    diverged = [t for t in controller.trials.values() if t.reason == "diverged"]
    assert diverged and all(t.config["lr"] > 1.0 and t.epochs_run == 1 for t in diverged)
    assert any((t.reason or "").startswith("asha_rung") for t in controller.trials.values())
    assert backend.epochs_trained < 27 * 9  # pruning saved epochs


def test_replay_is_deterministic():
    space = SearchSpace({"lr": loguniform(1e-6, 10.0)})
    a, _ = run(space, "20x1,10x3", peak(-3.0), seed=4)
    b, _ = run(space, "20x1,10x3", peak(-3.0), seed=4)
    assert [t.as_row() | {"started": 0, "finished": 0} for t in a.trials.values()] == \
           [t.as_row() | {"started": 0, "finished": 0} for t in b.trials.values()]
