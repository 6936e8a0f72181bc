"""What one trial writes: buffered metric rows, kept checkpoints, and its resume state.

Writes are batched: metric rows and checkpoints reach storage every ``checkpoint_seconds``
and when the trial ends, never once per epoch (small files are the enemy of object
stores). The best weights are held in memory until then. Order on every persist: metric
rows first, then weight files, then the index, then deletions, so the index never points
at a missing file and a resume never starts past its recorded rows.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch

from orchestrator.errors import StorageError
from orchestrator.store import schema
from orchestrator.store.storage import Storage, sha256
from worker.data.kinds import score_of
from worker.train.diagnostics import compact_diagnostics
from worker.train.predictions import CheckpointResults, check_dtype, write_predictions
from worker.train.trainer import TrialRun

RESUME_FILE = "resume.pt"
_WEIGHTS_FILE = re.compile(r"a(\d+)-e\d+-(?:raw|ema)\.safetensors")  # schema.weights_path's file name


@dataclass
class Kept:
    epoch: int
    score: float  # the raw weights' (the epoch's) score: what keeps an epoch among the best
    val_loss: float
    val_accuracy: float
    states: dict[str, dict[str, torch.Tensor]]  # "raw"/"ema" -> state dict
    kept_as: set[str] = field(default_factory=set)
    ema_val_loss: float | None = None  # the EMA weights' own numbers, for their index row
    ema_val_accuracy: float | None = None


def resume_path(trial_id: int) -> str:
    return f"weights/trial-{trial_id:06d}/{RESUME_FILE}"


def load_safetensors(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; anything else (even with a matching index hash) is refused naming the file."""
    try:
        return safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError, ValueError...: the bytes are not a safetensors file
        raise StorageError(f"{where}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def load_resume_state(storage: Storage, trial_id: int) -> dict[str, Any] | None:
    """The last persisted training state, loaded without running code (``weights_only``)."""
    rel = resume_path(trial_id)
    if not storage.exists(rel):
        return None
    try:
        return torch.load(io.BytesIO(storage.read_bytes(rel)), weights_only=True, map_location="cpu")
    except StorageError:
        raise
    except Exception as exc:  # a pickle weights_only refuses, or damaged bytes: name the file, never run it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"{storage.path(rel)}: not a resume state caviar can load safely ({reason})") from None


class TrialRecorder:
    def __init__(
        self,
        storage: Storage,
        trial_id: int,
        attempt: int,
        *,
        keep_best: int = 1,
        keep_last: bool = True,
        checkpoint_seconds: float = 30.0,
        prediction_dtype: str = "float16",
    ):
        self.storage, self.trial_id, self.attempt = storage, trial_id, attempt
        self.prediction_dtype = check_dtype(prediction_dtype)  # probabilities stored for ensembles
        self.keep_best, self.keep_last, self.checkpoint_seconds = keep_best, keep_last, checkpoint_seconds
        self.pending_rows: list[dict[str, Any]] = []
        self.rows_by_epoch: dict[int, dict[str, Any]] = {}
        # The train losses and scores of the epochs earlier attempts trained (a resume state's): the divergence and
        # early-stopping rules judge the trial's whole curve, as the master's pruner does, not this attempt's alone.
        self.earlier: dict[str, list[float]] = {"train_loss": [], "score": []}
        self.best: list[Kept] = []
        self.written: dict[tuple[int, str], dict[str, Any]] = {}  # (epoch, weights) -> index row
        self.retrained: list[str] = []  # weight files of epochs this attempt trains again (adopt)
        self.parts = 0
        self.pending_diagnostics: list[dict[str, Any]] = []  # per-layer rows, written alongside the metrics
        self.diagnostic_parts = 0
        self.last_persist = time.monotonic()

    def curve(self, column: str) -> list[float]:
        """``train_loss`` or ``score`` of every epoch the trial has trained, earlier attempts' first."""
        return self.earlier[column] + [row[column] for row in self.rows_by_epoch.values()]

    def take_curve(self, state: Mapping[str, Any]) -> None:
        """The curve a resume state carries (none in a state written before it did: then this attempt's only)."""
        for column in self.earlier:
            self.earlier[column] = [float(v) for v in state.get(f"curve_{column}", [])]

    def adopt(self, resume_epoch: int) -> None:
        """A resumed attempt takes over the checkpoints its trial already kept, so none is lost from the index.

        Best checkpoints up to the resume epoch stay kept (their weights read back, checksum checked);
        the rest (a lost attempt's "last", epochs it will re-run) are superseded, deleted at the next persist.
        An epoch past the resume epoch (the index was written, the kill came before the resume state) is trained
        again by this attempt: its stored files are never reused for the new weights, whose scores they are not.
        """
        rel = schema.checkpoint_index_path(self.trial_id)
        stored = self.storage.read_table(rel).to_pylist() if self.storage.exists(rel) else []
        self._remove_unindexed_weights({row["path"] for row in stored})
        by_epoch: dict[int, list[dict[str, Any]]] = {}
        for row in stored:
            if row["epoch"] > resume_epoch:
                self.retrained.append(row["path"])  # deleted once the next index no longer names it
                continue
            key = (row["epoch"], row["weights"])
            data = self.storage.read_bytes(row["path"]) if self.storage.exists(row["path"]) else None
            if data is None or sha256(data) != row["sha256"]:
                continue  # missing or damaged: never adopted, so never deleted either
            self.written[key] = {k: v for k, v in row.items() if k != "kept_as"}
            if "best" in row["kept_as"].split(","):
                state = load_safetensors(data, self.storage.path(row["path"]))
                by_epoch.setdefault(row["epoch"], []).append({**row, "state": state})
        for epoch, rows in by_epoch.items():
            raw = next((r for r in rows if r["weights"] == "raw"), None)
            if raw is None:  # the epoch's score is the raw weights'; without them it cannot rank among the best
                continue
            ema = next((r for r in rows if r["weights"] == "ema"), {})
            states = {r["weights"]: r["state"] for r in rows}
            self.best.append(Kept(epoch, raw["score"], raw["val_loss"], raw["val_accuracy"], states,
                                  ema_val_loss=ema.get("val_loss"), ema_val_accuracy=ema.get("val_accuracy")))
        self.best.sort(key=lambda k: (-k.score, k.epoch))
        del self.best[self.keep_best :]

    def _remove_unindexed_weights(self, named: set[str]) -> None:
        """Earlier attempts' weight files the stored index does not name: written by an end (or a persist) cut
        short before its index, nothing can reach them, and a retrained trial would leave them on disk for ever.
        Only files of the ``a<attempt>-e<epoch>-<kind>.safetensors`` form of an earlier attempt go; the resume state
        and anything else in the folder stay."""
        folder = f"weights/trial-{self.trial_id:06d}"
        for path in self.storage.list_files(folder, suffix=".safetensors"):
            written = _WEIGHTS_FILE.fullmatch(path[len(folder) + 1:])
            if written and int(written[1]) < self.attempt and path not in named:
                self.storage.delete(path)

    def record(self, run: TrialRun, row: dict[str, Any]) -> None:
        row = {**row, "time": schema.now_ms()}
        self.pending_rows.append(row)
        if run.diagnostics is not None:
            self.pending_diagnostics += [{**d, "time": row["time"]} for d in run.diagnostics.take()]
        self.rows_by_epoch[row["epoch"]] = row
        score = row["score"]
        if score == score and (len(self.best) < self.keep_best or score > self.best[-1].score):  # NaN never kept
            self.best.append(self._snapshot(run, row))
            self.best.sort(key=lambda k: (-k.score, k.epoch))
            del self.best[self.keep_best :]
        if time.monotonic() - self.last_persist >= self.checkpoint_seconds:
            self.persist(run)

    def _snapshot(self, run: TrialRun, row: dict[str, Any]) -> Kept:
        states = {"raw": run.weights_state("raw")}
        if run.ema is not None:
            states["ema"] = run.weights_state("ema")
        return Kept(row["epoch"], row["score"], row["val_loss"], row["val_accuracy"], states,
                    ema_val_loss=row.get("ema_val_loss"), ema_val_accuracy=row.get("ema_val_accuracy"))

    def persist(self, run: TrialRun) -> None:
        """Mid-trial: flush rows and checkpoints, the index naming them, and the resume state."""
        index, superseded = self._write_checkpoints(run, final=False)
        self._write_index(index)
        self._retire(run, superseded, final=False)

    def _write_checkpoints(self, run: TrialRun, *, final: bool) -> tuple[list[dict[str, Any]], list[str]]:
        """Metric rows, then the weight files the index will name: (index rows, paths no longer kept).

        Nothing is deleted here: until the new index is written, the one on storage names the old files.
        """
        self.flush_rows()
        self.flush_diagnostics(final=final)
        wanted: dict[tuple[int, str], tuple[Kept | None, set[str]]] = {}
        for kept in self.best:
            for kind in kept.states:
                wanted[(kept.epoch, kind)] = (kept, {"best"})
        last_row = self.rows_by_epoch.get(run.epoch) if self.keep_last else None
        if last_row is not None:
            kinds = ["raw"] + (["ema"] if run.ema is not None else [])
            fresh = [k for k in kinds if (run.epoch, k) not in wanted and (run.epoch, k) not in self.written]
            last = self._snapshot(run, last_row) if fresh else None
            for kind in kinds:
                kept, tags = wanted.get((run.epoch, kind), (last, set()))
                wanted[(run.epoch, kind)] = (kept, tags | {"last"})
        index = []
        for (epoch, kind), (kept, tags) in sorted(wanted.items()):
            row = self.written.get((epoch, kind))
            if row is None:
                assert kept is not None
                row = self._write_weights(kept, kind)
            row = {**row, "kept_as": ",".join(sorted(tags))}
            self.written[(epoch, kind)] = row
            index.append(row)
        superseded = [self.written.pop(key)["path"] for key in [k for k in self.written if k not in wanted]]
        superseded += self.retrained
        self.retrained = []
        return index, superseded

    def _write_index(self, index: list[dict[str, Any]]) -> None:
        rel = schema.checkpoint_index_path(self.trial_id)
        self.storage.write_table(rel, schema.to_table(index, schema.CHECKPOINTS))

    def _retire(self, run: TrialRun, superseded: list[str], *, final: bool) -> None:
        """After the index: delete what it no longer names, and write (or, at the end, drop) the resume state."""
        for path in superseded:
            self.storage.delete(path)
        if final:
            self.storage.delete(resume_path(self.trial_id))
        else:
            buf = io.BytesIO()
            curve = {f"curve_{column}": self.curve(column) for column in self.earlier}
            torch.save({**run.resume_state(), "attempt": self.attempt, **curve}, buf)
            self.storage.write_bytes(resume_path(self.trial_id), buf.getvalue())
        self.last_persist = time.monotonic()

    def flush_diagnostics(self, *, final: bool) -> None:
        """Diagnostic rows as a part; at the end, folded into one file per trial (straight there if no part)."""
        if final and self.diagnostic_parts == 0 and self.attempt == 0:
            if self.pending_diagnostics:
                rel = schema.diagnostics_path(self.trial_id)
                self.storage.write_table(rel, schema.to_table(self.pending_diagnostics, schema.DIAGNOSTICS))
            self.pending_diagnostics = []
            return
        if self.pending_diagnostics:
            rel = schema.diagnostics_part_path(self.trial_id, self.attempt, self.diagnostic_parts)
            self.storage.write_table(rel, schema.to_table(self.pending_diagnostics, schema.DIAGNOSTICS))
            self.diagnostic_parts += 1
            self.pending_diagnostics = []
        if final:
            compact_diagnostics(self.storage, self.trial_id)

    def _write_weights(self, kept: Kept, kind: str) -> dict[str, Any]:
        data = safetensors.torch.save(
            kept.states[kind], metadata={"trial_id": str(self.trial_id), "epoch": str(kept.epoch)}
        )
        rel = schema.weights_path(self.trial_id, self.attempt, kept.epoch, kind)
        self.storage.write_bytes(rel, data)
        ema = kind == "ema"  # its own numbers; its score is known once the trial's end scores it (write_predictions)
        return {
            "trial_id": self.trial_id,
            "attempt": self.attempt,
            "epoch": kept.epoch,
            "weights": kind,
            "path": rel,
            "score": None if ema else kept.score,
            "val_loss": kept.ema_val_loss if ema else kept.val_loss,
            "val_accuracy": kept.ema_val_accuracy if ema else kept.val_accuracy,
            "bytes": len(data),
            "sha256": sha256(data),
            "time": schema.now_ms(),
        }

    def flush_rows(self) -> None:
        if not self.pending_rows:
            return
        rel = schema.metrics_part_path(self.trial_id, self.attempt, self.parts)
        self.storage.write_table(rel, schema.to_table(self.pending_rows, schema.METRICS))
        self.parts += 1
        self.pending_rows = []

    def finish(self, run: TrialRun) -> list[dict[str, Any]]:
        """Final persist, compact this trial's metric parts (every attempt) into one file, store predictions.

        The index is written once, with each checkpoint's val/test metrics, after the weight files and
        before anything it no longer names is deleted.
        """
        ending = self.begin_finish(run)
        results = {key: run.checkpoint_results(state, key[1], key[0]) for key, state in ending.states.items()}
        return self.end_finish(run, ending, results)

    def begin_finish(self, run: TrialRun) -> Ending:
        """The end's first half: metric rows and weight files written; the checkpoints still to run on val/test.

        Between the halves the caller runs every state in ``states`` once (``run.checkpoint_results``, or a
        fused array evaluating many members' checkpoints in one pass) and hands the results to :meth:`end_finish`.
        """
        direct = self.parts == 0 and self.attempt == 0
        if direct:  # nothing flushed yet: the rows go straight to the final file, no part to compact
            self.storage.write_table(
                schema.metrics_path(self.trial_id), schema.to_table(self.pending_rows, schema.METRICS)
            )
            self.pending_rows = []
        index, superseded = self._write_checkpoints(run, final=True)
        if not direct:
            compact_metrics(self.storage, self.trial_id)
        kept = {(k.epoch, kind): state for k in self.best for kind, state in k.states.items()}
        states = {}
        for row in index:  # what is not a kept best is the last epoch: the run's weights right now
            key = (row["epoch"], row["weights"])
            states[key] = kept[key] if key in kept else run.weights_state(row["weights"])
        return Ending(index, superseded, states)

    def end_finish(self, run: TrialRun, ending: Ending, results: Mapping[tuple[int, str], CheckpointResults]
                   ) -> list[dict[str, Any]]:
        """The end's second half: the predictions, the index with each checkpoint's metrics, then deletions."""
        index = self.write_predictions(run, ending.index, results)
        self._retire(run, ending.superseded, final=True)
        return index

    def write_predictions(self, run: TrialRun, index: list[dict[str, Any]],
                          results: Mapping[tuple[int, str], CheckpointResults]) -> list[dict[str, Any]]:
        """Every kept checkpoint's val/test metrics into the index, its outputs (for ensembles) into predictions.

        An EMA checkpoint's row takes its own val loss, accuracy and score from them: until here it had no score.
        """
        index = [{**row, "metrics": {k: v for _, values in results[(row["epoch"], row["weights"])].values()
                                     for k, v in values.items()}} for row in index]
        for row in index:
            if row["weights"] == "ema":
                val = results[(row["epoch"], "ema")]["val"][1]
                row.update(val_loss=val["val_loss"], val_accuracy=val.get("val_accuracy"),
                           score=score_of({k: v for k, v in val.items() if v is not None}, run.objective, run.mode))
        # The index with these metrics is the end's last word: written after the predictions, so a sweep killed in
        # between shows an end cut short, which a resume trains again (orchestrator.decide.restore).
        write_predictions(self.storage, run, index, results, self.prediction_dtype)
        self._write_index(index)
        return index


@dataclass
class Ending:
    """A trial between the two halves of its end (:meth:`TrialRecorder.begin_finish`)."""

    index: list[dict[str, Any]]
    superseded: list[str]
    states: dict[tuple[int, str], dict[str, torch.Tensor]]  # (epoch, "raw"/"ema") -> the state to run on val/test


def compact_metrics(storage: Storage, trial_id: int) -> None:
    """Fold ``trial-N.a*.p*.parquet`` parts (and any earlier compaction) into ``trial-N.parquet``."""
    prefix = f"metrics/trial-{trial_id:06d}."
    parts = [f for f in storage.list_files("metrics") if f.startswith(prefix)]
    target = schema.metrics_path(trial_id)
    if not parts or parts == [target]:
        return
    import pyarrow as pa

    table = pa.concat_tables(
        [storage.read_table(f) for f in ([target] if target in parts else []) + [p for p in parts if p != target]]
    )
    storage.write_table(target, table.sort_by([("attempt", "ascending"), ("epoch", "ascending")]))
    for part in parts:
        if part != target:
            storage.delete(part)
