"""A check shared by the fused backends' tests (Ray actors and child processes): a killed worker's members
were retried and the sweep ended as if nothing had died."""

from __future__ import annotations

from typing import Any

from orchestrator.store import schema
from orchestrator.store.storage import Storage


def assert_killed_array_retried(controller: Any, backend: Any, storage_dir: str, name: str, trials: int,
                                epochs: int) -> None:
    """One death, every trial completed, some retried, and exactly one metric row per (trial, epoch)."""
    assert backend.deaths == 1
    ended = list(controller.trials.values())
    assert all(t.status == "completed" and t.epochs_run == epochs for t in ended)
    assert any(t.attempt >= 1 for t in ended)  # the killed array's members were retried
    storage = Storage.from_uri(storage_dir).child(name)
    metrics = schema.effective_metrics(schema.read_dir(storage, "metrics", schema.METRICS)).to_pylist()
    assert sorted((r["trial_id"], r["epoch"]) for r in metrics) == [
        (t, e) for t in range(trials) for e in range(1, epochs + 1)]
