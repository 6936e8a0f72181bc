"""The sweeps of a storage folder: find one by name (``--storage``), list them all (``caviar ls``).

Everything is read from each sweep's own tables; nothing is cached between calls.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from orchestrator.errors import StorageError
from orchestrator.store import schema
from orchestrator.store.lease import LEASE_PATH, holder_alive, read_lease
from orchestrator.store.storage import Storage, check_name, redact_uri, split_query, with_retries


def resolve_sweep(sweep: str, storage: str | None = None, default_storage: str | None = None) -> str:
    """``sweep`` itself when it is a sweep folder; else ``storage/sweep`` when that is one.

    ``caviar status NAME --storage runs`` and ``caviar status runs/NAME`` name the same sweep.
    A name that matches neither is left as given, so the caller's error names what the user typed; unless
    ``storage`` holds no such sweep while ``sweep`` is no folder at all: then the error names the storage, where the
    user meant it to be (a relative ``--storage`` from another working directory is another folder).
    Without ``storage``, a plain name that is no sweep here is looked for in ``default_storage`` (where
    ``caviar run`` writes without ``--storage``): ``caviar run task.py --name x``, then ``caviar status x``.
    """
    if storage is None and default_storage is not None and _is_a_name(sweep) and not _holds_a_sweep(
            Storage.from_uri(sweep)):
        candidate = Storage.from_uri(default_storage).child(sweep)
        return candidate.uri if _holds_a_sweep(candidate) else sweep
    if storage is None or "://" in sweep or sweep.startswith("/"):
        return sweep
    root = Storage.from_uri(storage)
    candidate = root.child(sweep)
    if candidate.exists(schema.SWEEP_PATH) or candidate.exists(LEASE_PATH):  # a lease alone: a run not yet written
        return candidate.uri
    if not Storage.from_uri(sweep).exists(""):
        raise no_such_sweep(root, storage, sweep)
    return sweep


def _is_a_name(sweep: str) -> bool:
    try:
        check_name("sweep name", sweep)
    except StorageError:
        return False
    return True


def _holds_a_sweep(storage: Storage) -> bool:
    return storage.exists(schema.SWEEP_PATH) or storage.exists(LEASE_PATH)  # a lease alone: a run not yet written


def no_such_sweep(root: Storage, storage: str, name: str) -> StorageError:
    """No sweep ``name`` in the storage folder: what that folder is, here, and what it holds."""
    shown = redact_uri(storage)
    where = f" ({root.root})" if root.root != storage.rstrip("/") and "://" not in storage else ""
    if not root.exists(""):
        return StorageError(f"no sweep {name!r} in storage {shown!r}{where}: no such folder")
    names = sweep_names(root)
    held = (f"it holds {', '.join(names[:5])}{f' and {len(names) - 5} more' if len(names) > 5 else ''}" if names
            else "it holds no sweeps")
    return StorageError(f"no sweep {name!r} in storage {shown!r}{where}: {held} (caviar ls {shlex.quote(shown)})")


def sweep_names(root: Storage) -> list[str]:
    """Sub-folders of ``root`` that hold a sweep row, or only the lease of a run that has not written one, sorted."""
    selector = pafs.FileSelector(root.root, recursive=False, allow_not_found=True)
    infos = with_retries(lambda: root.fs.get_file_info(selector), what=f"listing {root.root}")
    names = [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]
    return sorted(n for n in names if not n.startswith((".", "_"))
                  and (root.child(n).exists(schema.SWEEP_PATH) or root.child(n).exists(LEASE_PATH)))


def before_first_write(sweep: Storage) -> tuple[str, bool]:
    """(state, whether its run still goes on) of a sweep folder holding a lease but no sweep row: its run has claimed
    the name and is still starting (loading data, starting workers), or was killed or failed before it wrote
    anything."""
    lease = read_lease(sweep)
    assert lease is not None
    if holder_alive(lease):
        return f"starting (process {lease.pid} on {lease.host})", True
    return "stopped before its first write", False


def rerun_command(shown: str) -> str:
    """``caviar run TASK --storage PARENT --name NAME --overwrite``: the sweep at ``shown`` started over."""
    base, sep, query = split_query(redact_uri(shown))
    parent, name = posixpath.split(base.rstrip("/"))
    return (f"caviar run TASK --storage {shlex.quote((parent or '.') + sep + query)} --name {shlex.quote(name)} "
            "--overwrite")


def not_a_sweep(storage: Storage, shown: str) -> StorageError:
    """The error for a folder with no sweep row; a storage folder of sweeps is named as one, with its sweeps."""
    shown = redact_uri(shown)
    if not storage.exists(schema.SWEEP_PATH) and storage.exists(LEASE_PATH):  # claimed by a run, nothing written yet
        state, starting = before_first_write(storage)
        if starting:
            return StorageError(f"sweep {shown!r} has no tables yet: {state}; ask again once it has written its "
                                "first trials")
        return StorageError(f"sweep {shown!r} has no tables: its run {state} (killed, or failed while starting), so "
                            f"it holds nothing to resume; start it again with {rerun_command(shown)}")
    message = f"{shown!r} is not a caviar sweep directory (no {schema.SWEEP_PATH})"
    try:
        names = sweep_names(storage)
    except StorageError:
        names = []
    if names:
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        message += (f"; it is a storage folder of {len(names)} sweep{'s' if len(names) > 1 else ''} ({listed}): "
                    f"name one as {shown.rstrip('/')}/NAME, or list them with caviar ls {shown}")
    return StorageError(message)


def sweep_state(trials: list[dict[str, Any]], planned: int, kinds: set[str], has_ensembles: bool) -> str:
    """finished, aborted or unfinished (running now, or a master that died: `caviar resume`)."""
    if "sweep_aborted" in kinds:
        return "aborted"
    done = sum(t["status"] in ("completed", "pruned", "failed") for t in trials)
    if done < len(trials):  # a trial still to train: ensembles built since (caviar ensemble) do not end the sweep
        return "unfinished"
    if has_ensembles or (planned and done >= planned):
        return "finished"
    return "unfinished"


def describe_sweep(sweep: Storage) -> dict[str, Any]:
    """One ``caviar ls`` row: name, task, started, state, trials, best score, chosen ensemble.

    The name is the sweep's folder, what ``--storage`` finds it by: a copied or renamed sweep keeps the name it was
    run under in its sweep row, and two rows of one name would name neither copy.
    """
    row = sweep.read_table(schema.SWEEP_PATH).to_pylist()[0]
    trials = sweep.read_table(schema.TRIALS_PATH).to_pylist() if sweep.exists(schema.TRIALS_PATH) else []
    stages = schema.read_dir(sweep, "stages", schema.STAGES)
    planned = sum(stages["trials"].to_pylist()) if stages is not None else 0
    events = schema.read_dir(sweep, "events", schema.EVENTS)
    kinds = set(events["kind"].to_pylist()) if events is not None else set()
    chosen = None
    has_ensembles = sweep.exists(schema.ENSEMBLES_PATH)
    if has_ensembles:
        ensembles = sweep.read_table(schema.ENSEMBLES_PATH).to_pylist()
        chosen = next((e for e in ensembles if e["chosen"]), None)
    scores = [t["best_score"] for t in trials if t.get("best_score") is not None]
    state = sweep_state(trials, planned, kinds, has_ensembles)
    return {
        "name": posixpath.basename(sweep.root),
        "task": row["task"],
        "started": row["created"],
        "state": state if state != "finished" or not lease_unreleased(sweep) else "unfinished",
        "trials": len(trials),
        "best_score": max(scores) if scores else None,
        "objective": sweep_objective(sweep, row),
        "ensemble": chosen["name"] if chosen else None,
        "ensemble_test_accuracy": chosen["test_accuracy"] if chosen else None,
        "ensemble_test_mse": chosen.get("test_mse") if chosen else None,  # regression: in the targets' units
        "ensemble_test_objective": chosen_objective(chosen),
    }


def lease_unreleased(sweep: Storage) -> bool:
    """A lease not released: its master still runs, or died before the sweep's end (a master killed after its last
    trials were written but before the next stage's row, or while it built the ensembles, left every trial it
    wrote ended). A sweep's end releases it; a sweep from before leases, or a damaged one, is judged by its rows."""
    try:
        record = read_lease(sweep)
    except StorageError:
        return False
    return record is not None and not record.released


def chosen_objective(chosen: dict[str, Any] | None) -> tuple[str, float] | None:
    """(``test_<metric>``, value) of an ensemble chosen by a metric of the task's own (a ROC AUC), the number its
    sweep is about; None when caviar's own log loss, accuracy or MSE chose it."""
    if not chosen or not chosen.get("detail"):
        return None
    detail = json.loads(chosen["detail"]) if isinstance(chosen["detail"], str) else chosen["detail"]
    by, value = detail.get("chosen_by"), detail.get("test_objective")
    if not by or value is None or by in ("val_log_loss", "val_accuracy", "val_mse"):
        return None
    return "test_" + by.removeprefix("val_"), float(value)


def sweep_objective(sweep: Storage, row: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """(objective, mode) of a sweep: as its workers stored them in the dataset row, else as the master recorded them
    in the sweep row before any trial (a running sweep none of whose trials wrote yet: its scores are the objective,
    negated when minimised, would read as a negative calibration error). ``row``: the sweep row, read."""
    found = describe_objective(schema.read_dataset_row(sweep))
    if found is None and (row is not None or sweep.exists(schema.SWEEP_PATH)):
        row = row if row is not None else sweep.read_table(schema.SWEEP_PATH).to_pylist()[0]
        found = describe_objective(row)
    return found


def describe_objective(dataset: dict[str, Any]) -> tuple[str, str] | None:
    """(objective, mode) from the dataset table's row; None when it holds neither (a custom kind, an old sweep)."""
    objective, mode = dataset.get("objective"), dataset.get("mode")
    return (objective, mode) if objective and mode in ("min", "max") else None


def listed_sweep(sweep: Storage) -> dict[str, Any]:
    """:func:`describe_sweep` with an unfinished state told apart as ``caviar ls`` shows it: running or stopped."""
    row = describe_sweep(sweep)
    if row["state"] == "unfinished":  # running now, or a master that died: the lease tells which
        row["state"] = unfinished_state(sweep)
    return row


def unfinished_state(sweep: Storage) -> str:
    """An unfinished sweep's state in ``caviar ls``: running (its master's process) or stopped (resume it)."""
    try:
        lease = read_lease(sweep)
    except StorageError:  # a damaged lease: caviar status says what to do
        return "unfinished"
    if lease is not None and holder_alive(lease):
        return f"running (process {lease.pid} on {lease.host})"
    return "stopped (caviar resume continues it)"


def list_sweeps(storage: str) -> list[dict[str, Any]]:
    """Every sweep under ``storage`` (a path or URI), oldest first; an unreadable one says why."""
    root = Storage.from_uri(storage)
    if not root.exists(""):
        raise StorageError(f"storage {redact_uri(storage)!r}: no such folder")
    rows = []
    for name in sweep_names(root):
        empty = {"name": name, "task": None, "started": None, "trials": 0, "best_score": None, "ensemble": None,
                 "ensemble_test_accuracy": None, "ensemble_test_mse": None, "ensemble_test_objective": None}
        sweep = root.child(name)
        try:
            if sweep.exists(schema.SWEEP_PATH):
                rows.append(listed_sweep(sweep))
            else:  # a run's lease, no sweep row yet: listed, as `caviar run` of the name says it exists
                lease = read_lease(sweep)
                started = datetime.fromtimestamp(lease.started / 1000, UTC) if lease else None
                rows.append({**empty, "started": started, "state": before_first_write(sweep)[0]})
        except StorageError as exc:
            rows.append({**empty, "state": f"unreadable: {exc}"})
    return sorted(rows, key=lambda r: (r["started"] is None, str(r["started"]), r["name"]))
