"""Regression ensembles on plain arrays: averaged outputs, chosen on validation MSE, test attached after."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from orchestrator.ensemble.ensembles import CandidateKey, Objective
from orchestrator.ensemble.regression_ensembles import RegressionCandidate, build_regression, greedy_counts, mse


def candidates(n_models: int = 6, n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y_val, y_test = rng.normal(100, 20, (n, 1)), rng.normal(100, 20, (n, 1))
    cands = []
    for i in range(n_models):  # independent errors of growing size: averaging cancels part of them
        noise = 5.0 + i
        cands.append(RegressionCandidate(CandidateKey(i, 1, "raw"), y_val + rng.normal(0, noise, (n, 1)),
                                         y_test + rng.normal(0, noise, (n, 1))))
    return cands, SimpleNamespace(y_val=y_val, y_test=y_test)


def test_averaging_independent_errors_beats_the_best_single_model():
    cands, data = candidates()
    records = {r.name: r for r in build_regression(cands, data, k=4)}
    assert records["single"].val_mse == pytest.approx(mse(cands[0].val, data.y_val))
    assert records["top_k"].val_mse < records["single"].val_mse
    assert records["greedy"].val_mse <= records["single"].val_mse
    chosen = [r for r in records.values() if r.chosen]
    assert len(chosen) == 1 and chosen[0].val_mse == min(r.val_mse for r in records.values())
    assert chosen[0].test_mse < records["single"].test_mse  # independent noise: it carries over to test
    assert sum(m.weight for m in chosen[0].members) == pytest.approx(1.0)


def test_greedy_keeps_the_best_prefix():
    cands, data = candidates(n_models=1)
    assert greedy_counts(cands, data.y_val, steps=10) == {0: 1}  # repeating one member never lowers the MSE
    records = build_regression(cands, data)
    assert [r.name for r in records] == ["single"] and records[0].chosen


def test_an_objective_with_mode_max_chooses_regression_ensembles():
    """Minus the largest error, maximised: a model with one wild miss loses though its MSE is the lowest."""
    cands, data = candidates(n_models=3)
    wild = cands[0].val.copy()
    wild[0] += 24.0  # one miss of 22: its MSE is still the lowest (27.4 against 28.0), its worst error the largest
    cands[0] = RegressionCandidate(cands[0].key, wild, cands[0].test)
    targets = {"val": data.y_val, "test": data.y_test}

    def minus_worst_error(outputs: np.ndarray, split: str) -> float:
        return -float(np.abs(outputs - targets[split]).max())

    objective = Objective("val_minus_worst", "max", minus_worst_error)
    assert build_regression(cands, data, methods=["single"])[0].members[0].key.trial_id == 0
    records = build_regression(cands, data, objective=objective)
    single = next(r for r in records if r.name == "single")
    assert single.members[0].key.trial_id != 0 and single.selection_metric == "val_minus_worst"
    for r in records:
        val = sum(next(c.val for c in cands if c.key == m.key) * m.weight for m in r.members)
        assert r.detail["val_objective"] == pytest.approx(minus_worst_error(val, "val"))
        assert r.detail["test_objective"] is not None
    chosen = next(r for r in records if r.chosen)
    assert chosen.detail["val_objective"] == max(r.detail["val_objective"] for r in records)


def test_seed_copies_of_one_config_make_a_seeds_ensemble():
    """--seed-copies trained the best config again from new seeds, and a regression sweep built no ensemble of them."""
    cands, data = candidates(n_models=6)
    cands.append(RegressionCandidate(CandidateKey(4, 2, "raw"), cands[4].val + 50.0, cands[4].test))  # trial 4's worse
    records = {r.name: r for r in build_regression(cands, data, seed_groups=[[1, 4, 5], [2, 99]])}
    seeds = records["seeds"]
    assert sorted(m.key.trial_id for m in seeds.members) == [1, 4, 5]
    assert all(m.key.epoch == 1 and m.weight == pytest.approx(1 / 3) for m in seeds.members)  # each trial's best
    average = (cands[1].val + cands[4].val + cands[5].val) / 3
    assert seeds.val_mse == pytest.approx(mse(average, data.y_val))
    assert "seeds" not in {r.name for r in build_regression(cands, data, seed_groups=[[2, 99]])}  # one trial alone
