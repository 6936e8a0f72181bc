"""Did anything learn? The best trial against the do-nothing answer, on plain data."""

from __future__ import annotations

import math
from types import SimpleNamespace

from orchestrator.app.baseline import nothing_learned


def trials(*pairs):
    return [SimpleNamespace(best_val_accuracy=a, best_val_loss=loss) for a, loss in pairs]


def test_a_classifier_no_better_than_the_most_frequent_class_is_named():
    labels = [0] * 28 + [1] * 23 + [2] * 22 + [3] * 27  # 100 val examples, class 0 the most frequent
    line = nothing_learned(trials((0.32, 1.38), (0.25, 1.39), (None, None)), {"y_val": labels})
    assert line == ("no trial did clearly better than always predicting class 0 (the most frequent: 0.280 of 100 val "
                    "examples): the best val accuracy is 0.320; check the ranges (the learning rate first) and the "
                    "data")
    # Two standard errors above 0.28 on 100 examples is 0.37: a trial at 0.40 learned something.
    assert nothing_learned(trials((0.40, 1.2)), {"y_val": labels}) is None
    # Many examples: the margin shrinks to the pruners' 0.02.
    many = [0] * 28_000 + [1] * 24_000 + [2] * 24_000 + [3] * 24_000
    assert nothing_learned(trials((0.31, 1.3)), {"y_val": many}) is None
    assert nothing_learned(trials((float("nan"), None)), {"y_val": labels}) is None  # nothing to judge
    # Two val examples: even a perfect score says nothing, and the message says why.
    assert nothing_learned(trials((1.0, 0.3)), {"y_val": [1, 0]}) == (
        "2 val examples cannot tell a trial that learned from always predicting class 1 (0.500 of them): give the "
        "validation split more examples")


def test_a_regressor_no_better_than_the_training_mean_is_named():
    dataset = {"y_val": None, "baseline_val_loss": 10.0}
    assert nothing_learned(trials((None, 9.9), (None, 12.0)), dataset) == (
        "no trial beat predicting the training mean (val loss 10): the best val loss is 9.9; check the ranges (the "
        "learning rate first) and the data")
    assert nothing_learned(trials((None, 9.7)), dataset) is None
    # Targets in the hundreds of thousands, not standardised: the line says what usually fixes it.
    prices = {"baseline_val_loss": 7.3e9, "y_val_values": [300_000.0, 380_000.0, 220_000.0], "target_std": None}
    assert nothing_learned(trials((None, 9.3e10)), prices).endswith(
        "and the data; the targets (val mean 3e+05, sd 8e+04) are trained on as they are: set standardize_targets = "
        "True")
    assert "standardize_targets" not in nothing_learned(trials((None, 9.3e10)), {**prices, "target_std": [8e4]})
    # Two outputs near +5000 and -4000, stored flat: pooled, they read "val mean 500, sd 4.9e+03"; each on its own
    two = {"baseline_val_loss": 1e4, "y_val_values": [5000.0, -4000.0, 5010.0, -4020.0, 4990.0, -3980.0],
           "target_std": None, "target_shape": [2]}
    assert nothing_learned(trials((None, 2e4)), two).endswith(
        "the targets (val means 5e+03, -4e+03; sds 10, 20) are trained on as they are: set standardize_targets = True")
    assert nothing_learned(trials((None, 9.9)), {"baseline_val_loss": None}) is None  # a custom loss: no baseline
    assert nothing_learned(trials((None, math.inf)), dataset) is None
    assert nothing_learned([], {}) is None


def test_a_regressor_ranked_by_a_metric_of_its_own_is_not_told_that_nothing_learned_by_its_mse():
    """A correlation ignores the outputs' scale: an MSE far above the training mean's says nothing of it."""
    dataset = {"y_val": None, "baseline_val_loss": 10.0}
    for objective in (None, "val_loss", "val_mse", "val_mae", "val_r2"):  # caviar's own measures of fit still are
        assert nothing_learned(trials((None, 2400.0)), {**dataset, "objective": objective}) is not None
    assert nothing_learned(trials((None, 2400.0)), {**dataset, "objective": "val_corr"}) is None


def test_on_imbalanced_classes_a_log_loss_that_learned_is_told_apart_from_nothing_learned():
    labels = [0] * 371 + [1] * 29  # 93% in class 0: the constant answer's log loss is 0.2601
    stuck = trials((0.9275, 0.2230), (0.9275, 0.2500))  # accuracy at the majority share, log loss below the prior
    line = nothing_learned(stuck, {"y_val": labels, "objective": "val_accuracy"}, val_loss_is_log_loss=True)
    assert line == ("no trial's val accuracy did clearly better than always predicting class 0 (the most frequent: "
                    "0.927 of 400 val examples; best 0.927), but their val log loss learned (best 0.223, 0.260 for "
                    "the class frequencies): with most examples in one class accuracy hardly separates trials; rank "
                    'them by objective = "val_log_loss" (mode = "min") or a metric of your own, such as balanced '
                    "accuracy")
    # Ranked by log loss already (or by the user's own metric): the sweep learned by its own measure.
    assert nothing_learned(stuck, {"y_val": labels, "objective": "val_log_loss"}, val_loss_is_log_loss=True) is None
    # A log loss no lower than the class frequencies': nothing learned, as before.
    flat = trials((0.9275, 0.2590))
    assert nothing_learned(flat, {"y_val": labels, "objective": "val_log_loss"},
                           val_loss_is_log_loss=True).startswith("no trial did clearly better")
    # The task's own loss_fn: its val loss is not a log loss, so it says nothing here.
    assert nothing_learned(stuck, {"y_val": labels}).startswith("no trial did clearly better")
    # ... unless the sweep ranked by a column of its own (a weighted-BCE task's val_f1): accuracy at the majority
    # share is no sign that it learned nothing, and caviar has no do-nothing value of that column to compare with
    assert nothing_learned(stuck, {"y_val": labels, "objective": "val_f1"}) is None
    assert nothing_learned(stuck, {"y_val": labels, "objective": "val_loss"}) is None


def test_multilabel_rows_are_judged_against_each_labels_own_base_rate():
    # 100 examples, 3 labels on 90%, 10% and 80% of them; stored row-major as (example, label) pairs. The pooled
    # share of zeros is 0.40, but always answering each label's more frequent value gets 0.867 of the pairs right.
    rows = [[int(i < 90), int(i < 10), int(i < 80)] for i in range(100)]
    dataset = {"y_val": [v for row in rows for v in row], "target_shape": [3], "objective": "val_loss"}
    prior = (0.325083 + 0.325083 + 0.500402) / 3  # each label's binary entropy, averaged: 0.3835
    base_rates_only = trials((0.8667, prior + 0.002))
    assert nothing_learned(base_rates_only, dataset, val_loss_is_log_loss=True) == (
        "no trial did clearly better than always predicting each label's more frequent value (0.867 of 300 val "
        "example-label pairs right; log loss 0.384): the best val accuracy is 0.867; check the ranges (the learning "
        "rate first) and the data")
    assert nothing_learned(trials((0.93, 0.2)), dataset, val_loss_is_log_loss=True) is None
    # Accuracy flat at the base rates, log loss below each label's entropy: learned by the sweep's val_loss.
    assert nothing_learned(trials((0.8667, 0.30)), dataset, val_loss_is_log_loss=True) is None
    assert "rank them by objective = \"val_loss\"" in nothing_learned(
        trials((0.8667, 0.30)), {**dataset, "objective": "val_accuracy"}, val_loss_is_log_loss=True)


def test_a_class_per_position_is_judged_over_labelled_positions_only():
    # 200 pixels: 120 background, 40 of each digit class, and 300 void (-100) ones that no answer is scored on
    labels = [0] * 120 + [1] * 40 + [2] * 40 + [-100] * 300
    dataset = {"y_val": labels, "target_shape": [10, 50], "per_position": True}
    line = nothing_learned(trials((0.61, 0.95)), dataset)
    assert line == ("no trial did clearly better than always predicting class 0 (the most frequent: 0.600 of 200 "
                    "labelled val positions): the best val accuracy is 0.610; check the ranges (the learning rate "
                    "first) and the data")
    assert nothing_learned(trials((0.75, 0.6)), dataset) is None  # well above 0.6: learned


def test_a_task_with_its_own_loss_is_not_told_that_nothing_learned_by_accuracy_alone():
    """A class-weighted loss_fn gives accuracy up for the rarer classes: under the majority share is no proof that
    nothing learned, and the line says what else to rank by."""
    labels = [0] * 89 + [1] * 11
    line = nothing_learned(trials((0.82, 0.56)), {"y_val": labels, "own_loss": True})
    assert line.startswith("no trial's val accuracy did clearly better than always predicting class 0 (the most "
                           "frequent: 0.890 of 100 val examples; best 0.820), which the task's own loss_fn may not "
                           "aim at")
    multilabel = {"y_val": [0, 0, 0, 1] * 25, "target_shape": [2], "own_loss": True}
    assert "own loss_fn may not aim at" in nothing_learned(trials((0.70, 0.5)), multilabel)


def test_a_metric_of_the_tasks_own_is_judged_against_the_best_answer_that_ignores_the_inputs():
    """The dataset row holds the task metric's best value among constant answers (worker/train/do_nothing.py): a best
    trial no better than it, in the objective's direction, is named; a better one, or a row without it, is not."""
    def scored(*scores):
        return [SimpleNamespace(best_score=s, best_val_accuracy=0.9, best_val_loss=0.3) for s in scores]
    recall = {"y_val": [0, 1, 2] * 20, "objective": "val_recall1", "mode": "max", "baseline_objective": 1.0,
              "baseline_answer": "always predicting class 1"}
    assert nothing_learned(scored(0.95, 1.0, -math.inf), recall) == (
        "no trial did better on val_recall1 than always predicting class 1, an answer that ignores the inputs "
        "(val_recall1 1 on validation; the best trial 1): val_recall1 does not require learning (a recall or a "
        "calibration error alone can be won so); rank by a metric that does, or check the ranges (the learning rate "
        "first) and the data")
    ece = {**recall, "objective": "val_ece", "mode": "min", "baseline_objective": 0.0,
           "baseline_answer": "always predicting the validation class frequencies"}
    assert "the best trial 0.0129" in nothing_learned(scored(-0.0129), ece)  # scores are the ECE negated
    f1 = {**recall, "objective": "val_f1", "baseline_objective": 0.11}
    assert nothing_learned(scored(0.12), f1) is None
    assert nothing_learned(scored(0.12), {**f1, "baseline_objective": None}) is None  # accuracy 0.9 learned


def test_a_regressor_on_targets_far_below_unit_scale_is_told_to_standardise_them():
    # Before: displacements in metres (val mean -7.5e-05, sd 0.00088) trained as they are had every trial pruned as
    # not learning, and the line ended at "check the ranges (the learning rate first) and the data": the cure that
    # targets near 1e4 are told of was not named.
    metres = {"baseline_val_loss": 7.9e-7, "y_val_values": [1e-3, -2e-4, 8e-4, -1.1e-3], "target_std": None}
    assert nothing_learned(trials((None, 2.3e-3)), metres).endswith(
        "and the data; the targets (val mean 0.000125, sd 0.000971) are trained on as they are: set "
        "standardize_targets = True")
    assert "standardize_targets" not in nothing_learned(trials((None, 2.3e-3)), {**metres, "target_std": [8e-4]})
    # Unit-scale targets (pixels in [0, 1]) and targets that are all 0 get no such advice.
    pixels = {"baseline_val_loss": 0.1, "y_val_values": [0.0, 0.9, 0.4, 1.0], "target_std": None}
    zeros = {"baseline_val_loss": 0.1, "y_val_values": [0.0, 0.0, 0.0], "target_std": None}
    assert "standardize_targets" not in nothing_learned(trials((None, 0.5)), pixels)
    assert "standardize_targets" not in nothing_learned(trials((None, 0.5)), zeros)


def test_a_val_split_of_one_class_is_named_as_the_cause_when_ranked_by_a_metric_of_the_task_s_own():
    """A fraud-like task (1% positives) whose val split held no positive, ranked by its own average precision: every
    trial scored 0, as the do-nothing answer does, and the end line blamed the metric ("val_ap does not require
    learning"). It names the split instead: no metric tells a model from a constant answer on one class."""
    ap = {"y_val": [0] * 300, "objective": "val_ap", "mode": "max", "baseline_objective": 0.0,
          "baseline_answer": "always predicting the validation class frequencies"}
    best = [SimpleNamespace(best_score=0.0, best_val_accuracy=0.92, best_val_loss=0.2)]
    assert nothing_learned(best, ap) == (
        "val holds only class 0: val_ap cannot tell a trial that learned from always predicting the validation class "
        "frequencies, an answer that ignores the inputs (val_ap 0 on validation); give the validation split examples "
        "of every class (a stratified split)")
    assert "does not require learning" in nothing_learned(best, {**ap, "y_val": [0] * 299 + [1]})


def test_a_split_too_imbalanced_for_accuracy_is_not_called_too_small():
    """1% positives, 2000 val examples: a perfect model gains 0.008 accuracy over always predicting the majority, under
    the 0.02 margin. The end line said '2000 val examples cannot tell ...: give the validation split more examples',
    which no number of examples would fix, also when the log loss showed learning. It now says why accuracy cannot show
    learning and what to rank by, and the log loss is heard."""
    labels = [0] * 1983 + [1] * 17
    weighted = nothing_learned(trials((0.884, 0.42)), {"y_val": labels, "objective": "val_accuracy", "own_loss": True})
    assert weighted == (
        "accuracy cannot show learning on this split: class 0 is 0.992 of 2000 val examples, so a perfect model gains "
        "0.008 over always predicting it (best val accuracy 0.884); rank by objective = \"val_loss\" (mode = \"min\": "
        "your loss_fn) or a metric of your own, such as average precision or balanced accuracy")
    plain = {"y_val": labels, "objective": "val_accuracy"}
    assert "but their val log loss learned (best 0.030, 0.049 for the class frequencies)" in nothing_learned(
        trials((0.9915, 0.03)), plain, val_loss_is_log_loss=True)
    assert "no trial's val log loss beat the class frequencies' (0.049; best 0.060)" in nothing_learned(
        trials((0.9915, 0.06)), plain, val_loss_is_log_loss=True)
    assert nothing_learned(trials((0.9915, 0.03)), {**plain, "objective": "val_log_loss"},
                           val_loss_is_log_loss=True) is None  # ranked by the log loss, which learned
    assert "give the validation split more examples" in nothing_learned(trials((1.0, 0.06)), {"y_val": [0] * 5 + [1]})


def test_rare_labels_of_a_multilabel_split_are_judged_by_their_log_loss_not_called_too_few():
    """Two labels on 1% of 1000 examples each: a perfect model gains 0.01 over always answering 0, under the 0.02
    margin. The line said '2000 val example-label pairs cannot tell ...: give the validation split more examples',
    also when the log loss had learned; now the log loss is heard, and more examples are asked for only where the
    split is too small for its own standard error."""
    rows = [[int(i < 10), int(i >= 990)] for i in range(1000)]
    dataset = {"y_val": [v for row in rows for v in row], "target_shape": [2], "objective": "val_accuracy"}
    prior = -(0.01 * math.log(0.01) + 0.99 * math.log(0.99))  # 0.056 for each label
    assert "but their val log loss learned (best 0.030, 0.056 for each label's frequency)" in nothing_learned(
        trials((0.99, 0.03)), dataset, val_loss_is_log_loss=True)
    assert "log loss 0.056): the best val accuracy is 0.990; check the ranges" in nothing_learned(
        trials((0.99, prior)), dataset, val_loss_is_log_loss=True)
    by_loss = {**dataset, "objective": "val_loss"}
    assert nothing_learned(trials((0.99, 0.03)), by_loss, val_loss_is_log_loss=True) is None
    few = {"y_val": [0, 0, 0, 1, 0, 0], "target_shape": [2]}
    assert "give the validation split more examples" in nothing_learned(trials((1.0, 0.1)), few)
