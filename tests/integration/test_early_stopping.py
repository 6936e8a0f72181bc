"""Early stopping (``early_stopping = N``): a trial whose objective has not improved for N epochs ends as
``completed``, reason ``early_stopped``, at the first epoch the rule holds; its best checkpoint is the one kept.
Real sweeps in worker processes, plain and fused, real Parquet."""

from __future__ import annotations

import pytest

from orchestrator.app.api import load, run_sweep
from orchestrator.decide.pruning import plateau_reason
from orchestrator.errors import ConfigError
from tests.conftest import TINY_TASK

EPOCHS, PATIENCE = 10, 2


@pytest.mark.parametrize("fuse", ["off", "on"])
def test_trials_end_at_the_first_epoch_their_objective_stopped_improving(tmp_path, fuse):
    result = run_sweep(TINY_TASK, trials=6, epochs=EPOCHS, stages=1, slots=2, pruner="none", seed=3,
                       early_stopping=PATIENCE, fuse=fuse, storage=str(tmp_path), name="es", ensemble=False)
    tables = load(result.path)
    scores: dict[int, list[float]] = {}
    for row in sorted(tables.metrics.to_pylist(), key=lambda r: (r["trial_id"], r["epoch"])):
        scores.setdefault(row["trial_id"], []).append(row["score"])
    trials = tables.trials.to_pylist()
    stopped = [t for t in trials if t["reason"] == "early_stopped"]
    assert stopped, [(t["trial_id"], t["reason"], scores[t["trial_id"]]) for t in trials]
    for t in trials:
        seen = scores[t["trial_id"]]
        assert t["status"] == "completed" and t["epochs_run"] == len(seen)
        # Stopped at the first epoch the rule held, and not before; a trial that never met it trained to the end.
        first = next((n for n in range(1, len(seen) + 1) if plateau_reason(seen[:n], PATIENCE)), None)
        if t in stopped:
            assert first == len(seen) < EPOCHS
        else:
            assert t["reason"] == "max_epochs" and len(seen) == EPOCHS and (first is None or first == EPOCHS)
        assert t["best_score"] == max(seen) and t["best_epoch"] == seen.index(max(seen)) + 1
    kept = {(r["trial_id"], r["epoch"]) for r in tables.checkpoints.to_pylist() if "best" in r["kept_as"]}
    assert {(t["trial_id"], t["best_epoch"]) for t in stopped} <= kept
    events = [e for e in tables.events.to_pylist() if e["kind"] == "trial_completed"]
    assert sorted(e["trial_id"] for e in events if e["reason"] == "early_stopped") == sorted(
        t["trial_id"] for t in stopped)


def test_a_negative_or_boolean_patience_is_refused_by_name(tmp_path):
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match="setting 'early_stopping': expected an integer >= 0"):
            run_sweep(TINY_TASK, trials=2, epochs=2, early_stopping=bad, storage=str(tmp_path), name="bad")
    assert not (tmp_path / "bad").exists()
