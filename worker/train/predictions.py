"""What a trial leaves for ensembling: class log-probabilities of its kept checkpoints, and the sweep's labels.

When a trial ends, every checkpoint it keeps (raw and EMA, best and last) is run once on
the validation and test splits and the log-probabilities go to ``predictions/trial-N.parquet``.
Ensembles are then built from these numbers alone (``orchestrator.ensemble.ensemble_run``), with no
model run again. Storage stays bounded: only kept checkpoints, float16 by default.

The labels of val and test, and the train-split standardisation a loaded ensemble must
apply to raw inputs, are written once per worker process to ``dataset/dataset.parquet``
(every worker holds the same splits, so a rewrite is idempotent and never stale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from orchestrator.errors import ConfigError
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from worker.data import task_globals
from worker.data.kinds import baseline_val_loss, class_labels, has_label
from worker.data.splits import SPLITS, Splits
from worker.data.summary import first_difference
from worker.train.do_nothing import do_nothing_objective
from worker.train.trainer import TrialRun

_dataset_written: set[str] = set()  # storage URIs this process has written dataset.parquet to


def forget_dataset_written(storage: Storage) -> None:
    """A worker bound to a sweep writes its dataset row again, even if it wrote one to this URI for an earlier sweep
    (a warm worker, a sweep of the same name after --overwrite cleared the folder)."""
    _dataset_written.discard(storage.uri)


def check_dtype(dtype: str) -> str:
    """float16 or float32; ``none`` stores no predictions (very large validation sets: no ensembles then)."""
    if dtype not in schema.PREDICTION_DTYPES and dtype != "none":
        known = ", ".join([*schema.PREDICTION_DTYPES, "none"])
        raise ConfigError(f"setting 'prediction_dtype': expected one of {known}, got {dtype!r}")
    return dtype


def _flat(t: torch.Tensor | None) -> list[float] | None:
    return None if t is None else t.detach().cpu().reshape(-1).tolist()


def summary_column(splits: Splits) -> list[float] | None:
    """The dataset row's ``data_summary``: train's, val's and test's, inputs then targets; None for streamed data."""
    return None if not splits.summaries else [v for s in SPLITS for v in splits.summaries[s]]


def dataset_row(splits: Splits, objective: str | None = None, mode: str | None = None,
                baseline: float | None = None, output_shape: tuple[int, ...] | None = None,
                own_loss: bool | None = None, do_nothing: tuple[float, str] | None = None,
                loss_per_example: bool | None = None) -> dict[str, Any]:
    kind = splits.target_kind
    row = {
        "num_classes": splits.num_classes,
        "input_shape": list(splits.input_shape),
        "mean": _flat(splits.mean),
        "std": _flat(splits.std),
        "time": schema.now_ms(),
        "kind": kind.kind,
        "input_dtype": str(splits.input_dtype).removeprefix("torch."),
        "objective": objective,
        "mode": mode,
        "baseline_val_loss": baseline,
        "output_shape": None if output_shape is None else list(output_shape),
        "own_loss": own_loss or None,
        "loss_per_example": False if loss_per_example is False else None,
        "baseline_objective": None if do_nothing is None else do_nothing[0],
        "baseline_answer": None if do_nothing is None else do_nothing[1],
        "data_summary": summary_column(splits),
    }
    row["task_globals"], row["task_globals_left_out"] = task_globals.encode(splits.task_globals)
    if kind.kind == "custom":  # the task's own targets: what a loaded model needs, and no labels
        return row
    if kind.per_position:  # every (example, position) label, -100 included: the predictions hold the labelled ones
        return {**row, "y_val": splits.y_val.cpu().reshape(-1).tolist(), "y_test": splits.y_test.cpu().reshape(-1)
                .tolist(), "target_shape": list(kind.positions or ()), "per_position": True}
    if kind.multilabel:  # (example, label) pairs, row-major, as the stored predictions' rows; the width to load
        return {**row, "y_val": splits.y_val.cpu().reshape(-1).tolist(), "y_test": splits.y_test.cpu().reshape(-1)
                .tolist(), "target_shape": list(splits.y_val.shape[1:])}
    if kind.hard_classes:
        return {**row, "y_val": splits.y_val.cpu().tolist(), "y_test": splits.y_test.cpu().tolist()}
    if kind.kind == "classification":  # soft labels: the target probabilities, as the ensembles score against them
        return {**row, "y_val_values": _flat(splits.y_val.double()), "y_test_values": _flat(splits.y_test.double()),
                "target_shape": list(splits.y_val.shape[1:])}
    return {**row, "y_val_values": _flat(splits.y_val.double()), "y_test_values": _flat(splits.y_test.double()),
            "target_shape": list(splits.y_val.shape[1:]), "target_mean": _flat(kind.target_mean),
            "target_std": _flat(kind.target_std)}


LABEL_COLUMNS = ("y_val", "y_test", "y_val_values", "y_test_values")


def check_stored_feature_names(storage: Storage, splits: Splits) -> None:
    """Refuse a DataFrame whose columns differ from those the sweep began with: the stored input statistics, the
    trained weights and a loaded ensemble (which takes a DataFrame's columns by these names) all follow that order,
    so columns reordered since would reach other inputs of the model, in silence."""
    if not storage.exists(schema.SWEEP_PATH):
        return
    rows = storage.read_table(schema.SWEEP_PATH).to_pylist()
    stored = rows[0].get("feature_names") if rows else None
    given = list(splits.feature_names) if splits.feature_names else None
    if stored is None or given is None or list(stored) == given:
        return
    detail = "in another order" if sorted(stored) == sorted(given) else \
        f"others ({', '.join(sorted(set(stored) ^ set(given))[:3])} in one of them only)"
    raise ConfigError(f"load_data: train X's columns are {detail} than the sweep's ({', '.join(list(stored)[:5])}"
                      f"{', ...' if len(stored) > 5 else ''}, in {schema.SWEEP_PATH}); give them in the sweep's order "
                      "(df[[...]]), or start a new sweep")


def check_stored_labels(storage: Storage, splits: Splits) -> None:
    """Refuse data whose val or test labels differ from those the sweep stored: every stored prediction is scored
    against the stored labels row by row, so another split (drawn without a seed, or data edited since) would
    score them against the wrong examples, in silence."""
    check_stored_feature_names(storage, splits)
    stored = schema.read_dataset_row(storage)
    if not stored:
        return
    ours = dataset_row(splits)
    for column in LABEL_COLUMNS:
        old, new = stored.get(column), ours.get(column)
        if old is None or new is None or list(old) == list(new):
            continue
        where = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        split = column.split("_")[1]
        raise ConfigError(f"load_data: its {split} labels differ from those the sweep stored in "
                          f"{schema.DATASET_PATH} ({len(new)} values against {len(old)}, the first difference at "
                          f"{where}): the data changed since the sweep began, or a split is drawn without a fixed "
                          "seed, so each process that loads the data draws another; seed the split "
                          "(np.random.default_rng(0)) and start a new sweep")
    check_stored_summary(stored, splits)


def check_stored_summary(stored: Mapping[str, Any], splits: Splits) -> None:
    """Refuse inputs or targets other than those the sweep began with (the labels alike may hide them: a feature
    rescaled, training rows edited): the trials of a resume would train on other data than those before it, and its
    ensembles mix models of both, in silence. ``stored``: the sweep's dataset row."""
    old, new = stored.get("data_summary"), summary_column(splits)
    if not old or not new:
        return
    where = first_difference(old, new)
    if where is not None:
        split, part = SPLITS[where // 2], ("inputs", "targets")[where % 2]
        raise ConfigError(f"load_data: its {split} {part} differ from those the sweep began with (their sums, in "
                          f"{schema.DATASET_PATH}): the data changed since the sweep began, or are drawn without a "
                          "fixed seed; restore the data the sweep trained on (or seed its draw), or start a new sweep")


def write_dataset(storage: Storage, splits: Splits, objective: str | None = None, mode: str | None = None,
                  task: Any = None, output_shape: tuple[int, ...] | None = None,
                  loss_per_example: bool | None = None) -> None:
    """The sweep's val/test labels, input standardisation, objective and (regression, ``task`` given) chance loss;
    once per process and storage."""
    if storage.uri in _dataset_written:
        return
    check_stored_labels(storage, splits)  # a worker that loaded its own data, after another wrote the row
    baseline = None if task is None else baseline_val_loss(task, splits.target_kind, splits.y_train, splits.y_val)
    own_loss = task is not None and task.get("loss_fn") is not None
    do_nothing = None if task is None else do_nothing_objective(task, splits, objective, mode, output_shape)
    storage.write_table(schema.DATASET_PATH, schema.to_table(
        [dataset_row(splits, objective, mode, baseline, output_shape, own_loss, do_nothing, loss_per_example)],
        schema.DATASET))
    _dataset_written.add(storage.uri)


def predictions_table(rows: Sequence[tuple[Mapping[str, Any], Mapping[str, torch.Tensor]]], num_classes: int,
                      dtype: str, column: str = schema.LOG_PROBS) -> pa.Table:
    """``(index row, {"val": outputs, "test": outputs})`` pairs to one table in the predictions schema."""
    out_schema = schema.predictions_schema(num_classes, dtype, column)
    np_dtype = np.dtype(dtype)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in out_schema.names}
    for index_row, by_split in rows:
        for split in ("val", "test"):
            probs = by_split[split].reshape(len(by_split[split]), -1).numpy()
            n = len(probs)
            columns["trial_id"].append(np.full(n, index_row["trial_id"], np.int32))
            columns["attempt"].append(np.full(n, index_row["attempt"], np.int16))
            columns["epoch"].append(np.full(n, index_row["epoch"], np.int32))
            columns["weights"].append(np.full(n, index_row["weights"], object))
            columns["split"].append(np.full(n, split, object))
            columns["row"].append(np.arange(n, dtype=np.int32))
            columns[column].append(probs.astype(np_dtype).reshape(-1))
    arrays = []
    for field in out_schema:
        values = np.concatenate(columns[field.name]) if columns[field.name] else np.array([])
        if field.name == column:
            flat = pa.array(values.astype(np_dtype), type=field.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, num_classes))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=out_schema)


def labelled_rows(splits: Splits) -> dict[str, torch.Tensor] | None:
    """Per split, which rows of a per-position kind's outputs have a label (None for other kinds: every row)."""
    kind = splits.target_kind
    if not kind.per_position:
        return None
    return {split: has_label(class_labels(y, kind)).cpu() for split, y in (("val", splits.y_val),
                                                                                   ("test", splits.y_test))}


CheckpointResults = Mapping[str, tuple[torch.Tensor, Mapping[str, float]]]  # split -> (natural outputs, metrics)


def write_predictions(storage: Storage, run: TrialRun, index: Sequence[Mapping[str, Any]],
                      results: Mapping[tuple[int, str], CheckpointResults], dtype: str = "float16") -> int:
    """The natural outputs of each checkpoint in ``index`` on val and test; returns rows written.

    Class log-probabilities for classification (class indices or soft labels), kept within the dtype's finite
    range (float16 reaches -65504: a log loss of that is no less wrong); regression values in
    the targets' original units, float32, or float64 where the outputs are (float16 keeps ~3 digits: 150.3 would
    read back as 150.25). Checkpoints whose outputs are not finite (a diverged last epoch) are left out: no
    ensemble could use them. Custom tasks store none (only their own metrics could score an
    ensemble); ``dtype = "none"`` turns storage off for every kind.
    """
    rel = schema.predictions_path(run.spec.trial_id)
    kind = run.splits.target_kind
    classification = kind.kind == "classification"
    if dtype == "none" or not (classification or kind.kind == "regression"):
        # No predictions, but load_ensemble needs the input standardisation (custom), and top, status and the
        # report the objective and its mode: without them a minimised objective showed as a negative "score".
        write_dataset(storage, run.splits, run.objective, run.mode, None if kind.kind == "custom" else run.task,
                      run.output_shape, getattr(run, "loss_per_example", None))
        storage.delete(rel)
        return 0
    check_dtype(dtype)
    width = run.splits.num_classes if classification else max(1, int(np.prod(run.splits.y_val.shape[1:])))
    rows = []
    labelled = labelled_rows(run.splits)
    for index_row in index:
        by_split = {split: out for split, (out, _) in results[(index_row["epoch"], index_row["weights"])].items()}
        if classification:  # log_softmax of huge logits reaches -inf; NaN (a diverged epoch) stays NaN, left out
            by_split = {split: out.clamp(min=float(np.finfo(dtype).min)) for split, out in by_split.items()}
        if labelled is not None:  # one row per labelled position, as the ensembles score them
            by_split = {split: out[labelled[split]] for split, out in by_split.items()}
        if classification and any(p.ndim != 2 or p.shape[1] != width for p in by_split.values()):
            return 0
        if all(bool(torch.isfinite(p).all()) for p in by_split.values()):
            rows.append((index_row, by_split))
    if not rows:
        storage.delete(rel)  # a retried trial's earlier file would describe checkpoints that are gone
        return 0
    # a fused array's member does not judge its loss (None: not judged)
    write_dataset(storage, run.splits, run.objective, run.mode, run.task, run.output_shape,
                  getattr(run, "loss_per_example", None))
    if classification:
        table = predictions_table(rows, width, dtype)
    else:  # in the outputs' own width: float64 outputs (a float64 model, or float64 targets near 1e7) rounded to
        # float32 lost what separated the models, and every ensemble's MSE was scored on the rounded numbers
        wide = any(out.dtype == torch.float64 for _, by_split in rows for out in by_split.values())
        table = predictions_table(rows, width, "float64" if wide else "float32", column="values")
    storage.write_table(rel, table)
    return table.num_rows
