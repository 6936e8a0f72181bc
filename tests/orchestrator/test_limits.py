"""Bounds the user can trust: hard ``limits=`` on every distribution, ``extend_edges`` on or off,
and every extension an event naming the stage, the trial, the value and the old and new range."""

from __future__ import annotations

import math

import pytest

from orchestrator.decide.controller import Controller, ControllerOptions
from orchestrator.decide.driver import drive
from orchestrator.decide.pruning import make_pruner
from orchestrator.decide.simulate import SimulatedBackend
from orchestrator.errors import SpaceError
from orchestrator.search.space import (
    SearchSpace,
    choice,
    dropout,
    lograndint,
    loguniform,
    one_minus_loguniform,
    param_to_dict,
    parse_param,
    randint,
    uniform,
)
from orchestrator.search.stage_policy import NarrowAndPromote
from orchestrator.search.stages import parse_plan
from orchestrator.spec.settings import RunSettings

PLAN = "30x1,30x1,30x1,20x2"


def sweep(space, quality, **options):
    controller = Controller(space, parse_plan(PLAN), lambda s: make_pruner("none", max_epochs=s.epochs),
                            ControllerOptions(seed=1, **options))
    drive(controller, SimulatedBackend(quality, 4))
    return controller


def sampled(controller, name):
    return [t.config[name] for t in controller.trials.values() if t.config.get(name) is not None]


def higher_is_better(name, scale=lambda v: v):
    """Quality rises with the parameter: the best value always sits on the upper edge."""
    def quality(config):
        return 0.3 + 0.6 / (1 + math.exp(-scale(config[name])))
    return quality


# Three kinds of parameter, each pushed against its upper edge: a log-scale rate, an integer, a linear one.
CASES = [
    ("lr", lambda lim: loguniform(1e-4, 1e-2, limits=lim), (1e-4, 2e-2), lambda v: 3 * math.log10(v) + 6),
    ("layers", lambda lim: randint(1, 3, limits=lim), (1, 4), lambda v: 2 * v - 3),
    ("units", lambda lim: lograndint(8, 32, limits=lim), (8, 40), lambda v: math.log2(v) - 4),
    ("shift", lambda lim: uniform(-1.0, 1.0, limits=lim), (-1.0, 1.5), lambda v: 4 * v),
]


@pytest.mark.parametrize("name,make,limits,scale", CASES, ids=[c[0] for c in CASES])
def test_limits_are_never_crossed_and_extensions_stop_there(name, make, limits, scale):
    controller = sweep(SearchSpace({name: make(limits)}), higher_is_better(name, scale))
    values = sampled(controller, name)
    assert min(values) >= limits[0] and max(values) <= limits[1]
    assert max(values) > make(None).high  # extension did go past the declared range, up to the limit
    kinds = [e["kind"] for e in controller.events]
    assert "range_extended" in kinds


@pytest.mark.parametrize("name,make,limits,scale", CASES, ids=[c[0] for c in CASES])
def test_extension_off_keeps_every_stage_inside_the_declared_range(name, make, limits, scale):
    declared = make(None)
    controller = sweep(SearchSpace({name: declared}), higher_is_better(name, scale),
                       stage_policy=NarrowAndPromote(extend_edges=False))
    values = sampled(controller, name)
    assert min(values) >= declared.low and max(values) <= declared.high
    kinds = [e["kind"] for e in controller.events]
    assert "range_extended" not in kinds and "edge_not_extended" in kinds


def test_an_extension_event_names_stage_trial_value_and_both_ranges():
    controller = sweep(SearchSpace({"lr": loguniform(1e-4, 1e-2)}), higher_is_better("lr", lambda v: 3 * math.log10(v)))
    event = next(e for e in controller.events if e["kind"] == "range_extended")
    judged = event["stage"]  # the stage whose best trial sat on the edge (0-based inside the controller)
    trial = controller.trials[event["trial_id"]]
    assert trial.stage == judged
    stage_best = max((t for t in controller.trials.values() if t.stage == judged), key=lambda t: t.best_score)
    assert trial.best_score == stage_best.best_score  # the stage's best trial, not a later stage's
    old, new = controller.stage_spaces[judged]["lr"], controller.stage_spaces[judged + 1]["lr"]
    reason = event["reason"]
    assert reason.startswith(f"stage {judged + 1}'s best trial {trial.trial_id}: lr = {trial.config['lr']:.4g}")
    assert f"[{old.low:.4g}, {old.high:.4g}]" in reason and f"stage {judged + 2} samples" in reason
    assert f"{new.high:.4g}]" in reason and new.high > old.high


def test_every_distribution_takes_limits_and_round_trips_them():
    for dist in (uniform(0, 1, limits=(-1, 2)), loguniform(1e-3, 1e-1, limits=(1e-5, 1.0)),
                 one_minus_loguniform(0.9, 0.99, limits=(0.5, 0.999)), randint(2, 4, limits=(1, 8)),
                 lograndint(16, 64, limits=(8, 256)), dropout(0.1, 0.3, limits=(0.0, 0.5))):
        again = parse_param("p", param_to_dict(dist))
        assert again.limits == dist.limits and (again.low, again.high) == (dist.low, dist.high)
    # the natural domain always holds: a log range never reaches 0, a beta never 1
    assert loguniform(1e-3, 1e-1, limits=(-5, 10)).limits == (0.0, 10.0)
    assert one_minus_loguniform(0.9, 0.99, limits=(0, 2)).limits == (0.0, 1.0)


def test_bad_limits_are_one_line_naming_the_parameter():
    with pytest.raises(SpaceError, match="limits .* must be a range"):
        loguniform(1e-3, 1e-1, limits=(1.0, 1e-5))
    with pytest.raises(SpaceError, match="parameter 'lr': range .* leaves its limits"):
        SearchSpace({"lr": loguniform(1e-3, 1e-1, limits=(1e-2, 1.0))})
    with pytest.raises(SpaceError, match="limits must be two numbers"):
        randint(1, 3, limits="wide")
    with pytest.raises(SpaceError, match="parameter 'lr'"):  # TOML
        SearchSpace({"lr": 0.1}).with_overrides({"lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-1,
                                                         "limits": [1e-2, 1.0]}})


def test_extend_edges_is_a_checked_setting():
    assert RunSettings().extend_edges is True
    assert RunSettings().merged({"extend_edges": False}).validate().extend_edges is False
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="setting 'extend_edges': expected true or false"):
        RunSettings().merged({"extend_edges": "no"}).validate()


def test_the_end_of_run_advice_never_says_to_look_past_a_hard_limit():
    from orchestrator.app.cli_common import edge_advice

    soft = "stage 2's best trial 7: lr = 0.1 sits at the high edge of [0.001, 0.1]"
    assert edge_advice(soft) == "the next sweep should look beyond it"
    assert edge_advice(soft, "runs/my sweep") == ("the next sweep should look beyond it (caviar next 'runs/my sweep' "
                                                  "-o next.toml writes ranges that do)")
    assert "widen limits=" in edge_advice(soft + " (a hard limit)", "runs/x")
    assert "caviar next" not in edge_advice(soft + " (a hard limit)", "runs/x")
    # A sweep run with extend_edges = false: caviar next keeps that setting, so it writes no ranges past the edge
    kept = edge_advice(soft, "runs/x", extend_edges=False)
    assert "writes ranges that do" not in kept and "extend_edges = false" in kept


def test_an_edge_of_a_conditional_parameter_names_the_best_trial_that_uses_it():
    # "stage 1's best trial 12: warmth = 0.4979 at the high edge": trial 12 was the best adam trial, while the stage's
    # best trial was an sgd one, which has no warmth at all
    def quality(config):  # the best sgd trials beat every adam one; among adam ones, the more warmth the better
        if config["optimizer"] == "sgd":
            return 0.5 + 0.45 * config["width"]
        return 0.8 + 0.08 * (config["warmth"] - 0.1) / 0.4

    space = SearchSpace({"optimizer": choice(["sgd", "adam"]), "width": uniform(0.0, 1.0),
                         "warmth": uniform(0.1, 0.5, when={"optimizer": ["adam"]})})
    controller = sweep(space, quality)
    event = next(e for e in controller.events if e["kind"] == "range_extended" and "warmth" in e["reason"])
    judged, trial = event["stage"], controller.trials[event["trial_id"]]
    stage_best = max((t for t in controller.trials.values() if t.stage == judged), key=lambda t: t.best_score)
    assert stage_best.config["optimizer"] == "sgd" and trial.config["optimizer"] == "adam"
    assert event["reason"].startswith(f"the best of stage {judged + 1}'s trials that use warmth, trial "
                                      f"{trial.trial_id}: warmth = {trial.config['warmth']:.4g} at the high edge")


def test_the_end_of_run_border_check_looks_at_the_range_every_stage_searched():
    # layers = 2 won every stage: stage 1's [1, 2] moved to [2, 3] past its high edge, where 2 sat at the low edge;
    # "look beyond it" then sent the next sweep to layers = 1, which stage 1 had already trained and found worse
    def quality(config):
        return 0.5 + 0.3 * (config["layers"] == 2) + 0.1 * (1 - abs(config["x"] - 0.5))

    controller = sweep(SearchSpace({"layers": randint(1, 2), "x": uniform(0.0, 1.0)}), quality)
    best = controller.best()
    assert best.config["layers"] == 2
    ranges = {(s["layers"].low, s["layers"].high) for s in controller.stage_spaces}
    assert any(low == 2 for low, _ in ranges)  # a stage whose low edge the winner sat on
    assert [w for w in controller.final_edge_warnings() if "layers" in w] == []


def test_the_end_of_run_border_check_still_names_an_edge_no_stage_looked_past():
    space = SearchSpace({"lr": loguniform(1e-4, 1e-2, limits=(1e-4, 1e-2)), "x": uniform(0.0, 1.0)})
    controller = sweep(space, higher_is_better("lr", lambda v: 3 * math.log10(v) + 6))
    (warning,) = [w for w in controller.final_edge_warnings() if "lr" in w]
    assert warning.endswith("sits at the high edge of [0.0001, 0.01] (a hard limit)")


class DivergesLate(SimulatedBackend):
    """Trials with x above 0.7 score 0.99 at epoch 2, then their loss turns NaN (a learning rate that blows up)."""

    def _run(self, trial_id):
        from orchestrator.decide.backend import Report

        state = self.running[trial_id]
        a = state.assignment
        rows = []
        while state.epoch < min(state.until, a.max_epochs):
            state.epoch += 1
            blows_up = a.config["x"] > 0.7
            score = 0.99 if blows_up and state.epoch == 2 else float(self.quality(a.config))
            loss = math.nan if blows_up and state.epoch == 3 else 1.0 - score
            rows.append(self._row(a, state.epoch, score, loss))
            if math.isnan(loss):
                del self.running[trial_id]
                return Report(trial_id, rows, ended=True, status="pruned", reason="diverged")
        if state.epoch >= a.max_epochs:
            del self.running[trial_id]
            return Report(trial_id, rows, ended=True, status="completed", reason="max_epochs")
        return Report(trial_id, rows)


def test_an_edge_event_names_the_trial_the_stage_was_ranked_by_not_a_diverged_one_with_its_value():
    # Stage 2 ranks its completed trials; a trial that diverged at epoch 3 after scoring 0.99 with the same
    # layers = 3 was named as "the best of stage 2's trials that use layers", as if layers were conditional
    def quality(config):
        return 0.5 + 0.1 * config["layers"] + 0.05 * config["x"]

    space = SearchSpace({"layers": randint(1, 3, limits=(1, 3)), "x": uniform(0.0, 1.0)})
    controller = Controller(space, parse_plan("12x1,12x3,4x3"), lambda s: make_pruner("none", max_epochs=s.epochs),
                            ControllerOptions(seed=3))
    drive(controller, DivergesLate(quality, 4))
    diverged = [t for t in controller.trials.values() if t.stage == 1 and t.reason == "diverged"]
    assert any(t.config["layers"] == 3 for t in diverged)  # the case: a diverged trial shares the edge value
    event = next(e for e in controller.events if e["stage"] == 1 and e["kind"] == "edge_at_hard_limit")
    completed = [t for t in controller.trials.values() if t.stage == 1 and t.status == "completed"]
    best = max(completed, key=lambda t: t.best_score)
    assert event["trial_id"] == best.trial_id
    assert event["reason"].startswith(f"stage 2's best trial {best.trial_id}: layers = 3 at the high edge")
