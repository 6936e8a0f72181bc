"""What a trial leaves for ensembling: class probabilities of its kept checkpoints, and the sweep's labels.

When a trial ends, every checkpoint it keeps (raw and EMA, best and last) is run once on
the validation and test splits and the probabilities go to ``predictions/trial-N.parquet``.
Ensembles are then built from these numbers alone (``orchestrator.ensemble_run``), with no
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

from orchestrator import schema
from orchestrator.errors import ConfigError
from orchestrator.storage import Storage
from worker.data import Splits
from worker.trainer import TrialRun

_dataset_written: set[str] = set()  # storage URIs this process has written dataset.parquet to


def check_dtype(dtype: str) -> str:
    if dtype not in schema.PREDICTION_DTYPES:
        known = ", ".join(schema.PREDICTION_DTYPES)
        raise ConfigError(f"setting 'prediction_dtype': expected one of {known}, got {dtype!r}")
    return dtype


def _flat(t: torch.Tensor | None) -> list[float] | None:
    return None if t is None else t.detach().float().cpu().reshape(-1).tolist()


def dataset_row(splits: Splits) -> dict[str, Any]:
    return {
        "num_classes": splits.num_classes,
        "y_val": splits.y_val.cpu().tolist(),
        "y_test": splits.y_test.cpu().tolist(),
        "input_shape": list(splits.x_val.shape[1:]),
        "mean": _flat(splits.mean),
        "std": _flat(splits.std),
        "time": schema.now_ms(),
    }


def write_dataset(storage: Storage, splits: Splits) -> None:
    """The sweep's val/test labels and input standardisation; once per process and storage."""
    if storage.uri in _dataset_written:
        return
    storage.write_table(schema.DATASET_PATH, schema.to_table([dataset_row(splits)], schema.DATASET))
    _dataset_written.add(storage.uri)


def predictions_table(rows: Sequence[tuple[Mapping[str, Any], Mapping[str, torch.Tensor]]], num_classes: int,
                      dtype: str) -> pa.Table:
    """``(index row, {"val": probs, "test": probs})`` pairs to one table in the predictions schema."""
    out_schema = schema.predictions_schema(num_classes, dtype)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    columns: dict[str, list[np.ndarray]] = {name: [] for name in out_schema.names}
    for index_row, by_split in rows:
        for split in ("val", "test"):
            probs = by_split[split].numpy()
            n = len(probs)
            columns["trial_id"].append(np.full(n, index_row["trial_id"], np.int32))
            columns["attempt"].append(np.full(n, index_row["attempt"], np.int16))
            columns["epoch"].append(np.full(n, index_row["epoch"], np.int32))
            columns["weights"].append(np.full(n, index_row["weights"], object))
            columns["split"].append(np.full(n, split, object))
            columns["row"].append(np.arange(n, dtype=np.int32))
            columns["probs"].append(probs.astype(np_dtype).reshape(-1))
    arrays = []
    for field in out_schema:
        values = np.concatenate(columns[field.name]) if columns[field.name] else np.array([])
        if field.name == "probs":
            flat = pa.array(values.astype(np_dtype), type=field.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, num_classes))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=out_schema)


CheckpointResults = Mapping[str, tuple[torch.Tensor, Mapping[str, float]]]  # split -> (natural outputs, metrics)


def write_predictions(storage: Storage, run: TrialRun, index: Sequence[Mapping[str, Any]],
                      results: Mapping[tuple[int, str], CheckpointResults], dtype: str = "float16") -> int:
    """Probabilities of each checkpoint in ``index`` (outputs from ``results``) on val and test; returns rows written.

    Checkpoints whose probabilities are not finite (a diverged last epoch) are left out: no
    ensemble could use them. Only classification with class-index targets stores predictions
    for now (the ensemble builders score against integer labels); other kinds get none.
    """
    check_dtype(dtype)
    num_classes = run.splits.num_classes
    rel = schema.predictions_path(run.spec.trial_id)
    if not run.splits.target_kind.hard_classes or num_classes is None:
        storage.delete(rel)
        return 0
    rows = []
    for index_row in index:
        by_split = {split: out for split, (out, _) in results[(index_row["epoch"], index_row["weights"])].items()}
        if any(p.ndim != 2 or p.shape[1] != num_classes for p in by_split.values()):
            return 0
        if all(bool(torch.isfinite(p).all()) for p in by_split.values()):
            rows.append((index_row, by_split))
    if not rows:
        storage.delete(rel)  # a retried trial's earlier file would describe checkpoints that are gone
        return 0
    write_dataset(storage, run.splits)
    table = predictions_table(rows, num_classes, dtype)
    storage.write_table(rel, table)
    return table.num_rows
