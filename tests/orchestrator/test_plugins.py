"""Pruners, samplers and stage policies as objects: a new one is one class, passed in or registered by name.

The custom pruner, sampler and stage policy here are the ones docs/ARCHITECTURE.md shows; they run
through the real controller and driver on the simulated backend, and through ``run_sweep`` on Ray.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from orchestrator.app.lifecycle import PlugIns, build_settings, choose_plugins, controller_for
from orchestrator.decide.driver import drive
from orchestrator.decide.pruning import PRUNERS, Observation, Pruner, pruner_name, register_pruner
from orchestrator.decide.simulate import SimulatedBackend
from orchestrator.errors import ConfigError
from orchestrator.search.sampler import SAMPLERS, Sampler, register_sampler, sampler_name, stage_configs
from orchestrator.search.space import SearchSpace, choice, loguniform
from orchestrator.search.stage_policy import FreshStages, NarrowAndPromote, StagePolicy, stage_policy_name
from orchestrator.spec.options import ResumeOptions, RunOptions
from orchestrator.spec.settings import RunSettings

SPACE = SearchSpace({"lr": loguniform(1e-4, 1.0), "act": choice(["relu", "tanh"])})


class BelowFloor(Pruner):
    """Stops a trial whose score is under ``floor`` once ``at_epoch`` epochs are done."""

    def __init__(self, *, floor: float = 0.5, at_epoch: int = 2, max_epochs: int | None = None,
                 max_loss_ratio: float = 4.0):
        super().__init__(max_epochs=max_epochs, max_loss_ratio=max_loss_ratio)
        self.floor, self.at_epoch = floor, at_epoch

    def next_decision_epoch(self, epoch: int) -> int:
        return self.at_epoch if epoch < self.at_epoch else self.max_epochs

    def _decide(self, obs: Observation, trial) -> str | None:
        return f"below_{self.floor}" if obs.epoch == self.at_epoch and obs.score < self.floor else None


class Halton(Sampler):
    """A low-discrepancy sequence from scipy, one scrambled stream per (seed, stage)."""

    def unit_points(self, count: int, dims: int, *, seed: int, stage: int) -> np.ndarray:
        from scipy.stats import qmc

        return qmc.Halton(dims, seed=np.random.default_rng([seed, stage])).random(count)


class RetrainTheBest(StagePolicy):
    """Keep the declared ranges; the next stage retrains the ended stage's best configs, best first."""

    def promoted(self, results, next_stage_trials):
        ranked = sorted(results, key=lambda result: result[1], reverse=True)
        return [config for config, _ in ranked[:next_stage_trials]]


def quality(config) -> float:
    return 0.3 + 0.6 * math.exp(-0.5 * (math.log10(config["lr"]) + 2.0) ** 2)


def settings(**values) -> RunSettings:
    return RunSettings().merged({"plan": "8x4,4x4", "seed": 3, **values}).validate()


def run(controller):
    return drive(controller, SimulatedBackend(quality, 2))


def test_a_pruner_object_prunes_with_its_own_options_in_every_stage():
    pruner = BelowFloor(floor=0.6, at_epoch=2)
    chosen = choose_plugins({}, {"pruner": pruner})
    controller = controller_for(SPACE, settings(pruner=pruner_name(BelowFloor)), chosen)
    run(controller)
    reasons = {t.reason for t in controller.trials.values() if t.status == "pruned"}
    assert reasons == {"below_0.6"}
    for stage in controller.plan:  # a fresh copy per stage, the user's floor kept, the stage's epochs its own
        copy = controller.make_pruner(stage)
        assert isinstance(copy, BelowFloor) and copy is not pruner
        assert (copy.floor, copy.at_epoch, copy.max_epochs) == (0.6, 2, stage.epochs)
    assert not pruner._trials  # the object passed in is never used itself


class PositionalFloor(Pruner):
    """A pruner as a user may write it: options by position or by name."""

    def __init__(self, floor=0.5, at_epoch=2, max_epochs=None, max_loss_ratio=4.0, **more):
        super().__init__(max_epochs=max_epochs, max_loss_ratio=max_loss_ratio)
        self.floor, self.at_epoch, self.more = floor, at_epoch, more

    def next_decision_epoch(self, epoch):
        return self.at_epoch if epoch < self.at_epoch else self.max_epochs

    def _decide(self, obs, trial):
        return f"below_{self.floor}" if obs.epoch == self.at_epoch and obs.score < self.floor else None


def test_a_pruner_option_given_by_position_reaches_every_stage():
    # PositionalFloor(0.6) once pruned below 0.5 in every stage: each stage's copy is built by keyword, and the
    # option given by position was not among them, so the default took its place without a word
    controller = controller_for(SPACE, settings(pruner=pruner_name(PositionalFloor)),
                                PlugIns(pruner=PositionalFloor(0.6, 2, tag="mine")))
    run(controller)
    assert {t.reason for t in controller.trials.values() if t.status == "pruned"} == {"below_0.6"}
    copy = controller.make_pruner(controller.plan[1])
    assert (copy.floor, copy.at_epoch, copy.more, copy.max_epochs) == (0.6, 2, {"tag": "mine"}, 4)

    class Starred(PositionalFloor):
        def __init__(self, *floors, max_epochs=None):
            super().__init__(min(floors), max_epochs=max_epochs)

    with pytest.raises(ConfigError, match=r"^pruner .*Starred: takes \*floors, which a copy for each stage cannot "):
        Starred(0.5, 0.6)


class NeedsPatience(Pruner):
    def __init__(self, *, patience, max_epochs=None):
        super().__init__(max_epochs=max_epochs)
        self.patience = patience

    def next_decision_epoch(self, epoch):
        return self.max_epochs

    def _decide(self, obs, trial):
        return None


def test_a_pruner_that_fails_for_a_later_stage_or_sets_its_own_loss_ratio_is_refused_before_anything_runs(tmp_path):
    # a constructor failing for stage 2's budget raised its TypeError after stage 1 had trained (the first stage of
    # one epoch trains unpruned), and a pruner's own max_loss_ratio never reached the workers, which stop a diverging
    # trial at the setting's: a ratio of 50 still stopped trials at 4x, without a word
    from orchestrator.app.api import run_sweep
    from orchestrator.decide.pruning import ASHAPruner
    from tests.conftest import TINY_TASK

    storage = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"^pruner '.*NeedsPatience': building it for stage 2 \(3 epochs\) raised "
                                          r"TypeError: .*missing 1 required keyword-only argument: 'patience'$"):
        run_sweep(TINY_TASK, plan="4x1,2x3", storage=storage, name="ctor", pruner=NeedsPatience)
    with pytest.raises(ConfigError, match=r"^pruner 'asha': its max_loss_ratio 50 is not the setting 'max_loss_ratio' "
                                          r"\(4\), at which the workers stop a diverging trial; set max_loss_ratio=50"):
        run_sweep(TINY_TASK, plan="4x1,2x3", storage=storage, name="ratio",
                  pruner=ASHAPruner(max_epochs=3, max_loss_ratio=50.0))
    assert not storage.exists()  # refused before the sweep's folder was made
    with pytest.raises(ConfigError, match=r"^pruner '.*NeedsPatience': its constructor takes no max_loss_ratio, so it "
                                          r"stays 4 and stops trials the setting 'max_loss_ratio' \(10\) lets train"):
        controller_for(SPACE, settings(max_loss_ratio=10.0, pruner=pruner_name(NeedsPatience)),
                       PlugIns(pruner=NeedsPatience(patience=2)))
    controller_for(SPACE, settings(max_loss_ratio=3.0, pruner=pruner_name(NeedsPatience)),  # the workers' 3 acts first
                   PlugIns(pruner=NeedsPatience(patience=2)))
    # the setting itself reaches both the workers and the pruner
    built = controller_for(SPACE, settings(max_loss_ratio=50.0), PlugIns(pruner=ASHAPruner(max_epochs=3)))
    assert built.make_pruner(built.plan[1]).max_loss_ratio == 50.0


def test_a_pruner_class_is_built_per_stage_from_the_stage_budget():
    controller = controller_for(SPACE, settings(max_loss_ratio=3.0, pruner=pruner_name(BelowFloor)),
                                PlugIns(pruner=BelowFloor))
    built = controller.make_pruner(controller.plan[1])
    assert (built.floor, built.max_epochs, built.max_loss_ratio) == (0.5, 4, 3.0)


def test_a_registered_pruner_and_sampler_work_by_name_in_settings(monkeypatch):
    monkeypatch.setitem(PRUNERS, "floor", BelowFloor)
    monkeypatch.setitem(SAMPLERS, "halton", Halton)
    register_pruner("floor")(BelowFloor)
    register_sampler("halton")(Halton)
    try:
        controller = controller_for(SPACE, settings(pruner="floor", sampler="halton"))
        run(controller)
        started = [e for e in controller.event_feed if e[1]["kind"] == "stage_started"]
        assert started[0][1]["detail"]["sampler"] == "halton"
        assert any(t.reason == "below_0.5" for t in controller.trials.values())
    finally:
        BelowFloor.name = Halton.name = ""


def test_a_sampler_object_draws_the_stage_and_is_named_in_its_event():
    configs, drawn_by = stage_configs(SPACE, 6, seed=1, stage=0, kind=Halton())
    assert drawn_by == sampler_name(Halton) == f"{__name__}.Halton"
    assert configs == stage_configs(SPACE, 6, seed=1, stage=0, kind=Halton())[0]  # same seed, same configs
    assert all(1e-4 <= c["lr"] <= 1.0 for c in configs)


def test_bad_unit_points_and_unknown_plugins_are_one_line():
    class Outside(Sampler):
        def unit_points(self, count, dims, *, seed, stage):
            return np.full((count, dims), 2.0)

    with pytest.raises(ConfigError, match=r"unit_points must return 3x2 values in \[0, 1\]"):
        stage_configs(SPACE, 3, seed=0, stage=0, kind=Outside())
    with pytest.raises(ConfigError, match=r"setting 'pruner': expected a name .* got int"):
        controller_for(SPACE, settings(), PlugIns(pruner=7))  # type: ignore[arg-type]
    # A sweep recorded with an object's class path resumes only when given the object again.
    with pytest.raises(ConfigError, match=r"uses the pruner 'my.pkg.Custom', which is not registered; pass the same"):
        controller_for(SPACE, settings(pruner="my.pkg.Custom"))
    with pytest.raises(ConfigError, match=r"setting 'sampler'"):
        settings(sampler="no such thing")


def test_objects_in_a_tasks_settings_are_recorded_by_name():
    class Task:
        space = SPACE
        settings = {"pruner": BelowFloor(floor=0.7), "sampler": Halton()}

    built, _ = build_settings(Task, None, {"trials": 12, "stage_policy": RetrainTheBest()})  # type: ignore[arg-type]
    assert (built.pruner, built.sampler) == (f"{__name__}.BelowFloor", f"{__name__}.Halton")
    assert built.stage_policy == f"{__name__}.RetrainTheBest"
    json.dumps(vars(built))  # the sweep row stays plain JSON
    plugins = choose_plugins(Task.settings, {"sampler": "random"})  # a name given later wins over the object
    assert isinstance(plugins.pruner, BelowFloor) and plugins.sampler is None and plugins.stage_policy is None


def test_the_typed_options_name_every_setting_and_resume_takes_only_how_it_runs():
    fields = set(vars(RunSettings()))
    assert set(RunOptions.__annotations__) == fields
    assert set(ResumeOptions.__annotations__) < fields


def test_run_sweep_takes_a_pruner_and_a_sampler_object(ray_session, storage_dir):
    from orchestrator.app.api import load, run_sweep
    from tests.conftest import TINY_TASK

    result = run_sweep(TINY_TASK, plan="4x2", slots=2, storage=storage_dir, name="plugins", ensemble=False,
                       pruner=BelowFloor(floor=2.0, at_epoch=1), sampler=Halton())
    tables = load(result.path)
    row = json.loads(tables.sweep.to_pylist()[0]["settings"])
    assert (row["pruner"], row["sampler"]) == (f"{__name__}.BelowFloor", f"{__name__}.Halton")
    # A score never reaches 2.0: every trial stops at epoch 1 with the custom reason.
    assert {(t["status"], t["reason"], t["epochs_run"]) for t in tables.trials.to_pylist()} == {
        ("pruned", "below_2.0", 1)}


def test_a_stage_policy_object_decides_the_next_space_and_promotions():
    from orchestrator.decide.controller import Controller, ControllerOptions
    from orchestrator.decide.pruning import NoPruner, StageBudget
    from orchestrator.search.stage_policy import StagePolicy
    from orchestrator.search.stages import parse_plan

    class KeepRangesPromoteNothing(StagePolicy):  # successive random stages, each trained longer
        def __init__(self):
            self.seen = []

        def next_space(self, space, results):
            self.seen.append(len(results))
            return None

    policy = KeepRangesPromoteNothing()
    c = Controller(SPACE, parse_plan("6x1,4x2"), lambda s: NoPruner.for_stage(StageBudget(s.epochs)),
                   ControllerOptions(seed=1, stage_policy=policy))
    run(c)
    assert policy.seen == [6]
    assert c.stage_spaces[1] is c.stage_spaces[0]  # the ranges stayed as declared
    kinds = [e["kind"] for _, e in c.event_feed]
    assert "range_narrowed" not in kinds
    first = {tuple(sorted(c.trials[t].config.items())) for t in range(6)}
    assert not first & {tuple(sorted(c.trials[t].config.items())) for t in range(6, 10)}  # nothing promoted


def test_a_stage_policy_that_promotes_more_configs_than_the_next_stage_trains_is_one_line():
    from orchestrator.decide.controller import Controller, ControllerOptions
    from orchestrator.decide.pruning import NoPruner, StageBudget
    from orchestrator.search.stages import parse_plan

    class PromoteEverything(StagePolicy):  # 6 configs for a stage of 4: numpy's "negative dimensions" once
        def promoted(self, results, next_stage_trials):
            return [config for config, _ in results]

    c = Controller(SPACE, parse_plan("6x1,4x2"), lambda s: NoPruner.for_stage(StageBudget(s.epochs)),
                   ControllerOptions(seed=1, stage_policy=PromoteEverything()))
    with pytest.raises(ConfigError, match=r"^stage policy '.*PromoteEverything': promoted returned 6 configs for "
                                          r"stage 2, which trains 4 trials; return at most next_stage_trials$"):
        run(c)


def test_a_stage_policy_is_a_registered_name_a_class_or_an_object():
    assert isinstance(controller_for(SPACE, settings()).stage_policy, NarrowAndPromote)  # the default, by name
    by_name = controller_for(SPACE, settings(stage_policy="fresh", top_fraction=0.5))
    assert isinstance(by_name.stage_policy, FreshStages) and stage_policy_name(FreshStages) == "fresh"
    # A class is built from the settings it reads; the default's from top_fraction, extend_edges, promote_fraction.
    built = controller_for(SPACE, settings(top_fraction=0.5, stage_policy="narrow_and_promote"),
                           PlugIns(stage_policy=NarrowAndPromote)).stage_policy
    assert built == NarrowAndPromote(top_fraction=0.5, extend_edges=True, promote_fraction=0.5)
    policy = RetrainTheBest()
    controller = controller_for(SPACE, settings(stage_policy=stage_policy_name(policy), pruner="none"),
                                PlugIns(stage_policy=policy))
    assert controller.stage_policy is policy
    run(controller)
    first = sorted((t for t in controller.trials.values() if t.stage == 0), key=lambda t: -t.best_score)
    assert [t.config for t in controller.trials.values() if t.stage == 1] == [t.config for t in first[:4]]
    with pytest.raises(ConfigError, match=r"setting 'stage_policy': expected one of narrow_and_promote, fresh"):
        settings(stage_policy="no such thing")
    with pytest.raises(ConfigError, match=r"setting 'stage_policy': expected a name .* got 7"):
        controller_for(SPACE, settings(), PlugIns(stage_policy=7))  # type: ignore[arg-type]


def whole_and_crashed(tmp_path, stored: RunSettings, plugins: PlugIns, crash_at_tick: int):
    """The simulated sweep run whole, and the same sweep's storage after its master crashed at ``crash_at_tick``."""
    from orchestrator.store.storage import Storage
    from tests.orchestrator import test_resume as sim

    whole_storage = Storage.from_uri(str(tmp_path / "whole"))
    whole = drive(controller_for(sim.SPACE, stored, plugins), sim.PersistingBackend(whole_storage, 1),
                  sim.start_sweep(whole_storage, stored))
    storage = Storage.from_uri(str(tmp_path / "crashed"))
    ticks = iter(range(1, 100))

    def crash(controller):
        if next(ticks) == crash_at_tick:
            raise sim.Crash

    with pytest.raises(sim.Crash):
        drive(controller_for(sim.SPACE, stored, plugins), sim.PersistingBackend(storage, 1),
              sim.start_sweep(storage, stored), on_tick=crash)
    return whole, storage


def test_a_resume_rebuilds_the_sweeps_own_stage_policy_and_without_it_says_so_in_one_line(tmp_path):
    """Crashed in stage 1, the resumed master judges stage 1 itself: with the policy passed again, as the first run."""
    from orchestrator.app.resume import read_record, rebuild_controller
    from tests.orchestrator import test_resume as sim

    plugins = PlugIns(stage_policy=RetrainTheBest())
    stored = sim.settings_for(stage_policy=stage_policy_name(RetrainTheBest))

    def with_policy(space, settings):
        return controller_for(space, settings, plugins)

    whole, storage = whole_and_crashed(tmp_path, stored, plugins, crash_at_tick=5)  # crashed in stage 1
    record = read_record(storage)
    assert record.settings.stage_policy == f"{__name__}.RetrainTheBest"
    with pytest.raises(ConfigError, match=r"uses the stage_policy '.*RetrainTheBest', which is not registered; "
                                          r"pass the same stage_policy object"):
        rebuild_controller(record)
    rebuilt = rebuild_controller(record, with_policy)
    assert rebuilt.controller.stage == 0  # stage 2 is still to be judged
    drive(rebuilt.controller, sim.PersistingBackend(storage, 1))
    assert sim.summary(rebuilt.controller) == sim.summary(whole)
    stage_1 = [t.config for t in whole.trials.values() if t.stage == 0]
    assert all(t.config in stage_1 for t in whole.trials.values() if t.stage == 1)  # the policy's promotions


def test_run_sweep_takes_a_stage_policy_object_records_it_and_resume_needs_it(ray_session, storage_dir):
    from orchestrator.app.api import load, resume_sweep, run_sweep
    from tests.conftest import TINY_TASK

    result = run_sweep(TINY_TASK, plan="4x1,2x1", slots=2, storage=storage_dir, name="policy", ensemble=False,
                       pruner="none", stage_policy=RetrainTheBest())
    tables = load(result.path)
    assert json.loads(tables.sweep.to_pylist()[0]["settings"])["stage_policy"] == f"{__name__}.RetrainTheBest"
    trials = tables.trials.to_pylist()
    first = sorted((t for t in trials if t["stage"] == 1), key=lambda t: t["best_score"], reverse=True)
    assert [t["config"] for t in trials if t["stage"] == 2] == [t["config"] for t in first[:2]]
    with pytest.raises(ConfigError, match=r"uses the stage_policy '.*RetrainTheBest', which is not registered"):
        resume_sweep(result.path)
    assert "nothing to resume" in resume_sweep(result.path, stage_policy=RetrainTheBest()).note


def test_caviar_run_knows_a_sampler_and_a_stage_policy_that_the_task_file_registers(tmp_path):
    # The CLI once checked --sampler and a TOML's stage_policy before it loaded the task that registers them:
    # "setting 'sampler': expected one of random, sobol, lhs, tpe", though the README says --sampler mine works
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    task = tmp_path / "registering_task.py"
    task.write_text(
        "from orchestrator.search.sampler import RandomSampler, register_sampler\n"
        "from orchestrator.search.stage_policy import FreshStages, register_stage_policy\n"
        "from tests.tasks.tiny_task import build_model, load_data, space  # noqa: F401\n\n"
        "register_sampler('mine_cli')(type('Mine', (RandomSampler,), {}))\n"
        "register_stage_policy('fresh_cli')(type('MyFresh', (FreshStages,), {}))\n")
    toml = tmp_path / "sweep.toml"
    toml.write_text('[run]\nstage_policy = "fresh_cli"\n')
    cli = os.path.join(os.path.dirname(sys.executable), "caviar")
    ran = subprocess.run([cli, "run", str(task), "--sampler", "mine_cli", "--config", str(toml), "--plan", "2x1,2x1",
                          "--storage", str(tmp_path / "runs"), "--name", "mine", "--plain", "--no-report",
                          "--no-ensemble", "--slots", "1"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert ran.returncode == 0, ran.stderr
    from orchestrator.app.api import load

    recorded = json.loads(load(str(tmp_path / "runs" / "mine")).sweep.to_pylist()[0]["settings"])
    assert (recorded["sampler"], recorded["stage_policy"]) == ("mine_cli", "fresh_cli")
    # caviar resume without the task says to pass it: "expected one of random, sobol, lhs, tpe" did not
    bare = subprocess.run([cli, "resume", str(tmp_path / "runs" / "mine"), "--plain", "--no-report"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert bare.returncode == 2 and "--task" in bare.stderr and "expected one of" not in bare.stderr, bare.stderr
    # and caviar resume, which once refused the recorded names the same way before it loaded the task
    resumed = subprocess.run([cli, "resume", str(tmp_path / "runs" / "mine"), "--task", str(task), "--plain",
                              "--no-report"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "finished" in resumed.stdout


def test_the_architecture_pages_plug_in_blocks_import_every_name_they_call():
    # the blocks called run_sweep and resume_sweep without importing them: pasted as written, a NameError
    import ast
    import builtins
    import os
    import re

    from tests.conftest import ROOT

    text = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        tree = ast.parse(block)
        bound = set(dir(builtins))
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
            elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                bound.add(node.name)
            elif isinstance(node, ast.Assign):
                bound |= {name.id for target in node.targets for name in ast.walk(target) if isinstance(name, ast.Name)}
        for node in tree.body:
            if isinstance(node, (ast.Expr, ast.Assign)):
                used = {name.id for name in ast.walk(node) if isinstance(name, ast.Name)}
                assert used <= bound, f"docs/ARCHITECTURE.md block uses {sorted(used - bound)} without defining them"


class FailsFromStage(Sampler):
    """Random points, and a user's bug (a history entry read as a dict) from stage ``fails_from`` (0-based) on."""

    def __init__(self, fails_from):
        self.fails_from = fails_from

    def stage_configs(self, space, count, *, seed, stage, history=(), keep_inactive=False):
        if stage >= self.fails_from:
            max(history, key=lambda scored: scored["score"])
        return Halton().stage_configs(space, count, seed=seed, stage=stage, keep_inactive=keep_inactive)


class PromotesByAttribute(StagePolicy):
    def promoted(self, results, next_stage_trials):
        return [results[0].config]  # results are (config, score) tuples


def test_an_error_in_a_users_plugin_is_one_line_naming_it_and_the_sweep_stays_resumable(tmp_path):
    # a sampler's bug came out as a traceback through the controller; raised at a later stage it left the controller
    # half into that stage (no trials, no pruner), so the last writes after the error failed too ("min() arg is an
    # empty sequence") and the trials that had ended since the last flush were not written
    from orchestrator.app.resume import read_record, rebuild_controller
    from orchestrator.store.storage import Storage
    from tests.orchestrator import test_resume as sim

    here = r"\(test_plugins.py:\d+\)"
    with pytest.raises(ConfigError, match=rf"^sampler '{__name__}.FailsFromStage': stage_configs raised ValueError: "
                                          rf"max\(\) arg is an empty sequence {here}, drawing stage 1$"):
        controller_for(SPACE, settings(sampler=sampler_name(FailsFromStage)), PlugIns(sampler=FailsFromStage(0)))
    policy = controller_for(SPACE, settings(stage_policy=stage_policy_name(PromotesByAttribute), pruner="none"),
                            PlugIns(stage_policy=PromotesByAttribute()))
    with pytest.raises(ConfigError, match=rf"^stage policy '{__name__}.PromotesByAttribute': promoted raised "
                                          rf"AttributeError: .* {here}, after stage 1$"):
        run(policy)

    stored = sim.settings_for(sampler=sampler_name(FailsFromStage))
    storage = Storage.from_uri(str(tmp_path / "sweep"))
    log = sim.start_sweep(storage, stored)
    controller = controller_for(sim.SPACE, stored, PlugIns(sampler=FailsFromStage(1)))
    with pytest.raises(ConfigError, match=r"stage_configs raised TypeError: .*, drawing stage 2$"):
        drive(controller, sim.PersistingBackend(storage, 1), log)
    assert controller.stage == 0 and len(controller.stage_spaces) == 1 and controller.finished is False
    log.flush(controller, force=True)  # what the app writes after an error: the whole first stage
    assert {row["status"] for row in read_record(storage).trials} == {"completed"}
    # the bug fixed, the resume draws stage 2 as a sweep that never failed does
    record = read_record(storage)
    rebuilt = rebuild_controller(record, lambda space, s: controller_for(space, s, PlugIns(sampler=FailsFromStage(9))))
    drive(rebuilt.controller, sim.PersistingBackend(storage, 1))
    whole_storage = Storage.from_uri(str(tmp_path / "whole"))
    whole = drive(controller_for(sim.SPACE, stored, PlugIns(sampler=FailsFromStage(9))),
                  sim.PersistingBackend(whole_storage, 1), sim.start_sweep(whole_storage, stored))
    assert sim.summary(rebuilt.controller) == sim.summary(whole)


def test_a_plugin_class_made_inside_a_function_is_recorded_by_its_path():
    # its path has '<locals>' in it, and run_sweep refused the object with "setting 'pruner': expected one of asha,
    # median, none", as though only a name could be given
    def make_pruner(floor):
        class FloorFromAFactory(BelowFloor):
            pass

        return FloorFromAFactory(floor=floor)

    pruner = make_pruner(0.6)

    class Task:
        space = SPACE
        settings: dict = {}

    built, _ = build_settings(Task, None, {"plan": "8x4,4x4", "pruner": pruner})  # type: ignore[arg-type]
    assert built.pruner == pruner_name(pruner) and built.pruner.endswith("make_pruner.<locals>.FloorFromAFactory")
    controller = controller_for(SPACE, built, choose_plugins({"pruner": pruner}))
    run(controller)
    assert {t.reason for t in controller.trials.values() if t.status == "pruned"} == {"below_0.6"}


def test_a_resume_given_another_plugin_than_the_sweeps_refuses_it_before_anything_runs(tmp_path):
    # the sweep's recorded 'asha' decided and the BelowFloor passed was dropped without a word
    from orchestrator.app.api import resume_sweep
    from orchestrator.store.storage import Storage
    from tests.orchestrator import test_resume as sim

    storage = Storage.from_uri(str(tmp_path / "sweep"))
    stored = sim.settings_for(stage_policy=stage_policy_name(RetrainTheBest), ensemble=False)
    drive(controller_for(sim.SPACE, stored, PlugIns(stage_policy=RetrainTheBest())), sim.PersistingBackend(storage, 1),
          sim.start_sweep(storage, stored))
    files = sorted(storage.list_files(""))
    from tests.conftest import TINY_TASK

    with pytest.raises(ConfigError, match=rf"^pruner: '{__name__}.BelowFloor' is not this sweep's pruner, 'asha', and "
                                          "a resume decides as the sweep began; pass the sweep's own pruner, or none"):
        resume_sweep(storage.root, pruner=BelowFloor(), stage_policy=RetrainTheBest(), task=TINY_TASK)
    with pytest.raises(ConfigError, match=r"^stage_policy: 'fresh' is not this sweep's stage_policy, '.*RetrainThe"):
        resume_sweep(storage.root, stage_policy="fresh", task=TINY_TASK)
    assert sorted(storage.list_files("")) == files


class Jittered(Sampler):
    """A user's sampler that reads the finished trials: the best config of the stages before, its lr jittered."""

    def __init__(self, drop=0, add=None):
        self.drop, self.add = drop, add or {}

    def stage_configs(self, space, count, *, seed, stage, history=(), keep_inactive=False):
        configs, _ = Halton().stage_configs(space, count, seed=seed, stage=stage, keep_inactive=keep_inactive)
        if history:
            best = max(history, key=lambda scored: scored[1])[0]
            configs = [{**best, "lr": best["lr"] * 1.1 ** (i % 3 - 1)} for i in range(count)]
        return [{**c, **self.add} for c in configs[: count - self.drop]], "jittered"


class RetrainTheBestLonger(StagePolicy):
    def promoted(self, results, next_stage_trials):
        best = max(results, key=lambda result: result[1])[0]
        return [{**best, "epochs": 20}]  # epochs are the plan's: this key reached the worker and did nothing


def test_a_plugin_that_returns_configs_the_stage_cannot_train_is_one_line_naming_it():
    # a sampler returning fewer configs silently shortened its stage (12 trials became 10); configs lacking a
    # parameter or having one the space does not (an 'epochs' meant to train longer) reached the workers as they were
    jittered = controller_for(SPACE, settings(sampler=sampler_name(Jittered), pruner="none",
                                              stage_policy="fresh"), PlugIns(sampler=Jittered()))
    run(jittered)
    best = max((t for t in jittered.trials.values() if t.stage == 0), key=lambda t: t.best_score)
    assert [t.config["lr"] / best.config["lr"] for t in jittered.trials.values() if t.stage == 1] == pytest.approx(
        [1 / 1.1, 1.0, 1.1, 1 / 1.1])

    def run_with(**plugins):
        names = {kind: PLUGIN_NAME[kind](plugin) for kind, plugin in plugins.items()}
        run(controller_for(SPACE, settings(**names), PlugIns(**plugins)))

    who = rf"'{__name__}.Jittered': stage_configs returned"
    with pytest.raises(ConfigError, match=rf"^sampler {who} 7 configs for stage 1, which draws 8$"):
        run_with(sampler=Jittered(drop=1))
    with pytest.raises(ConfigError, match=rf"^sampler {who} a config for stage 1 that has 'epochs', which the space "
                                          r"does not \(the plan sets the epochs\)$"):
        run_with(sampler=Jittered(add={"epochs": 3}))
    with pytest.raises(ConfigError, match=rf"^stage policy '{__name__}.RetrainTheBestLonger': promoted returned a "
                                          "config for stage 2 that has 'epochs', which the space does not"):
        run_with(stage_policy=RetrainTheBestLonger())
    assert SPACE.misfit({"lr": 0.1}) == "lacks 'act'" and SPACE.misfit([0.1]) is not None


PLUGIN_NAME = {"sampler": sampler_name, "stage_policy": stage_policy_name}


class HalveAroundTheBest(StagePolicy):
    """Written from the docs: the next stage's lr range is the best lr, halved and doubled, as a SearchSpace."""

    def __init__(self, drop=None):
        self.drop = drop

    def next_space(self, space, results):
        best = max(results, key=lambda result: result[1])[0]
        narrowed = space.replace(lr=loguniform(best["lr"] / 2, min(1.0, best["lr"] * 2)))
        return SearchSpace({k: v for k, v in narrowed.items() if k != self.drop})


def test_a_stage_policy_may_return_the_next_space_itself_and_no_space_of_other_parameters():
    # a SearchSpace returned by next_space failed on '.edges' (AttributeError) inside the controller, after the first
    # stage had trained
    def with_policy(policy):
        return controller_for(SPACE, settings(stage_policy=stage_policy_name(policy), pruner="none"),
                              PlugIns(stage_policy=policy))

    controller = with_policy(HalveAroundTheBest())
    run(controller)
    best = max((t for t in controller.trials.values() if t.stage == 0), key=lambda t: t.best_score).config["lr"]
    lr = controller.stage_spaces[1]["lr"]
    assert (lr.low, lr.high) == pytest.approx((best / 2, best * 2))
    assert all(best / 2 <= t.config["lr"] <= best * 2 for t in controller.trials.values() if t.stage == 1)
    with pytest.raises(ConfigError, match=rf"^stage policy '{__name__}.HalveAroundTheBest': next_space returned a "
                                          r"space for stage 2 with parameters lr; the stage before has lr, act$"):
        run(with_policy(HalveAroundTheBest(drop="act")))


class DecidesWhereItStands(BelowFloor):
    """A user's slip: past ``at_epoch`` the next decision epoch is the epoch the trial stands at, not one after it."""

    def next_decision_epoch(self, epoch):
        return epoch if epoch >= self.at_epoch else self.at_epoch


def test_a_pruner_whose_next_decision_epoch_does_not_move_on_is_one_line_not_a_hang():
    # each trial's worker was asked to train to the epoch it stood at, again and again: the sweep hung, silent
    from orchestrator.decide.controller import Controller, ControllerOptions
    from orchestrator.search.stages import parse_plan

    with pytest.raises(ConfigError, match=rf"^pruner '{__name__}.DecidesWhereItStands': next_decision_epoch\(0\) "
                                          r"returned 0; return an epoch after 0 \(max_epochs when no decision"):
        controller_for(SPACE, settings(pruner=pruner_name(DecidesWhereItStands)),
                       PlugIns(pruner=DecidesWhereItStands(at_epoch=0)))  # refused before anything runs
    # a slip past the first answer shows only while the trials train: refused there, not looped on
    controller = Controller(SPACE, parse_plan("4x4"), lambda stage: DecidesWhereItStands(max_epochs=stage.epochs),
                            ControllerOptions(seed=1))
    with pytest.raises(ConfigError, match=r"next_decision_epoch\(2\) returned 2; return an epoch after 2"):
        run(controller)


def _settings_with(task_settings: dict, config_file=None, overrides=None) -> RunSettings:
    class Task:
        space = SPACE
        settings = task_settings

    return build_settings(Task, config_file, overrides or {})[0]  # type: ignore[arg-type]


def test_a_configured_registered_pruner_resumes_with_its_options_without_the_object(tmp_path):
    """run_sweep(pruner=MedianStop(min_trials=2)) recorded 'median' only: caviar resume (no object) rebuilt the median
    rule with min_trials=5 and pruned the rest of the sweep otherwise. The options are in the sweep row now."""
    from orchestrator.app.resume import read_record, rebuild_controller
    from orchestrator.decide.pruning import MedianStoppingPruner
    from orchestrator.store.storage import Storage
    from tests.orchestrator import test_resume as sim

    median = MedianStoppingPruner(min_trials=2, check_not_learning=False)
    stored = _settings_with({}, None, {"plan": "6x1,8x4,4x4", "seed": 7, "slots": 1, "pruner": median})
    assert (stored.pruner, stored.pruner_options) == ("median", {"min_trials": 2, "check_not_learning": False})
    whole, storage = whole_and_crashed(tmp_path, stored, PlugIns(pruner=median), crash_at_tick=9)  # in stage 2
    rebuilt = rebuild_controller(read_record(storage))  # no object: caviar resume on the command line
    assert rebuilt.controller.stage == 1
    drive(rebuilt.controller, sim.PersistingBackend(storage, 1))
    assert sim.summary(rebuilt.controller) == sim.summary(whole)
    defaults = drive(controller_for(sim.SPACE, replace_settings(stored, pruner_options={}), PlugIns()),
                     sim.PersistingBackend(Storage.from_uri(str(tmp_path / "defaults")), 1))
    assert sim.summary(defaults) != sim.summary(whole)  # the options decide: the check above can fail


def replace_settings(settings: RunSettings, **changes) -> RunSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def test_pruner_options_in_a_toml_file_are_checked_and_a_later_pruner_choice_drops_them(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text('[run]\npruner = "median"\npruner_options = {min_trials = 3}\n')
    built = _settings_with({}, str(config))
    assert (built.pruner, built.pruner_options) == ("median", {"min_trials": 3})
    from orchestrator.search.stages import parse_plan

    assert controller_for(SPACE, replace_settings(built, plan="8x4")).make_pruner(parse_plan("8x4")[0]).min_trials == 3
    # --pruner asha on the command line: median's options are not asha's
    assert _settings_with({}, str(config), {"pruner": "asha"}).pruner_options == {}
    config.write_text('[run]\npruner = "median"\npruner_options = {min_trial = 3}\n')
    with pytest.raises(ConfigError, match=r"^setting 'pruner_options': 'min_trial' is not an option of the median "
                                          r"pruner \(options: grace_epochs, min_trials, "):
        controller_for(SPACE, _settings_with({}, str(config)))
    config.write_text('[run]\npruner = "median"\npruner_options = {min_trials = [3]}\n')
    with pytest.raises(ConfigError, match=r"^setting 'pruner_options': expected a mapping of option name to a number"):
        _settings_with({}, str(config))
    with pytest.raises(ConfigError, match=r"^setting 'pruner_options': \{'min_trials': 4\}, but the pruner passed was "
                                          r"made with \{'min_trials': 3\}; give its options in one place"):
        from orchestrator.decide.pruning import MedianStoppingPruner

        median = MedianStoppingPruner(min_trials=3)
        controller_for(SPACE, _settings_with({}, None, {"pruner": median, "pruner_options": {"min_trials": 4}}),
                       PlugIns(pruner=median))


def test_a_pruner_object_whose_options_json_cannot_hold_resumes_only_with_the_object():
    class Scored(BelowFloor):
        def __init__(self, *, rule=None, **rest):
            super().__init__(**rest)
            self.rule = rule

    pruner = Scored(rule=len, floor=0.7)
    built = _settings_with({}, None, {"pruner": pruner})
    assert built.pruner_options == {"floor": 0.7, "_unrecorded": "rule"}
    controller_for(SPACE, built, PlugIns(pruner=pruner))  # the run itself, with the object
    register_pruner("scored_for_test")(Scored)
    try:
        with pytest.raises(ConfigError, match=r"pruner was passed as an object with options its sweep row cannot hold "
                                              r"\(rule\); pass the same pruner object"):
            controller_for(SPACE, replace_settings(built, pruner="scored_for_test"))
    finally:
        PRUNERS.pop("scored_for_test", None)
