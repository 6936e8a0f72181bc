"""The master's writes: the trials table, the events log, the stages table, the sweep row.

Trials are rewritten as one atomic file (a sweep has thousands of trials, not millions,
and one file reads fastest); events are appended as parts, throttled, and compacted at
the end. Everything goes through :mod:`orchestrator.schema`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from orchestrator import schema
from orchestrator.controller import Controller
from orchestrator.lease import Lease
from orchestrator.space import Choice, Distribution, SearchSpace
from orchestrator.storage import Storage


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
        self.prefetch: Any = None  # the soup's data, loading while the sweep trains (orchestrator.prefetch)
        self.trials_schema = schema.trials_schema(schema.config_type(possible_values(space)))
        self.flush_seconds = flush_seconds
        self.seq = 0
        self.event_parts: list[str] = []
        self.last_flush = 0.0
        self.stages_written = 0

    def write_sweep_row(self, row: Mapping[str, Any]) -> None:
        self.storage.write_table(schema.SWEEP_PATH, schema.to_table([row], schema.SWEEP))

    def continue_after(self, stages: Sequence[Any], events: Sequence[Mapping[str, Any]],
                       event_parts: Sequence[str]) -> None:
        """Resume: the stored stages stay as written, and events go on after the stored ones."""
        self.stages_written = len(stages)
        self.seq = max((int(e["seq"]) for e in events), default=-1) + 1
        self.event_parts = list(event_parts)

    def flush(self, controller: Controller, *, force: bool = False) -> None:
        """Write what changed, at most every ``flush_seconds`` unless forced."""
        if not force and time.monotonic() - self.last_flush < self.flush_seconds:
            return
        self._write_stages(controller)
        self._write_events(controller)
        rows = [{**t.as_row(), "stage": schema.stage_number(t.stage)} for t in controller.trials.values()]
        self.storage.write_table(schema.TRIALS_PATH, schema.to_table(rows, self.trials_schema))
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
            self.storage.write_table(schema.stage_path(row["stage"]), schema.to_table([row], schema.STAGES))
        self.stages_written = len(controller.stage_spaces)

    def _write_events(self, controller: Controller) -> None:
        if not controller.events:
            return
        rows = []
        for event in controller.events:
            stage = None if event["stage"] is None else schema.stage_number(event["stage"])
            rows.append({**event, "seq": self.seq, "stage": stage, "detail": schema.json_dumps(event["detail"])})
            self.seq += 1
        path = schema.events_part_path(rows[0]["seq"])
        self.storage.write_table(path, schema.to_table(rows, schema.EVENTS))
        self.event_parts.append(path)
        controller.events.clear()

    def compact_events(self) -> None:
        if len(self.event_parts) <= 1:
            return
        table = pa.concat_tables([self.storage.read_table(p) for p in self.event_parts])
        target = schema.events_part_path(0)
        self.storage.write_table(target, table)
        for part in self.event_parts:
            if part != target:
                self.storage.delete(part)
        self.event_parts = [target]


def stage_spaces_as_rows(spaces: Sequence[SearchSpace]) -> list[dict[str, Any]]:
    return [space.to_dict() for space in spaces]
