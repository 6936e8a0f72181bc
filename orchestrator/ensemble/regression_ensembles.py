"""Regression ensembles from stored predictions: averaged outputs, chosen on validation MSE.

Pure: numpy and pyarrow only. The workers store each kept checkpoint's val/test outputs in the
targets' original units (``predictions/``, column ``values``); averaging outputs is the
regression counterpart of averaging class probabilities. Builders, each selecting on validation
only, test MSE attached afterwards:

- ``single``: the best checkpoint (the baseline); ``single_ema``: the best EMA checkpoint;
- ``top_k``: the best checkpoint of each of the k best trials, equal weights;
- ``seeds``: the best checkpoint of each trial of one config trained from several seeds (``--seed-copies``), equal
  weights; of several such groups, the best on validation;
- ``greedy``: forward selection with replacement (Caruana et al., "Ensemble Selection from
  Libraries of Models", ICML 2004), starting from the best, adding whichever member lowers the
  running average's validation MSE most, for a fixed number of steps; the best prefix is kept.

The chosen row is the lowest validation MSE (ties: the earlier, simpler one). An
:class:`~orchestrator.ensemble.ensembles.Objective` (the sweep's own, e.g. ``val_mae`` or a task
metric) replaces MSE in every ranking, in its mode, with MSE breaking ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.ensemble.ensembles import CandidateKey, Member, Objective, describe
from orchestrator.ensemble.records import EnsembleRecord
from orchestrator.errors import ConfigError, StorageError
from orchestrator.store import schema
from orchestrator.store.storage import Storage


@dataclass(frozen=True)
class RegressionCandidate:
    key: CandidateKey
    val: np.ndarray  # (n_val, d) float64, original units
    test: np.ndarray


def mse(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean((outputs - targets) ** 2))


def read_regression(storage: Storage, dataset: object) -> list[RegressionCandidate]:
    """One candidate per (trial, epoch, weights), the latest attempt; partial or non-finite ones left out."""
    files = [f for f in storage.list_files("predictions") if f.startswith("predictions/trial-")]
    if not files:
        raise StorageError(f"{storage.path('predictions')}: no stored predictions (did any trial finish? with "
                           "prediction_dtype = \"none\" no trial stores them; ensembles average stored predictions)")
    table = pa.concat_tables([storage.read_table(f) for f in files], promote_options="permissive")
    y_val, y_test = dataset.y_val, dataset.y_test  # type: ignore[attr-defined]
    width = y_val.shape[1]
    order = pc.sort_indices(table, [("trial_id", "ascending"), ("epoch", "ascending"), ("weights", "ascending"),
                                    ("attempt", "descending"), ("split", "ascending"), ("row", "ascending")])
    table = table.take(order)
    values = table["values"].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    values = values.reshape(-1, width)
    rows = table.select(["trial_id", "epoch", "weights", "attempt", "split"]).to_pylist()
    blocks: dict[CandidateKey, dict[str, list[int]]] = {}
    latest: dict[CandidateKey, int] = {}
    for i, r in enumerate(rows):
        key = CandidateKey(r["trial_id"], r["epoch"], r["weights"])
        if latest.setdefault(key, r["attempt"]) != r["attempt"]:
            continue
        blocks.setdefault(key, {}).setdefault(r["split"], []).append(i)
    out = []
    for key, by_split in blocks.items():
        val, test = values[by_split.get("val", [])], values[by_split.get("test", [])]
        if len(val) == len(y_val) and len(test) == len(y_test) and np.isfinite(val).all() and np.isfinite(test).all():
            out.append(RegressionCandidate(key, val, test))
    return out


def _record(ensemble_id: int, method: str, counts: dict[int, int], cands: Sequence[RegressionCandidate],
            y_val: np.ndarray, y_test: np.ndarray, created: int, objective: Objective | None = None) -> EnsembleRecord:
    total = sum(counts.values())
    members = tuple(Member(cands[i].key, c / total) for i, c in counts.items())
    val = sum(cands[i].val * (c / total) for i, c in counts.items())
    test = sum(cands[i].test * (c / total) for i, c in counts.items())
    detail, selection = {}, "mse"
    if objective is not None:  # test is scored only here, once the members are fixed
        what = f"the {method} ensemble"
        detail = {"val_objective": objective.value(val, "val", what),
                  "test_objective": objective.value(test, "test", what)}
        selection = objective.name
    return EnsembleRecord(ensemble_id, method, method, members, selection, None, None, None, None,  # type: ignore[arg-type]
                          created=created, val_mse=mse(val, y_val), test_mse=mse(test, y_test), detail=detail)


def _val_loss(objective: Objective | None, y_val: np.ndarray) -> Callable[[np.ndarray, str], tuple[float, float]]:
    """Lower is better on validation outputs: (the objective in its mode, MSE), or (MSE, MSE) without one."""
    def loss(outputs: np.ndarray, what: str) -> tuple[float, float]:
        error = mse(outputs, y_val)
        if objective is None:
            return error, error
        return objective.loss(objective.value(outputs, "val", what)), error

    return loss


def greedy_counts(cands: Sequence[RegressionCandidate], y_val: np.ndarray, steps: int = 40,
                  objective: Objective | None = None) -> dict[int, int]:
    """Caruana's forward selection with replacement on validation MSE (or the objective); the best prefix's counts."""
    if objective is not None:
        return _greedy_counts_by(cands, steps, _val_loss(objective, y_val))
    scores = [mse(c.val, y_val) for c in cands]
    first = int(np.argmin(scores))
    counts, total, n = {first: 1}, cands[first].val.copy(), 1
    best, best_counts = scores[first], dict(counts)
    stacked = np.stack([c.val for c in cands])
    for _ in range(steps - 1):
        trial = (total[None] + stacked) / (n + 1)
        errors = ((trial - y_val[None]) ** 2).mean(axis=(1, 2))
        i = int(np.argmin(errors))
        counts[i] = counts.get(i, 0) + 1
        total, n = total + cands[i].val, n + 1
        if errors[i] < best:
            best, best_counts = float(errors[i]), dict(counts)
    return best_counts


def _greedy_counts_by(cands: Sequence[RegressionCandidate], steps: int,
                      loss: Callable[[np.ndarray, str], tuple[float, float]]) -> dict[int, int]:
    """``greedy_counts`` ranked by ``loss``: every step scores each candidate's mixture (ties: the earlier)."""
    scores = [loss(c.val, f"candidate {describe(c.key)}") for c in cands]
    first = min(range(len(cands)), key=lambda i: (scores[i], i))
    counts, total, n = {first: 1}, cands[first].val.copy(), 1
    best, best_counts = scores[first], dict(counts)
    for step in range(1, steps):
        ranks = [loss((total + c.val) / (n + 1), f"greedy step {step} adding {describe(c.key)}") for c in cands]
        i = min(range(len(cands)), key=lambda j: (ranks[j], j))
        counts[i] = counts.get(i, 0) + 1
        total, n = total + cands[i].val, n + 1
        if ranks[i] < best:
            best, best_counts = ranks[i], dict(counts)
    return best_counts


REGRESSION_METHODS = ("single", "single_ema", "top_k", "seeds", "greedy")


def build_regression(cands: Sequence[RegressionCandidate], dataset: object, *, k: int = 5,
                     greedy_steps: int = 40, methods: Sequence[str] = REGRESSION_METHODS,
                     objective: Objective | None = None, seed_groups: Sequence[Sequence[int]] = ()) -> list:
    """Every regression ensemble, chosen on validation MSE (or ``objective``); test attached; the best ``chosen``."""
    if not cands:
        raise ConfigError("predictions: no usable candidates (every stored prediction was dropped)")
    y_val, y_test = dataset.y_val, dataset.y_test  # type: ignore[attr-defined]
    now = schema.now_ms()
    val_loss = _val_loss(objective, y_val)
    scores = [val_loss(c.val, f"candidate {describe(c.key)}") for c in cands]
    ranked = sorted(range(len(cands)), key=lambda i: (scores[i], cands[i].key))
    records = [_record(0, "single", {ranked[0]: 1}, cands, y_val, y_test, now, objective)]
    ema = [i for i in ranked if cands[i].key.weights == "ema"]
    if ema:
        records.append(_record(len(records), "single_ema", {ema[0]: 1}, cands, y_val, y_test, now, objective))
    per_trial: list[int] = []
    for i in ranked:  # best first: a trial's first hit is its best checkpoint
        if all(cands[j].key.trial_id != cands[i].key.trial_id for j in per_trial):
            per_trial.append(i)
    if len(per_trial) > 1:
        records.append(_record(len(records), "top_k", dict.fromkeys(per_trial[:k], 1), cands, y_val, y_test, now,
                               objective))
    best_of = {cands[i].key.trial_id: i for i in per_trial}  # each trial's best checkpoint
    groups = [[best_of[t] for t in group if t in best_of] for group in seed_groups]
    seeds = [_record(len(records), "seeds", dict.fromkeys(g, 1), cands, y_val, y_test, now, objective)
             for g in groups if len(g) >= 2]
    if seeds:  # one config from several seeds (--seed-copies): the best such group on validation
        records.append(min(seeds, key=lambda r: _rank(r, objective)))
    if len(cands) > 1:
        records.append(_record(len(records), "greedy", greedy_counts(cands, y_val, greedy_steps, objective), cands,
                               y_val, y_test, now, objective))
    records = [replace(r, ensemble_id=i) for i, r in enumerate(r for r in records if r.method in methods  # type: ignore
                                                                  or r.method == "single")]
    best = min(records, key=lambda r: _rank(r, objective))
    return [replace(r, chosen=r is best) for r in records]  # type: ignore[type-var]


def _rank(record: EnsembleRecord, objective: Objective | None) -> tuple[float, float]:
    """Lower is better on validation: (the objective in its mode, MSE), or MSE alone."""
    if objective is None:
        return record.val_mse, record.val_mse  # type: ignore[attr-defined,return-value]
    return objective.loss(record.detail["val_objective"]), record.val_mse  # type: ignore[attr-defined]
