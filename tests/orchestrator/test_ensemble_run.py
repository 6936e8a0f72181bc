"""Predictions and ensembles tables: synthetic predictions through real Parquet files, no torch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from orchestrator.ensemble.ensemble_run import (
    METHODS,
    Dataset,
    EnsembleRecord,
    SoupResult,
    build,
    build_and_write,
    check_methods,
    pick,
    read_dataset,
    read_ensembles,
    read_predictions,
    write_ensembles,
)
from orchestrator.ensemble.ensembles import CandidateKey, Member, Objective
from orchestrator.errors import ConfigError, StorageError
from orchestrator.store import schema
from orchestrator.store.storage import Storage

C, N_VAL, N_TEST = 3, 60, 40


def labels(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, C, n)


Y_VAL, Y_TEST = labels(0, N_VAL), labels(1, N_TEST)


def noisy_probs(y: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Probabilities that put ``skill`` extra mass on the true class, plus noise."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), C))
    logits[np.arange(len(y)), y] += skill
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def pred_table(trial: int, epoch: int, weights: str, val: np.ndarray, test: np.ndarray, *, attempt: int = 0,
               dtype: str = "float16") -> pa.Table:
    out = schema.predictions_schema(C, dtype, "probs")  # as an earlier caviar wrote them
    np_dtype = np.float16 if dtype == "float16" else np.float32
    parts = []
    for split, probs in (("val", val), ("test", test)):
        n = len(probs)
        flat = pa.array(probs.astype(np_dtype).reshape(-1), type=out.field("probs").type.value_type)
        parts.append(pa.table({
            "trial_id": pa.array([trial] * n, pa.int32()), "attempt": pa.array([attempt] * n, pa.int16()),
            "epoch": pa.array([epoch] * n, pa.int32()), "weights": [weights] * n, "split": [split] * n,
            "row": pa.array(np.arange(n), pa.int32()), "probs": pa.FixedSizeListArray.from_arrays(flat, C),
        }, schema=out))
    return pa.concat_tables(parts)


def write_dataset(storage: Storage) -> None:
    row = {"num_classes": C, "y_val": Y_VAL.tolist(), "y_test": Y_TEST.tolist(), "input_shape": [2],
           "mean": [0.5, -1.0], "std": [2.0, 1.0], "time": schema.now_ms()}
    storage.write_table(schema.DATASET_PATH, schema.to_table([row], schema.DATASET))


@pytest.fixture
def sweep(tmp_path) -> Storage:
    """Four trials, raw and EMA weights at two epochs each, of rising skill."""
    storage = Storage.from_uri(str(tmp_path / "sweep"))
    write_dataset(storage)
    for trial in range(4):
        tables = []
        for epoch in (1, 2):
            for i, weights in enumerate(("raw", "ema")):
                seed = 100 * trial + 10 * epoch + i
                skill = 0.5 + 0.4 * trial + 0.2 * epoch
                tables.append(pred_table(trial, epoch, weights, noisy_probs(Y_VAL, skill, seed),
                                         noisy_probs(Y_TEST, skill, seed + 1)))
        storage.write_table(schema.predictions_path(trial), pa.concat_tables(tables))
    return storage


def test_predictions_round_trip_into_candidates(sweep):
    stored = read_predictions(sweep)
    assert not stored.dropped
    assert len(stored.candidates) == 16
    c = next(c for c in stored.candidates if c.key == CandidateKey(2, 1, "ema"))
    assert c.val_probs.shape == (N_VAL, C) and c.test_probs.shape == (N_TEST, C)
    expected = noisy_probs(Y_VAL, 0.5 + 0.8 + 0.2, 211).astype(np.float16)
    assert np.array_equal(c.val_probs, expected)  # rows back in their order, values exact in float16
    dataset = read_dataset(sweep)
    assert dataset.input_shape == (2,) and dataset.mean.tolist() == [0.5, -1.0] and dataset.num_classes == C


def test_float32_predictions_are_read_too(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    write_dataset(storage)
    val, test = noisy_probs(Y_VAL, 1.0, 1), noisy_probs(Y_TEST, 1.0, 2)
    storage.write_table(schema.predictions_path(0), pred_table(0, 1, "raw", val, test, dtype="float32"))
    (c,) = read_predictions(storage).candidates
    assert c.val_probs.dtype == np.float32 and np.allclose(c.val_probs, val, atol=1e-7)


def test_latest_attempt_wins_and_bad_candidates_are_dropped_by_name(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    write_dataset(storage)
    good_val, good_test = noisy_probs(Y_VAL, 2.0, 1), noisy_probs(Y_TEST, 2.0, 2)
    old = pred_table(0, 1, "raw", noisy_probs(Y_VAL, 0.0, 3), noisy_probs(Y_TEST, 0.0, 4), attempt=0)
    new = pred_table(0, 1, "raw", good_val, good_test, attempt=1)
    nan = good_val.copy()
    nan[0] = np.nan
    broken = pred_table(1, 1, "raw", nan, good_test)
    short = pred_table(2, 1, "raw", good_val[:10], good_test)
    storage.write_table(schema.predictions_path(0), pa.concat_tables([old, new]))
    storage.write_table(schema.predictions_path(1), broken)
    storage.write_table(schema.predictions_path(2), short)
    stored = read_predictions(storage)
    assert [c.key for c in stored.candidates] == [CandidateKey(0, 1, "raw")]
    assert np.allclose(stored.candidates[0].val_probs, good_val, atol=1e-3)
    reasons = dict(stored.dropped)
    assert "not finite" in reasons[CandidateKey(1, 1, "raw")]
    assert "10 rows, expected 60" in reasons[CandidateKey(2, 1, "raw")]


def test_build_writes_every_method_and_flags_the_best_on_validation(sweep):
    records = build_and_write(sweep, k=3)
    assert [r.method for r in records] == ["single", "single_ema", "top_k", "checkpoints", "ema", "greedy"]
    assert sum(r.chosen for r in records) == 1
    chosen = next(r for r in records if r.chosen)
    assert chosen.val_log_loss == min(r.val_log_loss for r in records)  # chosen by validation log loss
    for r in records:
        assert r.test_accuracy is not None and r.test_log_loss is not None
        assert sum(m.weight for m in r.members) == pytest.approx(1.0)
        assert r.size == len(r.members)
    assert {m.key.weights for m in next(r for r in records if r.method == "ema").members} == {"ema"}
    assert len(next(r for r in records if r.method == "top_k").members) == 3
    table = sweep.read_table(schema.ENSEMBLES_PATH)
    assert table.schema == schema.ENSEMBLES
    again = read_ensembles(sweep)
    assert again == records  # the Parquet row round-trips to the same record
    assert pick(again, "best") == chosen and pick(again, "top_k").method == "top_k"
    assert pick(again, "2").ensemble_id == 2
    by_accuracy = build_and_write(sweep, k=3, choose_by="accuracy")
    assert next(r for r in by_accuracy if r.chosen).val_accuracy == max(r.val_accuracy for r in by_accuracy)


def test_test_data_never_steers_selection(sweep):
    """Scrambling every test prediction changes test metrics, never the members or the choice."""
    stored = read_predictions(sweep)
    dataset = read_dataset(sweep)
    before = build(stored.candidates, dataset)
    rng = np.random.default_rng(9)
    scrambled = [type(c)(c.key, c.val_probs, rng.dirichlet(np.ones(C), N_TEST)) for c in stored.candidates]
    after = build(scrambled, dataset)
    assert [(r.method, r.members, r.chosen, r.val_accuracy) for r in before] == \
           [(r.method, r.members, r.chosen, r.val_accuracy) for r in after]
    assert [r.test_accuracy for r in before] != [r.test_accuracy for r in after]


def test_methods_filter_keeps_the_single_baseline(sweep):
    records = build_and_write(sweep, methods=["greedy"])
    assert [r.method for r in records] == ["single", "greedy"]
    assert check_methods(None) == METHODS
    with pytest.raises(ConfigError, match="option 'method': bogus unknown"):
        check_methods(["bogus"])
    with pytest.raises(ConfigError, match="option 'metric'"):
        build_and_write(sweep, metric="f1")


def soup_result(helped: bool, val_accuracy: float) -> SoupResult:
    members = (Member(CandidateKey(3, 2, "raw"), 0.5), Member(CandidateKey(3, 2, "ema"), 0.5))
    return SoupResult(members, val_accuracy, 0.01, 0.5, 1.0, schema.soup_weights_path("ab" * 32), "ab" * 32,
                      {"helped": helped, "note": "test"})


def test_a_soup_is_recorded_and_chosen_only_when_it_helped(sweep):
    seen = {}

    def soup(ranked, metric, objective, eps):
        seen["ranked"], seen["metric"] = list(ranked), metric
        return soup_result(helped=False, val_accuracy=1.0)

    records = build_and_write(sweep, soup=soup)
    row = records[-1]
    assert row.method == "soup" and row.weights_path == "weights/ensembles/soup-abababababababab.safetensors"
    assert not row.chosen  # it did not help: the single best candidate stands for it
    assert len(seen["ranked"]) == 16 and seen["metric"] == "accuracy"
    single = next(r for r in records if r.method == "single")
    assert seen["ranked"][0] == single.members[0].key  # ranked best first on validation
    records = build_and_write(sweep, soup=lambda ranked, metric, objective, eps: soup_result(helped=True,
                                                                                         val_accuracy=1.0))
    assert records[-1].chosen and pick(read_ensembles(sweep), "best").method == "soup"


def test_missing_tables_and_names_are_named(tmp_path, sweep):
    empty = Storage.from_uri(str(tmp_path / "empty"))
    with pytest.raises(StorageError, match="dataset.parquet: no such file"):
        read_dataset(empty)
    write_dataset(empty)
    with pytest.raises(StorageError, match="no stored predictions"):
        read_predictions(empty)
    with pytest.raises(StorageError, match="ensembles.parquet: no such file"):
        read_ensembles(sweep)
    build_and_write(sweep, methods=["top_k"])
    with pytest.raises(ConfigError, match="ensemble 'greedy': no such ensemble .*best, single, top_k"):
        pick(read_ensembles(sweep), "greedy")


def test_record_row_matches_the_schema():
    record = EnsembleRecord(0, "top_k", "top_k", (Member(CandidateKey(1, 2, "ema"), 1.0),), "accuracy", 0.9, 0.3,
                            None, None, created=schema.now_ms())
    table = schema.to_table([record.as_row()], schema.ENSEMBLES)
    assert table.to_pylist()[0]["members"] == [{"trial_id": 1, "epoch": 2, "weights": "ema", "weight": 1.0}]
    assert EnsembleRecord.from_row(table.to_pylist()[0]) == record


def test_empty_candidates_are_refused():
    dataset = Dataset(C, Y_VAL, Y_TEST, (2,), None, None)
    with pytest.raises(ConfigError, match="no usable candidates"):
        build([], dataset)


def test_soft_labels_through_the_tables_choose_on_soft_cross_entropy_and_say_what_chose(tmp_path, caplog):
    """A soft-label sweep's dataset row holds the target probabilities; a task metric objective is not claimed."""
    storage = Storage.from_uri(str(tmp_path))
    soft_val = np.full((N_VAL, C), 0.1)
    soft_val[np.arange(N_VAL), Y_VAL] = 0.8
    soft_test = np.full((N_TEST, C), 0.1)
    soft_test[np.arange(N_TEST), Y_TEST] = 0.8
    row = {"num_classes": C, "input_shape": [2], "time": schema.now_ms(), "kind": "classification",
           "y_val_values": soft_val.reshape(-1).tolist(), "y_test_values": soft_test.reshape(-1).tolist(),
           "target_shape": [C], "objective": "val_brier", "mode": "min"}
    storage.write_table(schema.DATASET_PATH, schema.to_table([row], schema.DATASET))
    for trial in range(3):
        val, test = noisy_probs(Y_VAL, 1.0 + trial, trial), noisy_probs(Y_TEST, 1.0 + trial, 10 + trial)
        storage.write_table(schema.predictions_path(trial), pred_table(trial, 1, "raw", val, test, dtype="float32"))
    dataset = read_dataset(storage)
    assert dataset.soft and dataset.y_val.shape == (N_VAL, C)
    with caplog.at_level("WARNING", logger="caviar"):
        records = build_and_write(storage, methods=["top_k", "greedy"])
    stored = {c.key: c for c in read_predictions(storage, dataset).candidates}
    for r in records:
        probs = sum(m.weight * stored[m.key].val_probs.astype(np.float64) for m in r.members)
        assert r.val_log_loss == pytest.approx(float(-(soft_val * np.log(probs)).sum(1).mean()), rel=1e-6)
        assert r.detail["chosen_by"] == "val_log_loss" and r.detail["sweep_objective"] == "val_brier (min)"
        assert "not by the sweep's objective val_brier" in r.detail["choice_note"]
    assert "not by the sweep's objective val_brier" in caplog.text


def test_the_objective_passed_in_chooses_every_row_and_its_values_are_recorded(sweep, caplog):
    """A task metric objective (here a per-class error rate on class 0, minimised) ranks, chooses and is recorded."""
    seen = {}

    def class_zero_error(outputs: np.ndarray, split: str) -> float:
        y = {"val": Y_VAL, "test": Y_TEST}[split]
        return float((outputs[y == 0].argmax(axis=1) != 0).mean())

    def objective_for(dataset: Dataset) -> Objective:
        seen["objective"] = dataset.objective
        return Objective("val_zero_error", "min", class_zero_error)

    def soup(ranked, metric, objective, eps):
        seen["soup_objective"] = objective
        return None

    with caplog.at_level("WARNING", logger="caviar"):
        records = build_and_write(sweep, soup=soup, objective_for=objective_for)
    assert seen["soup_objective"].name == "val_zero_error"  # the soup ranks and accepts by it too
    stored = {c.key: c for c in read_predictions(sweep).candidates}
    for r in records:
        assert r.detail["chosen_by"] == "val_zero_error" and r.selection_metric == "val_zero_error"
        assert "choice_note" not in r.detail
        for split in ("val", "test"):
            probs = sum(m.weight * getattr(stored[m.key], f"{split}_probs").astype(np.float64) for m in r.members)
            assert r.detail[f"{split}_objective"] == pytest.approx(class_zero_error(probs, split))
    chosen = next(r for r in records if r.chosen)
    assert chosen.detail["val_objective"] == min(r.detail["val_objective"] for r in records)
    assert "ensembles:" not in caplog.text  # the objective chose: nothing to warn about


def test_without_the_task_a_task_metric_objective_is_not_claimed_and_the_flag_is_named(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    row = {"num_classes": C, "y_val": Y_VAL.tolist(), "y_test": Y_TEST.tolist(), "input_shape": [2],
           "time": schema.now_ms(), "objective": "val_brier", "mode": "min"}
    storage.write_table(schema.DATASET_PATH, schema.to_table([row], schema.DATASET))
    storage.write_table(schema.predictions_path(0), pred_table(0, 1, "raw", noisy_probs(Y_VAL, 1.0, 1),
                                                               noisy_probs(Y_TEST, 1.0, 2)))
    (record,) = build_and_write(storage, methods=["single"])
    assert record.detail["chosen_by"] == "val_log_loss" and "val_objective" not in record.detail
    assert "--task FILE or --trust-task-code" in record.detail["choice_note"]


def test_the_answer_never_shows_a_nan_objective_as_a_plain_number(tmp_path):
    from orchestrator.app.answer import ensemble_lines

    member = (Member(CandidateKey(0, 1, "raw"), 1.0),)
    chosen = EnsembleRecord(0, "top_k", "top_k", member, "log_loss", 0.8, 0.85, 0.83, 0.84, chosen=True,
                            detail={"chosen_by": "val_brier", "val_objective": 0.4383, "test_objective": float("nan")})
    single = EnsembleRecord(1, "single", "single", member, "log_loss", 0.73, 0.93, 0.73, 0.94,
                            detail={"chosen_by": "val_brier", "val_objective": float("nan"), "test_objective": 0.4994})
    storage = Storage.from_uri(str(tmp_path))
    write_ensembles(storage, [chosen, single])
    lines = ensemble_lines(str(tmp_path))
    assert "  best single model               NaN       0.4994" in lines
    assert not any(" nan" in line for line in lines)
    assert any(line.startswith("  NaN: the task's metrics returned NaN for val_brier") for line in lines)


def test_a_nan_objective_on_test_only_is_named_as_the_test_splits(tmp_path):
    """A ROC AUC on a test split without positives is NaN there only: the note names test_auc, not val_auc, whose
    numbers ranked the ensembles as usual."""
    from orchestrator.app.answer import ensemble_lines

    member = (Member(CandidateKey(0, 1, "raw"), 1.0),)
    chosen = EnsembleRecord(0, "top_k", "top_k", member, "log_loss", 0.8, 0.85, 0.83, 0.84, chosen=True,
                            detail={"chosen_by": "val_auc", "val_objective": 0.91, "test_objective": float("nan")})
    single = EnsembleRecord(1, "single", "single", member, "log_loss", 0.73, 0.93, 0.73, 0.94,
                            detail={"chosen_by": "val_auc", "val_objective": 0.90, "test_objective": float("nan")})
    write_ensembles(Storage.from_uri(str(tmp_path)), [chosen, single])
    notes = [line for line in ensemble_lines(str(tmp_path)) if line.startswith("  NaN:")]
    assert notes == ["  NaN: the task's metrics returned NaN for test_auc on the test predictions (a class the test "
                     "split lacks, or a precision or F1 over a class never predicted?); make it return a number"]


def test_an_ensemble_chosen_on_a_task_metric_is_compared_with_the_single_model_on_that_metric(tmp_path):
    """Not on test accuracy: the line says what chose the ensemble (a Brier score that improved while accuracy fell)."""
    from orchestrator.app.answer import ensemble_lines

    member = (Member(CandidateKey(0, 1, "raw"), 1.0),)
    chosen = EnsembleRecord(0, "top_k", "top_k", member, "log_loss", 0.8, 0.35, 0.70, 0.36, chosen=True,
                            detail={"chosen_by": "val_brier", "val_objective": 0.40, "test_objective": 0.41})
    single = EnsembleRecord(1, "single", "single", member, "log_loss", 0.8, 0.40, 0.80, 0.42,
                            detail={"chosen_by": "val_brier", "val_objective": 0.45, "test_objective": 0.45})
    write_ensembles(Storage.from_uri(str(tmp_path)), [chosen, single])
    lines = ensemble_lines(str(tmp_path))
    assert "  test_brier 0.4100 against 0.4500 for the best single model" in lines
    assert not any("relative to the best single model" in line for line in lines)


def test_a_multilabel_sweep_ranked_on_its_loss_ranks_candidates_by_log_loss(tmp_path):
    # 50 examples x 4 labels, 10 of the 200 pairs on. Trial 0 answers 5% everywhere (every pair 0: 0.950 right, log
    # loss 0.199); trial 1 learned (log loss 0.063) but leaves the positives just under one half and one negative
    # just over: 0.945 right. Ranked by accuracy, the builders would start from trial 0, not the sweep's best.
    storage = Storage.from_uri(str(tmp_path / "ml"))
    y = np.zeros(200, dtype=np.int64)
    y[::20] = 1
    row = {"num_classes": 2, "y_val": y.tolist(), "y_test": y.tolist(), "input_shape": [2], "mean": [0.0, 0.0],
           "std": [1.0, 1.0], "time": schema.now_ms(), "kind": "classification", "target_shape": [4],
           "objective": "val_loss", "mode": "min"}
    storage.write_table(schema.DATASET_PATH, schema.to_table([row], schema.DATASET))
    flat = np.full(200, 0.05)
    learned = np.where(y == 1, 0.45, 0.02)
    learned[1] = 0.55
    for trial, p1 in enumerate((flat, learned)):
        probs = np.stack([1 - p1, p1], axis=1)
        out = schema.predictions_schema(2, "float32", "probs")
        parts = [pa.table({
            "trial_id": pa.array([trial] * 200, pa.int32()), "attempt": pa.array([0] * 200, pa.int16()),
            "epoch": pa.array([1] * 200, pa.int32()), "weights": ["raw"] * 200, "split": [split] * 200,
            "row": pa.array(np.arange(200), pa.int32()),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.astype(np.float32).reshape(-1)), 2),
        }, schema=out) for split in ("val", "test")]
        storage.write_table(schema.predictions_path(trial), pa.concat_tables(parts))
    assert read_dataset(storage).multilabel
    records = build_and_write(storage, methods=["single", "checkpoints"])
    single = next(r for r in records if r.method == "single")
    assert [m.key.trial_id for m in single.members] == [1] and single.val_accuracy == pytest.approx(0.945)
    assert single.detail["ranked_by"] == "val_log_loss" and single.selection_metric == "log_loss"
    # Asked for by name, accuracy still ranks.
    by_accuracy = build_and_write(storage, methods=["single"], metric="accuracy")
    assert [m.key.trial_id for m in by_accuracy[0].members] == [0]
    # The same rows as 200 binary examples of a sweep ranked on val_log_loss: ranked by log loss too.
    storage.write_table(schema.DATASET_PATH, schema.to_table([{**row, "target_shape": None,
                                                                "objective": "val_log_loss"}], schema.DATASET))
    assert not read_dataset(storage).multilabel
    single = build_and_write(storage, methods=["single"])[0]
    assert [m.key.trial_id for m in single.members] == [1] and single.selection_metric == "log_loss"


def test_the_best_checkpoint_of_tied_scores_is_the_one_with_the_lowest_validation_loss():
    """Every checkpoint of a small split at val accuracy 1.0: the answer was trial 0's first epoch (val loss 0.13), not
    trial 3's last (0.0014), which the ensembles' single model takes."""
    from orchestrator.ensemble.ensemble_run import best_checkpoint

    def row(trial_id, epoch, score, val_loss, weights="raw"):
        return {"trial_id": trial_id, "epoch": epoch, "weights": weights, "attempt": 0, "score": score,
                "val_loss": val_loss}

    rows = [row(0, 1, 1.0, 0.1296, "ema"), row(0, 2, 1.0, 0.0068), row(3, 2, 1.0, 0.00135), row(1, 2, 0.98, 0.0001),
            row(2, 2, 1.0, float("nan")), row(4, 1, 1.0, None)]
    best = best_checkpoint(rows)
    assert (best["trial_id"], best["epoch"]) == (3, 2)
    assert (lambda b: (b["trial_id"], b["epoch"]))(best_checkpoint([row(2, 2, 1.0, float("nan")),
                                                                     row(4, 1, 1.0, None)])) == (2, 2)
