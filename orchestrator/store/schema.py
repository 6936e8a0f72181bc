"""The Parquet contract: every table's schema and where its files live. All writes come here.

Layout under ``<storage>/<sweep>/``::

    sweep/sweep.parquet               one row: how the sweep was started (resume reads it)
    stages/stage-001.parquet          one row per stage: its plan and ranges (stages, like epochs, count from 1)
    trials/trials.parquet             one row per trial, rewritten atomically as trials change
    metrics/trial-000012.parquet      one row per (trial, attempt, epoch); parts while running
    diagnostics/trial-000012.parquet  one row per (trial, attempt, epoch, parameter or layer); parts likewise
    checkpoints/trial-000012.parquet  the checkpoint index of one trial
    weights/trial-000012/...          safetensors files the index points to (not a table: no Parquet)
    predictions/trial-000012.parquet  class log-probabilities of every kept checkpoint on val and test (ensembles)
    dataset/dataset.parquet           one row: val/test labels and the input standardisation, per sweep
    ensembles/ensembles.parquet       one row per ensemble built; soup weights under weights/ensembles/
    events/part-....parquet           every decision the master takes, append-only

Rows are never updated in place. Metrics rows are keyed by ``(trial_id, attempt, epoch)``;
for each ``(trial_id, epoch)`` the row of the highest attempt counts (a retried trial
re-runs epochs after its checkpoint, and those rows supersede the lost attempt's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import StorageError
from orchestrator.store.storage import Storage

TIMESTAMP = pa.timestamp("ms", tz="UTC")
# Named metrics beyond the fixed columns ("val_mse", "val_r2", a task's own "val_f1"; "test_*" in the checkpoint
# index): a map column, which DuckDB, pandas and Polars read natively (``metrics['val_mse']`` in DuckDB).
NAMED_METRICS = pa.map_(pa.string(), pa.float64())

METRICS = pa.schema(
    [
        ("trial_id", pa.int32()),
        ("attempt", pa.int16()),
        ("epoch", pa.int32()),
        ("stage", pa.int16()),
        ("train_loss", pa.float64()),  # what the optimizer minimised (standardize_targets: on standardised targets)
        ("train_accuracy", pa.float64()),
        ("val_loss", pa.float64()),
        ("val_accuracy", pa.float64()),
        ("score", pa.float64()),  # the sweep's objective, higher is better; NaN (not null) where the epoch diverged
        ("ema_val_loss", pa.float64()),
        ("ema_val_accuracy", pa.float64()),
        ("lr", pa.float64()),
        ("grad_norm", pa.float64()),
        ("update_ratio", pa.float64()),  # ||lr * update|| / ||w||: ~1e-3 is healthy
        ("epoch_seconds", pa.float64()),
        ("samples_per_second", pa.float64()),
        ("time", TIMESTAMP),
        ("metrics", NAMED_METRICS),  # every other validation metric of the epoch, by column name
        # train_loss in the units val_loss is in (the targets' original units): what a train/val gap compares.
        # Null where unknown: a task's own train_epoch on standardised targets, or a sweep from before the column.
        ("train_loss_original", pa.float64()),
    ]
)

CHECKPOINTS = pa.schema(
    [
        ("trial_id", pa.int32()),
        ("attempt", pa.int16()),
        ("epoch", pa.int32()),
        ("weights", pa.string()),  # "raw" or "ema"
        ("kept_as", pa.string()),  # "best", "last", "best,last", "top"
        ("path", pa.string()),  # relative to the sweep directory
        ("score", pa.float64()),
        ("val_loss", pa.float64()),
        ("val_accuracy", pa.float64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("time", TIMESTAMP),
        ("metrics", NAMED_METRICS),  # val_* and test_* of this checkpoint, written when the trial ends
    ]
)

EVENTS = pa.schema(
    [
        ("seq", pa.int64()),
        ("time", TIMESTAMP),
        ("kind", pa.string()),
        ("trial_id", pa.int32()),
        ("stage", pa.int16()),
        ("reason", pa.string()),
        ("detail", pa.string()),  # JSON
    ]
)

DIAGNOSTICS = pa.schema(
    [
        ("trial_id", pa.int32()),
        ("attempt", pa.int16()),
        ("epoch", pa.int32()),
        ("stage", pa.int16()),
        ("kind", pa.string()),  # "parameter" (a trainable tensor) or "activation" (a leaf module's output)
        ("layer", pa.string()),  # parameter name ("0.weight") or module name ("1")
        ("module", pa.string()),  # the module's class: Linear, ReLU, BatchNorm1d
        ("numel", pa.int64()),  # elements of the tensor (activations: per example)
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("zero_fraction", pa.float64()),  # activations: share of exact zeros on the probe batch
        ("dead_fraction", pa.float64()),  # activations: units zero on every probe example (dead ReLUs)
        ("weight_norm", pa.float64()),  # parameters, at the epoch's first optimizer step
        ("grad_norm", pa.float64()),
        ("update_ratio", pa.float64()),  # ||dw|| / ||w|| of that step: ~1e-3 is healthy
        ("hist_edges", pa.list_(pa.float64())),  # kept every few epochs only, else null
        ("hist_counts", pa.list_(pa.int64())),
        ("time", TIMESTAMP),
    ]
)

PREDICTION_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
# What a predictions column may hold: the settings' widths, and float64 for regression outputs computed in it
_STORED_WIDTHS = {**PREDICTION_DTYPES, "float64": pa.float64()}


LOG_PROBS = "log_probs"  # the predictions column of class log-probabilities; "probs" (probabilities): earlier sweeps


def predictions_schema(num_classes: int, dtype: str = "float16", column: str = LOG_PROBS) -> pa.Schema:
    """One row per (checkpoint, split, example): its class log-probabilities as a fixed-size list.

    Written by the worker when a trial ends, for every kept checkpoint (raw and EMA), so
    ensembles are built from numbers on disk without running a model. float16 by default:
    log-probabilities lose ~1e-3 relative and reach -65504, so a confidently wrong model's log loss is
    its own (probabilities in float16 are 0 below ~6e-8). Sweeps of an earlier caviar hold ``probs``,
    class probabilities; readers take either (``orchestrator.ensemble.ensemble_run``).
    """
    return pa.schema(
        [
            ("trial_id", pa.int32()),
            ("attempt", pa.int16()),
            ("epoch", pa.int32()),
            ("weights", pa.string()),  # "raw" or "ema"
            ("split", pa.string()),  # "val" or "test"
            ("row", pa.int32()),  # index of the example within its split
            # class log-probabilities (earlier sweeps: "probs", probabilities); for regression ("values") the
            # outputs in original units, flattened
            (column, pa.list_(_STORED_WIDTHS[dtype], num_classes)),
        ]
    )


IGNORE_INDEX = -100  # a position without a label in per-position targets (torch's cross-entropy ignore_index)

DATASET = pa.schema(
    [
        ("num_classes", pa.int32()),
        ("y_val", pa.list_(pa.int32())),
        ("y_test", pa.list_(pa.int32())),
        ("input_shape", pa.list_(pa.int32())),  # one example's shape, e.g. [64] or [3, 32, 32]
        # Train-split (or the task's own) standardisation, flattened; null when the task opts out or the inputs
        # are integers. float64 holds float32 statistics exactly and float64 ones whole.
        ("mean", pa.list_(pa.float64())),
        ("std", pa.list_(pa.float64())),
        ("time", TIMESTAMP),
        ("kind", pa.string()),  # classification or regression (null: classification, as before kinds)
        # regression and soft labels: val targets, flattened (y_val is for class indices)
        ("y_val_values", pa.list_(pa.float64())),
        ("y_test_values", pa.list_(pa.float64())),
        ("target_shape", pa.list_(pa.int32())),  # regression: one target's shape, [] for a scalar
        ("target_mean", pa.list_(pa.float64())),  # standardize_targets: train statistics a loaded model undoes
        ("target_std", pa.list_(pa.float64())),
        ("input_dtype", pa.string()),  # what the models trained on ("int64" token ids); null: float32, as before
        ("objective", pa.string()),  # the column that ranked trials ("val_brier"); null: a sweep from before
        ("mode", pa.string()),  # min or max
        # regression: val MSE of predicting the training mean, the pruners' "chance" (a resume replays with it)
        ("baseline_val_loss", pa.float64()),
        # Globals the task's load_data set (an input width, a vocabulary), as tagged JSON; load_ensemble sets them
        # before build_model. Left out: names JSON cannot hold (load_ensemble then runs load_data if it must).
        ("task_globals", pa.string()),
        ("task_globals_left_out", pa.list_(pa.string())),
        # One example's model outputs, e.g. [10], or [1] for a binary head's one logit (an ensemble's averaged
        # probabilities then reach the task's own metrics as that logit); null: a sweep from before.
        ("output_shape", pa.list_(pa.int32())),
        # A class per position (tagging, segmentation): y_val/y_test hold every (example, position) label, row-major,
        # -100 where a position has none; predictions hold one row per labelled position. null: not such a sweep.
        ("per_position", pa.bool_()),
        # val_loss is the task's own loss_fn's: no stored column stands for it (only the task's code scores it).
        # null: the kind's default loss, or a sweep from before.
        ("own_loss", pa.bool_()),
        # False: the task's loss_fn is not a mean over examples (a Cox or batch-hard triplet loss, a sum): a training
        # loss averaged over batches is not in val_loss's units, so no train/validation loss gap. null: it is, or
        # the kind's default loss, or a sweep from before.
        ("loss_per_example", pa.bool_()),
        # A classification ranked by a metric of the task's own: that metric's best value among answers that ignore
        # the inputs (worker/train/do_nothing.py), and which answer; null: none scores it, or a sweep from before.
        ("baseline_objective", pa.float64()),
        ("baseline_answer", pa.string()),
        # train's, val's and test's inputs and targets as load_data gave them (data in memory), 5 numbers each
        # (worker/data/summary.py): a resume's workers, which load the data again, are refused other data. null:
        # streamed data, or a sweep from before.
        ("data_summary", pa.list_(pa.float64())),
    ]
)

ENSEMBLE_MEMBER = pa.struct(
    [("trial_id", pa.int32()), ("epoch", pa.int32()), ("weights", pa.string()), ("weight", pa.float64())]
)

ENSEMBLES = pa.schema(
    [
        ("ensemble_id", pa.int32()),
        ("name", pa.string()),  # what load_ensemble(name=...) takes; "best" is the row with chosen = true
        ("method", pa.string()),  # single, single_ema, top_k, checkpoints, ema, seeds, greedy, soup
        ("members", pa.list_(ENSEMBLE_MEMBER)),  # weights sum to 1
        ("size", pa.int32()),  # distinct members
        ("selection_metric", pa.string()),  # "accuracy" or "log_loss", on validation
        ("val_accuracy", pa.float64()),
        ("val_log_loss", pa.float64()),
        ("test_accuracy", pa.float64()),  # computed once, after selection
        ("test_log_loss", pa.float64()),
        ("chosen", pa.bool_()),  # best on validation among the rows of this build
        ("weights_path", pa.string()),  # soups: the averaged weights (safetensors); else null
        ("weights_sha256", pa.string()),
        ("detail", pa.string()),  # JSON: what the builder tried (a soup's accepted ingredients, ...)
        ("created", TIMESTAMP),
        ("val_mse", pa.float64()),  # regression ensembles (original units); null for classification
        ("test_mse", pa.float64()),
    ]
)

STAGES = pa.schema(
    [
        ("stage", pa.int16()),
        ("trials", pa.int32()),
        ("epochs", pa.int32()),
        ("space", pa.string()),  # JSON: parameter -> distribution as plain data
        ("first_trial_id", pa.int32()),
        ("time", TIMESTAMP),
    ]
)

SWEEP = pa.schema(
    [
        ("name", pa.string()),
        ("task", pa.string()),
        ("seed", pa.int64()),
        ("settings", pa.string()),  # JSON of every run option
        ("space", pa.string()),  # JSON of the initial space
        ("caviar_version", pa.string()),
        ("created", TIMESTAMP),
        # The objective that ranks trials and its mode, as the master found them before any trial: what a score
        # stands for while no trial has stored the dataset row yet. null: a sweep from before.
        ("objective", pa.string()),
        ("mode", pa.string()),
        # The training inputs' column names when load_data gave a DataFrame (load_ensemble matches by them); else null.
        ("feature_names", pa.list_(pa.string())),
    ]
)

_TRIAL_FIELDS = [
    ("trial_id", pa.int32()),
    ("stage", pa.int16()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("seed", pa.int64()),
    ("attempt", pa.int16()),
    ("epochs_run", pa.int32()),
    ("max_epochs", pa.int32()),
    ("best_score", pa.float64()),
    ("best_epoch", pa.int32()),
    ("best_val_loss", pa.float64()),
    ("best_val_accuracy", pa.float64()),
    ("train_seconds", pa.float64()),
    ("started", TIMESTAMP),
    ("finished", TIMESTAMP),
    ("node", pa.string()),
    ("error", pa.string()),
]


def arrow_type_of(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def config_type(space_values: Mapping[str, Sequence[Any]]) -> pa.StructType:
    """The typed ``config`` struct: one field per hyperparameter, typed from its possible values."""
    fields = []
    for name, values in space_values.items():
        types = {arrow_type_of(v) for v in values if v is not None} or {pa.string()}
        if types <= {pa.int64(), pa.float64()} and len(types) > 1:
            types = {pa.float64()}
        fields.append((name, types.pop() if len(types) == 1 else pa.string()))
    return pa.struct(fields)


def typed_config(config: Mapping[str, Any], options: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """A config read back from the trials table, each choice value as the option it equals (``options``: each
    choice's options). :func:`config_type` stores a choice of ints and floats (``[0.5, 1, 2]``) in one float column,
    where the option ``1`` reads back as ``1.0``: build_model is handed the option it was handed in the sweep."""
    out = dict(config)
    for name, listed in options.items():
        value = out.get(name)
        if isinstance(value, float):
            out[name] = next((o for o in listed if o == value and not isinstance(o, bool)), value)
    return out


def stored_choice_options(space_json: str | None) -> dict[str, list[Any]]:
    """Each choice's options in a sweep row's stored space (JSON, as ``SearchSpace.to_dict`` writes it)."""
    space = json.loads(space_json) if space_json else {}
    return {name: list(spec["options"]) for name, spec in space.items()
            if isinstance(spec, dict) and spec.get("dist") == "choice" and isinstance(spec.get("options"), list)}


def trials_schema(config: pa.StructType) -> pa.Schema:
    return pa.schema(_TRIAL_FIELDS[:3] + [("config", config)] + _TRIAL_FIELDS[3:])


def now_ms() -> int:
    return int(time.time() * 1000)


def _clean(value: Any) -> Any:
    """NaN stays NaN for floats; numpy scalars become Python values."""
    return value.item() if hasattr(value, "item") else value


def to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table with exactly ``schema``; missing fields are null."""
    rows = list(rows)
    columns = {f.name: [_clean(r.get(f.name)) for r in rows] for f in schema}
    return pa.table(
        {name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names}, schema=schema
    )


def json_dumps(value: Any, *, sort_keys: bool = True) -> str:
    """JSON for a string column; ``sort_keys=False`` where order is meaning.

    A space's parameter order fixes which sampled number goes to which parameter.
    """

    def default(o: Any) -> Any:
        if hasattr(o, "item"):
            return o.item()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(value, default=default, sort_keys=sort_keys, allow_nan=True)


# -- file locations --------------------------------------------------------------------


def metrics_part_path(trial_id: int, attempt: int, part: int) -> str:
    return f"metrics/trial-{trial_id:06d}.a{attempt}.p{part:04d}.parquet"


def metrics_path(trial_id: int) -> str:
    return f"metrics/trial-{trial_id:06d}.parquet"


def diagnostics_part_path(trial_id: int, attempt: int, part: int) -> str:
    return f"diagnostics/trial-{trial_id:06d}.a{attempt}.p{part:04d}.parquet"


def diagnostics_path(trial_id: int) -> str:
    return f"diagnostics/trial-{trial_id:06d}.parquet"


def checkpoint_index_path(trial_id: int) -> str:
    return f"checkpoints/trial-{trial_id:06d}.parquet"


def weights_path(trial_id: int, attempt: int, epoch: int, weights: str) -> str:
    return f"weights/trial-{trial_id:06d}/a{attempt}-e{epoch:04d}-{weights}.safetensors"


def predictions_path(trial_id: int) -> str:
    return f"predictions/trial-{trial_id:06d}.parquet"


DATASET_PATH = "dataset/dataset.parquet"
# The input (mean, std) the master computed, written before any trial: a resume's workers standardise with it (a
# randomly augmenting training split gives other statistics at every pass). Empty when inputs are not standardised.
INPUT_STATISTICS_PATH = "weights/input_statistics.safetensors"
ENSEMBLES_PATH = "ensembles/ensembles.parquet"


ENSEMBLE_WEIGHTS_DIR = "weights/ensembles"


def ensemble_weights_path(name: str) -> str:
    """Outside ``ensembles/``: every table folder holds Parquet only, so any reader takes the folder as is.
    (Sweeps written before kept soups under ``ensembles/weights/``; their rows still point there.)"""
    return f"{ENSEMBLE_WEIGHTS_DIR}/{name}.safetensors"


def soup_weights_path(sha256_hex: str) -> str:
    """Named by its content: a rebuild killed before its table was written leaves the old row's file as it was."""
    return ensemble_weights_path(f"soup-{sha256_hex[:16]}")


LEGACY_ENSEMBLE_WEIGHTS_DIR = "ensembles/weights"


TRIALS_PATH = "trials/trials.parquet"
SWEEP_PATH = "sweep/sweep.parquet"


# One numbering: the tables, the CLI, the live view and the report all call the first stage "stage 1".
# The controller counts stages from 0 internally; rows convert here, where they are written and read.
FIRST_STAGE = 1


def stage_number(index: int) -> int:
    """The ``stage`` value the tables hold for the controller's stage ``index``."""
    return index + FIRST_STAGE


def stage_index(number: int) -> int:
    """The controller's stage index for a table's ``stage`` value."""
    return number - FIRST_STAGE


def stage_path(number: int) -> str:
    """The stage's file, by its number as the tables show it (``stages/stage-001.parquet`` is stage 1)."""
    return f"stages/stage-{number:03d}.parquet"


def events_part_path(first_seq: int) -> str:
    return f"events/part-{first_seq:09d}.parquet"


# -- reading tables --------------------------------------------------------------------


READ_DIR_ROUNDS = 100  # listings one folder read takes at most while other processes fold and delete its files


def read_dir(storage: Storage, rel_dir: str, schema: pa.Schema | None = None) -> pa.Table | None:
    """Every Parquet file under ``rel_dir`` as one table; ``None`` when there are none.

    One dataset scan over the listed files (hidden temp files are never listed) reads them in
    parallel and in name order. With ``schema``, files lacking a column read it as nulls;
    without, the files' schemas are unified. A file that cannot be read is named.

    A trial's end folds its parts into one file (written first), then deletes them, so a part listed a moment
    ago may be gone when read. The folder is then read file by file and listed again until a listing shows
    nothing the read missed: files gone since are dropped (their rows are in the folded file), new or rewritten
    ones read. Only what changed is read again, so this settles while many trials end every second, where a
    whole new scan (over thousands of files) met the next trial's fold each time.
    """
    import pyarrow.dataset as pads  # half a second to import: only readers pay it

    verified = pads.ParquetFileFormat(  # a flipped bit in a page fails the read, as in Storage.read_table
        default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True)
    )

    def scan(files: list[str]) -> pa.Table:
        factory = pads.FileSystemDatasetFactory(
            storage.fs, [storage.path(f) for f in files], verified, pads.FileSystemFactoryOptions()
        )
        return factory.finish(schema or factory.inspect()).to_table()

    listed = storage.list_versions(rel_dir)
    if not listed:
        return None if schema is None else schema.empty_table()
    try:
        return scan(list(listed))
    except Exception:  # damaged bytes fail in many ways (ArrowInvalid, OSError, UnicodeDecodeError...), as does a
        pass  # file deleted since the listing: read file by file below, where each failure is told apart
    held: dict[str, tuple[Any, pa.Table]] = {}  # file -> (its version when read, its rows)
    for _ in range(READ_DIR_ROUNDS):
        held = {f: read for f, read in held.items() if listed.get(f) == read[0]}  # gone or rewritten: dropped
        unread = [f for f in listed if f not in held]
        if not unread:
            tables = [held[f][1] for f in listed]
            return pa.concat_tables(tables, promote_options="default") if tables else (
                None if schema is None else schema.empty_table())
        for f in unread:
            try:
                held[f] = (listed[f], scan([f]))
            except Exception:
                if storage.exists(f):  # there, yet unreadable: named the way a single read names it
                    held[f] = (listed[f], storage.read_table(f))
        listed = storage.list_versions(rel_dir)
    raise StorageError(f"{storage.path(rel_dir)}: its files changed between each of {READ_DIR_ROUNDS} listings; "
                       "read it again")


def effective_metrics(table: pa.Table) -> pa.Table:
    """One row per (trial, epoch): the highest attempt's row, deduplicating parts and compactions."""
    if table.num_rows == 0:
        return table
    import numpy as np

    trial, epoch = table["trial_id"].to_numpy(), table["epoch"].to_numpy()
    if bool(np.all((trial[1:] > trial[:-1]) | ((trial[1:] == trial[:-1]) & (epoch[1:] > epoch[:-1])))):
        return table  # already one row per (trial, epoch) in order: the usual case, one file per ended trial
    order = pc.sort_indices(table, [("trial_id", "ascending"), ("epoch", "ascending"), ("attempt", "descending")])
    table = table.take(order)
    trial, epoch = table["trial_id"].to_numpy(), table["epoch"].to_numpy()
    keep = np.ones(len(trial), dtype=bool)
    keep[1:] = (trial[1:] != trial[:-1]) | (epoch[1:] != epoch[:-1])
    return table.filter(pa.array(keep))


def read_events(storage: Storage) -> pa.Table:
    """The events log in order, each event once (a compaction cut short leaves its parts beside the compacted file)."""
    table = read_dir(storage, "events", EVENTS).sort_by("seq")
    if table.num_rows == 0:
        return table
    import numpy as np

    seqs = table["seq"].to_numpy()
    keep = np.concatenate([[True], seqs[1:] != seqs[:-1]])
    return table.filter(pa.array(keep))


def read_dataset_row(storage: Storage) -> dict[str, Any]:
    """``dataset/dataset.parquet``'s one row, columns a sweep from before them lacks left out; empty when no trial
    wrote it (none finished, a custom kind, or no predictions stored)."""
    if not storage.exists(DATASET_PATH):
        return {}
    rows = storage.read_table(DATASET_PATH).to_pylist()
    return rows[0] if rows else {}
