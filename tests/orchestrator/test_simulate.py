"""Staged search on replayed curves: stages converge, edges get extended, divergence is pruned."""

from __future__ import annotations

import math

from orchestrator.decide.controller import Controller, ControllerOptions
from orchestrator.decide.driver import drive
from orchestrator.decide.pruning import make_pruner
from orchestrator.decide.simulate import SimulatedBackend
from orchestrator.search.space import SearchSpace, choice, loguniform, one_minus_loguniform, uniform
from orchestrator.search.stage_policy import NarrowAndPromote
from orchestrator.search.stages import default_plan_for_budget, parse_plan, plan_to_str, stage_budget_epochs


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


def test_later_stages_retrain_the_best_configs_of_the_stage_before():
    space = SearchSpace({"lr": loguniform(1e-6, 10.0), "act": choice(["relu", "tanh"])})
    controller, _ = run(space, "20x1,10x3", peak(-2.0, 0.7), seed=3)
    first = sorted((t for t in controller.trials.values() if t.stage == 0), key=lambda t: -t.best_score)
    second = [t for t in controller.trials.values() if t.stage == 1]
    # top 25% of 20 = 5 candidates, at most half of the 10 trials: the 5 best, best first, after the fresh ones
    assert [t.config for t in second[5:]] == [t.config for t in first[:5]]
    assert all(t.config not in [f.config for f in first] for t in second[:5])
    started = [e for e in controller.events if e["kind"] == "stage_started"]
    assert [e["detail"]["promoted"] for e in started] == [0, 5]


def test_promotion_off_samples_every_trial_afresh():
    space = SearchSpace({"lr": loguniform(1e-6, 10.0)})
    plan = parse_plan("20x1,10x3")
    controller = Controller(space, plan, lambda s: make_pruner("none", max_epochs=s.epochs),
                            ControllerOptions(seed=3, stage_policy=NarrowAndPromote(promote_fraction=0.0)))
    drive(controller, SimulatedBackend(peak(-2.0), 4))
    first = [t.config for t in controller.trials.values() if t.stage == 0]
    assert not any(t.config in first for t in controller.trials.values() if t.stage == 1)


def test_fresh_trials_keep_their_ids_and_configs_when_a_stage_is_sampled_again():
    """A resume re-begins stored stages without the earlier results: the fresh trials must come out the same."""
    space = SearchSpace({"lr": loguniform(1e-6, 10.0), "act": choice(["relu", "tanh"])})
    controller, _ = run(space, "20x1,10x3", peak(-2.0, 0.7), seed=5)
    before = {tid: dict(t.config) for tid, t in controller.trials.items()}
    controller.reopen(controller.stage_spaces)
    fresh = [tid for tid, t in controller.trials.items() if t.stage == 1][:5]
    assert all(controller.trials[tid].config == before[tid] for tid in before if tid < 20 or tid in fresh)


def _interaction_quality(config):
    """Each optimizer has its own best learning rate: a box over the marginal ranges holds bad pairs."""
    best_log_lr = {"sgd": -0.7, "adam": -2.5, "rmsprop": -2.7, "adagrad": -1.2}[config["opt"]]
    d = (math.log10(config["lr"]) - best_log_lr) / 0.6
    return 0.1 + 0.88 * math.exp(-0.5 * d * d) - 0.02 * abs(config["x0"] - 0.5)


def test_staged_search_with_promotion_beats_random_search_at_the_same_epoch_budget():
    space = SearchSpace({"lr": loguniform(1e-4, 1.0), "opt": choice(["sgd", "adam", "rmsprop", "adagrad"]),
                         **{f"x{i}": uniform(0.0, 1.0) for i in range(6)}})
    staged = plan_to_str(default_plan_for_budget(16 * 12, 12))

    def mean_best_quality(plan, promote_fraction, sampler="random"):
        qualities = []
        for seed in range(12):
            controller = Controller(space, parse_plan(plan), lambda s: make_pruner("none", max_epochs=s.epochs),
                                    ControllerOptions(seed=seed, sampler=sampler,
                                                      stage_policy=NarrowAndPromote(promote_fraction=promote_fraction)))
            backend = SimulatedBackend(_interaction_quality, 2, noise=0.01, seed=seed, rate=0.3)
            drive(controller, backend)
            # the same budget, all of it spent by random search (no pruner); the staged plan fits inside it
            assert backend.epochs_trained == stage_budget_epochs(parse_plan(plan)) <= 16 * 12
            qualities.append(_interaction_quality(controller.best().config))
        return sum(qualities) / len(qualities)

    random, promoted = mean_best_quality("16x12", 0.5), mean_best_quality(staged, 0.5)
    fresh, tpe = mean_best_quality(staged, 0.0), mean_best_quality(staged, 0.5, "tpe")
    assert promoted > random + 0.01
    assert promoted > fresh + 0.01  # narrowed ranges alone lose: the last stage resamples bad pairs
    assert tpe > random + 0.01  # later stages drawn where the good trials are (with promotion) beat random too


def test_seed_copies_retrain_the_best_config_with_new_seeds_through_the_real_plan():
    from orchestrator.app.api import controller_for
    from orchestrator.spec.settings import RunSettings

    space = SearchSpace({"lr": loguniform(1e-4, 1.0)})
    settings = RunSettings(plan="12x1,4x4", seed_copies=3, pruner="asha", seed=2).validate()
    controller = controller_for(space, settings)
    assert [str(s) for s in controller.plan] == ["12x1", "4x4", "3x4 (seeds)"]
    drive(controller, SimulatedBackend(peak(-2.0), 4))
    last_stage = [t for t in controller.trials.values() if t.stage == 1]
    best_before = max(last_stage, key=lambda t: t.best_score)
    copies = [t for t in controller.trials.values() if t.stage == 2]
    assert len(copies) == 3 and all(t.config == best_before.config for t in copies)
    assert len({t.seed for t in copies} | {best_before.seed}) == 4  # every copy has its own seed
    assert all(t.status == "completed" and t.epochs_run == 4 for t in copies)  # never pruned: all are kept
    reseed = [e for e in controller.events if e["kind"] == "reseed"]
    assert reseed and reseed[0]["detail"]["config_of_trial"] == best_before.trial_id


def test_seed_copies_are_skipped_when_nothing_finished():
    from orchestrator.app.api import controller_for
    from orchestrator.spec.settings import RunSettings

    space = SearchSpace({"lr": loguniform(1e-4, 1.0)})
    controller = controller_for(space, RunSettings(plan="4x2", seed_copies=2, pruner="none").validate())
    drive(controller, SimulatedBackend(peak(-2.0), 2, diverges=lambda config: True))
    assert controller.finished and {t.stage for t in controller.trials.values()} == {0}
    assert any(e["kind"] == "reseed_skipped" for e in controller.events)
