"""Build a finished sweep's ensembles from its stored predictions and write the ``ensembles`` table.

Pure: numpy and pyarrow only. The builders live in :mod:`orchestrator.ensemble.ensembles`; this
module reads ``predictions/`` and ``dataset/`` into :class:`Candidate` objects, runs the
builders (selection on validation only, test metrics attached afterwards), optionally asks
a soup builder (``worker.load.soup``, injected by the caller because it needs torch) for a
weight-space soup, marks the best on validation as ``chosen`` and writes one row per
ensemble to ``ensembles/ensembles.parquet``, replacing an earlier build.

The sweep's objective chooses when it is a task's own metric (or ``val_loss`` of a custom
``loss_fn``): the caller, which may run task code, passes an ``objective_for(dataset)`` that
returns an :class:`Objective` scoring averaged outputs (``worker.load.objective``). Without it such
a sweep is chosen by log loss, and every row says so (``detail.choice_note``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.ensemble import ensembles
from orchestrator.ensemble.ensembles import SELECTION_METRICS, Candidate, CandidateKey, Ensemble, Member, Objective
from orchestrator.ensemble.records import EnsembleRecord
from orchestrator.errors import ConfigError, StorageError
from orchestrator.store import schema
from orchestrator.store.lease import holder_alive, read_lease
from orchestrator.store.storage import Storage, redact_uri
from orchestrator.store.sweeps import lease_unreleased

log = logging.getLogger("caviar")

METHODS = ("single", "single_ema", "top_k", "checkpoints", "ema", "seeds", "greedy", "soup")
# Objectives the stored predictions' own columns stand for, by kind (and val_loss of the default loss): they choose
# ensembles with no task code, and no torch (worker/load/objective.py scores every other one)
STORED_OBJECTIVES = {"classification": ("val_accuracy", "val_log_loss"), "regression": ("val_mse",)}


@dataclass(frozen=True)
class Dataset:
    """What ``dataset/dataset.parquet`` holds: labels and the input standardisation."""

    num_classes: int
    y_val: np.ndarray  # class indices (n,); soft labels: probabilities (n, C) float64; regression: (n, d)
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    mean: np.ndarray | None  # (*input_shape), float64; None when the task does not standardise
    std: np.ndarray | None
    kind: str = "classification"
    # Regression: targets as (n, d) float64 arrays in y_val / y_test, one target's shape, and the target
    # standardisation a loaded model undoes (None when the task trains on the original units).
    target_shape: tuple[int, ...] = ()
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    input_dtype: str = "float32"  # the inputs' dtype in training ("int64" for token ids); sweeps before: float32
    # The sweep's objective and mode as the workers ranked trials (None: a sweep from before they were stored).
    objective: str | None = None
    mode: str | None = None
    output_shape: tuple[int, ...] | None = None  # one example's model outputs ((1,): a binary head's logit)
    # A class per position: every (example, position) label, row-major, -100 where none (y_val holds the labelled
    # ones, as the predictions' rows do); target_shape is then one example's positions. None for other sweeps.
    y_val_all: np.ndarray | None = None
    y_test_all: np.ndarray | None = None
    own_loss: bool = False  # val_loss is the task's own loss_fn's (False: the default loss, or a sweep from before)

    @property
    def binary_head(self) -> bool:
        """Two classes scored by one logit per example (``nn.Linear(d, 1)``)."""
        return self.kind == "classification" and self.num_classes == 2 and self.output_shape == (1,)

    @property
    def multilabel(self) -> bool:
        """Each example has L binary labels; its rows here are (example, label) pairs."""
        return (self.kind == "classification" and self.y_val.ndim == 1 and self.target_shape != ()
                and not self.per_position)

    @property
    def per_position(self) -> bool:
        """A class per position (tagging, segmentation); its rows here are the labelled (example, position) pairs."""
        return self.y_val_all is not None

    @property
    def soft(self) -> bool:
        return self.kind == "classification" and self.y_val.ndim == 2


@dataclass(frozen=True)
class StoredPredictions:
    candidates: list[Candidate]
    dropped: list[tuple[CandidateKey, str]]  # candidates left out, with why


@dataclass(frozen=True)
class SoupResult:
    """What a soup builder returns: the ingredients, its metrics, and where its weights are."""

    members: tuple[Member, ...]
    val_accuracy: float
    val_log_loss: float
    test_accuracy: float | None
    test_log_loss: float | None
    weights_path: str | None
    weights_sha256: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    val_objective: float | None = None  # the objective's value, when an objective was passed
    test_objective: float | None = None


# (candidate keys best first on validation, selection metric, the objective or None, the log-loss floor the other
# rows were scored with: ensembles.clip_of) -> a soup, or None when there is nothing to soup
SoupBuilder = Callable[[Sequence[CandidateKey], str, "Objective | None", float], "SoupResult | None"]
# The sweep's dataset row -> the objective that chooses, or None where the built-in metrics stand for it
ObjectiveFor = Callable[["Dataset"], "Objective | None"]


# -- reading what the workers stored -------------------------------------------------------


def read_dataset(storage: Storage) -> Dataset:
    row = schema.read_dataset_row(storage)
    if not row:
        raise StorageError(f"{storage.path(schema.DATASET_PATH)}: no such file (no trial of this sweep stored "
                           "predictions: none finished, the task's kind is \"custom\", or prediction_dtype is "
                           "\"none\"; ensembles average stored predictions)")
    shape = tuple(row["input_shape"])
    output_shape = row.get("output_shape")
    extra = {"input_dtype": row.get("input_dtype") or "float32", "objective": row.get("objective"),
             "mode": row.get("mode"), "output_shape": None if output_shape is None else tuple(output_shape),
             "own_loss": bool(row.get("own_loss"))}

    def stat(values: list[float] | None) -> np.ndarray | None:
        return None if values is None else np.asarray(values, dtype=np.float64).reshape(shape)

    if row.get("kind") == "custom":  # no labels: what loading its best model needs
        return Dataset(0, np.empty(0), np.empty(0), shape, stat(row["mean"]), stat(row["std"]), "custom", **extra)

    if row.get("kind") == "regression":
        target_shape = tuple(row["target_shape"] or ())
        width = max(1, int(np.prod(target_shape)))

        def values(v: list[float]) -> np.ndarray:
            return np.asarray(v, dtype=np.float64).reshape(-1, width)

        def target_stat(v: list[float] | None) -> np.ndarray | None:
            return None if v is None else np.asarray(v, dtype=np.float64).reshape(target_shape)

        return Dataset(0, values(row["y_val_values"]), values(row["y_test_values"]), shape, stat(row["mean"]),
                       stat(row["std"]), "regression", target_shape, target_stat(row["target_mean"]),
                       target_stat(row["target_std"]), **extra)
    classes = int(row["num_classes"])
    if row.get("y_val") is None and row.get("y_val_values") is not None:  # soft labels: (n, C) probabilities
        return Dataset(classes, np.asarray(row["y_val_values"], dtype=np.float64).reshape(-1, classes),
                       np.asarray(row["y_test_values"], dtype=np.float64).reshape(-1, classes), shape,
                       stat(row["mean"]), stat(row["std"]), **extra)
    if row.get("per_position"):
        y_val, y_test = np.asarray(row["y_val"], dtype=np.int64), np.asarray(row["y_test"], dtype=np.int64)
        labelled_val, labelled_test = y_val[y_val != schema.IGNORE_INDEX], y_test[y_test != schema.IGNORE_INDEX]
        return Dataset(classes, labelled_val, labelled_test, shape, stat(row["mean"]), stat(row["std"]),
                       target_shape=tuple(row["target_shape"]), y_val_all=y_val, y_test_all=y_test,
                       **extra)
    # multi-label: labels of (example, label) pairs, row-major; target_shape (L,) says how to fold them back
    return Dataset(classes, np.asarray(row["y_val"], dtype=np.int64), np.asarray(row["y_test"], dtype=np.int64),
                   shape, stat(row["mean"]), stat(row["std"]), target_shape=tuple(row.get("target_shape") or ()),
                   **extra)


def _probs_matrix(table: pa.Table, num_classes: int) -> tuple[np.ndarray, bool]:
    """The fixed-size-list column as an (n, classes) array, float16 or float32 as stored; and whether it holds
    log-probabilities (``log_probs``, what workers write) rather than probabilities (``probs``, an earlier caviar)."""
    log = schema.LOG_PROBS in table.column_names
    column = table[schema.LOG_PROBS if log else "probs"]
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, num_classes), log


def candidates_from_table(table: pa.Table, dataset: Dataset) -> StoredPredictions:
    """Group prediction rows into one :class:`Candidate` per (trial, epoch, weights), latest attempt.

    A candidate whose rows do not cover its split exactly (a partial file), or whose
    probabilities are not finite rows summing to one, is dropped and named in ``dropped``.
    The table holds one format (``log_probs`` or ``probs``): :func:`read_predictions` reads each apart.
    """
    if table.num_rows == 0:
        return StoredPredictions([], [])
    order = pc.sort_indices(table, [("trial_id", "ascending"), ("epoch", "ascending"), ("weights", "ascending"),
                                    ("attempt", "descending"), ("split", "ascending"), ("row", "ascending")])
    table = table.take(order)
    trial = table["trial_id"].to_numpy()
    epoch = table["epoch"].to_numpy()
    attempt = table["attempt"].to_numpy()
    # Two-valued string columns as booleans: no Python object per row (sweeps hold millions of rows).
    weights = pc.equal(table["weights"], "ema").to_numpy(zero_copy_only=False)
    split = pc.equal(table["split"], "test").to_numpy(zero_copy_only=False)
    probs, log = _probs_matrix(table, dataset.num_classes)
    # Group boundaries: a new (trial, epoch, weights, attempt, split) starts a block.
    change = np.ones(len(trial), dtype=bool)
    change[1:] = ((trial[1:] != trial[:-1]) | (epoch[1:] != epoch[:-1]) | (weights[1:] != weights[:-1])
                  | (attempt[1:] != attempt[:-1]) | (split[1:] != split[:-1]))
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(trial))
    blocks: dict[CandidateKey, dict[str, np.ndarray]] = {}
    seen_attempt: dict[CandidateKey, int] = {}
    for s, e in zip(starts, ends):
        key = CandidateKey(int(trial[s]), int(epoch[s]), "ema" if weights[s] else "raw")
        if seen_attempt.setdefault(key, int(attempt[s])) != int(attempt[s]):
            continue  # an older attempt of the same checkpoint: superseded
        blocks.setdefault(key, {})["test" if split[s] else "val"] = probs[s:e]
    expected = {"val": len(dataset.y_val), "test": len(dataset.y_test)}
    candidates, dropped = [], []
    for key, by_split in blocks.items():
        reason = _problem(by_split, expected, log)
        if reason:
            dropped.append((key, reason))
            continue
        candidates.append(Candidate(key, by_split["val"], by_split["test"], log))
    return StoredPredictions(candidates, dropped)


def _problem(by_split: dict[str, np.ndarray], expected: dict[str, int], log: bool = False) -> str | None:
    for split, n in expected.items():
        p = by_split.get(split)
        if p is None or len(p) != n:
            return f"{split}: {0 if p is None else len(p)} rows, expected {n}"
        p64 = p.astype(np.float64)
        if log:  # log-probabilities: finite (the writer keeps them within the dtype's range), exp summing to 1
            if not np.isfinite(p64).all() or np.abs(np.exp(p64).sum(axis=1) - 1).max() > 1e-2:
                return f"{split}: log-probabilities are not finite rows whose exp sums to 1"
        elif not np.isfinite(p64).all() or (p64 < 0).any() or np.abs(p64.sum(axis=1) - 1).max() > 1e-2:
            return f"{split}: probabilities are not finite rows summing to 1"
    return None


def prediction_files(storage: Storage) -> list[str]:
    """The trials' prediction files; refused in one line when there are none."""
    files = [f for f in storage.list_files("predictions") if f.startswith("predictions/trial-")]
    if not files:
        raise StorageError(f"{storage.path('predictions')}: no stored predictions (did any trial finish? with "
                           "prediction_dtype = \"none\" no trial stores them; ensembles average stored predictions)")
    return files


def read_predictions(storage: Storage, dataset: Dataset | None = None) -> StoredPredictions:
    dataset = dataset or read_dataset(storage)
    files = prediction_files(storage)
    by_format: dict[bool, list[pa.Table]] = {}
    for f in files:  # a sweep of an earlier caviar resumed: its files hold probabilities, newer ones log-probabilities
        table = storage.read_table(f)
        by_format.setdefault(schema.LOG_PROBS in table.column_names, []).append(table)
    candidates, dropped = [], []
    for tables in by_format.values():
        stored = candidates_from_table(pa.concat_tables(tables, promote_options="permissive"), dataset)
        candidates += stored.candidates
        dropped += stored.dropped
    return StoredPredictions(candidates, dropped)


# -- building ------------------------------------------------------------------------------


def check_methods(methods: Sequence[str] | None) -> tuple[str, ...]:
    if not methods:
        return METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"option 'method': {', '.join(unknown)} unknown (known: {', '.join(METHODS)})")
    return tuple(m for m in METHODS if m in methods or m == "single")  # the baseline is always there


def refuse_methods_kind_lacks(kind: str | None, methods: Sequence[str] | None) -> None:
    """Methods named for a regression sweep that it never builds (a soup, checkpoints) are refused, not left out
    in silence: the rebuilt table would hold only ``single`` and lose the rows it had."""
    if kind != "regression" or not methods:
        return
    from orchestrator.ensemble.regression_ensembles import REGRESSION_METHODS

    lacking = [m for m in check_methods(methods) if m not in REGRESSION_METHODS]
    if lacking:
        raise ConfigError(f"option 'method': {', '.join(lacking)}: a regression sweep builds "
                          f"{', '.join(REGRESSION_METHODS)} only")


def refuse_unbuilt(named: Sequence[str], keys: Sequence[CandidateKey], seed_groups: Sequence[Sequence[int]],
                   records: Sequence[EnsembleRecord] | None = None) -> None:
    """Methods the user named that the stored predictions cannot build are refused in one line before the table is
    written: it would hold only ``single`` and lose the rows (and the chosen one) it had. Called before building
    (``records`` None: what the predictions plainly lack, EMA weights or seed copies, so that no soup weights file is
    rewritten for a build that is refused) and after it (any other named method that did not come out)."""
    if not named:  # every method by default: each is built where the predictions allow
        return
    built = None if records is None else {r.method for r in records}
    with_ema = any(key.weights == "ema" for key in keys)
    why = []
    for method in check_methods(named):
        if method in ("ema", "single_ema") and not with_ema:
            why.append(f"{method}: no trial stored EMA weights (an ema_decay above 0 in the space keeps them)")
        elif method == "seeds" and not any(len(group) >= 2 for group in seed_groups):
            why.append(f"{method}: no config was trained from two or more seeds (--seed-copies N trains the best "
                       "one N more times)")
        elif built is not None and method not in built and method != "soup":  # a soup names its own failure
            why.append(f"{method}: the stored predictions cannot build it ({len({k.trial_id for k in keys})} "
                       f"trial(s), {len(keys)} checkpoint(s) with predictions)")
    if why:
        raise ConfigError(f"option 'method': {'; '.join(why)}; the ensembles table is left as it was")


def _single_ema(cands: Sequence[Candidate], y_val: np.ndarray, metric: str,
                objective: Objective | None = None) -> Ensemble | None:
    ema = [c for c in cands if c.key.weights == "ema"]
    if not ema:
        return None
    pool = ensembles.ValPool.of(ema, y_val, ensembles.clip_of(cands))  # the floor every other row has
    best = ensembles.best_single(pool, metric=metric, objective=objective)
    return replace(best, method="single_ema")


def build(cands: Sequence[Candidate], dataset: Dataset, *, methods: Sequence[str] | None = None, k: int = 5,
          metric: str = "accuracy", n_checkpoints: int = 5, greedy_steps: int = 40,
          soup: SoupBuilder | None = None, seed_groups: Sequence[Sequence[int]] = (),
          choose_by: str = "log_loss", objective: Objective | None = None) -> list[EnsembleRecord]:
    """Every requested ensemble, chosen on validation; test metrics attached after; the best flagged.

    ``metric`` ranks candidates inside the builders; ``choose_by`` picks the flagged row. Log
    loss by default: the best single model's validation accuracy is the luckiest of many
    draws on a small split, and choosing by accuracy keeps picking it
    (BENCHMARKS.md, ensembles on digits: 19% vs 33% of its test errors removed).
    An ``objective`` (the sweep's own, in its mode) replaces both, and its value on val and test
    goes to each row's ``detail``.

    ``single`` (the best single candidate) is always built: it is the baseline the table
    compares with. A soup comes from ``soup`` when given and requested; a seed ensemble
    when ``seed_groups`` (trials sharing one config) has a group of two or more.
    """
    wanted = check_methods(methods)
    for option, value in (("metric", metric), ("choose_by", choose_by)):
        if value not in SELECTION_METRICS:
            raise ConfigError(f"option '{option}': expected one of {', '.join(SELECTION_METRICS)}, got {value!r}")
    if not cands:
        raise ConfigError("predictions: no usable candidates (every stored prediction was dropped)")
    built = ensembles.build_all(cands, dataset.y_val, None, k, metric=metric, n_checkpoints=n_checkpoints,
                                greedy_steps=greedy_steps, seed_groups=seed_groups, objective=objective)
    single_ema = _single_ema(cands, dataset.y_val, metric, objective)
    if single_ema is not None:
        built.insert(1, single_ema)
    built = [e for e in built if e.method in wanted]
    # Selection is over; only now does test data enter.
    eps = ensembles.clip_of(cands)
    built = [ensembles.with_test_metrics(e, cands, dataset.y_test, objective, eps) for e in built]
    now = schema.now_ms()
    selection = metric if objective is None else objective.name
    records = [EnsembleRecord(i, e.method, e.method, e.members, selection, e.val_accuracy, e.val_log_loss,
                              e.test_accuracy, e.test_log_loss, created=now,
                              detail=objective_values(objective, e.val_objective, e.test_objective))
               for i, e in enumerate(built)]
    if "soup" in wanted and soup is not None:
        result = soup(ranked_keys(cands, dataset.y_val, metric, objective), metric, objective, eps)
        if result is not None:
            records.append(EnsembleRecord(
                len(records), "soup", "soup", result.members, selection, result.val_accuracy, result.val_log_loss,
                result.test_accuracy, result.test_log_loss, weights_path=result.weights_path,
                weights_sha256=result.weights_sha256, created=now,
                detail={**result.detail, **objective_values(objective, result.val_objective, result.test_objective)}))
    # A soup that accepted no second ingredient is the best candidate itself: the `single` row stands for it.
    eligible = [r for r in records if r.method != "soup" or r.detail.get("helped")]
    if objective is None:
        how = choice_detail(dataset, _COLUMN[choose_by], _COLUMN[metric])
        best = min(eligible, key=lambda r: rank(r.val_accuracy, r.val_log_loss, choose_by))  # ties: the earlier
    else:
        how = choice_detail(dataset, objective.name, objective.name)
        best = min(eligible, key=lambda r: (objective.loss(r.detail["val_objective"]), r.val_log_loss))
    return [replace(r, chosen=r is best, detail={**r.detail, **how}) for r in records]


def objective_values(objective: Objective | None, val: float | None, test: float | None) -> dict[str, Any]:
    """``val_objective`` / ``test_objective`` for a row's detail (nothing when no objective chose)."""
    return {} if objective is None else {"val_objective": val, "test_objective": test}


# What each stored-probability metric is called in the metrics table (the worker's val_* columns).
_COLUMN = {"accuracy": "val_accuracy", "log_loss": "val_log_loss"}


# How to let the objective choose when the master may not run the task's code.
OBJECTIVE_HINT = "pass --task FILE or --trust-task-code to caviar ensemble to choose by it"


def choice_detail(dataset: Dataset, chosen_by: str, ranked_by: str) -> dict[str, Any]:
    """What picked and ranked the ensembles, said in each row's ``detail``: never the sweep's objective by implication.

    Without the task's code only accuracy and log loss (against soft labels when the targets are
    probabilities), or a regression's MSE, can score stored outputs. When the sweep ranked its
    trials by another column (a task's own metric) that did not choose, the row says so and one
    warning line is logged.
    """
    detail: dict[str, Any] = {"chosen_by": chosen_by, "ranked_by": ranked_by}
    if dataset.soft:
        detail["labels"] = "soft: log loss is the cross-entropy against the target probabilities"
    objective = dataset.objective
    if objective:
        detail["sweep_objective"] = f"{objective} ({dataset.mode or 'max'})"
        # a task's own metric, or val_loss of its own loss_fn: stored outputs cannot score either without its code
        own = objective == "val_loss" and dataset.own_loss
        if objective not in (chosen_by, ranked_by, *_COLUMN.values(), "val_loss") or (own and chosen_by != objective):
            detail["choice_note"] = (f"ensembles were chosen by {chosen_by} on stored outputs, not by the sweep's "
                                     f"objective {objective} (it runs the task's code: {OBJECTIVE_HINT})")
    return detail


def rank(accuracy: float, log_loss: float, metric: str) -> tuple[float, float]:
    """Lower is better: by accuracy then log loss, or the other way round (as ``orchestrator.ensemble.ensembles``)."""
    return (-accuracy, log_loss) if metric == "accuracy" else (log_loss, -accuracy)


def ranked_keys(cands: Sequence[Candidate], y_val: np.ndarray, metric: str,
                objective: Objective | None = None) -> list[CandidateKey]:
    """Candidate keys, best single candidate on validation first (by the objective when given; ties: key order)."""
    pool = ensembles.ValPool.of(cands, y_val)
    return [pool.keys[i] for i in ensembles.single_order(pool, metric, objective)]


def _warn_choice(records: Sequence[EnsembleRecord]) -> None:
    note = records[0].detail.get("choice_note") if records else None
    if note:
        log.warning("ensembles: %s", note)


def write_ensembles(storage: Storage, records: Sequence[EnsembleRecord]) -> None:
    storage.write_table(schema.ENSEMBLES_PATH, schema.to_table([r.as_row() for r in records], schema.ENSEMBLES))
    pointed_at = {r.weights_path for r in records}
    for rel in storage.list_files(schema.ENSEMBLE_WEIGHTS_DIR, suffix=".safetensors"):
        if rel not in pointed_at:  # an earlier build's soup, or one left out of this build: no row points at it
            storage.delete(rel)
    legacy = schema.LEGACY_ENSEMBLE_WEIGHTS_DIR
    if not any((r.weights_path or "").startswith(legacy + "/") for r in records):
        storage.delete_dir(legacy)  # an older sweep rebuilt: its ensembles/ folder becomes a plain table again


def predictions_off(storage: Storage) -> bool:
    """Whether the sweep ran with ``prediction_dtype = "none"``: no trial stores predictions, so no ensembles; its
    best checkpoint is the answer, as for a custom kind."""
    if not storage.exists(schema.SWEEP_PATH):
        return False
    settings = storage.read_table(schema.SWEEP_PATH).to_pylist()[0]["settings"]
    return json.loads(settings or "{}").get("prediction_dtype") == "none"


def read_ensembles(storage: Storage) -> list[EnsembleRecord]:
    if not storage.exists(schema.ENSEMBLES_PATH):
        stored = [f for f in storage.list_files("predictions") if f.startswith("predictions/trial-")]
        if predictions_off(storage):
            raise StorageError(f"{storage.path(schema.ENSEMBLES_PATH)}: no such file: the sweep ran with "
                               "prediction_dtype = \"none\", so no trial stored the predictions ensembles average; "
                               "its answer is its best checkpoint (load_ensemble(SWEEP, name=\"best\") loads it)")
        running = _still_running(storage)  # before its first trials end it has no predictions either
        if running is None and not storage.exists(schema.DATASET_PATH) and lease_unreleased(storage) and not any(
                status in ("completed", "pruned") for status in _trial_statuses(storage)):  # trials still to end
            raise StorageError(f"{storage.path(schema.ENSEMBLES_PATH)}: no such file: the sweep stopped before any "
                               f"trial stored predictions; caviar resume {redact_uri(storage.uri)} --task YOUR_TASK "
                               "continues it, and its end builds them")
        if running is None and (not storage.exists(schema.DATASET_PATH) or not stored):  # caviar ensemble would refuse
            raise StorageError(f"{storage.path(schema.ENSEMBLES_PATH)}: no such file, and none can be built: no trial "
                               "stored predictions (the task's kind is \"custom\", prediction_dtype is \"none\", or "
                               "no trial finished); the sweep's answer is its best trial (caviar top SWEEP_DIR)")
        raise StorageError(f"{storage.path(schema.ENSEMBLES_PATH)}: no such file"
                           f"{running or f' (build them: caviar ensemble {redact_uri(storage.uri)})'}")
    return [EnsembleRecord.from_row(r) for r in storage.read_table(schema.ENSEMBLES_PATH).to_pylist()]


def _trial_statuses(storage: Storage) -> list[str]:
    if not storage.exists(schema.TRIALS_PATH):
        return []
    return storage.read_table(schema.TRIALS_PATH).column("status").to_pylist()


def _still_running(storage: Storage) -> str | None:
    """Why a sweep whose master still runs has no ensembles: its end builds them (``caviar ensemble`` refuses until
    then); ``None`` when no live master holds it."""
    where = redact_uri(storage.uri)
    try:
        writer = read_lease(storage)
    except StorageError:  # a damaged lease: caviar ensemble names it
        writer = None
    if writer is not None and holder_alive(writer):
        return (f": sweep {where!r} is still running (process {writer.pid} on {writer.host}), and its end builds the "
                f"ensembles; load them once it has finished (caviar status {where})")
    return None


def has_soup(storage: Storage) -> bool:
    """Whether the sweep's ensembles table (if any) holds a soup row."""
    if not storage.exists(schema.ENSEMBLES_PATH):
        return False
    return "soup" in storage.read_table(schema.ENSEMBLES_PATH).column("method").to_pylist()


def best_checkpoint(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The checkpoint-index row with the highest finite score (a custom kind's answer), the latest attempt of each
    (trial, epoch, weights); ties go to the lower validation loss (an accuracy of 1.0 on a small split is a tie many
    checkpoints share, as the ensembles' single model breaks it), then the lower trial, then the earlier epoch. None
    when no score is finite."""
    latest: dict[tuple[int, int, str], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["attempt"]):
        latest[(row["trial_id"], row["epoch"], row["weights"])] = row
    scored = [r for r in latest.values() if r["score"] is not None and math.isfinite(r["score"])]

    def loss(row: dict[str, Any]) -> float:
        value = row.get("val_loss")
        return value if value is not None and math.isfinite(value) else math.inf

    return max(scored, key=lambda r: (r["score"], -loss(r), -r["trial_id"], -r["epoch"]), default=None)


def pick(records: Sequence[EnsembleRecord], name: str | int = "best") -> EnsembleRecord:
    """``best`` is the chosen row; otherwise a row's name (``top_k``, ``greedy``, ...) or its id (``3`` or ``"3"``,
    as the table's ``ensemble_id`` column holds it)."""
    for r in records:
        if (name == "best" and r.chosen) or r.name == name or str(r.ensemble_id) == str(name):
            return r
    names = ", ".join(["best", *(r.name for r in records)])
    raise ConfigError(f"ensemble {name!r}: no such ensemble (this sweep has {names})")


def refuse_custom_kind(storage: Storage, kind: str | None) -> None:
    if kind == "custom":
        raise StorageError(f"{redact_uri(storage.uri)}: a kind = \"custom\" sweep has no ensembles (its outputs "
                           "are the task's own, and caviar averages only class probabilities or regression outputs); "
                           "load_ensemble(SWEEP, name=\"best\") loads its best checkpoint")


def default_metric(dataset: Dataset) -> str:
    """What ranks candidates inside the builders when no one said: accuracy, but log loss for a sweep ranked on its
    loss (a multi-label sweep's default), where the sweep's best trial would otherwise lose its place to one that
    gets a pair or two more right (accuracy over sparse labels favours predicting none)."""
    return "log_loss" if dataset.objective in ("val_loss", "val_log_loss") else "accuracy"


def _trials(storage: Storage) -> list[dict[str, Any]]:
    """Each trial's id, epoch budget and config: which trials are seeds of one config."""
    if not storage.exists(schema.TRIALS_PATH):
        return []
    return storage.read_table(schema.TRIALS_PATH).select(["trial_id", "max_epochs", "config"]).to_pylist()


def build_and_write(storage: Storage, *, methods: Sequence[str] | None = None, k: int = 5, metric: str | None = None,
                    soup: SoupBuilder | None = None, choose_by: str = "log_loss",
                    objective_for: ObjectiveFor | None = None, named: Sequence[str] = ()) -> list[EnsembleRecord]:
    """Read predictions, build, write the ``ensembles`` table; returns its rows.

    ``objective_for`` gives the objective that chooses (None from it: the built-in metrics stand for it).
    ``metric`` None: the sweep's (:func:`default_metric`). ``named``: the methods the user asked for by name, refused
    (nothing written) when the stored predictions cannot build one (:func:`refuse_unbuilt`).
    """
    dataset = read_dataset(storage)
    refuse_custom_kind(storage, dataset.kind)
    metric = metric or default_metric(dataset)
    objective = objective_for(dataset) if objective_for is not None else None
    if dataset.kind == "regression":  # averaged outputs chosen on validation MSE (regression_ensembles.py)
        from orchestrator.ensemble.regression_ensembles import build_regression, read_regression


        regression_cands = read_regression(storage, dataset)
        seed_groups = ensembles.same_config_groups(_trials(storage))
        keys = [c.key for c in regression_cands]
        refuse_unbuilt(named, keys, seed_groups)
        records = build_regression(regression_cands, dataset, k=k, methods=check_methods(methods),
                                   objective=objective, seed_groups=seed_groups)
        refuse_unbuilt(named, keys, seed_groups, records)
        chosen_by = "val_mse" if objective is None else objective.name
        how = choice_detail(dataset, chosen_by, chosen_by)
        records = [replace(r, detail={**r.detail, **how}) for r in records]
        _warn_choice(records)
        write_ensembles(storage, records)
        return records
    stored = read_predictions(storage, dataset)
    for key, reason in stored.dropped:
        log.warning("ensembles: left out %s (%s)", key, reason)
    seed_groups = ensembles.same_config_groups(_trials(storage))
    keys = [c.key for c in stored.candidates]
    refuse_unbuilt(named, keys, seed_groups)  # before a soup rewrites its weights file
    records = build(stored.candidates, dataset, methods=methods, k=k, metric=metric, soup=soup,
                    seed_groups=seed_groups, choose_by=choose_by, objective=objective)
    refuse_unbuilt(named, keys, seed_groups, records)
    _warn_choice(records)
    write_ensembles(storage, records)
    return records
