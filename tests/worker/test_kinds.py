"""Task kinds: targets are never cast; targets that do not fit their kind are refused with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from orchestrator.decide.pruning import NOT_LEARNING, Observation, not_learning_reason
from orchestrator.errors import NotFusable, TaskError
from orchestrator.spec.task import load_task, unfusable_reason
from tests.conftest import ROOT, TINY_TASK
from worker.arrays.fused import FusedArray
from worker.check.preflight import run_preflight
from worker.check.validate import validate_task
from worker.data.kinds import builtin_metric_names, builtin_metrics, objective_and_mode, resolve_kind
from worker.data.splits import prepare, prepare_task_data
from worker.train.trainer import TrialSpec

TASKS = os.path.join(ROOT, "tests", "tasks")


def splits_of(y_train, y_val, y_test):
    return {"train": torch.as_tensor(y_train), "val": torch.as_tensor(y_val), "test": torch.as_tensor(y_test)}


def refusal(declared, y_train, y_val, y_test) -> str:
    with pytest.raises(TaskError) as info:
        resolve_kind(declared, splits_of(y_train, y_val, y_test))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_float_targets_are_refused_unless_declared_naming_split_and_value():
    message = refusal(None, [0, 1, 2], [0.0, 0.1, 1.0], [1, 0, 2])
    assert message == ('load_data: val targets are floats (0.1); declare kind = "regression" '
                       "or give integer class indices")
    # Integer-valued floats (a count, a price) are as likely regression as classes: declared, never guessed.
    assert "train targets are floats (151)" in refusal(None, [151.0, 75.0], [1], [2])
    assert refusal(None, [1.0, 0.0], [1], [0]) == (  # binary labels as floats, as a BCE loss takes them
        "load_data: train targets are float 0/1 labels (1); give integer class indices (y.astype('int64')) for "
        "binary classification (a one-logit head trains with binary cross-entropy), or declare kind = "
        '"regression" if they are numbers')
    assert "integer-valued floats" in refusal("classification", [1.0, 2.0], [1.0], [0.0])


def test_each_kind_refuses_what_does_not_fit_it():
    assert "test targets are integers" in refusal("regression", [0.5], [1.5], [2])
    assert "include class -1" in refusal(None, [0, 1], [0, -1], [1])
    assert "booleans" in refusal(None, [True, False], [True], [False])
    assert "contain nan" in refusal("regression", [0.5, float("nan")], [1.5], [2.0])
    assert "must sum to 1 per row (row 1 sums to 0.5)" in refusal(
        "classification", [[0.5, 0.5], [0.25, 0.25]], [[1.0, 0.0]], [[0.0, 1.0]])
    assert "not probabilities (1.5)" in refusal("classification", [[1.5, -0.5]], [[1.0, 0.0]], [[0.0, 1.0]])
    assert "shape (2, 2)" in refusal(None, [[0, 1], [1, 0]], [0], [1])
    assert refusal(None, [[0], [2], [1]], [0], [1]).endswith(  # a column of class indices, as a CSV reader gives
        "train targets have shape (3, 1); classification needs class indices of shape (N,) or probabilities of "
        "shape (N, C): give y.reshape(-1) for class indices, or y.astype(\"float32\") with kind = \"regression\" if "
        "they are numbers (counts)")  # counts in a column: reshaping them would only lead to the class-count refusal
    assert refusal("classification", [[[0.5, 0.5]]], [0], [1]).endswith(  # floats, not probabilities' shape
        "probabilities of shape (N, C): for other targets declare kind = \"regression\"")
    # a class per token or pixel in one split only: every split takes the same form
    assert refusal(None, [[0, 4, 2], [1, 1, 3]], [0], [1]) == (
        "load_data: val targets have shape (1,) but others a class per position ({'train': (3,), 'val': (), "
        "'test': ()}); give every split the same form")


def test_a_teachers_softmax_saved_in_bfloat16_is_taken_as_soft_labels():
    """A bfloat16 probability is off by up to 2^-8 of itself, so a row of them sums to 1 within 2^-8, not 1e-3:
    such a teacher's softmax was refused ("train probability targets must sum to 1 per row (row 84 sums to
    0.996094)"). Rows off by more than the dtype rounds are still refused."""
    logits = torch.from_numpy(np.random.default_rng(0).normal(size=(200, 3)) * 2)
    teacher = torch.softmax(logits, dim=1).to(torch.bfloat16)
    assert float((teacher.sum(dim=1).double() - 1).abs().max()) > 1e-3  # what bfloat16 does to such rows
    kind = resolve_kind("classification", {"train": teacher[:120], "val": teacher[120:160], "test": teacher[160:]})
    assert kind.soft and kind.num_classes == 3
    off = teacher.clone()
    off[5] = torch.tensor([0.5, 0.25, 0.234375], dtype=torch.bfloat16)  # sums to 0.984: not rounding
    with pytest.raises(TaskError, match=r"must sum to 1 per row \(row 5 sums to 0.984"):
        resolve_kind("classification", {"train": off[:120], "val": off[120:160], "test": off[160:]})


def test_mixup_probabilities_in_training_with_class_indices_to_score_on_say_how_to_give_those():
    """Mixup or cutmix makes training targets probabilities while val and test stay class indices: the refusal
    says how to give them (one-hot rows), and those rows are taken, their log loss that of the indices."""
    mixed = [[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]
    assert refusal("classification", mixed, [0, 2], [1]) == (
        "load_data: train targets are class probabilities but val targets are not; give val's class indices as "
        "one-hot probability rows (np.eye(3, dtype='float32')[y]): their cross-entropy is the log loss and their "
        "argmax the class")
    one_hot = torch.eye(3)[[0, 2]]
    kind = resolve_kind("classification", splits_of(torch.tensor(mixed), one_hot, one_hot))
    assert kind.soft and kind.num_classes == 3


@pytest.mark.parametrize("declared", [None, "classification"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_multi_label_targets_are_named_as_such_with_what_to_declare(declared, dtype):
    multi = torch.tensor([[1, 0, 0], [1, 0, 1], [0, 1, 0]], dtype=dtype)  # row 1: two labels
    one_hot = torch.eye(3, dtype=dtype)
    if dtype == torch.int64 and declared is None:  # integer 0/1 rows: multi-label, as the data says
        assert resolve_kind(declared, splits_of(multi, one_hot, one_hot)).labels == 3
    elif dtype == torch.int64:  # declared classification: a 0/1 class per position, as declared (the model's
        # outputs then decide: one logit per label is refused naming kind = "multilabel", test_per_position.py)
        assert resolve_kind(declared, splits_of(multi, multi, multi)).positions == (3,)
    else:
        assert refusal(declared, multi, one_hot, one_hot) == (
            "load_data: train targets are float 0/1 rows with 2 ones in row 1, as multi-label targets are; give "
            "integer labels (y.astype('int64')) and caviar trains each label as a binary class (kind = "
            '"multilabel")')
    if dtype == torch.int64:  # one-hot integers: class indices are what was meant
        assert refusal(declared, one_hot, one_hot, one_hot).startswith(
            "load_data: train targets are one-hot rows of shape (3, 3); give class indices (y.argmax(1))")
    elif declared == "classification":  # one-hot probabilities are soft labels that happen to be hard: taken
        assert resolve_kind(declared, splits_of(one_hot, one_hot, one_hot)).soft
    assert resolve_kind("custom", splits_of(multi, multi, multi)).kind == "custom"


def test_targets_keep_dtype_and_shape():
    x = np.zeros((4, 2), np.float32)
    y = np.array([[0.5, 1.5], [2.5, 3.5], [0.25, 0.75], [9.0, 1.0]], np.float64)
    s = prepare(((x, y), (x, y), (x, y)), kind="regression")
    assert s.y_train.dtype == torch.float64 and s.y_val.shape == (4, 2) and torch.equal(s.y_val, torch.from_numpy(y))
    assert s.num_classes is None and s.target_kind.kind == "regression"
    soft = np.array([[0.1, 0.9]] * 4, np.float32)
    s = prepare(((x, soft), (x, soft), (x, soft)), kind="classification")
    assert s.target_kind.soft and s.num_classes == 2 and s.y_val.dtype == torch.float32
    s = prepare(((x, np.array([0, 2, 1, 0])),) * 3)
    assert s.target_kind.kind == "classification" and s.num_classes == 3 and s.y_val.dtype == torch.int64


def test_builtin_metrics_per_kind():
    regression = resolve_kind("regression", splits_of([1.0, 3.0], [1.0, 3.0], [0.0]))
    values = builtin_metrics(regression, torch.tensor([[2.0], [2.0]]), torch.tensor([1.0, 3.0]))
    assert values == {"mse": 1.0, "mae": 1.0, "r2": 0.0}
    soft = resolve_kind("classification", splits_of([[0.2, 0.8]], [[0.2, 0.8]], [[0.5, 0.5]]))
    logits = torch.tensor([[0.0, 0.0]])
    assert builtin_metrics(soft, logits, torch.tensor([[0.2, 0.8]]))["log_loss"] == pytest.approx(np.log(2))
    assert objective_and_mode(load_task(os.path.join(TASKS, "custom_metric_task.py")), soft) == ("val_brier", "min")
    assert objective_and_mode(load_task(os.path.join(TASKS, "regression_task.py")), regression) == ("val_mse", "min")
    # a regressor trained by the task's own loss (log-rates of counts) is ranked on that loss, not on MSE
    poisson = load_task(os.path.join(TASKS, "poisson_regression_task.py"))
    assert objective_and_mode(poisson, regression) == ("val_loss", "min")
    # a mode without an objective is about the kind's default column: the way it is better is accepted, not the other
    bare = load_task(os.path.join(TASKS, "regression_task.py"))
    bare.mode = "min"
    assert objective_and_mode(bare, regression) == ("val_mse", "min")
    bare.mode = "max"
    with pytest.raises(TaskError, match="mode = 'max' without an objective: the sweep ranks by val_mse, which is "
                                        "better when lower"):
        objective_and_mode(bare, regression)
    # the names known without data are the ones reported
    multilabel = resolve_kind(None, splits_of([[1, 1], [0, 1]], [[1, 0]], [[0, 0]]))
    hard = resolve_kind(None, splits_of([0, 1], [1], [0]))
    for kind, outputs, targets in ((regression, torch.tensor([[2.0], [2.0]]), torch.tensor([1.0, 3.0])),
                                   (soft, logits, torch.tensor([[0.2, 0.8]])),
                                   (hard, torch.tensor([[0.0, 1.0]]), torch.tensor([1])),
                                   (multilabel, torch.tensor([[1.0, -1.0]]), torch.tensor([[1, 0]]))):
        assert tuple(builtin_metrics(kind, outputs, targets)) == builtin_metric_names(kind)
    assert builtin_metric_names(resolve_kind("custom", splits_of([0.5], [0.5], [0.5]))) == ()


def write_task(tmp_path, body: str) -> str:
    path = tmp_path / f"task{len(list(tmp_path.iterdir()))}.py"  # a new file each: tasks load once per path
    path.write_text(textwrap.dedent("""
        import numpy as np
        from torch import nn
        from orchestrator.search.space import loguniform
        space = {"lr": loguniform(1e-3, 1e-1)}
        def build_model(config):
            return nn.Linear(3, 2)
    """) + textwrap.dedent(body))
    return str(path)


FLOAT_TARGETS = textwrap.dedent("""
    def load_data():
        x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
        y = np.linspace(0, 1, 30).astype(np.float32)
        return (x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])
""")


CLASSES = textwrap.dedent("""
    import torch
    def load_data():
        x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        return (x[:30], y[:30]), (x[30:45], y[30:45]), (x[45:], y[45:])
""")


@pytest.mark.parametrize(("head", "loss", "made"), [
    ("nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())",
     "nn.functional.binary_cross_entropy(outputs[:, 0], targets.float())", "sigmoid"),
    ("nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1))",
     "nn.functional.nll_loss(outputs.clamp_min(1e-9).log(), targets)", "softmax")])
def test_a_classifier_ending_in_a_sigmoid_or_softmax_is_refused(tmp_path, head, loss, made):
    """A one-logit head ending in nn.Sigmoid, trained with its own BCELoss (as tutorials write it), learned, but caviar
    read its probabilities as logits: every trial's val accuracy was the share of class 1 (0.6167 on breast cancer,
    with a BCE of 0.046), the ensembles and loaded predictions always class 1, and the sweep warned that nothing
    learned. Now refused before any trial; LogSoftmax outputs, whose softmax is the same probabilities, are taken."""
    body = CLASSES + f"def build_model(config):\n    return {head}\n" + \
        f"def loss_fn(outputs, targets):\n    return {loss}\n"
    with pytest.raises(TaskError, match=f"outputs come out of a {made} .*{made}\\({made}\\(z\\)\\); drop"):
        validate_task(load_task(write_task(tmp_path, body)))
    validate_task(load_task(write_task(tmp_path, CLASSES + "def build_model(config):\n"
                                       "    return nn.Sequential(nn.Linear(3, 2), nn.LogSoftmax(dim=1))\n")))


def test_validate_task_refuses_in_one_line(tmp_path):
    with pytest.raises(TaskError, match=r"^load_data: train targets are floats \(0\.0344828"):
        validate_task(load_task(write_task(tmp_path, FLOAT_TARGETS)))
    # Declared regression, but the model predicts 2 numbers for 1 target: refused before any trial.
    with pytest.raises(TaskError, match=r"model outputs have shape \(10, 2\) but the targets \(10,\)"):
        validate_task(load_task(write_task(tmp_path, FLOAT_TARGETS + 'kind = "regression"\n')))
    with pytest.raises(TaskError, match="objective 'val_f1' is not a reported column"):
        validate_task(load_task(write_task(tmp_path, FLOAT_TARGETS + 'kind = "regression"\nobjective = "val_f1"\n'
                                           'mode = "max"\ndef build_model(config):\n    return nn.Linear(3, 1)\n')))
    with pytest.raises(TaskError, match=r"objective 'val_auroc' is not one of caviar's own columns \(val_accuracy, "
                                        r".*\): declare mode = \"max\" or mode = \"min\"$"):
        load_task(write_task(tmp_path, FLOAT_TARGETS + 'kind = "regression"\nobjective = "val_auroc"\n'))
    with pytest.raises(TaskError, match='kind = "custom" needs loss_fn and metrics'):
        load_task(write_task(tmp_path, FLOAT_TARGETS + 'kind = "custom"\n'))
    assert validate_task(load_task(TINY_TASK)).num_classes == 3


THREE_LABELS = textwrap.dedent("""
    def load_data():
        x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
        y = np.arange(30) % 3  # classes 0-2 only
        return (x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])
    def build_model(config):
        return nn.Linear(3, 10)  # a 10-class head
""")


def test_a_head_wider_than_the_labels_needs_num_classes_declared(tmp_path):
    # Stored predictions and ensembles need one width: without a declaration, 10 outputs for labels 0-2 would
    # train and then leave nothing to ensemble. Declared, the data may lack classes.
    with pytest.raises(TaskError, match=r"^the model outputs 10 scores per example but the targets hold 3 classes "
                                        r"\(0-2\); give the model 3 outputs, or declare num_classes = 10"):
        validate_task(load_task(write_task(tmp_path, THREE_LABELS)))
    assert validate_task(load_task(write_task(tmp_path, THREE_LABELS + "num_classes = 10\n"))).num_classes == 10
    with pytest.raises(TaskError, match=r"^num_classes: the task declares 2 classes but the targets include class 2"):
        validate_task(load_task(write_task(tmp_path, THREE_LABELS + "num_classes = 2\n")))
    with pytest.raises(TaskError, match=r"num_classes must be an integer of 2 or more, got 'ten'"):
        load_task(write_task(tmp_path, THREE_LABELS + "num_classes = 'ten'\n"))
    with pytest.raises(TaskError, match=r"^num_classes: the task declares 3 classes but kind = 'regression'"):
        prepare_task_data(load_task(write_task(tmp_path, FLOAT_TARGETS + 'kind = "regression"\nnum_classes = 3\n')))
    soft = splits_of(np.full((4, 3), 1 / 3), np.full((4, 3), 1 / 3), np.full((4, 3), 1 / 3))
    with pytest.raises(TaskError, match=r"^num_classes: the task declares 4 classes but the probability targets"):
        resolve_kind("classification", soft, classes=4)


def test_caviar_check_refuses_bad_targets_with_one_line(tmp_path):
    task = write_task(tmp_path, FLOAT_TARGETS)
    done = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", "check", task], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train targets are floats (0.0344828" in lines[0]


def test_preflight_judges_each_kind_by_its_own_loss():
    report = run_preflight(load_task(os.path.join(TASKS, "regression_task.py")), overfit_steps=300, dims_per_tensor=4)
    assert report.kind == "regression" and report.title == "regression"
    initial = next(c for c in report.checks if c.name == "initial loss")
    assert "variance + mean" in initial.expected
    overfit = next(c for c in report.checks if c.name == "overfit tiny subset")
    assert "accuracy" not in overfit.expected and "right" not in overfit.value
    assert next(c for c in report.checks if c.name == "gradient check").status == "pass"
    soft = run_preflight(load_task(os.path.join(TASKS, "soft_label_task.py")), overfit_steps=300, dims_per_tensor=4)
    assert soft.passed and soft.title == "3 classes (probability targets)"


def test_fused_arrays_refuse_other_kinds_and_objectives():
    assert "kind 'regression'" in unfusable_reason(load_task(os.path.join(TASKS, "regression_task.py")))
    assert "defines metrics" in unfusable_reason(load_task(os.path.join(TASKS, "custom_metric_task.py")))
    assert unfusable_reason(load_task(TINY_TASK)) is None
    task = load_task(os.path.join(TASKS, "soft_label_task.py"))
    task.kind = None  # even when the master could not know, the worker's array refuses soft labels
    spec = TrialSpec(0, 0, {"lr": 0.01, "batch_size": 32, "optimizer": "adam"}, 0, 1)
    with pytest.raises(NotFusable, match="soft labels"):
        FusedArray(task, prepare_task_data(load_task(os.path.join(TASKS, "soft_label_task.py"))), [spec],
                   torch.device("cpu"))


def test_not_learning_for_a_regressor_is_no_better_than_the_training_mean():
    at_mean = Observation(0, 1, score=-10.0, train_loss=10.0, val_loss=10.0, baseline_val_loss=10.0)
    assert not_learning_reason(at_mean) == NOT_LEARNING
    learned = Observation(0, 1, score=-5.0, train_loss=5.0, val_loss=5.0, baseline_val_loss=10.0)
    assert not_learning_reason(learned) is None
    assert not_learning_reason(Observation(0, 1, score=-5.0, train_loss=5.0, val_loss=5.0)) is None  # custom


def test_prediction_storage_is_estimated_and_warned_about_in_one_line(caplog):
    from types import SimpleNamespace

    from worker.check.validate import PREDICTIONS_WARN_BYTES, prediction_bytes, warn_if_large

    splits = prepare_task_data(load_task(TINY_TASK))  # 60 val + 60 test rows, 3 classes
    assert prediction_bytes(splits, 10, 2, "float16") == 10 * 2 * 120 * (3 * 2 + 20)
    assert prediction_bytes(splits, 10, 2, "none") == 0
    huge = SimpleNamespace(trials=PREDICTIONS_WARN_BYTES, keep_best=1, prediction_dtype="float16")
    with caplog.at_level("WARNING", logger="caviar"):
        warn_if_large(splits, huge, ema=False)
    assert len(caplog.records) == 1 and 'prediction_dtype = "none"' in caplog.records[0].getMessage()


def test_a_custom_kind_sweep_says_why_it_has_no_ensembles(tmp_path, caplog):
    from types import SimpleNamespace

    from orchestrator.app.lifecycle import build_ensembles
    from orchestrator.store.storage import Storage

    with caplog.at_level("WARNING", logger="caviar"):
        assert build_ensembles(Storage.from_uri(str(tmp_path)), SimpleNamespace(kind="custom")) is None
    assert [r.getMessage() for r in caplog.records] == [
        'ensembles not built: kind = "custom" outputs are the task\'s own, and caviar averages only class '
        'probabilities or regression outputs; the best checkpoint is the answer (load_ensemble(name="best") loads it)']
    # load_ensemble then says why there is nothing to load, not to run `caviar ensemble`, which would refuse too
    import re

    from orchestrator.ensemble.ensemble_run import read_ensembles
    from orchestrator.errors import StorageError
    from orchestrator.store import schema

    storage = Storage.from_uri(str(tmp_path))
    with pytest.raises(StorageError, match=r"no such file, and none can be built: no trial stored predictions \(the "
                                           r"task's kind is \"custom\".*answer is its best trial \(caviar top"):
        read_ensembles(storage)
    storage.write_bytes(schema.DATASET_PATH, b"")
    with pytest.raises(StorageError, match="none can be built"):  # the dataset row alone (prediction_dtype "none")
        read_ensembles(storage)
    storage.write_bytes("predictions/trial-0.parquet", b"")  # predictions stored: the ensembles can be built
    with pytest.raises(StorageError, match=rf"no such file \(build them: caviar ensemble {re.escape(str(tmp_path))}\)"):
        read_ensembles(storage)


def test_a_mean_and_variance_head_with_its_own_loss_is_told_to_declare_the_custom_kind(tmp_path):
    # (N, 2) outputs for (N,) targets: the Gaussian NLL takes them, a regression's MSE, MAE and R² cannot.
    body = FLOAT_TARGETS + textwrap.dedent("""
        import torch
        kind = "regression"
        def loss_fn(out, y):
            return torch.nn.functional.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())
    """)
    with pytest.raises(TaskError, match=r"model outputs have shape \(10, 2\) but the targets \(10,\); .*the task's "
                                        r'loss_fn takes such outputs, .* declare kind = "custom" with metrics$'):
        validate_task(load_task(write_task(tmp_path, body)))


@pytest.mark.parametrize("outputs", ["out.squeeze(1)", "out.reshape(-1)", "out.view_as(y)", "out[:, 0]"])
def test_a_loss_or_metric_that_gives_outputs_the_targets_shape_passes_the_broadcast_check(tmp_path, outputs):
    """The check computes each again with (N,) outputs: one that then raises (squeeze(1)) or agrees is shape-aware."""
    body = FLOAT_TARGETS + textwrap.dedent(f"""
        kind = "regression"
        objective = "val_abs_err"
        mode = "min"
        def build_model(config):
            return nn.Linear(3, 1)
        def loss_fn(out, y):
            return (({outputs} - y) ** 2).mean()
        def metrics(out, y):
            return {{"abs_err": float(({outputs} - y).abs().mean())}}
    """)
    validate_task(load_task(write_task(tmp_path, body)))


@pytest.mark.parametrize(("declared", "targets", "what"), [
    (None, [0, 1, 2], "classification"),
    ("multilabel", [[0, 1], [1, 1]], "multi-label"),
    ("custom", [0.5, 1.5], "custom"),
])
def test_standardize_targets_on_targets_that_are_not_regression_is_refused_not_ignored(declared, targets, what):
    with pytest.raises(TaskError) as caught:
        resolve_kind(declared, splits_of(targets, targets, targets), standardize=True)
    assert str(caught.value) == (f"standardize_targets: standardises regression targets, but these are {what} targets; "
                                 'remove it, or declare kind = "regression" if they are numbers')


def test_a_custom_kind_takes_targets_as_they_are_missing_labels_booleans_and_complex_numbers_too():
    missing = torch.tensor([[1.0, float("nan")], [0.5, 2.0]])  # a multi-task target with a label missing
    for y in (missing, torch.tensor([True, False]), torch.tensor([1 + 2j, 3j])):
        assert resolve_kind("custom", {"train": y, "val": y, "test": y}).kind == "custom"
    # elsewhere NaN is refused (the default losses and metrics would turn it into NaN), saying what takes it
    said = refusal("regression", [[0.5, 1.0], [0.5, float("nan")]], [[1.5, 1.0]], [[2.0, 1.0]])
    assert said.endswith("every target must be finite (for labels that are missing, declare kind = \"custom\" with a "
                         "loss_fn and metrics that skip them)")
    assert "train targets contain nan (at index (1, 1))" in said  # which row to fix, as the inputs' line says


def test_a_nan_loss_without_a_loss_fn_names_the_default_loss_and_the_outputs(tmp_path):
    # was: "loss_fn gives nan on the first batch", for a task that has no loss_fn
    body = FLOAT_TARGETS + textwrap.dedent("""
        import torch
        kind = "regression"
        class Nan(nn.Module):
            def forward(self, x):
                return torch.full((len(x), 1), float("nan"))
        def build_model(config):
            return nn.Sequential(nn.Linear(3, 1), Nan())
    """)
    with pytest.raises(TaskError, match=r"^the default loss gives nan on the first batch of an untrained model; the "
                                        r"model's outputs already hold it$"):
        validate_task(load_task(write_task(tmp_path, body)))


def test_counts_given_as_integers_to_a_one_output_regressor_are_told_the_regression_way(tmp_path):
    # Integer targets are classes; a model with one output per example and counts 0-5 most likely meant numbers.
    body = textwrap.dedent("""
        def load_data():
            x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
            y = np.arange(30) % 6
            return (x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])
        def build_model(config):
            return nn.Linear(3, 1)
    """)
    with pytest.raises(TaskError, match=r"the model outputs 1 score per example but the targets have 6 classes: .*; if "
                                        r"the targets are numbers \(counts\), give them as floats "
                                        r"\(y.astype\(\"float32\"\)\) with kind = \"regression\"$"):
        validate_task(load_task(write_task(tmp_path, body)))


@pytest.mark.parametrize("name", ["mse", "loss"])
def test_a_task_metric_named_as_a_builtin_column_is_refused_not_swapped_in(tmp_path, name):
    # was: the task's "mse" (of one output) replaced caviar's val_mse in the tables and ranked the trials, while the
    # ensembles were chosen by caviar's MSE over every output, both called val_mse
    body = FLOAT_TARGETS + textwrap.dedent(f"""
        kind = "regression"
        def build_model(config):
            return nn.Linear(3, 1)
        def metrics(out, y):
            return {{"{name}": float(((out[:, 0] - y) ** 2).mean())}}
    """)
    with pytest.raises(TaskError, match=rf"^metrics: '{name}' is a name caviar reports itself \(val_{name}\); give "
                                        rf"yours another name, e.g. '{name}_mine'$"):
        validate_task(load_task(write_task(tmp_path, body)))


@pytest.mark.parametrize(("objective", "mode", "better"), [("val_r2", "min", "higher"), ("val_mse", "max", "lower")])
def test_a_mode_against_a_builtin_objectives_direction_is_refused(tmp_path, objective, mode, better):
    # was: accepted, and the sweep pruned its best trials and chose its worst ensemble (R² minimised)
    body = FLOAT_TARGETS + f'kind = "regression"\nobjective = "{objective}"\nmode = "{mode}"\n'
    with pytest.raises(TaskError, match=rf"mode = '{mode}' for {objective}, which is better when {better}: the sweep "
                                        r"would keep its worst trials; set mode = '(max|min)' or leave mode out$"):
        load_task(write_task(tmp_path, body))


@pytest.mark.parametrize("loss, warned", [
    ("torch.nn.functional.poisson_nll_loss(outputs.reshape(targets.shape), targets, log_input=True)", True),
    ("torch.nn.functional.mse_loss(outputs.reshape(targets.shape), targets)", False),
    ("torch.maximum(0.9 * (targets - outputs.reshape(targets.shape)), "  # a 90% quantile: scales with the units
     "-0.1 * (targets - outputs.reshape(targets.shape))).mean()", False),
])
def test_an_own_loss_that_ranks_otherwise_in_the_targets_units_is_named_before_the_sweep(tmp_path, caplog, loss,
                                                                                          warned):
    """standardize_targets with a Poisson loss trained on standardised (negative) counts, while val_loss and the
    ensembles evaluate it on outputs mapped back: another objective, accepted in silence (a greedy ensemble read
    val_loss -3.17). A loss on predictions of the target only scales with the units and passes in silence."""
    from worker.check.contract import validate_contract

    source = open(os.path.join(TASKS, "poisson_regression_task.py")).read()
    source = source.replace('kind = "regression"', 'kind = "regression"\nstandardize_targets = True')
    source = source.replace("torch.nn.functional.poisson_nll_loss(outputs.reshape(targets.shape), targets, "
                            "log_input=True)", loss)
    path = tmp_path / "task.py"
    path.write_text(source)
    task = load_task(str(path))
    with caplog.at_level("WARNING", logger="caviar"):
        validate_contract(task, [{"lr": 0.01, "hidden": 8, "batch_size": 32, "optimizer": "adam"}])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("standardize_targets: loss_fn")]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert "Poisson log-rates" in lines[0] and "remove standardize_targets" in lines[0]
