"""Grouping trials into fused arrays: pure functions of configs, no torch."""

from __future__ import annotations

import pytest

from orchestrator.app.api import controller_for
from orchestrator.decide.backend import Report
from orchestrator.decide.fusing import (
    FusePlan,
    block_size,
    choose_array_size,
    fuse_blocker,
    group_trials,
    mean_array_size,
    probe_sizes,
    shape_key,
    share_shapes,
    useful_array_size,
)
from orchestrator.errors import ConfigError
from orchestrator.search.sampler import sample_configs
from orchestrator.spec.settings import RunSettings
from orchestrator.spec.task import load_task
from tests.conftest import DIGITS_TASK

BASE = {"layers": 2, "hidden": 64, "activation": "relu", "batch_size": 32, "optimizer": "adam", "dropout": 0.2,
        "lr": 0.01, "beta1": 0.9, "weight_decay": 1e-4, "schedule": "step", "ema_decay": 0.99, "init": "he"}


def test_per_member_hyperparameters_do_not_split_arrays_and_shape_ones_do():
    same = {**BASE, "lr": 0.3, "beta1": 0.5, "weight_decay": 0.0, "schedule": "cosine", "ema_decay": 0.9,
            "init": "xavier", "dropout": 0.4}
    assert shape_key(BASE) == shape_key(same)
    for change in ({"hidden": 65}, {"layers": 3}, {"activation": "tanh"}, {"batch_size": 64}, {"optimizer": "sgd"},
                   {"dropout": 0.0}, {"unknown_knob": 1}):
        assert shape_key(BASE) != shape_key({**BASE, **change}), change


def test_a_task_can_declare_more_per_member_parameters():
    a, b = {**BASE, "label_smoothing": 0.1}, {**BASE, "label_smoothing": 0.2}
    assert shape_key(a) != shape_key(b)
    from orchestrator.decide.fusing import PER_MEMBER

    assert shape_key(a, PER_MEMBER | {"label_smoothing"}) == shape_key(b, PER_MEMBER | {"label_smoothing"})


def test_groups_hold_equal_keys_up_to_the_array_size_in_trial_order():
    configs = {0: BASE, 1: {**BASE, "hidden": 8}, 2: {**BASE, "lr": 0.5}, 3: {**BASE, "lr": 0.1},
               4: {**BASE, "hidden": 8, "lr": 1.0}, 5: {**BASE, "lr": 0.2}}
    assert group_trials(configs, max_size=2) == [[0, 2], [1, 4], [3, 5]]
    assert group_trials(configs, max_size=32) == [[0, 2, 3, 5], [1, 4]]
    assert mean_array_size(group_trials(configs, 32)) == 3.0
    with pytest.raises(ConfigError, match="^fuse"):
        group_trials(configs, max_size=0)


def test_random_digits_configs_rarely_fuse_until_blocks_share_a_shape():
    space = load_task(DIGITS_TASK).space
    configs = sample_configs(space, 64, seed=1)
    alone = group_trials(dict(enumerate(configs)), max_size=32)
    assert mean_array_size(alone) < 1.2  # width and batch size alone have hundreds of values
    shared = share_shapes(configs, 32)
    groups = group_trials(dict(enumerate(shared)), max_size=32)
    assert [len(g) for g in groups] == [32, 32]
    for original, fused in zip(configs, shared):  # the per-member draws are untouched
        assert (original["lr"], original["beta2"], original["ema_decay"]) == (fused["lr"], fused["beta2"],
                                                                                fused["ema_decay"])
    assert shared[33]["hidden"] == configs[32]["hidden"] and shared[1]["hidden"] == configs[0]["hidden"]


def test_share_shapes_keeps_dropout_rates_but_not_a_disagreement_about_zero():
    configs = [{**BASE, "dropout": 0.3}, {**BASE, "dropout": 0.1}, {**BASE, "dropout": 0.0}]
    shared = share_shapes(configs, 3)
    assert [c["dropout"] for c in shared] == [0.3, 0.1, 0.3]
    explicit = share_shapes([{**BASE, "hidden": 8}, {**BASE, "hidden": 9, "batch_size": 7}], 2, shape_params=["hidden"])
    assert [c["hidden"] for c in explicit] == [8, 8] and explicit[1]["batch_size"] == 7


# -- the decision: whether to fuse and how wide (pure numbers in, a number out) -------------------
def test_k_is_the_smallest_size_past_which_throughput_stops_improving():
    rates = {1: 30.0, 2: 55.0, 4: 95.0, 8: 150.0, 16: 190.0, 32: 200.0, 64: 205.0}
    assert choose_array_size(rates) == 16  # 190 is within 90% of the best (205); 8 is not
    assert choose_array_size(rates, keep=1.0) == 64
    assert choose_array_size({1: 50.0, 2: 48.0, 4: 40.0}) == 1  # arrays buy nothing: the runner then runs plain
    assert choose_array_size({1: 50.0, 2: 48.0, 4: 40.0}, smallest=2) == 2  # fuse = "on": at least a pair


def test_k_is_capped_by_the_work_per_worker_and_by_memory():
    rates = {1: 30.0, 2: 55.0, 4: 95.0, 8: 150.0, 16: 190.0, 32: 200.0}
    assert choose_array_size(rates, limit=8) == 8  # a stage of 16 trials on 2 workers: wider leaves one idle
    peaks = {1: 1e9, 2: 2e9, 4: 4e9, 8: 8e9, 16: 16e9, 32: 32e9}
    assert choose_array_size(rates, peak_bytes=peaks, free_bytes=20e9) == 8  # 16 needs 2 x 16 GB
    assert choose_array_size(rates, peak_bytes=peaks, free_bytes=0.5e9) == 1  # nothing fits: the smallest size
    with pytest.raises(ConfigError, match="^fuse"):
        choose_array_size({})


def test_sizes_to_probe_and_block_sizes_follow_the_plan_and_the_workers():
    assert probe_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert probe_sizes(12) == [1, 2, 4, 8, 12]
    assert probe_sizes(500) == [1, 2, 4, 8, 16, 32, 64]
    assert useful_array_size([64, 24, 8], workers=2) == 32
    assert useful_array_size([5], workers=2) == 3
    assert block_size(64, workers=2, array_size=32) == 32
    assert block_size(8, workers=2, array_size=32) == 4  # a small late stage still reaches both workers
    assert block_size(100, workers=2, array_size=32) == 32


def test_what_blocks_fusing_before_any_model_is_built():
    assert fuse_blocker([], "fp32") is None
    assert "train_epoch" in fuse_blocker(["train_epoch"], "fp32")
    assert "bf16" in fuse_blocker([], "bf16")


def test_a_fusing_controller_shares_shapes_in_blocks_in_every_stage():
    space = load_task(DIGITS_TASK).space
    settings = RunSettings(plan="8x1,12x2", seed=3).validate()
    plain = controller_for(space, settings)
    fused = controller_for(space, settings)
    fused.fuse(4, workers=2)
    before = [plain.trials[t].config for t in range(8)]
    after = [fused.trials[t].config for t in range(8)]
    assert [c["lr"] for c in before] == [c["lr"] for c in after]  # per-member draws untouched
    assert len({shape_key(c) for c in after}) == 2 and len({shape_key(c) for c in before}) == 8
    for tid in range(8):  # finish stage 0: stage 1's fresh samples share shapes in blocks too
        fused.next_assignment()
        fused.on_report(Report(tid, [{"epoch": 1, "score": 0.1 * tid, "train_loss": 1.0, "val_loss": 1.0}],
                               ended=True, status="completed"))
    stage1 = [t.config for t in fused.trials.values() if t.stage == 1]
    fresh = stage1[: len(stage1) - sum(1 for c in stage1 if c in after)]  # promoted configs come last
    block = block_size(len(fresh), 2, 4)
    assert block >= 2 and all(len({shape_key(c) for c in fresh[i : i + block]}) == 1
                              for i in range(0, len(fresh), block))
    assert len({shape_key(c) for c in fresh}) == -(-len(fresh) // block)


def test_fuse_and_array_size_settings_are_checked_by_name():
    assert RunSettings().fuse == "off" and RunSettings().array_size == "auto"
    RunSettings(fuse="off", array_size=32).validate()
    with pytest.raises(ConfigError, match="^setting 'fuse': expected one of auto, off, on$"):
        RunSettings(fuse="yes").validate()
    for bad in (0, -3, "many", True, 2.5):
        with pytest.raises(ConfigError, match="^setting 'array_size'"):
            RunSettings(array_size=bad).validate()


def test_shared_shapes_keep_conditional_hyperparameters_consistent_with_the_shared_optimizer():
    """A block takes its leader's optimizer: each member's momentum or betas follow that optimizer, not its own draw."""
    space = load_task(DIGITS_TASK).space
    settings = RunSettings(plan="8x1,12x2", seed=3).validate()
    fused = controller_for(space, settings)
    fused.fuse(4, workers=2)
    users = {"momentum": {"momentum", "nesterov"}, "beta1": {"adam", "adamw"}, "rho": {"rmsprop"}}
    for trial in fused.trials.values():
        for name, optimizers in users.items():
            assert (trial.config[name] is not None) == (trial.config["optimizer"] in optimizers), trial.config


def test_the_set_ups_fuse_plan_is_applied_by_the_controller_with_its_event():
    """cluster/fused_setup.py returns a FusePlan; only the controller changes its own state from it."""
    space = load_task(DIGITS_TASK).space
    settings = RunSettings(plan="8x1,12x2", seed=3).validate()
    by_hand, applied = controller_for(space, settings), controller_for(space, settings)
    by_hand.fuse(4, workers=2)
    detail = {"array_size": 4, "block_cap": 4, "workers": 2}
    applied.apply_fusing(FusePlan(True, "arrays of up to 4 trials (array_size setting)", detail, block_cap=4,
                                  workers=2))
    assert [t.config for t in applied.trials.values()] == [t.config for t in by_hand.trials.values()]
    assert applied.events[-1]["kind"] == "fusing_on" and applied.events[-1]["detail"] == detail
    off = controller_for(space, settings)
    configs = [t.config for t in off.trials.values()]
    off.apply_fusing(FusePlan(False, "precision bf16: fused arrays train in fp32", {"fuse": "auto"}))
    assert [t.config for t in off.trials.values()] == configs and off.options.fuse_array_size == 0
    assert (off.events[-1]["kind"], off.events[-1]["reason"]) == ("fusing_off", "precision bf16: fused arrays "
                                                                              "train in fp32")


class ProbedArrays:
    """The fused backend's probe as setup_fusing sees it: a config whose build_model raises, or one that fuses."""

    def __init__(self, failing_hidden: set[int]):
        self.failing, self.probed, self.closed = failing_hidden, [], False

    def wait_ready(self):
        pass

    def probe(self, config, sizes):
        self.probed.append(config["hidden"])
        if config["hidden"] in self.failing:
            return {"error": f"TaskError: build_model raised ValueError: no layer of width {config['hidden']}",
                    "trials_per_second": {}}
        return {"error": None, "engine": "vmap", "device": "cpu", "trials_per_second": {2: 10.0, 4: 30.0},
                "peak_bytes": None, "free_bytes": None}

    def set_array_size(self, k):
        self.k = k

    def close(self, finished=False):
        self.closed = True


def test_a_first_trial_whose_model_cannot_be_built_passes_the_probe_on_to_the_next():
    # fuse = "on" refused the whole sweep ("these trials cannot be fused: TaskError: build_model raised ...") and
    # "auto" trained every trial unfused, for one config that fails alone, as it would unfused
    from orchestrator.decide.fusing import setup_fusing

    configs = [{**BASE, "hidden": h} for h in (13, 64, 32)]
    arrays = ProbedArrays({13})
    backend, plan = setup_fusing("on", "auto", None, frozenset(), [8, 8], configs, 2,
                                 open_fused=lambda k: arrays, open_plain=lambda: "plain")
    assert backend is arrays and plan.fused and arrays.probed == [13, 64]
    every = ProbedArrays({13, 64, 32})  # every config fails: the first one's error is the reason
    with pytest.raises(ConfigError, match=r"cannot be fused: TaskError: build_model raised ValueError: no layer of "
                                          r"width 13$"):
        setup_fusing("on", "auto", None, frozenset(), [8, 8], configs, 2, open_fused=lambda k: every,
                     open_plain=lambda: "plain")
    assert every.probed == [13, 64, 32] and every.closed


class ProbedLayerKinds(ProbedArrays):
    """A probe on which a GRU's packed sequences cannot be batched across members, while a mean over positions can."""

    def probe(self, config, sizes):
        self.probed.append((config["pool"], list(sizes)))
        if config["pool"] == "gru":
            return {"error": "RuntimeError: stack expects each tensor to be equal size (task.py:36)",
                    "trials_per_second": {}}
        return {"error": None, "engine": "vmap", "device": "cpu", "trials_per_second": {2: 10.0, 4: 30.0},
                "peak_bytes": None, "free_bytes": None}


def test_a_layer_kind_the_first_config_lacks_is_probed_too():
    # A text classifier with pool = choice(["mean", "gru"]): the probe trained the first config (mean) only, so
    # --fuse on started, and every GRU trial then failed mid-sweep ('stack expects each tensor to be equal size').
    from orchestrator.decide.fusing import setup_fusing

    configs = [{**BASE, "hidden": h, "pool": p, "schedule": s}
               for h, p, s in ((16, "mean", "step"), (32, "mean", "cosine"), (16, "gru", "step"))]
    arrays = ProbedLayerKinds(set())
    with pytest.raises(ConfigError, match=r"cannot be fused: RuntimeError: stack expects .* \(the trials with "
                                          r"pool='gru'\)$"):
        setup_fusing("on", "auto", None, frozenset(), [8, 8], configs, 2, open_fused=lambda k: arrays,
                     open_plain=lambda: "plain")
    # the first config timed at each size; the GRU's only trained (a schedule, held per member, is no structure)
    assert [p for p, _ in arrays.probed] == ["mean", "gru"] and arrays.probed[1][1] == [] and arrays.closed
    auto = ProbedLayerKinds(set())
    backend, plan = setup_fusing("auto", "auto", None, frozenset(), [8, 8], configs, 2,
                                 open_fused=lambda k: auto, open_plain=lambda: "plain")
    assert backend == "plain" and not plan.fused and "pool='gru'" in plan.reason
    means = [c for c in configs if c["pool"] == "mean"]
    backend, plan = setup_fusing("on", "auto", None, frozenset(), [8, 8], means, 2,
                                 open_fused=lambda k: ProbedLayerKinds(set()), open_plain=lambda: "plain")
    assert plan.fused
