"""What ``caviar report`` reads and judges: a sweep's tables, hyperparameter importance, warnings."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from orchestrator.app.answer import shown_score
from orchestrator.app.tables import SweepTables, load, open_sweep
from orchestrator.decide.controller import best_trial_rank, completed_stages
from orchestrator.search.space import Choice, Distribution, SearchSpace, parse_param
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from orchestrator.store.sweeps import sweep_objective

HEALTHY_UPDATE_RATIO = 1e-3
UPDATE_RATIO_BAND = (1e-4, 1e-2)  # a best trial more than 10x away from 1e-3 earns a warning
# Events the report lists at its top ("no_trial_learned": orchestrator/app/baseline.py)
EDGE_KINDS = ("value_fails", "edge_warning", "range_extended", "edge_at_hard_limit", "edge_not_extended",
              "sweep_aborted", "no_trial_learned")


@dataclass
class SweepData:
    name: str
    task: str
    accuracy: bool  # the objective: accuracy (higher is better) or loss
    space: SearchSpace  # the initial space
    stage_spaces: list[dict[str, Any]]  # per stage: parameter -> plain-data distribution
    trials: list[dict[str, Any]]
    curves: dict[int, list[dict[str, Any]]]  # trial -> metric rows by epoch
    events: list[dict[str, Any]]
    diagnostics: pa.Table | None
    ensembles: pa.Table | None
    tables: SweepTables
    targets_standardised: bool = False  # regression trained on standardised targets (the dataset table's statistics)
    objective: tuple[str, str] | None = None  # (name, mode) the sweep ranked by, as its dataset table stores it
    loss_per_example: bool = True  # False: the task's loss_fn is not a mean over examples (the dataset table says)

    @property
    def by_objective(self) -> bool:
        """Ranked by a metric other than accuracy or the loss (a ROC AUC, a weighted MAE): drawn as that metric, from
        the score, so the plots and table show what ranked the trials."""
        return self.objective is not None and self.objective[0] not in ("val_accuracy", "val_loss") \
            and not self.accuracy

    @property
    def metric_name(self) -> str:
        if self.by_objective:
            assert self.objective is not None
            return self.objective[0]
        return "validation accuracy" if self.accuracy else "validation loss"

    def epoch_value(self, row: Mapping[str, Any]) -> float | None:
        """An epoch's number under ``metric_name``."""
        if self.by_objective:
            return None if row.get("score") is None else shown_score(row["score"], self.objective)[1]
        return row["val_accuracy"] if self.accuracy else row["val_loss"]

    def train_loss_as_val(self, row: Mapping[str, Any]) -> float | None:
        """An epoch's training loss in the units of its ``val_loss``; None when the sweep did not record one.

        ``train_loss`` is what the optimizer minimised: on standardised targets it is not in ``val_loss``'s units,
        and no factor converts it (each target dimension has its own std).
        """
        if not self.loss_per_example:  # a Cox or batch-hard triplet loss: batch means are not the split's value
            return None
        if row.get("train_loss_original") is not None:
            return row["train_loss_original"]
        return None if self.targets_standardised else row.get("train_loss")

    def value(self, trial: Mapping[str, Any]) -> float | None:
        if self.by_objective:
            v = None if trial.get("best_score") is None else shown_score(trial["best_score"], self.objective)[1]
        else:
            v = trial.get("best_val_accuracy") if self.accuracy else trial.get("best_val_loss")
        return float(v) if v is not None and math.isfinite(float(v)) else None

    def best(self) -> dict[str, Any] | None:
        """The controller's rule (Controller.best, controller.best_trial_rank)."""
        done = [t for t in self.trials if t.get("best_score") is not None and math.isfinite(t["best_score"])]
        ended = completed_stages((t["stage"], t["status"]) for t in self.trials)
        return max(done, key=lambda t: best_trial_rank(t.get("max_epochs") or 0, t["best_score"], t["stage"],
                                                       t["stage"] in ended), default=None)


# -- reading -------------------------------------------------------------------------------


def read_sweep(path: str, tables: SweepTables | None = None) -> SweepData:
    """The sweep's tables as the report reads them; ``tables``: already loaded (``caviar run`` loads them once)."""
    tables = tables if tables is not None else load(path)
    storage = open_sweep(path)
    sweep = tables.sweep.to_pylist()[0]
    space = SearchSpace({k: parse_param(k, v) for k, v in json.loads(sweep["space"]).items()})
    stages = sorted(tables.stages.to_pylist(), key=lambda s: s["stage"])
    metrics = tables.metrics.to_pylist()
    curves: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(metrics, key=lambda r: (r["trial_id"], r["epoch"])):
        curves[row["trial_id"]].append(row)
    dataset = schema.read_dataset_row(storage)
    scored = [r for r in metrics if r["score"] is not None and r["val_accuracy"] is not None]
    # Scored on accuracy when the score is the accuracy; a regression (no accuracy at all) is scored on a loss.
    no_accuracy = bool(metrics) and all(r["val_accuracy"] is None for r in metrics)
    accuracy = not no_accuracy and (not scored or all(abs(r["score"] - r["val_accuracy"]) < 1e-9 for r in scored))
    return SweepData(
        name=sweep["name"], task=sweep["task"], accuracy=accuracy, space=space,
        stage_spaces=[json.loads(s["space"]) for s in stages], trials=tables.trials.to_pylist(), curves=dict(curves),
        events=tables.events.to_pylist(), diagnostics=read_diagnostics(storage),
        ensembles=read_optional(storage, "ensembles"), tables=tables,
        targets_standardised=dataset.get("target_std") is not None, objective=sweep_objective(storage, sweep),
        loss_per_example=dataset.get("loss_per_example") is not False,
    )


def read_optional(storage: Storage, rel_dir: str) -> pa.Table | None:
    table = schema.read_dir(storage, rel_dir)
    return table if table is not None and table.num_rows else None


def read_diagnostics(storage: Storage) -> pa.Table | None:
    """Diagnostic rows, one per (trial, epoch, kind, layer): the highest attempt's (as for metrics)."""
    table = read_optional(storage, "diagnostics")
    if table is None:
        return None
    table = table.sort_by([("trial_id", "ascending"), ("epoch", "ascending"), ("attempt", "descending")])
    keys = list(zip(*(table[c].to_pylist() for c in ("trial_id", "epoch", "kind", "layer"))))
    seen: set[tuple[Any, ...]] = set()
    keep = []
    for key in keys:
        keep.append(key not in seen)
        seen.add(key)
    return table.filter(pa.array(keep))


def diag_rows(data: SweepData, trial_id: int, kind: str) -> list[dict[str, Any]]:
    if data.diagnostics is None:
        return []
    table = data.diagnostics
    mask = pa.compute.and_(pa.compute.equal(table["trial_id"], trial_id), pa.compute.equal(table["kind"], kind))
    return table.filter(mask).to_pylist()


# -- importance ----------------------------------------------------------------------------


def importance(data: SweepData, *, min_trials: int = 6, seed: int = 0) -> tuple[dict[str, float], int] | None:
    """fANOVA-style main effects on a random forest; (importance by parameter, stage used) or None.

    Only parameters that took two or more values in that stage's trials are scored: one held at a single value
    there (a fused block's shared optimizer, a conditional parameter never active) has no measurable effect, and a
    0 would read as "does not matter"."""
    params = data.space.searched
    by_stage: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in data.trials:
        if t.get("best_score") is not None and math.isfinite(t["best_score"]):
            by_stage[t["stage"]].append(t)
    if not params or not by_stage:
        return None
    stage, trials = max(by_stage.items(), key=lambda kv: (len(kv[1]), -kv[0]))
    if len(trials) < min_trials:
        return None
    # An inactive conditional parameter (None) is NaN: the forest learns a separate branch for it, and its
    # partial dependence below averages over the trials where it was active only.
    x = np.array([[_unit(dist, t["config"].get(name)) for name, dist in params.items()] for t in trials])
    y = np.array([t["best_score"] for t in trials])
    varied = [len(np.unique(column[~np.isnan(column)])) >= 2 for column in x.T]
    if np.ptp(y) == 0 or not any(varied):
        return {name: 0.0 for name, v in zip(params, varied) if v}, stage
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed).fit(x, y)
    total = float(np.var(forest.predict(x)))
    # Partial dependence: a parameter fixed at each grid value, the others as observed. One predict call for
    # every parameter's probes: a forest's predict costs far more per call than per row.
    probes: dict[str, tuple[int, np.ndarray]] = {}  # parameter -> (grid size, probe rows)
    for i, (name, dist) in enumerate(params.items()):
        active = x[~np.isnan(x[:, i])]
        if not varied[i]:
            continue
        grid = (np.array([dist.to_unit(o) for o in dist.options]) if isinstance(dist, Choice)
                else np.linspace(active[:, i].min(), active[:, i].max(), 16))
        probe = np.tile(active, (len(grid), 1))
        probe[:, i] = np.repeat(grid, len(active))
        probes[name] = (len(grid), probe)
    predicted = forest.predict(np.concatenate([p for _, p in probes.values()])) if probes else np.array([])
    out = {name: 0.0 for name in probes}
    start = 0
    for name, (points, probe) in probes.items():
        curve = predicted[start:start + len(probe)].reshape(points, -1).mean(axis=1)
        start += len(probe)
        out[name] = float(np.var(curve)) / total if total > 0 else 0.0
    return out, stage


def _unit(dist: Distribution, value: Any) -> float:
    if value is None:  # inactive in this trial
        return math.nan
    try:
        return float(dist.to_unit(value))
    except (ValueError, TypeError):  # a choice value the initial space does not list
        return math.nan


# -- warnings ----------------------------------------------------------------------------------


def collect_warnings(data: SweepData) -> list[str]:
    out = []
    for e in data.events:
        if e["kind"] in EDGE_KINDS:
            text = json.loads(e["detail"] or "{}").get("message") or e["reason"] or e["kind"]  # an abort's whole line
            named = e["stage"] is None or text.startswith(f"stage {e['stage']}")  # edge lines name their stage
            where = "" if named else f"stage {e['stage']}: "
            out.append(f"{where}{text} ({e['kind'].replace('_', ' ')})")
    out += failure_warnings(data)
    best = data.best()
    if best is None:
        return out
    ratios = [r["update_ratio"] for r in data.curves.get(best["trial_id"], []) if r.get("update_ratio")]
    if ratios:
        median = float(np.median(ratios))
        if not UPDATE_RATIO_BAND[0] <= median <= UPDATE_RATIO_BAND[1]:
            hint = "too high" if median > HEALTHY_UPDATE_RATIO else "too low"
            out.append(f"best trial {best['trial_id']}: median update/weight ratio {median:.1e} is more than 10x "
                       f"away from CS231n's ~1e-3 (learning rate probably {hint})")
    acts = diag_rows(data, best["trial_id"], "activation")
    if acts:
        last = max(r["epoch"] for r in acts)
        for r in acts:
            if r["epoch"] == last and (r["dead_fraction"] or 0) >= 0.5:
                out.append(f"best trial {best['trial_id']}: {r['dead_fraction']:.0%} of the units of layer "
                           f"{r['layer']} ({r['module']}) are dead (zero on every probe example)")
    return out




def failure_warnings(data: SweepData) -> list[str]:
    """The failed trials' most common errors, as the run's closing lines and ``caviar status`` give them: one item
    per error, its "what to do" joined on, and where the tracebacks are on the last."""
    from orchestrator.app.failures import error_summary

    try:
        declared = json.loads(data.tables.sweep.to_pylist()[0].get("space") or "{}")
    except ValueError:
        declared = {}
    out: list[str] = []
    for line in error_summary(data.trials, declared=declared if isinstance(declared, dict) else None):
        if out and (line.startswith("  ") or line.startswith("(each failed")):
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out
