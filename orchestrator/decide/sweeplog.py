"""The master's writes: the trials table, the events log, the stages table, the sweep row.

Trials are rewritten as one atomic file (a sweep has thousands of trials, not millions,
and one file reads fastest); events are appended as parts, throttled, folded into the first
part once ``EVENT_PARTS`` have piled up, and at the end. Everything goes through :mod:`orchestrator.store.schema`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from orchestrator.decide.controller import Controller
from orchestrator.search.space import Choice, Distribution, SearchSpace
from orchestrator.store import schema
from orchestrator.store.lease import Lease
from orchestrator.store.storage import Storage

FAULT_EXIT_CODE = 97  # the process a fault test ends after a chosen write
# Event parts written before they are folded into one: a flush every 2 s writes a part whenever a trial started or
# ended, so a day's sweep left ~40,000 files for every reader (caviar status, load, resume) and for the end's fold.
EVENT_PARTS = 64
# Decisions taken once in a sweep's life. A master killed between its events and its trials table (or a stage row)
# had logged some that its tables do not hold yet: the resume decides them again, the same way, and writes each once.
DECIDED_ONCE = frozenset({"trial_completed", "trial_pruned", "trial_failed", "stage_started", "range_narrowed",
                          "range_extended", "edge_warning", "edge_not_extended", "edge_at_hard_limit", "value_fails",
                          "reseed", "reseed_skipped"})


def _decision_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return row["kind"], row["trial_id"], row["stage"], row["reason"], row["detail"]


def possible_values(space: SearchSpace) -> dict[str, list[Any]]:
    """Values each parameter can take, for typing its ``config`` column."""
    out: dict[str, list[Any]] = {}
    for name, value in space.items():
        if isinstance(value, Choice):
            out[name] = list(value.options)
        elif isinstance(value, Distribution):
            out[name] = [value.from_unit(0.5)]
        else:
            out[name] = [value]
    return out


class SweepLog:
    def __init__(self, storage: Storage, space: SearchSpace, *, flush_seconds: float = 2.0,
                 lease: Lease | None = None):
        self.storage = storage
        self.lease = lease  # renewed as the log flushes: the sweep's writer is alive
        self.writes = 0
        fault = os.environ.get("CAVIAR_FAULT_AFTER_WRITE", "")
        self.fault_after_write = int(fault) if fault.isdigit() else 0
        self.on_fault = self._die
        self.trials_schema = schema.trials_schema(schema.config_type(possible_values(space)))
        self.flush_seconds = flush_seconds
        self.seq = 0
        self.event_parts: list[str] = []
        self.last_flush = 0.0
        self.stages_written = 0
        self.stored_decisions: set[tuple[Any, ...]] = set()  # a resume's: the stored log's DECIDED_ONCE events

    def write_sweep_row(self, row: Mapping[str, Any]) -> None:
        self._write(schema.SWEEP_PATH, schema.to_table([row], schema.SWEEP))

    def _write(self, rel: str, table: pa.Table) -> None:
        """Every master write; a test can end the process after the n-th (``CAVIAR_FAULT_AFTER_WRITE=n``)."""
        self.storage.write_table(rel, table)
        self.writes += 1
        if self.writes == self.fault_after_write:
            self.on_fault()

    @staticmethod
    def _die() -> None:
        os._exit(FAULT_EXIT_CODE)  # as a SIGKILL would: no cleanup, no further write

    def continue_after(self, stages: Sequence[Any], events: Sequence[Mapping[str, Any]],
                       event_parts: Sequence[str]) -> None:
        """Resume: the stored stages stay as written, and events go on after the stored ones."""
        self.stages_written = len(stages)
        self.seq = max((int(e["seq"]) for e in events), default=-1) + 1
        self.event_parts = list(event_parts)
        self.stored_decisions = {_decision_key(e) for e in events if e["kind"] in DECIDED_ONCE}

    def flush(self, controller: Controller, *, force: bool = False) -> None:
        """Write what changed, at most every ``flush_seconds`` unless forced."""
        if not force and time.monotonic() - self.last_flush < self.flush_seconds:
            return
        # Events, then trials, then stage rows: a master killed between any two writes leaves tables a
        # resume can finish from. A stage row is never ahead of the trials table (a stage whose trials
        # the table holds but whose row is missing is begun again, the same way, from the stage before);
        # events are never behind it (a resume never loses the reason a trial ended).
        self._write_events(controller)
        rows = [{**t.as_row(), "stage": schema.stage_number(t.stage)} for t in controller.trials.values()]
        self._write(schema.TRIALS_PATH, schema.to_table(rows, self.trials_schema))
        self._write_stages(controller)
        self.last_flush = time.monotonic()
        if self.lease is not None:
            self.lease.beat()

    def _write_stages(self, controller: Controller) -> None:
        for index in range(self.stages_written, len(controller.stage_spaces)):
            stage = controller.plan[index]
            first = min(t.trial_id for t in controller.trials.values() if t.stage == index)
            row = {"stage": schema.stage_number(index), "trials": stage.trials, "epochs": stage.epochs,
                   "space": schema.json_dumps(controller.stage_spaces[index].to_dict(), sort_keys=False),
                   "first_trial_id": first, "time": schema.now_ms()}
            self._write(schema.stage_path(row["stage"]), schema.to_table([row], schema.STAGES))
        self.stages_written = len(controller.stage_spaces)

    def _write_events(self, controller: Controller) -> None:
        events = list(controller.events)  # drained only once written: a failed write keeps them for the next
        if not events:
            return
        rows = []
        for event in events:
            stage = None if event["stage"] is None else schema.stage_number(event["stage"])
            row = {**event, "seq": self.seq, "stage": stage, "detail": schema.json_dumps(event["detail"])}
            if row["kind"] in DECIDED_ONCE and _decision_key(row) in self.stored_decisions:
                continue  # written before the master died, ahead of the trials table: decided again the same way
            rows.append(row)
            self.seq += 1
        if not rows:
            controller.drain_events()
            return
        path = schema.events_part_path(rows[0]["seq"])
        self._write(path, schema.to_table(rows, schema.EVENTS))
        self.event_parts.append(path)
        controller.drain_events()
        if len(self.event_parts) > EVENT_PARTS:
            self.compact_events()

    def compact_events(self) -> None:
        if len(self.event_parts) <= 1:
            return
        table = pa.concat_tables([self.storage.read_table(p) for p in self.event_parts])
        target = schema.events_part_path(0)
        self._write(target, table)
        for part in self.event_parts:
            if part != target:
                self.storage.delete(part)
        self.event_parts = [target]
