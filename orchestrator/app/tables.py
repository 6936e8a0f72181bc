"""A sweep read back from its Parquet tables: no Ray, no torch."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from orchestrator.errors import ConfigError, StorageError
from orchestrator.store import schema
from orchestrator.store.storage import Storage, redact_uri
from orchestrator.store.sweeps import not_a_sweep

TABLE_NAMES = ("sweep", "trials", "metrics", "checkpoints", "events", "stages", "ensembles")


@dataclass
class SweepTables:
    """A finished (or running) sweep's tables, as pyarrow Tables."""

    path: str
    sweep: pa.Table
    trials: pa.Table
    metrics: pa.Table  # effective rows: one per (trial, epoch), latest attempt
    checkpoints: pa.Table
    events: pa.Table
    stages: pa.Table
    # one row per ensemble built (members, val and test scores, chosen); no rows until the sweep's end builds them
    ensembles: pa.Table = field(default_factory=schema.ENSEMBLES.empty_table)

    def to_pandas(self, table: str) -> Any:
        """``table`` ("trials", "metrics", ...) as a pandas DataFrame (pandas is a dependency of caviar)."""
        if table not in TABLE_NAMES:
            raise ConfigError(f"table {table!r}: unknown (one of {', '.join(TABLE_NAMES)})")
        try:
            import pandas  # noqa: F401
        except ImportError:  # an install that left it out: say so in one line, with the way round it
            raise ConfigError(f"to_pandas({table!r}) needs pandas: pip install pandas "
                              f"(or use the pyarrow table: tables.{table})") from None
        return getattr(self, table).to_pandas()

    def top(self, k: int = 10) -> pa.Table:
        """The ``k`` best trials by the sweep's own rule (:func:`top_trials`), best first."""
        return top_trials(self.trials, k)


def top_trials(trials: pa.Table, k: int = 10) -> pa.Table:
    """The ``k`` best rows of a trials table by the sweep's own rule (``controller.best_trial_rank``), best first: of
    the stages where a trial completed, the trials trained longest, then the best score, then the later stage; ties
    keep trial order. A sweep stopped early in a stage holds only its pruned or unfinished trials there, after an
    epoch or two: their scores are no match for the stage before, so that stage goes after it."""
    from orchestrator.decide.controller import best_trial_rank, completed_stages

    if isinstance(k, bool) or not isinstance(k, int) or k < 0:  # top(-1) was every trial but the worst
        raise ConfigError(f"top: k is how many trials, an integer >= 0, got {k!r}")
    finished = trials.filter(pa.compute.is_valid(trials["best_score"]))
    rows = finished.select([c for c in ("stage", "status", "max_epochs", "best_score")
                            if c in finished.column_names]).to_pylist()
    ended = completed_stages((t["stage"], t["status"]) for t in rows)
    order = sorted(range(len(rows)), reverse=True, key=lambda i: best_trial_rank(
        rows[i].get("max_epochs") or 0, _sortable(rows[i]["best_score"]), rows[i]["stage"],
        rows[i]["stage"] in ended) + (-i,))
    return finished.take(pa.array(order[:k], pa.int64()))


def _sortable(score: float) -> float:
    """NaN (a diverged trial's score) ranks below every number."""
    return -math.inf if math.isnan(score) else score


def open_sweep(path: str | os.PathLike[str]) -> Storage:
    storage = Storage.from_uri(path)
    if not storage.exists(schema.SWEEP_PATH):
        raise not_a_sweep(storage, path)
    return storage


def load(path: str | os.PathLike[str]) -> SweepTables:
    """Read a sweep directory (local, a ``pathlib.Path``, or a URI) back; no Ray, no torch."""
    path = os.fspath(path)
    storage = open_sweep(path)
    metrics = schema.read_dir(storage, "metrics", schema.METRICS)
    assert metrics is not None
    trials = read_trials(storage, path)
    return SweepTables(
        path=path,
        sweep=storage.read_table(schema.SWEEP_PATH),
        trials=trials,
        metrics=schema.effective_metrics(metrics),
        checkpoints=schema.read_dir(storage, "checkpoints", schema.CHECKPOINTS),
        events=schema.read_events(storage),  # each event once, even after a compaction cut short
        stages=schema.read_dir(storage, "stages", schema.STAGES),
        ensembles=(storage.read_table(schema.ENSEMBLES_PATH) if storage.exists(schema.ENSEMBLES_PATH)
                   else schema.ENSEMBLES.empty_table()),
    )


def read_trials(storage: Storage, path: str) -> pa.Table:
    """The sweep's trials table; one line naming it, never an empty table to trip over, when it is not there yet."""
    if not storage.exists(schema.TRIALS_PATH):
        raise StorageError(no_trials_yet(storage, path))
    return storage.read_table(schema.TRIALS_PATH)


def no_trials_yet(storage: Storage, path: str) -> str:
    """Why a sweep has a sweep row but no trials table, and what to do: wait for its master, or resume it."""
    from orchestrator.store.lease import holder_alive, read_lease

    lease = read_lease(storage)
    if lease is not None and holder_alive(lease):
        return (f"sweep {redact_uri(path)!r} has no trials yet: its master (process {lease.pid} on {lease.host}) is "
                "still starting; ask again once its first trials are written")
    if storage.list_files("stages"):  # every flush writes the trials table before stage rows: this one was lost
        return (f"{storage.path(schema.TRIALS_PATH)}: no such file (the sweep's trials table is missing, or it "
                "was deleted)")
    return (f"sweep {redact_uri(path)!r} stopped before it wrote its first trials (its master was killed or died "
            f"during its first write): continue it with {resume_command(storage, path)}")


def resume_command(storage: Storage, path: str) -> str:
    """``caviar resume PATH --task REF`` with the task as the sweep recorded it, and the other way: its stored copy."""
    from orchestrator.spec.task_source import read_manifest

    try:
        manifest = read_manifest(storage)
    except StorageError:
        manifest = None
    import shlex

    command = f"caviar resume {shlex.quote(redact_uri(path))}"  # a shell would cut an s3://...?a=b&c=d at the '&'
    if manifest is None or not manifest.ref:
        return f"{command} --trust-task-code"
    if manifest.kind == "module":
        return f"{command} --task {shlex.quote(manifest.ref)}"
    return (f"{command} --task {shlex.quote(manifest.ref)} (the task file it ran, from that file's folder; or "
            "--trust-task-code to run the copy stored with the sweep)")
