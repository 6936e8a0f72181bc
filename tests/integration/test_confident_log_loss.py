"""Log losses in the ensembles table equal those the workers report, also for a confidently wrong model.

Models trained on flipped labels with scaled-up logits give the true class probabilities far below float16's
smallest (~6e-8) and float32's (~1e-45). The workers store log-probabilities, so every log loss computed from the
stored predictions (a single candidate, the table's rows) is the exact one the checkpoints table holds
(``val_log_loss``, ``test_log_loss``, from log_softmax), within float16 rounding. Sweeps stored as probabilities by
an earlier caviar keep the numbers they had: log losses clipped at probability 1e-7.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from scipy.special import logsumexp

from orchestrator.app.api import run_sweep
from orchestrator.ensemble import ensembles
from orchestrator.ensemble.ensemble_run import build_and_write, read_dataset, read_ensembles, read_predictions
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import ROOT

TASKS = os.path.join(ROOT, "tests", "tasks")
FLOAT16_SMALLEST_LOG = np.log(6e-8)


def sweep(task: str, storage_dir: str, dtype: str = "float16") -> Storage:
    """A real sweep (two trials, three epochs) of ``task`` with its ensembles built at the end."""
    result = run_sweep(os.path.join(TASKS, task), storage=storage_dir, name="flip", seed=3, pruner="none", slots=2,
                       prediction_dtype=dtype, ensemble=True)
    assert result.counts.get("failed", 0) == 0
    return Storage.from_uri(result.path)


def exact(storage: Storage) -> dict[ensembles.CandidateKey, tuple[float, float]]:
    """Each checkpoint's (val_log_loss, test_log_loss) as its worker computed them (log_softmax, float32)."""
    out = {}
    for row in schema.read_dir(storage, "checkpoints", schema.CHECKPOINTS).to_pylist():
        metrics = dict(row["metrics"])
        key = ensembles.CandidateKey(row["trial_id"], row["epoch"], row["weights"])
        out[key] = (metrics["val_log_loss"], metrics["test_log_loss"])
    return out


def mixture_log_loss(members, cands, y: np.ndarray, split: str) -> float:
    """A row's log loss recomputed independently: scipy's logsumexp of the members' weighted log-probabilities."""
    by_key = {c.key: c for c in cands}
    stacked = np.stack([by_key[m.key].log_probs(split).astype(np.float64) for m in members])
    weights = np.array([m.weight for m in members])[:, None, None]
    mixture = logsumexp(stacked, axis=0, b=weights)
    if y.ndim == 2:
        return float(-(y * mixture).sum(axis=1).mean())
    return float(-mixture[np.arange(len(y)), y].mean())


@pytest.fixture(scope="module")
def flipped(ray_session, tmp_path_factory) -> Storage:
    """The class-index sweep, float16 predictions (the default): run once, copied where a test rewrites it."""
    return sweep("flipped_labels_task.py", str(tmp_path_factory.mktemp("runs")))


def copied(storage: Storage, storage_dir: str) -> Storage:
    return Storage.from_uri(shutil.copytree(storage.uri, os.path.join(storage_dir, "flip")))


@pytest.mark.parametrize(("task", "dtype"), [("flipped_labels_task.py", "float16"),
                                             ("flipped_labels_task.py", "float32"),
                                             ("flipped_soft_labels_task.py", "float16"),
                                             ("flipped_multilabel_task.py", "float16")])
def test_a_confidently_wrong_models_log_loss_in_the_ensembles_table_is_the_one_its_worker_reports(
        ray_session, flipped, storage_dir, task, dtype):
    storage = flipped if (task, dtype) == ("flipped_labels_task.py", "float16") else sweep(task, storage_dir, dtype)
    reported = exact(storage)
    records = read_ensembles(storage)
    for r in records:
        if r.size == 1:  # single, and a soup of one: the checkpoint's own numbers (before: 5.75 shown for 11.99)
            assert r.val_log_loss == pytest.approx(reported[r.members[0].key][0], rel=1e-3), r.method
            assert r.test_log_loss == pytest.approx(reported[r.members[0].key][1], rel=1e-3), r.method
    dataset = read_dataset(storage)
    stored = read_predictions(storage, dataset)
    assert stored.candidates and not stored.dropped and all(c.log for c in stored.candidates)
    # The data is what it should be: true classes far below what a stored float16 probability could hold.
    lowest = min(float(c.log_probs("val").min()) for c in stored.candidates)
    assert lowest < FLOAT16_SMALLEST_LOG - 20
    for c in stored.candidates:  # every candidate alone, as the builders score it
        alone = ensembles.with_test_metrics(ensembles.best_single([c], dataset.y_val), [c], dataset.y_test)
        assert alone.val_log_loss == pytest.approx(reported[c.key][0], rel=1e-3), c.key
        assert alone.test_log_loss == pytest.approx(reported[c.key][1], rel=1e-3), c.key
    for r in records:
        if r.method != "soup":  # every averaged row: the exact log loss of the stored members' mixture
            for split, y, value in (("val", dataset.y_val, r.val_log_loss), ("test", dataset.y_test, r.test_log_loss)):
                assert value == pytest.approx(mixture_log_loss(r.members, stored.candidates, y, split), rel=1e-9)


def as_probabilities(storage: Storage, trial_ids: set[int] | None = None) -> None:
    """Rewrite prediction files as an earlier caviar stored them: softmax probabilities in ``probs``, float16."""
    for rel in storage.list_files("predictions"):
        table = storage.read_table(rel)
        if trial_ids is not None and int(table["trial_id"][0].as_py()) not in trial_ids:
            continue
        width = table.schema.field(schema.LOG_PROBS).type.list_size
        log_probs = table[schema.LOG_PROBS].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        probs = np.exp(log_probs.astype(np.float64)).astype(np.float16)
        column = pa.FixedSizeListArray.from_arrays(pa.array(probs, pa.float16()), width)
        old = table.drop_columns([schema.LOG_PROBS]).append_column(pa.field("probs", column.type), column)
        assert old.schema == schema.predictions_schema(width, "float16", "probs")
        storage.write_table(rel, old)


def clipped_log_loss(members, cands, y: np.ndarray, split: str) -> float:
    """What an earlier caviar computed: the weighted mean of the probabilities, its log clipped at 1e-7."""
    by_key = {c.key: c for c in cands}
    arrays = [np.exp(by_key[m.key].log_probs(split).astype(np.float64)) for m in members]
    return ensembles.log_loss(ensembles.average(arrays, [m.weight for m in members]), y, 1e-7)


@pytest.mark.parametrize("converted", [None, {0}])  # every file as before; one trial's (a resumed older sweep)
def test_a_sweep_stored_as_probabilities_keeps_its_clipped_log_losses(flipped, storage_dir, converted):
    storage = copied(flipped, storage_dir)
    as_probabilities(storage, converted)
    dataset = read_dataset(storage)
    stored = read_predictions(storage, dataset)
    assert {c.log for c in stored.candidates} == ({False} if converted is None else {False, True})
    records = build_and_write(storage)  # no soup: the rows averaged from the stored predictions
    reported = exact(storage)
    single = next(r for r in records if r.method == "single")
    assert single.val_log_loss < 0.9 * reported[single.members[0].key][0]  # the clip holds, as it did
    for r in records:  # every row as an earlier caviar scored it, one rule for all candidates
        for split, y, value in (("val", dataset.y_val, r.val_log_loss), ("test", dataset.y_test, r.test_log_loss)):
            assert value == pytest.approx(clipped_log_loss(r.members, stored.candidates, y, split), rel=1e-6)
