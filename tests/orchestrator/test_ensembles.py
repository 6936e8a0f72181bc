"""Ensemble selection on synthetic predictions: choices come from validation only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.ensemble.ensembles import (
    Candidate,
    CandidateKey,
    Ensemble,
    Objective,
    ValPool,
    accuracy,
    average,
    best_single,
    build_all,
    checkpoint_ensemble,
    choose_best,
    ema_ensemble,
    greedy_selection,
    log_loss,
    same_config_groups,
    score_members,
    seed_ensemble,
    top_k,
    with_test_metrics,
)
from orchestrator.errors import CaviarError, ConfigError, TaskError


def rows(true_p: np.ndarray, y: np.ndarray, classes: int, wrong: np.ndarray | None = None) -> np.ndarray:
    """Probabilities giving ``true_p`` to the label and the rest to ``wrong`` (or spread evenly)."""
    n = len(y)
    p = np.zeros((n, classes))
    if wrong is None:
        p[:] = ((1 - true_p) / (classes - 1))[:, None]
    else:
        other = (1 - true_p - wrong) / (classes - 2)
        p[:] = other[:, None]
        p[np.arange(n), (y + 1) % classes] = wrong
    p[np.arange(n), y] = true_p
    return p


def random_cands(
    rng: np.random.Generator, n_val: int, n_test: int, classes: int, trials: int, epochs: int
) -> list[Candidate]:
    def probs(n: int, sharp: float) -> np.ndarray:
        z = rng.normal(size=(n, classes)) * sharp
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    cands = []
    for t in range(trials):
        for e in range(epochs):
            for w in ("raw", "ema"):
                sharp = 1 + t + e
                cands.append(Candidate(CandidateKey(t, e, w), probs(n_val, sharp), probs(n_test, sharp)))
    return cands


def complementary(n: int = 100) -> tuple[list[Candidate], np.ndarray]:
    """A is right on the first half, B on the second, C mediocre (70%) everywhere."""
    y = np.arange(n) % 3
    first = np.arange(n) < n // 2
    a = rows(np.where(first, 0.9, 0.3), y, 3, np.where(first, 0.05, 0.6))
    b = rows(np.where(first, 0.3, 0.9), y, 3, np.where(first, 0.6, 0.05))
    c_right = np.arange(n) % 10 < 7
    c = rows(np.where(c_right, 0.5, 0.3), y, 3, np.where(c_right, 0.25, 0.4))
    keys = [CandidateKey(0, 0), CandidateKey(1, 0), CandidateKey(2, 0)]
    return [Candidate(k, p) for k, p in zip(keys, (a, b, c), strict=True)], y


# -- metrics --------------------------------------------------------------------------


def test_accuracy_and_log_loss_hand_cases() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    y = np.array([0, 2, 1, 0])
    assert accuracy(probs, y) == 0.25
    expected = -(math.log(0.7) + math.log(0.1) + math.log(0.25) + math.log(1e-7)) / 4
    assert log_loss(probs, y) == pytest.approx(expected)
    assert log_loss(probs, y, eps=1e-3) == pytest.approx(
        -(math.log(0.7) + math.log(0.1) + math.log(0.25) + math.log(1e-3)) / 4
    )
    # Every example certain and right: 0.0, not -0.0 (a tagger's test split printed "test log loss -0.0000").
    assert math.copysign(1.0, log_loss(np.eye(3), np.arange(3))) == 1.0
    assert math.copysign(1.0, log_loss(np.eye(3), np.eye(3))) == 1.0  # soft labels


def test_average_is_weighted_float64() -> None:
    a = np.array([[1.0, 0.0]], dtype=np.float16)
    b = np.array([[0.0, 1.0]], dtype=np.float16)
    out = average([a, b], [3, 1])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[0.75, 0.25]])


def test_float16_inputs_accepted() -> None:
    rng = np.random.default_rng(0)
    cands = random_cands(rng, 50, 30, 4, trials=3, epochs=2)
    half = [
        Candidate(c.key, c.val_probs.astype(np.float16), np.asarray(c.test_probs).astype(np.float16)) for c in cands
    ]
    y_val, y_test = rng.integers(0, 4, 50), rng.integers(0, 4, 30)
    full, low = build_all(cands, y_val, y_test, k=2), build_all(half, y_val, y_test, k=2)
    assert [e.method for e in low] == [e.method for e in full]
    for e in low:
        assert math.isfinite(e.val_log_loss) and e.test_log_loss is not None
    assert log_loss(half[0].val_probs, y_val) == pytest.approx(log_loss(cands[0].val_probs, y_val), abs=2e-3)


# -- builders -----------------------------------------------------------------------------


def test_greedy_picks_complementary_models() -> None:
    cands, y = complementary()
    singles = [best_single([c], y, metric="log_loss") for c in cands]
    ens = greedy_selection(cands, y, steps=10, init_size=1)
    picked = {m.key.trial_id: m.weight for m in ens.members}
    assert set(picked) == {0, 1}
    assert picked[0] == pytest.approx(0.5)
    assert ens.val_accuracy == 1.0
    assert all(ens.val_log_loss < s.val_log_loss for s in singles)
    assert all(ens.val_accuracy > s.val_accuracy for s in singles)
    by_acc = greedy_selection(cands, y, steps=5, init_size=1, metric="accuracy")
    assert by_acc.val_accuracy == 1.0


def test_greedy_keeps_best_step_not_last() -> None:
    cands, y = complementary()
    # Start from A+B (the optimum); any odd step is lopsided, so the last step (3) is worse.
    ens = greedy_selection(cands[:2], y, steps=3, init_size=2)
    assert [m.weight for m in ens.members] == [pytest.approx(0.5), pytest.approx(0.5)]
    last = average([cands[0].val_probs, cands[1].val_probs], [2, 1])
    assert ens.val_log_loss < log_loss(last, y)
    one = greedy_selection(cands[:2], y, steps=1, init_size=2)
    assert len(one.members) == 2 and one.members[0].weight == pytest.approx(0.5)


def test_greedy_zero_steps_is_sorted_init() -> None:
    cands, y = complementary()
    ens = greedy_selection(cands, y, steps=0, init_size=2)
    assert {m.key.trial_id for m in ens.members} == {0, 1}


def test_top_k_best_checkpoint_per_trial_and_best_trials() -> None:
    y = np.zeros(10, dtype=int)
    # val accuracy of each (trial, epoch): trial 0 peaks at 0.9, trial 1 at 0.6, trial 2 at 0.8
    table = {(0, 0): 0.5, (0, 1): 0.9, (0, 2): 0.7, (1, 0): 0.6, (1, 1): 0.4, (2, 0): 0.3, (2, 1): 0.8}
    cands = []
    for (t, e), acc in table.items():
        right = np.arange(10) < round(acc * 10)
        cands.append(Candidate(CandidateKey(t, e), rows(np.where(right, 0.8, 0.1), y, 3, np.where(right, 0.1, 0.8))))
    ens = top_k(cands, y, 2)
    assert {m.key for m in ens.members} == {CandidateKey(0, 1), CandidateKey(2, 1)}
    assert {m.key for m in top_k(cands, y, 10).members} == {CandidateKey(0, 1), CandidateKey(1, 0), CandidateKey(2, 1)}
    assert [m.key for m in best_single(cands, y).members] == [CandidateKey(0, 1)]
    best = checkpoint_ensemble(cands, y, trial_id=0, n=2, which="best")
    assert {m.key.epoch for m in best.members} == {1, 2}
    last = checkpoint_ensemble(cands, y, trial_id=0, n=2, which="last")
    assert {m.key.epoch for m in last.members} == {1, 2}
    latest = checkpoint_ensemble(cands, y, trial_id=1, n=1, which="last")
    assert [m.key for m in latest.members] == [CandidateKey(1, 1)]
    assert checkpoint_ensemble(cands, y, n=1).members[0].key == CandidateKey(0, 1)  # default: best trial
    assert [m.key for m in checkpoint_ensemble(cands, y, trial_id=2, n=1, which="best").members] == [CandidateKey(2, 1)]
    assert [m.key for m in checkpoint_ensemble(cands, y, trial_id=0, n=1, which="last").members] == [CandidateKey(0, 2)]


def test_ema_ensemble_uses_only_ema_weights() -> None:
    rng = np.random.default_rng(1)
    cands = random_cands(rng, 40, 20, 3, trials=4, epochs=3)
    y = rng.integers(0, 3, 40)
    ens = ema_ensemble(cands, y, 3)
    assert len(ens.members) == 3
    assert all(m.key.weights == "ema" for m in ens.members)
    assert len({m.key.trial_id for m in ens.members}) == 3
    with pytest.raises(ConfigError, match="ema"):
        ema_ensemble([c for c in cands if c.key.weights == "raw"], y, 3)


def test_weights_sum_to_one_and_members_are_candidates() -> None:
    rng = np.random.default_rng(2)
    cands = random_cands(rng, 60, 40, 5, trials=5, epochs=3)
    y_val, y_test = rng.integers(0, 5, 60), rng.integers(0, 5, 40)
    keys = {c.key for c in cands}
    built = build_all(cands, y_val, y_test, k=3, greedy_steps=15)
    assert [e.method for e in built] == ["single", "top_k", "checkpoints", "ema", "greedy"]
    for e in built:
        assert sum(m.weight for m in e.members) == pytest.approx(1.0)
        assert all(m.key in keys and m.weight > 0 for m in e.members)
        assert len({m.key for m in e.members}) == len(e.members)
        assert e.test_accuracy is not None and e.test_log_loss is not None
        assert (e.test_accuracy, e.test_log_loss) == score_members(e.members, cands, y_test)


def test_no_test_leakage() -> None:
    rng = np.random.default_rng(3)
    cands = random_cands(rng, 60, 40, 4, trials=5, epochs=3)
    y_val = rng.integers(0, 4, 60)
    y_random = rng.integers(0, 4, 40)
    base = build_all(cands, y_val, y_random, k=3)
    # Adversarial test set: the worst validation candidate is perfect on test, all others hopeless.
    worst = max(cands, key=lambda c: log_loss(c.val_probs, y_val)).key
    y_adv = np.zeros(40, dtype=int)
    good, bad = rows(np.full(40, 0.99), y_adv, 4), rows(np.full(40, 0.001), y_adv, 4, np.full(40, 0.997))
    adversarial = [Candidate(c.key, c.val_probs, good if c.key == worst else bad) for c in cands]
    adv = build_all(adversarial, y_val, y_adv, k=3)
    without = build_all([Candidate(c.key, c.val_probs) for c in cands], y_val, k=3)
    for b, a, w in zip(base, adv, without, strict=True):
        assert b.members == a.members == w.members
        assert (b.val_accuracy, b.val_log_loss) == (a.val_accuracy, a.val_log_loss)
        assert w.test_accuracy is None
    assert [b.test_log_loss for b in base] != [a.test_log_loss for a in adv]
    assert choose_best(base).method == choose_best(adv).method


def test_input_order_does_not_matter() -> None:
    rng = np.random.default_rng(4)
    cands = random_cands(rng, 30, 10, 3, trials=3, epochs=2)
    y = rng.integers(0, 3, 30)
    assert build_all(cands, y, k=2) == build_all(cands[::-1], y, k=2)


def test_choose_best_by_validation() -> None:
    a = Ensemble("single", (), 0.80, 0.50, test_accuracy=0.99, test_log_loss=0.01)
    b = Ensemble("greedy", (), 0.85, 0.60, test_accuracy=0.10, test_log_loss=5.0)
    c = Ensemble("top_k", (), 0.85, 0.55)
    assert choose_best([a, b, c]) is c
    assert choose_best([a, b, c], metric="log_loss") is a
    assert choose_best([c, Ensemble("ema", (), 0.85, 0.55)]) is c  # ties: the earlier one


def test_with_test_metrics_leaves_members() -> None:
    cands, y = complementary()
    cands = [Candidate(c.key, c.val_probs, c.val_probs) for c in cands]
    ens = greedy_selection(cands, y, steps=4, init_size=1)
    out = with_test_metrics(ens, cands, y)
    assert out.members == ens.members
    assert out.test_accuracy == pytest.approx(ens.val_accuracy)
    assert out.test_log_loss == pytest.approx(ens.val_log_loss)


def test_build_all_leaves_test_none_where_missing() -> None:
    cands, y = complementary()
    cands = [Candidate(c.key, c.val_probs, c.val_probs if c.key.trial_id != 2 else None) for c in cands]
    built = {e.method: e for e in build_all(cands, y, y, k=3, init_size=1)}
    assert built["top_k"].test_accuracy is None
    assert built["greedy"].test_accuracy == 1.0


# -- validation ----------------------------------------------------------------------------


def test_invalid_inputs_raise_config_errors() -> None:
    cands, y = complementary()
    with pytest.raises(ConfigError, match="cands: empty"):
        build_all([], y)
    with pytest.raises(ConfigError, match="k: must be >= 1"):
        top_k(cands, y, 0)
    with pytest.raises(ConfigError, match="n: must be >= 1"):
        checkpoint_ensemble(cands, y, trial_id=0, n=0)
    with pytest.raises(ConfigError, match="init_size"):
        greedy_selection(cands, y, init_size=0)
    with pytest.raises(ConfigError, match="metric"):
        best_single(cands, y, metric="f1")
    with pytest.raises(ConfigError, match="which"):
        checkpoint_ensemble(cands, y, trial_id=0, which="first")
    with pytest.raises(ConfigError, match="trial_id"):
        checkpoint_ensemble(cands, y, trial_id=7)
    with pytest.raises(ConfigError, match="y_val"):
        best_single(cands, y[:-1])
    with pytest.raises(ConfigError, match="y_val"):
        best_single(cands, y + 3)
    with pytest.raises(ConfigError, match="y_val"):
        best_single(cands, y.astype(float))
    with pytest.raises(ConfigError, match="val_probs"):
        best_single(cands + [Candidate(CandidateKey(9, 0), np.full((5, 3), 1 / 3))], y)
    with pytest.raises(ConfigError, match="val_probs: probabilities must be finite and non-negative"):
        best_single([Candidate(CandidateKey(0, 0), np.log(cands[0].val_probs))], y)  # log-probs
    with pytest.raises(ConfigError, match="sum to 1"):
        best_single([Candidate(CandidateKey(0, 0), cands[0].val_probs * 2)], y)
    with pytest.raises(ConfigError, match="duplicate"):
        best_single([cands[0], cands[0]], y)
    with pytest.raises(ConfigError, match="weights"):
        CandidateKey(0, 0, "swa")
    with pytest.raises(ConfigError, match="test_probs"):
        Candidate(CandidateKey(0, 0), cands[0].val_probs, np.ones((4, 2)) / 2)
    with pytest.raises(ConfigError, match="y_test"):
        with_test_metrics(best_single(cands, y), [Candidate(c.key, c.val_probs, c.val_probs) for c in cands], y[:3])
    with pytest.raises(ConfigError, match="test_probs: missing"):
        score_members(best_single(cands, y).members, cands, y)
    with pytest.raises(ConfigError, match="y_val"):
        best_single(ValPool.of(cands, y), y)
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, CaviarError)


def test_seed_ensemble_averages_each_seeds_best_checkpoint_of_the_best_group() -> None:
    y = np.zeros(10, dtype=int)
    # trials 0-2 share a config (three seeds), 3-4 share another, 5 is alone
    table = {(0, 0): 0.5, (0, 1): 0.8, (1, 0): 0.7, (2, 0): 0.6, (2, 1): 0.4, (3, 0): 0.3, (4, 0): 0.4, (5, 0): 1.0}
    cands = []
    for (t, e), acc in table.items():
        right = np.arange(10) < round(acc * 10)
        cands.append(Candidate(CandidateKey(t, e), rows(np.where(right, 0.8, 0.1), y, 3, np.where(right, 0.1, 0.8))))
    trials = [{"trial_id": t, "config": config} for t, config in
              [(0, {"lr": 0.1, "opt": "adam"}), (1, {"opt": "adam", "lr": 0.1}), (2, {"lr": 0.1, "opt": "adam"}),
               (3, {"lr": 0.3, "opt": "sgd"}), (4, {"lr": 0.3, "opt": "sgd"}), (5, {"lr": 0.2, "opt": "sgd"})]]
    groups = same_config_groups(trials)
    assert sorted(groups) == [[0, 1, 2], [3, 4]]  # key order in a config does not matter; singles are left out
    longer = [{**t, "max_epochs": 12 if t["trial_id"] == 4 else 4} for t in trials]
    assert sorted(same_config_groups(longer)) == [[0, 1, 2]]  # trial 4 retrained the config for longer
    ens = seed_ensemble(cands, y, groups)
    assert ens is not None and ens.method == "seeds"
    assert [m.key for m in ens.members] == [CandidateKey(0, 1), CandidateKey(1, 0), CandidateKey(2, 0)]
    assert sum(m.weight for m in ens.members) == pytest.approx(1.0)
    assert seed_ensemble(cands, y, [[5], [0, 99]]) is None  # no group with two trials that have predictions
    assert "seeds" in [e.method for e in build_all(cands, y, seed_groups=groups)]
    assert "seeds" not in [e.method for e in build_all(cands, y)]


# -- soft labels ------------------------------------------------------------------------


def test_one_hot_soft_labels_choose_exactly_what_class_indices_choose() -> None:
    """Cross-entropy against a one-hot row is the true class's log loss: every builder must agree."""
    rng = np.random.default_rng(4)
    cands = random_cands(rng, 40, 30, 4, 3, 2)
    y_val, y_test = rng.integers(0, 4, 40), rng.integers(0, 4, 30)
    hard = build_all(cands, y_val, y_test, k=2, seed_groups=[[0, 1]])
    soft = build_all(cands, np.eye(4)[y_val], np.eye(4)[y_test], k=2, seed_groups=[[0, 1]])
    for h, s in zip(hard, soft, strict=True):
        assert (h.method, h.members) == (s.method, s.members)
        assert (h.val_accuracy, h.test_accuracy) == (s.val_accuracy, s.test_accuracy)
        assert s.val_log_loss == pytest.approx(h.val_log_loss, rel=1e-12)
        assert s.test_log_loss == pytest.approx(h.test_log_loss, rel=1e-12)


def test_soft_label_ensembles_report_the_soft_target_cross_entropy() -> None:
    rng = np.random.default_rng(5)
    cands = random_cands(rng, 50, 20, 3, 3, 1)
    soft_val = rng.dirichlet([2.0, 1.0, 1.0], size=50)
    soft_test = rng.dirichlet([2.0, 1.0, 1.0], size=20)
    for ensemble in build_all(cands, soft_val, soft_test, k=2):
        by_key = {c.key: c for c in cands}
        weights = [m.weight for m in ensemble.members]
        val = average([by_key[m.key].val_probs for m in ensemble.members], weights)
        test = average([by_key[m.key].test_probs for m in ensemble.members], weights)
        # by hand: -sum_c t_c log p_c (the pool holds float32), accuracy against the targets' argmax
        assert ensemble.val_log_loss == pytest.approx(float(-(soft_val * np.log(val)).sum(1).mean()), rel=1e-6)
        assert ensemble.test_log_loss == pytest.approx(float(-(soft_test * np.log(test)).sum(1).mean()), rel=1e-6)
        assert ensemble.val_accuracy == pytest.approx(float((val.argmax(1) == soft_val.argmax(1)).mean()))
    greedy = greedy_selection(cands, soft_val, steps=10, init_size=1)
    single = best_single(cands, soft_val, metric="log_loss")
    assert greedy.val_log_loss <= single.val_log_loss  # the best prefix includes the best single candidate


def test_soft_labels_that_are_not_probabilities_are_refused() -> None:
    cands = random_cands(np.random.default_rng(6), 10, 5, 3, 1, 1)
    with pytest.raises(ConfigError, match="y_val: rows must sum to 1"):
        best_single(cands, np.full((10, 3), 0.5))
    with pytest.raises(ConfigError, match=r"y_val: expected soft labels of shape \(10, 3\)"):
        best_single(cands, np.full((10, 4), 0.25))


# -- the sweep's objective chooses ---------------------------------------------------------------


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def confident_or_hedging(n: int = 30) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """``confident``: 0.99 on the label but two rows confidently wrong; ``hedging``: 0.6 on the label everywhere.

    Log loss punishes the two confident errors (0.93 against 0.51); the Brier score barely does (0.13 against 0.24).
    """
    y_val, y_test = np.arange(n) % 3, (np.arange(n) + 1) % 3
    wrong = np.arange(n) < 2

    def confident(y: np.ndarray) -> np.ndarray:
        return rows(np.where(wrong, 1e-6, 0.99), y, 3, np.where(wrong, 0.99, 0.005))

    def hedging(y: np.ndarray) -> np.ndarray:
        return rows(np.full(n, 0.6), y, 3)

    cands = [Candidate(CandidateKey(0, 1), confident(y_val), confident(y_test)),
             Candidate(CandidateKey(1, 1), hedging(y_val), hedging(y_test))]
    return cands, y_val, y_test


def scorer(fn, y_val: np.ndarray, y_test: np.ndarray):
    """``score(outputs, split)`` for ``fn(probs, labels)``, as the torch side builds it from the task's metrics."""
    labels = {"val": y_val, "test": y_test}
    return lambda outputs, split: fn(outputs, labels[split])


def test_a_brier_objective_with_mode_min_chooses_what_log_loss_would_not() -> None:
    cands, y_val, y_test = confident_or_hedging()
    objective = Objective("val_brier", "min", scorer(brier, y_val, y_test))
    by_log_loss = best_single(cands, y_val, metric="log_loss")
    by_brier = best_single(cands, y_val, objective=objective)
    assert by_log_loss.members[0].key.trial_id == 1 and by_brier.members[0].key.trial_id == 0
    assert by_brier.val_objective == pytest.approx(brier(cands[0].val_probs, y_val))
    # The same objective maximised as its negative chooses alike: the mode is what ranks, not the sign.
    negative = Objective("val_neg_brier", "max", scorer(lambda p, y: -brier(p, y), y_val, y_test))
    assert best_single(cands, y_val, objective=negative).members == by_brier.members
    # Maximising the Brier score (mode max) turns the choice around.
    assert best_single(cands, y_val, objective=Objective("val_brier", "max", objective.score)).members[0].key.trial_id \
        == 1


def test_every_builder_ranks_and_the_choice_follows_the_objective() -> None:
    cands, y_val, y_test = confident_or_hedging()
    objective = Objective("val_brier", "min", scorer(brier, y_val, y_test))
    built = build_all(cands, y_val, y_test, k=1, objective=objective, greedy_steps=6, init_size=1)
    assert {e.method for e in built} == {"single", "top_k", "checkpoints", "greedy"}
    for e in built:  # each row's recorded objective is the objective of its averaged members, val and test
        val = average([next(c.val_probs for c in cands if c.key == m.key) for m in e.members],
                      [m.weight for m in e.members])
        test = average([next(c.test_probs for c in cands if c.key == m.key) for m in e.members],
                       [m.weight for m in e.members])
        assert e.val_objective == pytest.approx(brier(val, y_val))
        assert e.test_objective == pytest.approx(brier(test, y_test))
    by_name = {e.method: e for e in built}
    assert by_name["top_k"].members[0].key.trial_id == 0  # k=1: the best trial by Brier, not by log loss
    assert by_name["greedy"].val_objective <= by_name["single"].val_objective  # greedy keeps its best step
    chosen = choose_best(built, objective=objective)
    assert chosen.val_objective == min(e.val_objective for e in built)
    plain = build_all(cands, y_val, y_test, k=1, greedy_steps=6, init_size=1)
    assert choose_best(plain, metric="log_loss").val_log_loss < chosen.val_log_loss  # log loss chose otherwise


def test_an_objective_on_one_class_with_mode_max_picks_the_model_that_finds_that_class() -> None:
    """"Recall of class 0", maximised: a model sharp on classes 1 and 2 but blind to class 0 loses to a dull one."""
    n = 30
    y = np.arange(n) % 3
    zero = y == 0
    sharp_but_blind = rows(np.where(zero, 0.45, 0.9), y, 3, np.where(zero, 0.5, 0.05))
    dull = rows(np.full(n, 0.5), y, 3)
    cands = [Candidate(CandidateKey(0, 1), sharp_but_blind), Candidate(CandidateKey(1, 1), dull)]

    def recall_of_zero(outputs: np.ndarray, split: str) -> float:
        return float((outputs[zero].argmax(axis=1) == 0).mean())

    objective = Objective("val_recall0", "max", recall_of_zero)
    assert best_single(cands, y, metric="log_loss").members[0].key.trial_id == 0
    assert best_single(cands, y, objective=objective).members[0].key.trial_id == 1
    greedy = greedy_selection(cands, y, steps=4, init_size=1, objective=objective)
    # Greedy finds a mixture that keeps every class-0 row and, on that tie, the lower log loss.
    assert greedy.val_objective == 1.0 and greedy.val_log_loss < log_loss(dull, y)
    assert top_k(cands, y, k=1, objective=objective).members[0].key.trial_id == 1


def test_an_objective_that_raises_names_itself_and_the_ensemble() -> None:
    cands, y_val, _ = confident_or_hedging()

    def broken(outputs: np.ndarray, split: str) -> float:
        raise ValueError("shapes do not match")

    with pytest.raises(TaskError, match=r"^objective val_brier of candidate trial 0 epoch 1: ValueError: shapes"):
        best_single(cands, y_val, objective=Objective("val_brier", "min", broken))

    singles = [c.val_probs.astype(np.float32).astype(np.float64) for c in cands]

    def fails_on_mixtures(outputs: np.ndarray, split: str) -> float:
        if not any(np.allclose(outputs, p, rtol=1e-6, atol=0) for p in singles):  # exp(log p), rounded
            raise TaskError("metrics raised ZeroDivisionError on the val split: division by zero")
        return float(outputs.max())

    with pytest.raises(TaskError, match="objective val_brier of greedy step 1 adding trial 0 epoch 1: metrics raised"):
        greedy_selection(cands, y_val, steps=1, init_size=1, objective=Objective("val_brier", "min",
                                                                                 fails_on_mixtures))
    with pytest.raises(ConfigError, match="mode: 'lowest' is not one of min, max"):
        Objective("val_brier", "lowest", broken)


def test_an_infinite_objective_ranks_last_in_either_direction():
    """A metric that overflowed to +inf under mode max ranked best in ensemble selection (only NaN ranked last)."""
    for mode, good, bad in (("max", 0.9, math.inf), ("min", 0.1, -math.inf)):
        objective = Objective("val_mine", mode, lambda *_: {})
        assert objective.loss(good) < objective.loss(bad) == math.inf
        assert objective.loss(math.nan) == objective.loss(None) == math.inf


def _log_rows(true_log_p: list[float]) -> np.ndarray:
    """Two-class log-probabilities whose class 0 (the label) has ``true_log_p``, in float16 as workers store them."""
    true = np.asarray(true_log_p, dtype=np.float64)
    return np.stack([true, np.log(-np.expm1(true))], axis=1).astype(np.float16)


def test_log_probability_candidates_score_exactly_where_probabilities_underflow():
    y = np.zeros(2, dtype=np.int64)
    wrong = _log_rows([-50.0, -1e-3])  # exp(-50) ~ 2e-22: 0 in float16, clipped at 1e-7 as a probability
    worse = _log_rows([-1000.0, -2e-3])  # 0 even in float64's exp
    cands = [Candidate(CandidateKey(0, 1), wrong, wrong, log=True),
             Candidate(CandidateKey(1, 1), worse, worse, log=True)]
    alone = with_test_metrics(best_single(cands[:1], y), cands, y)
    assert alone.val_log_loss == pytest.approx((50 + 1e-3) / 2, rel=1e-3)
    assert alone.test_log_loss == pytest.approx(alone.val_log_loss)
    pair = top_k(cands, y, k=2)  # log(exp(-50) / 2 + exp(-1000) / 2) = -50 - log 2, found by logaddexp
    assert pair.val_log_loss == pytest.approx((50 + math.log(2) + 1.5e-3) / 2, rel=1e-3)
    greedy = greedy_selection(cands, y, steps=3, init_size=2)
    assert greedy.val_log_loss <= pair.val_log_loss and math.isfinite(greedy.val_log_loss)
    # The same numbers stored as probabilities (an earlier caviar's sweep): clipped at 1e-7, as they were.
    as_probs = [Candidate(c.key, np.exp(c.val_probs.astype(np.float64)), np.exp(c.test_probs.astype(np.float64)))
                for c in cands]
    clipped = best_single(as_probs[:1], y)
    assert clipped.val_log_loss == pytest.approx((-math.log(1e-7) + 1e-3) / 2, rel=1e-3)
    # One pool, one rule: a probability candidate beside log ones puts the clip on every row.
    assert best_single([cands[0], as_probs[1]], y, metric="log_loss").val_log_loss == pytest.approx(
        clipped.val_log_loss, rel=1e-6)
