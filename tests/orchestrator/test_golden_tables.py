"""The same seed writes the same tables: trials, metrics, stages and events of simulated sweeps, against a
fingerprint recorded from an earlier version of the code (``golden/sim_sweeps.json``).

Refactors must not change a sweep's decisions. The sweeps run the real controller, pruners,
sampler and writer (``SweepLog``) on the simulated backend, and every row is compared except
wall-clock times. A change that is meant to alter decisions rewrites the fingerprint on purpose:
``CAVIAR_WRITE_GOLDEN=1 pytest tests/orchestrator/test_golden_tables.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib

import pytest

from orchestrator.store.storage import Storage
from tests.orchestrator.test_resume import settings_for, uninterrupted

GOLDEN = pathlib.Path(__file__).parent / "golden" / "sim_sweeps.json"
WALL_CLOCK = {"time", "started", "finished", "created", "train_seconds", "epoch_seconds"}
TABLES = ("trials", "metrics", "stages", "events")

SWEEPS = {
    "asha-tpe": dict(plan="12x1,8x4,6x6", pruner="asha", sampler="tpe", slots=3),
    "median-random": dict(plan="10x2,6x5", pruner="median", sampler="random", grace_epochs=2, slots=2),
    "asha-sobol-seeds": dict(plan="8x1,6x3", pruner="asha", sampler="sobol", seed_copies=2, slots=4),
    "none-lhs-fixed-edges": dict(plan="9x2,6x3", pruner="none", sampler="lhs", extend_edges=False, slots=2),
    "asha-fused": dict(plan="9x1,6x4", pruner="asha", sampler="tpe", slots=2, fuse=3),
}


def canonical(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(round(value, 12))
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def fingerprint(storage: Storage) -> dict[str, dict[str, object]]:
    out = {}
    for table in TABLES:
        rows = [
            {k: v for k, v in row.items() if k not in WALL_CLOCK}
            for path in storage.list_files(table)
            for row in storage.read_table(path).to_pylist()
        ]
        rows.sort(key=lambda r: json.dumps(canonical(r), sort_keys=True, default=str))
        text = json.dumps(canonical(rows), sort_keys=True, default=str)
        out[table] = {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return out


def sweep_fingerprint(tmp_path, name: str) -> dict[str, dict[str, object]]:
    options = dict(SWEEPS[name])
    fuse = options.pop("fuse", 0)
    _, storage = uninterrupted(tmp_path / name, settings_for(**options), fuse=fuse)
    return fingerprint(storage)


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_a_seeded_simulated_sweep_writes_the_recorded_tables(tmp_path, name):
    found = sweep_fingerprint(tmp_path, name)
    if os.environ.get("CAVIAR_WRITE_GOLDEN"):
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps({**recorded, name: found}, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(GOLDEN.read_text())
    assert found == recorded[name]
