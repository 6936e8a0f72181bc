"""Multi-label targets (N, L) of 0/1: each label a binary class, one logit per label.

Held to torch's own ``binary_cross_entropy_with_logits`` on plain tensors and in a trial; the kind
is inferred from 0/1 rows that are not one-hot and refused in one line where the targets or the
model's outputs do not fit it.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from orchestrator.errors import TaskError
from orchestrator.spec.task import load_task
from tests.conftest import ROOT
from worker.check.validate import validate_task
from worker.data.kinds import builtin_metrics, default_loss, resolve_kind
from worker.data.splits import prepare
from worker.train.trainer import TrialRun, TrialSpec, natural_outputs

MULTILABEL_TASK = os.path.join(ROOT, "tests", "tasks", "multilabel_task.py")
Y = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]])


def task_variant(path, old: str, new: str):
    """The multi-label task with one piece of its source replaced, written to ``path``."""
    source = open(MULTILABEL_TASK).read()
    assert old in source
    path.write_text(source.replace(old, new))
    return path


def test_zero_one_rows_that_are_not_one_hot_are_multilabel_and_other_forms_are_refused_in_one_line():
    kind = resolve_kind(None, {"train": Y, "val": Y[:2]})
    assert (kind.kind, kind.num_classes, kind.labels, kind.multilabel) == ("classification", 2, 3, True)
    assert resolve_kind("multilabel", {"train": Y[2:], "val": Y[2:]}).labels == 3  # one-hot rows, when declared
    with pytest.raises(TaskError, match="give class indices"):  # every row one-hot, undeclared: class indices
        resolve_kind(None, {"train": Y[2:] * 0 + torch.tensor([1, 0, 0]), "val": Y[3:]})
    with pytest.raises(TaskError, match=r"^load_data: train targets are float 0/1 rows with 2 ones in row 0, as "
                                        r"multi-label targets are; give integer labels \(y.astype\('int64'\)\)"):
        resolve_kind(None, {"train": Y.float(), "val": Y.float()})
    with pytest.raises(TaskError, match=r"^load_data: val targets include 2; multi-label targets are 0 or 1"):
        resolve_kind("multilabel", {"train": Y, "val": Y * 2})
    with pytest.raises(TaskError, match="differ in width across splits"):
        resolve_kind("multilabel", {"train": Y, "val": Y[:, :2]})
    with pytest.raises(TaskError, match="takes integer 0/1 labels of shape"):
        resolve_kind("multilabel", {"train": Y[:, 0], "val": Y[:, 0]})


def test_the_loss_is_binary_cross_entropy_per_label_and_the_metrics_count_pairs_and_rows():
    kind = resolve_kind(None, {"train": Y})
    z = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -0.2, -1.0], [1.0, 4.0, 0.3], [-1.0, -2.0, -0.1]])
    bce = F.binary_cross_entropy_with_logits(z, Y.float())
    assert float(default_loss(kind)(z, Y)) == pytest.approx(float(bce), rel=1e-6)
    metrics = builtin_metrics(kind, z, Y)
    right = ((z > 0).long() == Y)
    assert metrics["accuracy"] == pytest.approx(float(right.float().mean()))  # 10 of 12 pairs
    assert metrics["exact_match"] == pytest.approx(0.5)  # rows 0 and 1 wholly right
    assert metrics["log_loss"] == pytest.approx(float(bce), rel=1e-6)
    probs = natural_outputs(kind, z).exp()  # stored (as logs) for ensembles: one (1 - p, p) row per pair
    assert probs.shape == (12, 2) and torch.allclose(probs[:, 1], torch.sigmoid(z).reshape(-1))


def test_a_model_with_another_width_is_refused_before_the_sweep(tmp_path):
    task_file = task_variant(tmp_path / "narrow_task.py", "nn.Linear(h, 3)", "nn.Linear(h, 2)")
    with pytest.raises(TaskError, match=r"the model outputs shape \(\d+, 2\) but the multi-label targets \(\d+, 3\): "
                                        r"give the model one logit per label, shape \(batch, 3\)"):
        validate_task(load_task(str(task_file)))


def test_a_trial_reports_the_per_label_binary_cross_entropy():
    task = load_task(MULTILABEL_TASK)
    splits = prepare(task.get("load_data")(), normalize=task.normalize)
    run = TrialRun(task, splits, TrialSpec(0, 0, {"lr": 0.05, "hidden": 16, "batch_size": 32, "optimizer": "adam"},
                                           3, 3), torch.device("cpu"))
    rows = [run.train_epoch() for _ in range(3)]
    run.model.eval()
    with torch.no_grad():
        z = run.model(splits.x_val)
    assert rows[-1]["val_loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(z, splits.y_val.float())),
                                                 rel=1e-5)
    assert rows[-1]["val_accuracy"] == pytest.approx(float(((z > 0).long() == splits.y_val).float().mean()))
    assert dict(rows[-1]["metrics"])["val_exact_match"] == pytest.approx(
        float(((z > 0).long() == splits.y_val).all(dim=1).float().mean()))
    assert 0.0 <= rows[-1]["train_accuracy"] <= 1.0 and rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_caviar_check_refuses_the_head_caviar_run_refuses_and_names_the_labels(tmp_path):
    from worker.check.preflight import run_preflight

    report = run_preflight(load_task(MULTILABEL_TASK), dims_per_tensor=2, overfit_steps=20)
    assert report.title == "3 binary labels (multi-label)"  # not "2 classes": each label is a binary class
    # (batch, 3, 1): the flattened loss would train it as it is
    task_file = task_variant(tmp_path / "trailing_one_task.py", "nn.Linear(h, 3))",
                             "nn.Linear(h, 3), nn.Unflatten(1, (3, 1)))")
    message = r"the model outputs shape \(\d+, 3, 1\) but the multi-label targets \(\d+, 3\): give the model one logit"
    with pytest.raises(TaskError, match=message):  # as caviar run refuses it: on a training batch
        run_preflight(load_task(str(task_file)), dims_per_tensor=2, overfit_steps=20)
    with pytest.raises(TaskError, match=message):
        validate_task(load_task(str(task_file)))


def test_int32_labels_are_named_as_multilabel_rows_when_refused(tmp_path):
    task_file = task_variant(tmp_path / "int32_task.py", "astype(np.int64)", "astype(np.int32)")
    with pytest.raises(TaskError, match=r"^load_data: the targets are int32 multi-label 0/1 labels, and the default "
                                        r"loss \(torch's cross-entropy\) takes int64: give y.astype\('int64'\)"):
        validate_task(load_task(str(task_file)))


POS_WEIGHTED = '''
import torch.nn.functional as F


def loss_fn(outputs, targets):
    return F.binary_cross_entropy_with_logits(outputs, targets.{cast}, pos_weight=(outputs[0] * 0 + 2.0).detach())
'''


def test_a_float32_cast_in_a_bce_loss_fn_is_not_called_a_wrong_gradient(tmp_path):
    from worker.check.preflight import FAIL, PASS, WARN, run_preflight

    rows = {}
    for cast in ("float()", "to(outputs.dtype)"):  # the usual idiom computes in float32 on float64 outputs
        task_file = tmp_path / f"bce_{len(rows)}_task.py"
        task_file.write_text(open(MULTILABEL_TASK).read() + POS_WEIGHTED.replace("{cast}", cast))
        report = run_preflight(load_task(str(task_file)), dims_per_tensor=4, overfit_steps=20)
        rows[cast] = next(c for c in report.checks if c.name == "gradient check")
    assert rows["float()"].status == WARN and rows["float()"].status != FAIL
    assert rows["float()"].detail.startswith("loss_fn returns float32 on the float64 model copy")
    assert rows["to(outputs.dtype)"].status == PASS
