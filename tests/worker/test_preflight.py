"""Preflight checks on a correct model (passes) and deliberately broken ones (each must fail)."""

from __future__ import annotations

import math
import re
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from orchestrator.app.cli import app
from orchestrator.search.space import SearchSpace, choice, dropout, loguniform, randint, uniform
from orchestrator.spec.task import Task, load_task
from tests.conftest import TINY_TASK
from worker.check.preflight import (
    FAIL,
    PASS,
    WARN,
    error_level,
    gradient_check,
    preflight_config,
    run_preflight,
)


def blobs(n: int = 90, seed: int = 0):
    """Three separable 4-d blobs: tiny, and any working MLP learns them."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0, 0], [4, 4, 0, 0], [0, 4, 4, 0]], dtype=np.float32)
    y = rng.integers(0, 3, size=n)
    x = centers[y] + rng.normal(size=(n, 4)).astype(np.float32)
    return (x, y), (x[:30], y[:30]), (x[:30], y[:30])


def mlp(config) -> nn.Module:
    h = int(config["hidden"])
    layers = [nn.Linear(4, h), nn.Tanh()]
    if config.get("dropout", 0) > 0:
        layers.append(nn.Dropout(config["dropout"]))
    return nn.Sequential(*layers, nn.Linear(h, 3))


SPACE = SearchSpace({"lr": loguniform(1e-3, 1e-1), "hidden": randint(12, 20), "dropout": dropout(0.1, 0.5)})


def make_task(build_model=mlp, loss_fn=None) -> Task:
    namespace = SimpleNamespace(space=SPACE, load_data=blobs, build_model=build_model, loss_fn=loss_fn)
    return Task("test-task", namespace, SPACE)


def by_name(report):
    return {c.name: c for c in report.checks}


def overfit_row(task: Task):
    """The "overfit tiny subset" row of ``task``'s checks (2 gradient-checked dimensions: fast)."""
    return by_name(run_preflight(task, dims_per_tensor=2))["overfit tiny subset"]


def test_a_correct_model_passes_every_check():
    report = run_preflight(make_task(), dims_per_tensor=6)
    assert report.passed, report.checks
    checks = by_name(report)
    assert [c.status for c in report.checks] == [PASS] * 6  # the fifth: no searched range, nothing to build
    assert abs(float(checks["initial loss"].value) - math.log(3)) < 0.5 * math.log(3)
    # Every parameter tensor is checked, and a smooth (tanh) model in float64 is far below 1e-4.
    assert [t.name for t in report.tensors] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(t.dims >= 3 and t.max_rel_error < 1e-6 for t in report.tensors)
    assert report.config["dropout"] == 0.0  # regularisation off


def test_a_loss_of_the_tasks_own_is_judged_at_its_own_value_for_uniform_outputs():
    # A class-weighted, focal or scaled cross-entropy starts away from ln C on purpose: before, each FAILED the row
    # ("off by 61%" for a pos_weight-like weighting), so a correct task failed `caviar check`.
    weight = torch.tensor([1.0, 5.0, 0.2])
    for loss_fn in (lambda logits, y: 10 * F.cross_entropy(logits, y),
                    lambda logits, y: F.cross_entropy(logits, y, weight=weight),
                    lambda logits, y: F.nll_loss(F.log_softmax(logits, 1), y, reduction="sum") / 7):
        row = by_name(run_preflight(make_task(loss_fn=loss_fn), dims_per_tensor=2))["initial loss"]
        assert row.status == PASS and row.expected.startswith("the task's loss_fn at uniform outputs = "), row
    # What the row is for still holds: logits far from uniform at the start fail against the loss's own value.
    def loud(config):
        model = mlp(config)
        with torch.no_grad():
            model[-1].weight.mul_(40.0)
        return model

    report = run_preflight(make_task(build_model=loud, loss_fn=lambda o, y: 10 * F.cross_entropy(o, y)),
                           dims_per_tensor=2)
    assert by_name(report)["initial loss"].status == FAIL and not report.passed


class BrokenSquare(torch.autograd.Function):
    """x ** 2 whose backward forgets the factor 2: the kind of bug a gradient check exists for."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x


class SquareNet(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.first, self.last = nn.Linear(4, hidden), nn.Linear(hidden, 3)

    def forward(self, x):
        return self.last(BrokenSquare.apply(self.first(x)) * 0.1)


def test_a_broken_custom_layer_fails_the_gradient_check():
    report = run_preflight(make_task(build_model=lambda c: SquareNet(int(c["hidden"]))), dims_per_tensor=6)
    checks = by_name(report)
    assert checks["gradient check"].status == FAIL
    levels = {t.name: t.level for t in report.tensors}
    # Below the broken layer the gradient is off by 2x; the last layer's own gradient is right.
    assert levels["first.weight"] == "wrong" and levels["first.bias"] == "wrong"
    assert levels["last.weight"] in ("good", "ok")
    assert "first.weight" in checks["gradient check"].detail


class FrozenNet(nn.Module):
    """Its only trainable parameter shifts every logit equally, which softmax ignores: it cannot learn."""

    def __init__(self, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))
        self.shift = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.body(x).detach() + self.shift


def test_a_model_that_cannot_learn_fails_to_overfit():
    report = run_preflight(make_task(build_model=lambda c: FrozenNet(int(c["hidden"]))), overfit_steps=150,
                           dims_per_tensor=3)
    checks = by_name(report)
    assert checks["overfit tiny subset"].status == FAIL
    assert checks["gradient check"].status == FAIL  # detach() hides real gradients from backward
    assert not report.passed


def test_a_label_smoothing_loss_is_judged_against_the_least_loss_it_can_reach():
    """``F.cross_entropy(..., label_smoothing=0.1)`` stays near 0.5 at its best on 3 classes: a model that fits every
    example passes; one that cannot learn still fails."""
    def smoothed(logits, y):
        return F.cross_entropy(logits, y, label_smoothing=0.1)

    checks = by_name(run_preflight(make_task(loss_fn=smoothed), dims_per_tensor=2))
    assert checks["overfit tiny subset"].status == PASS, checks["overfit tiny subset"]
    assert "loss < 0.34" in checks["overfit tiny subset"].expected  # the smoothed floor, 0.291 on 3 classes, + 0.05
    frozen = by_name(run_preflight(make_task(loss_fn=smoothed, build_model=lambda c: FrozenNet(int(c["hidden"]))),
                                   overfit_steps=150, dims_per_tensor=2))
    assert frozen["overfit tiny subset"].status == FAIL


def test_a_model_that_raises_is_a_failed_row_not_a_crash():
    def explode(logits, y):
        raise RuntimeError("shape mismatch")

    report = run_preflight(make_task(loss_fn=explode), dims_per_tensor=2)
    *checks, space_ends, entries_read = report.checks
    assert all(c.status == FAIL and "shape mismatch" in c.detail for c in checks)
    assert entries_read.status == PASS  # the model builds: what it reads is known
    assert (space_ends.status, space_ends.value) == (WARN, "not run")  # each end would fail the same way
    assert space_ends.detail == ("the checked config itself fails: the model's forward pass or loss_fn raised "
                                 "RuntimeError")


def test_a_loss_cast_to_float32_is_not_called_a_wrong_gradient():
    # The usual binary loss, F.binary_cross_entropy_with_logits(z, y.float()), is float32 even on the float64 copy:
    # its centred differences are round-off, and every tensor read "wrong" though the gradient is right.
    def two_blobs():
        (x, y), val, test = blobs()
        return (x, y % 2), (val[0], val[1] % 2), (test[0], test[1] % 2)

    def binary_mlp(config):
        return nn.Sequential(nn.Linear(4, int(config["hidden"])), nn.Tanh(), nn.Linear(int(config["hidden"]), 1))

    def task_with(loss_fn):
        namespace = SimpleNamespace(space=SPACE, load_data=two_blobs, build_model=binary_mlp, loss_fn=loss_fn)
        return Task("binary-task", namespace, SPACE)

    float32 = by_name(run_preflight(task_with(lambda z, y: F.binary_cross_entropy_with_logits(z.squeeze(1), y.float())),
                                    dims_per_tensor=4))["gradient check"]
    assert float32.status == WARN and float32.value == "not run"
    assert "float32" in float32.detail and "targets.to(outputs.dtype)" in float32.detail
    same = by_name(run_preflight(task_with(lambda z, y: F.binary_cross_entropy_with_logits(z.squeeze(1),
                                                                                          y.to(z.dtype))),
                                 dims_per_tensor=4))["gradient check"]
    assert same.status == PASS, same


def test_relu_kinks_crossed_by_the_finite_difference_are_noted_not_failed():
    x = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -0.2, 0.1, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 3))
    with torch.no_grad():  # put example 0's pre-activation exactly on the kink
        model[0].bias.fill_(-float(model[0].weight.double() @ x[0]))
    tensors = {t.name: t for t in gradient_check(model, x, y, F.cross_entropy, dims_per_tensor=4)}
    assert tensors["0.bias"].kinks == 1
    assert tensors["0.bias"].level != "wrong"



class FunctionalRelu(nn.Module):
    """A ReLU-like call as a function in forward (``torch.relu``, ``x.clamp(min=0)``): no module for a hook."""

    def __init__(self, activation):
        super().__init__()
        self.first, self.last, self.activation = nn.Linear(4, 1), nn.Linear(1, 3), activation

    def forward(self, x):
        return self.last(self.activation(self.first(x)))


@pytest.mark.parametrize("activation", [torch.relu, F.relu, lambda h: h.clamp(min=0), lambda h: F.hardtanh(h, 0, 6)],
                         ids=["torch.relu", "F.relu", "clamp", "hardtanh"])
def test_functional_relu_kinks_crossed_by_the_finite_difference_are_noted_not_failed(activation):
    """The same kink reached through a function: it was not seen, and a correct model read "wrong gradient"."""
    x = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.3, -0.2, 0.1, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    torch.manual_seed(0)
    model = FunctionalRelu(activation)
    with torch.no_grad():  # put example 0's pre-activation exactly on the kink
        model.first.bias.fill_(-float(model.first.weight.double() @ x[0]))
    tensors = {t.name: t for t in gradient_check(model, x, y, F.cross_entropy, dims_per_tensor=4)}
    assert tensors["first.bias"].kinks == 1
    assert tensors["first.bias"].level != "wrong"


class PythonRandomDepth(nn.Module):
    """Stochastic depth drawn from Python's ``random`` (as older code does), not torch's generator."""

    def __init__(self):
        super().__init__()
        self.first, self.block, self.last = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        import random

        h = torch.tanh(self.first(x))
        if self.training and random.random() < 0.5:
            return self.last(h)
        return self.last(h + torch.tanh(self.block(h)))


def test_stochastic_depth_drawn_from_pythons_random_is_not_called_a_wrong_gradient():
    """Each finite difference's two forward passes took other paths: "wrong gradient" (relative error ~1) on a correct
    model. Python's and numpy's generators are now seeded before each pass, as torch's was, and put back after."""
    import random

    x, y = torch.from_numpy(blobs(8)[0][0]), torch.from_numpy(blobs(8)[0][1])
    torch.manual_seed(0)
    random.seed(123)
    before = random.getstate()
    tensors = gradient_check(PythonRandomDepth(), x, y, F.cross_entropy, dims_per_tensor=6)
    assert all(t.level in ("good", "ok") for t in tensors), tensors
    assert random.getstate() == before

def test_error_levels_follow_the_course_notes():
    assert [error_level(e) for e in (0.5, 1e-3, 1e-5, 1e-9)] == ["wrong", "suspicious", "ok", "good"]


def test_the_config_is_the_midpoint_with_regularisation_off():
    space = SearchSpace({"lr": loguniform(1e-4, 1.0), "layers": randint(1, 3), "act": choice(["relu", "tanh", "elu"]),
                         "dropout": dropout(0.1, 0.5), "weight_decay": loguniform(1e-6, 1e-2), "batch_size": 32})
    config = preflight_config(space)
    assert math.isclose(config["lr"], 1e-2) and config["layers"] == 2 and config["act"] == "tanh"
    assert config["dropout"] == 0.0 and config["weight_decay"] == 0.0 and config["batch_size"] == 32
    assert preflight_config(space, how="sample", seed=1) == preflight_config(space, how="sample", seed=1)


def test_dropout_and_stochastic_depth_named_otherwise_are_off_too():
    # a transformer's attn_dropout or a timm model's drop_path_rate stayed on: the overfit check failed a correct model
    knobs = ("attn_dropout", "hidden_dropout_prob", "drop_path_rate", "attn_drop_rate", "drop_connect_rate",
             "stochastic_depth_prob", "L2_penalty")
    space = SearchSpace({**{name: uniform(0.1, 0.3) for name in knobs}, "hidden": 64, "droplets": 3})
    config = preflight_config(space)
    assert all(config[name] == 0.0 for name in knobs)
    assert (config["hidden"], config["droplets"]) == (64, 3)


def test_the_cli_prints_a_table_and_exits_non_zero_on_failure(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["check", TINY_TASK, "--dims", "3"])
    assert ok.exit_code == 0, ok.output
    assert "initial loss" in ok.output and "gradient check" in ok.output and "PASS" in ok.output
    broken = tmp_path / "scaled_loss.py"
    broken.write_text(open(TINY_TASK).read() + textwrap.dedent("""

        import torch.nn.functional as F


        def loss_fn(logits, y):
            return 10 * F.cross_entropy(logits, y)
    """))
    bad = runner.invoke(app, ["check", str(broken), "--dims", "3", "--steps", "50"])
    assert bad.exit_code == 1, bad.output
    assert "FAIL" in bad.output


@pytest.mark.parametrize("device", ["tpu", "cuda:x", *(["cuda"] if not torch.cuda.is_available() else []),
                                    f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"])
def test_a_device_the_check_cannot_use_is_one_line_naming_the_option(device):
    # was a traceback: "Torch not compiled with CUDA enabled" (an AssertionError), or torch's list of device types
    result = CliRunner().invoke(app, ["check", TINY_TASK, "--dims", "3", "--device", device])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"caviar: error: option '--device': device {device!r}: "), line


def test_int32_class_indices_are_refused_by_caviar_check_in_the_line_caviar_run_uses(tmp_path):
    task = tmp_path / "int32_labels.py"
    task.write_text(open(TINY_TASK).read().replace("y = rng.integers(0, 3, size=300)",
                                                   "y = rng.integers(0, 3, size=300).astype(np.int32)"))
    result = CliRunner().invoke(app, ["check", str(task), "--dims", "3"])
    # was: a table of FAIL rows with torch's "expected target dtype to be Long or Byte, but got Int"; the command's
    # entry point turns the TaskError into its one line and exit 2 (test_kinds.py runs it in a process)
    assert "FAIL" not in result.output and str(result.exception).startswith(f"task {str(task)!r}: load_data: the "
                                                                            "targets are int32 class indices")


def test_float32_class_weights_in_a_loss_fn_are_not_called_a_failed_gradient_check(tmp_path):
    task = tmp_path / "weighted.py"
    task.write_text(open(TINY_TASK).read() + textwrap.dedent("""

        import torch
        import torch.nn.functional as F

        WEIGHTS = torch.tensor([1.0, 2.0, 0.5])  # float32, as class weights are written


        def loss_fn(outputs, y):
            return F.cross_entropy(outputs, y, weight=WEIGHTS)
    """))
    result = CliRunner().invoke(app, ["check", str(task), "--dims", "3"])
    assert result.exit_code == 0, result.output  # was: FAIL, "expected scalar type Double but found Float"
    assert "not run" in result.output and "FAIL" not in result.output


BROADCASTING_REGRESSION = textwrap.dedent("""
    import numpy as np
    import torch
    from torch import nn
    from orchestrator.search.space import loguniform

    kind = "regression"
    space = {"lr": loguniform(1e-3, 1e-2), "batch_size": 32, "optimizer": "adam"}


    def loss_fn(outputs, y):
        return torch.nn.functional.mse_loss(outputs, y)  # (32, 1) against (32,): every output against every target


    def load_data():
        x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
        y = (2 * x[:, 0]).astype(np.float32)
        return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])


    def build_model(config):
        return nn.Linear(3, 1)
""")


def test_a_task_caviar_run_refuses_is_refused_by_caviar_check_in_the_same_line(tmp_path):
    broadcasting = tmp_path / "broadcasting.py"
    broadcasting.write_text(BROADCASTING_REGRESSION)
    result = CliRunner().invoke(app, ["check", str(broadcasting), "--dims", "3", "--steps", "50"])
    # was: PASS rows and a vague "cannot fit 20 examples" (or, for a mean-and-variance head, "all checks passed")
    assert "FAIL" not in result.output and "PASS" not in result.output
    assert str(result.exception).startswith(f"task {str(broadcasting)!r}: loss_fn: outputs (32, 1) and targets (32,) "
                                            "broadcast to (32, 32)")
    two_outputs = tmp_path / "mean_and_variance.py"  # the Gaussian NLL takes them; MSE, MAE and R² cannot
    two_outputs.write_text(BROADCASTING_REGRESSION.replace("nn.Linear(3, 1)", "nn.Linear(3, 2)").replace(
        "torch.nn.functional.mse_loss(outputs, y)",
        "torch.nn.functional.gaussian_nll_loss(outputs[:, 0], y, outputs[:, 1].exp())"))
    result = CliRunner().invoke(app, ["check", str(two_outputs), "--dims", "3", "--steps", "50"])
    assert "all checks passed" not in result.output
    assert 'declare kind = "custom" with metrics' in str(result.exception)


def test_a_regression_trained_by_its_own_loss_is_not_judged_against_the_mse_of_an_untrained_model(tmp_path):
    # was: WARN "variance + mean² of the targets = 5.3", "off by 78%: check the loss scaling and the last layer"
    quantile = tmp_path / "quantile.py"
    quantile.write_text(BROADCASTING_REGRESSION.replace(
        "torch.nn.functional.mse_loss(outputs, y)",
        "torch.maximum(0.9 * (y - outputs[:, 0]), -0.1 * (y - outputs[:, 0])).mean()  # a 90% quantile"))
    report = run_preflight(load_task(str(quantile)), dims_per_tensor=3, overfit_steps=50)
    initial = by_name(report)["initial loss"]
    assert initial.status == PASS and initial.expected == "-" and "--expected-loss" in initial.detail


def test_a_regression_trained_by_huber_loss_on_float32_targets_passes_the_gradient_check(tmp_path):
    # torch's huber_loss takes float64 outputs with float32 targets forward, but its backward raised "Found dtype
    # Float but expected Double": caviar check failed the row of a task that trains as written.
    huber = tmp_path / "huber.py"
    huber.write_text(BROADCASTING_REGRESSION.replace("torch.nn.functional.mse_loss(outputs, y)",
                                                     "torch.nn.functional.huber_loss(outputs.squeeze(1), y)"))
    gradients = by_name(run_preflight(load_task(str(huber)), dims_per_tensor=3, overfit_steps=20))["gradient check"]
    assert gradients.status == PASS, gradients


class PaddedTagger(nn.Module):
    """A BiLSTM over token ids padded with 0 (``padding_idx=0``): the backward pass reads the padding, so the loss
    depends on the padding row, whose gradient torch zeroes on purpose."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 3, padding_idx=0)
        self.lstm = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.lstm(self.embed(x))[0])


def test_an_embeddings_padding_row_is_not_called_a_wrong_gradient():
    # Before: `caviar check` failed such a tagger with "wrong gradient in embed.weight" whenever it sampled row 0.
    torch.manual_seed(0)
    x = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [2, 2, 2, 2, 1]])
    y = torch.tensor([[0, 1, 0, -100, -100], [1, 1, -100, -100, -100], [0, 0, 1, 1, 0]])
    def loss(outputs, targets):
        return F.cross_entropy(outputs.transpose(1, 2), targets)

    checks = {t.name: t for t in gradient_check(PaddedTagger(), x, y, loss, dims_per_tensor=100)}
    assert checks["embed.weight"].dims == 15  # every dimension but the padding row's three
    assert checks["embed.weight"].level in ("good", "ok")


class AuxHead(nn.Module):
    """Inception-style: (logits, aux) in training mode, logits in eval mode."""

    def __init__(self, config):
        super().__init__()
        h = int(config["hidden"])
        self.body, self.head, self.aux = nn.Sequential(nn.Linear(4, h), nn.Tanh()), nn.Linear(h, 3), nn.Linear(h, 3)

    def forward(self, x):
        h = self.body(x)
        return (self.head(h), self.aux(h)) if self.training else self.head(h)


def test_a_model_with_an_auxiliary_head_trained_by_the_tasks_loop_is_checked_in_eval_mode():
    def with_aux_loss(model, optimizer, batches, config):  # the loop that knows the tuple (never called here)
        raise AssertionError

    namespace = SimpleNamespace(space=SPACE, load_data=blobs, build_model=AuxHead, train_epoch=with_aux_loss)
    report = run_preflight(Task("aux-task", namespace, SPACE), dims_per_tensor=4)
    # Every row failed: "AttributeError: 'tuple' object has no attribute 'shape'".
    assert report.passed and all(c.status == PASS for c in report.checks), report.checks
    assert "returns tuple in training mode" in report.mode_note and "eval mode" in report.mode_note
    assert not run_preflight(make_task(), dims_per_tensor=2).mode_note  # a plain model: training mode, as before


def test_a_sparse_embedding_passes_every_check():
    """Sparse gradients: Adam refused them in the overfit check, and the gradient check indexed them."""
    class Bag(nn.Module):
        def __init__(self, config):
            super().__init__()
            width = int(config["hidden"])
            self.bag, self.head = nn.EmbeddingBag(12, width, sparse=True), nn.Linear(width, 3)
            self.drop = nn.Dropout(config["dropout"])

        def forward(self, x):
            return self.head(self.drop(self.bag(x)))

    def ids():  # three ids per example, drawn from four of its class's own
        rng = np.random.default_rng(0)
        return tuple((y[:, None] * 4 + rng.integers(0, 4, size=(len(y), 3)), y) for _, y in blobs())

    namespace = SimpleNamespace(space=SPACE, load_data=ids, build_model=Bag)
    report = run_preflight(Task("sparse-task", namespace, SPACE), dims_per_tensor=4)
    assert report.passed and all(c.status == PASS for c in report.checks), report.checks


def test_a_model_with_torch_weight_norm_passes_the_gradient_check():
    """torch.nn.utils.weight_norm leaves a computed weight that torch's deepcopy refuses: the gradient check's row
    failed with torch's 'Only Tensors created explicitly by the user ... support the deepcopy protocol'."""
    import warnings

    from torch.nn.utils import weight_norm

    def normed(config):
        h = int(config["hidden"])
        with warnings.catch_warnings():  # torch's deprecation of weight_norm: still in use in older code
            warnings.simplefilter("ignore")
            first = weight_norm(nn.Linear(4, h))
        return nn.Sequential(first, nn.Tanh(), nn.Linear(h, 3), nn.Dropout(config["dropout"]))

    report = run_preflight(make_task(build_model=normed), dims_per_tensor=4)
    assert by_name(report)["gradient check"].status == PASS, by_name(report)["gradient check"]
    assert {"0.weight_g", "0.weight_v"} <= {t.name for t in report.tensors}


def test_tabular_inputs_repeated_under_different_labels_do_not_fail_the_overfit_check():
    """27 distinct rows in 600 with noisy labels: the tiny subset used to hold one input twice under two labels, which
    no model fits ("95% right, 500 steps": FAIL on a valid task); it now takes distinct inputs."""
    def few_values():
        rng = np.random.default_rng(0)
        x = rng.integers(0, 3, size=(600, 3)).astype(np.float32)
        y = ((x.sum(1) + rng.integers(0, 2, 600)) % 3).astype(np.int64)
        return (x, y), (x[:60], y[:60]), (x[60:120], y[60:120])

    namespace = SimpleNamespace(space=SPACE, load_data=few_values,
                                build_model=lambda c: nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 3)))
    overfit = by_name(run_preflight(Task("few-values", namespace, SPACE), dims_per_tensor=2))["overfit tiny subset"]
    assert overfit.status == PASS, overfit


def offset_regression(n: int = 300):
    """Targets near 300 (temperatures in kelvin) varying by a few units with the inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (300 + x @ np.array([3, -2, 1, 0.5], np.float32)).astype(np.float32)
    return (x, y), (x[:30], y[:30]), (x[30:60], y[30:60])


class IgnoresInputs(nn.Module):
    """A regressor whose forward pass drops its inputs (a wrong variable name): it can learn the targets' mean only."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(torch.zeros_like(x))


def test_the_overfit_check_of_a_regression_is_judged_against_the_targets_spread_not_their_offset():
    """Against mean(y^2) = 90000, a model that learnt only the offset 300 passed ("4383 (385 steps)", "loss < 4468");
    against the targets' variance it fails, and says the targets were not standardised; standardised, a working MLP
    passes."""
    space = SearchSpace({"hidden": randint(12, 20)})

    def task(build_model, standardize):
        namespace = SimpleNamespace(space=space, load_data=offset_regression, build_model=build_model)
        return Task("offset", namespace, space, kind="regression", standardize_targets=standardize)

    blind = by_name(run_preflight(task(lambda c: IgnoresInputs(int(c["hidden"])), False), dims_per_tensor=2))
    assert blind["overfit tiny subset"].status == FAIL, blind["overfit tiny subset"]
    working = lambda c: nn.Sequential(nn.Linear(4, int(c["hidden"])), nn.Tanh(), nn.Linear(int(c["hidden"]), 1))  # noqa: E731
    standardized = by_name(run_preflight(task(working, True), dims_per_tensor=2))
    assert standardized["overfit tiny subset"].status == PASS, standardized["overfit tiny subset"]
    raw = overfit_row(task(working, False))
    assert raw.status == FAIL and "set standardize_targets = True" in raw.detail, raw


def test_a_batch_norm_model_at_batch_size_1_fails_a_row_as_caviar_run_refuses_it():
    """Every check ran on batches of 4 to 1024 examples: "all checks passed", then caviar run refused the task (torch's
    "Expected more than 1 value per channel when training"). The config's own batch is now a failed row."""
    space = SearchSpace({"hidden": randint(12, 20), "batch_size": 1})

    def normed(config):
        h = int(config["hidden"])
        return nn.Sequential(nn.Linear(4, h), nn.BatchNorm1d(h), nn.Tanh(), nn.Linear(h, 3))

    report = run_preflight(Task("bn", SimpleNamespace(space=space, load_data=blobs, build_model=normed), space),
                           dims_per_tensor=2)
    assert not report.passed
    batch = by_name(report)["a training batch"]
    assert batch.status == FAIL and "Expected more than 1 value per channel" in batch.detail, batch


def pinball_90(outputs, y):
    error = y - outputs.reshape(y.shape)
    return torch.maximum(0.9 * error, -0.1 * error).mean()


def poisson_on_log_rates(outputs, y):
    return F.poisson_nll_loss(outputs.reshape(y.shape), y, log_input=True)


def counts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = rng.poisson(np.exp(1.0 + 0.8 * x[:, 0] - 0.5 * x[:, 1])).astype(np.float32)
    return (x, y), (x[:30], y[:30]), (x[30:60], y[30:60])


def spread_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (20 * x[:, 0] - 10 * x[:, 1] + rng.normal(size=300)).astype(np.float32)
    return (x, y), (x[:30], y[:30]), (x[30:60], y[30:60])


@pytest.mark.parametrize(("loss_fn", "load_data", "standardize"), [(pinball_90, spread_regression, False),
                                                                   (pinball_90, spread_regression, True),
                                                                   (poisson_on_log_rates, counts, False)])
def test_a_regressions_own_loss_is_judged_in_its_own_units_by_the_overfit_check(loss_fn, load_data, standardize):
    """The bar was 5% of the targets' variance, in squared units: a model ignoring its inputs passed in one step with a
    90% pinball loss ("7.676 (1 steps)", "loss < 15.84") and with a Poisson loss on log-rates ("0.6472 (1 steps)",
    "loss < 0.7374"). The loss must now close the gap from the best constant to an exact fit as MSE must."""
    space = SearchSpace({"hidden": randint(12, 20)})

    def task(build_model):
        namespace = SimpleNamespace(space=space, load_data=load_data, loss_fn=loss_fn, build_model=build_model)
        return Task("own-loss", namespace, space, kind="regression", standardize_targets=standardize)

    blind = by_name(run_preflight(task(lambda c: IgnoresInputs(int(c["hidden"]))), dims_per_tensor=2))
    assert blind["overfit tiny subset"].status == FAIL, blind["overfit tiny subset"]
    working = lambda c: nn.Sequential(nn.Linear(4, int(c["hidden"])), nn.ReLU(), nn.Linear(int(c["hidden"]), 1))  # noqa: E731
    seeing = overfit_row(task(working))
    assert seeing.status == PASS, seeing


def gaussian_nll(outputs, y):
    mean, log_var = outputs[:, 0], outputs[:, 1]
    return (0.5 * (log_var + (y - mean) ** 2 / log_var.exp())).mean()


def small_targets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (0.05 * np.tanh(x[:, 0]) + 0.001 * rng.normal(size=200)).astype(np.float32)
    return (x, y), (x[:40], y[:40]), (x[40:80], y[40:80])


class MeanAndLogVariance(nn.Module):
    """A (mean, log variance) head whose log variance starts at -4, so a Gaussian NLL starts below 0."""

    def __init__(self, hidden: int, blind: bool):
        super().__init__()
        self.blind = blind
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        with torch.no_grad():
            self.net[2].bias.copy_(torch.tensor([0.0, -4.0]))

    def forward(self, x):
        return self.net(torch.zeros_like(x) if self.blind else x)


def test_a_custom_loss_that_starts_below_zero_must_still_fall_to_pass_the_overfit_check():
    """A Gaussian NLL starting at -2 was under its bar (5% of |-2| above 0) before any step: a model that ignores
    its inputs passed "overfit tiny subset" in one step. It must now fall by 95% of its first value's size."""
    space = SearchSpace({"hidden": randint(12, 20)})

    def task(blind):
        namespace = SimpleNamespace(space=space, load_data=small_targets, loss_fn=gaussian_nll,
                                    metrics=lambda outputs, y: {"nll": float(gaussian_nll(outputs, y))},
                                    build_model=lambda c: MeanAndLogVariance(int(c["hidden"]), blind))
        return Task("nll", namespace, space, kind="custom", objective="val_nll", mode="min")

    blind = overfit_row(task(True))
    assert blind.status == FAIL, blind
    seeing = overfit_row(task(False))
    assert seeing.status == PASS, seeing


def flat_pinball_90(outputs, y):
    error = y.view(-1) - outputs.view(-1)  # view: a model's outputs are contiguous, and free ones must be too
    return torch.maximum(0.9 * error, -0.1 * error).mean()


def two_targets():
    (x, y), _, _ = spread_regression()
    y = np.stack([y, -0.5 * y + x[:, 2]], axis=1)
    return (x, y), (x[:30], y[:30]), (x[30:60], y[30:60])


class TwoOutputs(nn.Module):
    def __init__(self, hidden: int, blind: bool):
        super().__init__()
        self.blind = blind
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net(torch.zeros_like(x) if self.blind else x)


def test_a_loss_that_views_its_outputs_is_judged_in_its_own_units_too():
    """The best constant prediction was fitted as one row expanded over the examples, which a loss calling .view()
    on two outputs per example could not take: the check then fell back to the targets' variance, and a model
    ignoring its inputs passed."""
    space = SearchSpace({"hidden": randint(12, 20)})

    def task(blind):
        namespace = SimpleNamespace(space=space, load_data=two_targets, loss_fn=flat_pinball_90,
                                    build_model=lambda c: TwoOutputs(int(c["hidden"]), blind))
        return Task("two", namespace, space, kind="regression", standardize_targets=False)

    blind = overfit_row(task(True))
    assert blind.status == FAIL and blind.detail.startswith("cannot fit 20 examples"), blind
    seeing = overfit_row(task(False))
    assert seeing.status == PASS, seeing


def negative_binomial_nll(outputs, y):
    mean, dispersion = outputs[:, 0].exp(), outputs[:, 1].exp()
    log_likelihood = (torch.lgamma(y + dispersion) - torch.lgamma(dispersion) - torch.lgamma(y + 1)
                      + dispersion * torch.log(dispersion / (dispersion + mean))
                      + y * torch.log(mean / (dispersion + mean)))
    return -log_likelihood.mean()


def test_a_custom_loss_whose_least_value_is_above_zero_is_judged_against_that_value():
    """A negative binomial NLL of counts stays above 0 at its least on 20 of them: a model that fits them ("1.259 (500
    steps)") failed against "loss < 0.2192", 5% of its first value above 0, and was told it cannot learn. It must now
    fall 95% of the way to the least value free outputs reach; one ignoring its inputs still fails."""
    space = SearchSpace({"hidden": randint(12, 20)})

    def task(blind):
        namespace = SimpleNamespace(space=space, load_data=counts, loss_fn=negative_binomial_nll,
                                    metrics=lambda outputs, y: {"nll": float(negative_binomial_nll(outputs, y))},
                                    build_model=lambda c: MeanAndLogVariance(int(c["hidden"]), blind))
        return Task("counts", namespace, space, kind="custom", objective="val_nll", mode="min")

    seeing = overfit_row(task(False))
    assert seeing.status == PASS, seeing
    blind = overfit_row(task(True))
    assert blind.status == FAIL, blind


def test_caviar_check_names_splits_that_share_examples_as_caviar_run_does(caplog):
    """blobs() gives val and test the same 30 examples: caviar run warned, caviar check said "all checks passed"."""
    with caplog.at_level("WARNING", logger="caviar"):
        report = run_preflight(make_task(), dims_per_tensor=2)
    assert report.passed
    [line] = [r.getMessage() for r in caplog.records if "val and test" in r.getMessage()]
    assert line.startswith("load_data: val and test hold the same 30 examples")


class _DoubledBackward(torch.autograd.Function):
    """The identity whose backward doubles the gradient: a wrong gradient the check must still name."""

    @staticmethod
    def forward(ctx, v):
        return v.clone()

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def test_a_right_gradient_on_targets_in_large_units_is_not_called_wrong():
    # Before: targets trained as they are (a price near 1e4 beside a rate near 1e-3) give an MSE near 3e7, whose
    # centred differences carry ~1e-3 of round-off, and `caviar check` failed a plain Linear-Tanh-Linear model with
    # "wrong gradient in 2.weight" (rel. error 0.04 on the small output's row).
    torch.manual_seed(0)
    x = torch.randn(20, 4)
    y = torch.stack([20 + torch.randn(20), 1e4 + 200 * torch.randn(20), 1e-3 + 1e-4 * torch.randn(20)], 1)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    checks = gradient_check(model, x, y, F.mse_loss, dims_per_tensor=20)
    assert all(t.level in ("good", "ok") for t in checks), checks

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 3)

        def forward(self, v):
            return self.b(_DoubledBackward.apply(torch.tanh(self.a(v))))

    broken = {t.name: t for t in gradient_check(Broken(), x, y, F.mse_loss, dims_per_tensor=20)}
    assert broken["a.weight"].level == "wrong" and broken["a.bias"].level == "wrong"


def rate_and_price(n: int = 300):
    """Two outputs in far-apart units: a rate near 1e-3 first, a price near 1e4 second."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.stack([1e-3 + 1e-4 * x[:, 0], 1e4 + 500 * x[:, 1]], 1).astype(np.float32)
    return (x, y), (x[:30], y[:30]), (x[30:60], y[30:60])


def test_the_overfit_hint_names_every_outputs_scale_not_only_the_first():
    # Before: "the targets (mean 0.000951, sd 9.9e-05) are trained on as they are: set standardize_targets = True",
    # the rate's scale, which asks for nothing; the price near 1e4 that the loss is made of went unnamed.
    space = SearchSpace({"hidden": randint(12, 20)})
    build = lambda c: nn.Sequential(nn.Linear(4, int(c["hidden"])), nn.Tanh(), nn.Linear(int(c["hidden"]), 2))  # noqa: E731
    namespace = SimpleNamespace(space=space, load_data=rate_and_price, build_model=build)
    raw = overfit_row(Task("units", namespace, space, kind="regression", standardize_targets=False))
    assert raw.status == FAIL, raw
    assert "(means 0.000984, 1.01e+04; sds 0.000127, 486)" in raw.detail, \
        raw.detail


def metres(n: int = 240):
    """Displacements in metres: targets near 1e-3, every MSE near 1e-7."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (1e-3 * (np.sin(x[:, 0]) + 0.5 * x[:, 1])).astype(np.float32)
    return (x[:160], y[:160]), (x[160:200], y[160:200]), (x[200:], y[200:])


def test_the_overfit_note_tells_targets_far_below_unit_scale_to_be_standardised():
    # Before: "cannot fit 20 examples: the model or its loss cannot learn", and nothing more, for targets near 1e-3
    # trained as they are; standardised, the same model passes.
    space = SearchSpace({"hidden": randint(12, 20)})
    build = lambda c: nn.Sequential(nn.Linear(4, int(c["hidden"])), nn.Tanh(), nn.Linear(int(c["hidden"]), 1))  # noqa: E731
    namespace = SimpleNamespace(space=space, load_data=metres, build_model=build)
    raw = overfit_row(Task("metres", namespace, space, kind="regression", standardize_targets=False))
    assert raw.status == FAIL and raw.detail.endswith("are trained on as they are: set standardize_targets = True"), raw
    assert "(mean 0.000" in raw.detail, raw.detail
    standardised = overfit_row(Task("metres", namespace, space, kind="regression", standardize_targets=True))
    assert standardised.status == PASS, standardised


def test_the_initial_loss_of_targets_far_below_unit_scale_is_shown_in_digits_and_says_what_to_do():
    # Before: "variance + mean² of the targets = 0.0000 (±50%)" and "off by 4800597%: check the loss scaling and the
    # last layer's initialisation", for targets near 1e-3 trained as they are (an untrained model's outputs near 0.1).
    space = SearchSpace({"hidden": randint(12, 20)})
    build = lambda c: nn.Sequential(nn.Linear(4, int(c["hidden"])), nn.Tanh(), nn.Linear(int(c["hidden"]), 1))  # noqa: E731
    namespace = SimpleNamespace(space=space, load_data=metres, build_model=build)
    report = run_preflight(Task("metres", namespace, space, kind="regression"), dims_per_tensor=2, overfit_steps=5)
    initial = by_name(report)["initial loss"]
    assert initial.status == WARN and "0.0000" not in initial.expected, initial
    assert re.search(r"targets = \d\.\d{3}e-0[67] ", initial.expected), initial.expected
    assert initial.detail.endswith("are trained on as they are: set standardize_targets = True"), initial.detail
