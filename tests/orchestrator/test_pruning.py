from __future__ import annotations

import math

import pytest

from orchestrator.decide.pruning import (
    ASHAPruner,
    MedianStoppingPruner,
    NoPruner,
    Observation,
    Pruner,
    asha_keep,
    asha_rungs,
    divergence_reason,
    make_pruner,
    not_learning_reason,
    objective_nan_reason,
    plateau_reason,
    sorted_median,
)
from orchestrator.errors import ConfigError


def obs(
    trial: int,
    epoch: int,
    score: float,
    train_loss: float = 1.0,
    val_loss: float = 1.0,
    val_accuracy: float | None = None,
    num_classes: int | None = None,
) -> Observation:
    return Observation(trial, epoch, score, train_loss, val_loss, val_accuracy, num_classes)


# -- divergence ----------------------------------------------------------------------------


@pytest.mark.parametrize("losses", [[1.0, math.nan], [1.0, math.inf], [math.nan], [2.0, 1.0, 8.5]])
def test_divergence_detected(losses):
    assert divergence_reason(losses) == "diverged"


@pytest.mark.parametrize("losses", [[], [1.0], [2.0, 1.0, 8.0], [2.0, 3.0, 0.5], [0.0, 5.0]])
def test_divergence_not_detected(losses):
    assert divergence_reason(losses) is None


def test_divergence_ratio_and_min_epochs():
    assert divergence_reason([1.0, 2.5], max_ratio=2.0) == "diverged"
    assert divergence_reason([1.0, 2.5], max_ratio=2.0, min_epochs=3) is None


# -- early stopping ------------------------------------------------------------------------


NAN = math.nan


@pytest.mark.parametrize("scores, patience", [
    ([0.5, 0.6, 0.6, 0.59], 2),  # a tie is no improvement
    ([-1.0, -0.8, -0.81, -0.85], 2),  # a loss objective, negated: higher is better still
    ([0.5, 0.7, 0.6], 1),
    ([0.5, NAN, NAN], 2),  # a NaN never improves
    ([0.9, 0.8, 0.7, 0.6, 0.5], 4),
])
def test_a_trial_whose_last_epochs_beat_nothing_before_them_stops_early(scores, patience):
    assert plateau_reason(scores, patience) == "early_stopped"


@pytest.mark.parametrize("scores, patience", [
    ([0.5, 0.6, 0.61, 0.6], 2),  # the epoch before last improved
    ([0.5, 0.6, 0.6], 0),  # 0: off
    ([0.5, 0.4], 2),  # fewer epochs than the patience
    ([NAN, NAN, 0.3], 2),  # no finite score before: any finite one is an improvement
])
def test_a_trial_still_improving_or_too_young_goes_on(scores, patience):
    assert plateau_reason(scores, patience) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: NoPruner(),
        lambda: ASHAPruner(max_epochs=20),
        lambda: MedianStoppingPruner(max_epochs=20),
    ],
)
def test_every_pruner_stops_divergence_on_any_epoch(make):
    q: Pruner = make()
    assert q.observe(obs(1, 1, 0.5, train_loss=math.nan)) == "diverged"
    r = make()
    assert r.observe(obs(2, 1, math.nan, val_loss=math.nan)) == "diverged"  # the loss: whatever the score says
    s = make()
    assert s.observe(obs(3, 1, 0.5, val_loss=math.inf)) == "diverged"
    t = make()
    t.observe(obs(4, 1, 0.5, train_loss=1.0))
    assert t.observe(obs(4, 2, 0.5, train_loss=4.5)) == "diverged"


@pytest.mark.parametrize("make", [lambda: NoPruner(), lambda: ASHAPruner(max_epochs=20),
                                  lambda: MedianStoppingPruner(max_epochs=20)])
def test_a_nan_objective_with_finite_losses_is_objective_nan_not_divergence(make):
    # a hand-written macro precision is NaN while some class is never predicted: the training is fine
    q: Pruner = make()
    assert q.observe(obs(1, 1, math.nan, train_loss=1.35, val_loss=1.23)) == "objective_nan"
    assert q.observe(obs(1, 2, 0.8)) == "objective_nan"  # a stopped trial stays stopped, for the same reason
    r = make()
    assert r.observe(obs(2, 1, 0.5)) is None
    assert r.observe(obs(2, 2, -math.inf)) == "objective_nan"  # an infinite score is no number either
    s = make()
    s.observe(obs(3, 1, 0.5, train_loss=1.0))
    assert s.observe(obs(3, 2, math.nan, train_loss=4.5)) == "diverged"  # exploding loss comes first


def test_objective_nan_rule_on_plain_data():
    assert objective_nan_reason(obs(0, 1, math.nan)) == "objective_nan"
    assert objective_nan_reason(obs(0, 1, math.inf)) == "objective_nan"
    assert objective_nan_reason(obs(0, 1, 0.3)) is None
    assert objective_nan_reason(obs(0, 1, math.nan, train_loss=math.nan)) is None  # divergence, not the metric
    assert objective_nan_reason(obs(0, 1, math.nan, val_loss=math.inf)) is None


# -- not learning ----------------------------------------------------------------------------


def test_not_learning_by_accuracy_and_by_loss():
    assert not_learning_reason(obs(0, 1, 0.1, val_accuracy=0.11, num_classes=10)) == "not_learning"
    assert not_learning_reason(obs(0, 1, 0.1, val_accuracy=0.12, num_classes=10)) == "not_learning"
    assert not_learning_reason(obs(0, 1, 0.2, val_accuracy=0.13, num_classes=10)) is None
    assert not_learning_reason(obs(0, 1, 0.2, val_accuracy=0.13, num_classes=10), margin=0.05) == "not_learning"
    # no accuracy: val loss at or above ln C (a uniform guess) is not learning
    assert not_learning_reason(obs(0, 1, -2.4, val_loss=math.log(10), num_classes=10)) == "not_learning"
    assert not_learning_reason(obs(0, 1, -2.0, val_loss=2.0, num_classes=10)) is None
    # NaN accuracy counts as missing
    assert not_learning_reason(obs(0, 1, -2.0, val_loss=2.0, val_accuracy=math.nan, num_classes=10)) is None
    # regression or unknown task: no opinion
    assert not_learning_reason(obs(0, 1, 0.0, val_accuracy=0.0)) is None


def test_not_learning_only_at_first_rung():
    p = ASHAPruner(max_epochs=20, grace_epochs=1, reduction_factor=3)
    assert p.observe(obs(0, 1, 0.1, val_accuracy=0.1, num_classes=10)) == "not_learning"
    assert p.observe(obs(1, 1, 0.5, val_accuracy=0.5, num_classes=10)) is None
    assert p.observe(obs(1, 2, 0.1, val_accuracy=0.1, num_classes=10)) is None  # not a rung
    assert p.observe(obs(1, 3, 0.1, val_accuracy=0.1, num_classes=10)) is None  # rung 3: n=1 < eta
    off = ASHAPruner(max_epochs=20, check_not_learning=False)
    assert off.observe(obs(0, 1, 0.1, val_accuracy=0.1, num_classes=10)) is None


# -- ASHA --------------------------------------------------------------------------------------


def test_asha_rungs():
    assert asha_rungs(1, 3, 20) == [1, 3, 9]
    assert asha_rungs(1, 3, 27) == [1, 3, 9]  # no rung at max_epochs: the trial ends there anyway
    assert asha_rungs(2, 2, 20) == [2, 4, 8, 16]
    assert asha_rungs(1, 3, 1) == []


def test_asha_keep_by_hand():
    # eta = 3: n < 3 always continues; n in 3..5 keeps only rank 1; n in 6..8 keeps ranks 1-2
    assert asha_keep([0.5], 0.5, 3)
    assert asha_keep([0.5, 0.9], 0.5, 3)
    assert not asha_keep([0.5, 0.6, 0.7], 0.6, 3)
    assert asha_keep([0.5, 0.6, 0.7], 0.7, 3)
    assert asha_keep([0.5, 0.7, 0.7], 0.7, 3)  # ties count in the trial's favour
    assert not asha_keep([0.5, 0.6, 0.65, 0.7, 0.8], 0.65, 3)
    assert asha_keep([0.5, 0.6, 0.65, 0.7, 0.75, 0.8], 0.75, 3)
    assert not asha_keep([0.5, 0.6, 0.65, 0.7, 0.75, 0.8], 0.7, 3)


def test_asha_decisions_on_a_hand_built_history():
    p = ASHAPruner(max_epochs=20, grace_epochs=1, reduction_factor=3)
    arrivals = [
        (0, 0.5, None),
        (1, 0.7, None),
        (2, 0.6, "asha_rung_1"),
        (3, 0.8, None),
        (4, 0.65, "asha_rung_1"),
        (5, 0.75, None),
        (6, 0.4, "asha_rung_1"),
    ]
    for trial, score, expected in arrivals:
        assert p.observe(obs(trial, 1, score)) == expected, trial
    assert p.rung_scores(1) == sorted(s for _, s, _ in arrivals)
    # epoch 2 is not a rung; rung 3 has its own, empty, list
    assert p.observe(obs(0, 2, 0.1)) is None
    assert p.observe(obs(0, 3, 0.1)) is None
    assert p.observe(obs(1, 2, 0.2)) is None
    assert p.observe(obs(1, 3, 0.9)) is None
    assert p.observe(obs(3, 3, 0.5)) == "asha_rung_3"  # n=3, rank 2 of 3 -> out


def test_asha_next_decision_epoch():
    p = ASHAPruner(max_epochs=20, grace_epochs=1, reduction_factor=3)
    assert [p.next_decision_epoch(e) for e in (0, 1, 2, 3, 8, 9, 15)] == [1, 3, 3, 9, 9, 20, 20]
    q = ASHAPruner(max_epochs=5, grace_epochs=2, reduction_factor=2)
    assert [q.next_decision_epoch(e) for e in (0, 2, 3, 4)] == [2, 4, 4, 5]


def test_no_decision_at_max_epochs():
    p = MedianStoppingPruner(max_epochs=3, min_trials=1, check_not_learning=False)
    for t in range(3):
        p.observe(obs(t, 2, 0.5))
        p.observe(obs(t, 3, 0.5))
    assert p.observe(obs(8, 2, -1.0)) == "median_epoch_2"
    assert p.observe(obs(9, 3, -1.0)) is None  # the trial ends at max_epochs anyway


def test_repeated_epoch_recorded_once_and_stop_is_sticky():
    p = ASHAPruner(max_epochs=20)
    assert p.observe(obs(0, 1, 0.9)) is None
    assert p.observe(obs(0, 1, 0.9)) is None  # a retried attempt re-reports epoch 1
    assert p.rung_scores(1) == [0.9]
    p.observe(obs(1, 1, 0.8))
    assert p.observe(obs(2, 1, 0.1)) == "asha_rung_1"
    assert p.observe(obs(2, 2, 0.99)) == "asha_rung_1"  # the late epoch after a stop changes nothing
    assert p.rung_scores(1) == [0.1, 0.8, 0.9]


def test_forget_does_not_change_other_decisions():
    def run(forget: bool) -> list[str | None]:
        p = ASHAPruner(max_epochs=20)
        out = []
        for t, s in enumerate([0.5, 0.7, 0.6, 0.8, 0.65, 0.75, 0.2, 0.9]):
            out.append(p.observe(obs(t, 1, s)))
            if forget and out[-1] is not None:
                p.forget(t)
        return out

    assert run(True) == run(False)


# -- median stopping ---------------------------------------------------------------------------


def test_sorted_median():
    assert sorted_median([1.0]) == 1.0
    assert sorted_median([1.0, 2.0]) == 1.5
    assert sorted_median([1.0, 2.0, 10.0]) == 2.0


def test_median_rule_by_hand():
    p = MedianStoppingPruner(grace_epochs=2, min_trials=3, max_epochs=10, check_not_learning=False)
    # three reference trials: running averages at epoch 2 are 0.5, 0.6, 0.7
    for t, (s1, s2) in enumerate([(0.4, 0.6), (0.5, 0.7), (0.6, 0.8)]):
        assert p.observe(obs(t, 1, s1)) is None  # before grace
        assert p.observe(obs(t, 2, s2)) is None  # fewer than min_trials others
    # median of others = 0.6; best so far 0.59 < 0.6 -> stop; 0.6 is not strictly below -> continue
    p.observe(obs(10, 1, 0.1))
    assert p.observe(obs(10, 2, 0.59)) == "median_epoch_2"
    p.observe(obs(11, 1, 0.6))
    # others now 0.345, 0.5, 0.6, 0.7 -> median 0.55; the best so far (0.6), not the last value, counts
    assert p.observe(obs(11, 2, 0.2)) is None


def test_median_next_decision_epoch():
    p = MedianStoppingPruner(grace_epochs=3, max_epochs=10)
    assert [p.next_decision_epoch(e) for e in (0, 2, 3, 8, 9)] == [3, 3, 4, 9, 10]


def test_no_pruner_only_diverges():
    p = NoPruner(max_epochs=7)
    for t in range(20):
        assert p.observe(obs(t, 1, -t, val_accuracy=0.0, num_classes=10)) is None
    assert p.next_decision_epoch(0) == 7


# -- determinism, scale -------------------------------------------------------------------------


def _history(n_trials: int, epochs: int) -> list[Observation]:
    rows = []
    for e in range(1, epochs + 1):
        for t in range(n_trials):
            score = ((t * 7919) % 1000) / 1000 + 0.01 * e  # a fixed, trial-dependent curve
            loss = 2.0 - score
            rows.append(Observation(t, e, score, loss, loss, score, 10))
    return rows


@pytest.mark.parametrize("name", ["asha", "median", "none"])
def test_replay_gives_the_same_decisions(name):
    rows = _history(200, 10)

    def replay() -> list[str | None]:
        p = make_pruner(name, max_epochs=10)
        stopped: set[int] = set()
        out = []
        for row in rows:
            if row.trial_id in stopped:
                continue
            out.append(p.observe(row))
            if out[-1] is not None:
                stopped.add(row.trial_id)
                p.forget(row.trial_id)
        return out

    first = replay()
    assert first == replay()
    if name != "none":
        assert any(first)


def test_many_trials_run_through():
    """10,000 trials x 20 epochs: a sanity check that the work finishes (no timing assert)."""
    p = ASHAPruner(max_epochs=20)
    stopped = {row.trial_id for row in _history(10_000, 20) if p.observe(row) is not None}
    assert 0 < len(stopped) < 10_000
    assert len(p.rung_scores(1)) == 10_000


# -- factory, validation ---------------------------------------------------------------------


def test_make_pruner():
    assert isinstance(make_pruner("asha", max_epochs=20, reduction_factor=4), ASHAPruner)
    assert isinstance(make_pruner("median", min_trials=2), MedianStoppingPruner)
    assert isinstance(make_pruner("none"), NoPruner)


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("hyperband", {}, "pruner"),
        ("asha", {}, "pruner.max_epochs"),
        ("asha", {"max_epochs": 20, "min_trials": 3}, "pruner.min_trials"),
        ("asha", {"max_epochs": 20, "reduction_factor": 1}, "pruner.reduction_factor"),
        ("asha", {"max_epochs": 0}, "pruner.max_epochs"),
        ("median", {"grace_epochs": 0}, "pruner.grace_epochs"),
        ("median", {"min_trials": 1.5}, "pruner.min_trials"),
        ("none", {"max_loss_ratio": 0.5}, "pruner.max_loss_ratio"),
    ],
)
def test_bad_options_name_the_field(name, options, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        make_pruner(name, **options)


def test_the_not_learning_rule_judges_only_sweeps_ranked_by_caviars_own_measures_of_fit():
    from orchestrator.decide.pruning import chance_classes

    for objective in ("val_accuracy", "val_log_loss", "val_loss", "val_exact_match", None):
        assert chance_classes(2, objective) == 2
    assert chance_classes(2, "val_auc") is None  # accuracy 0.1 on one positive in ten says nothing of the AUC
    # the task's own loss (a class-weighted one): its chance value is unknown, and accuracy says nothing of it
    assert chance_classes(2, "val_loss", own_loss=True) is None
    for objective in ("val_accuracy", "val_log_loss", None):  # what caviar measures itself is still judged
        assert chance_classes(2, objective, own_loss=True) == 2
    assert not_learning_reason(Observation(0, 1, 0.97, 0.7, 2.5, val_accuracy=0.1,
                                           num_classes=chance_classes(2, "val_auc"))) is None
