"""Bad tasks are refused by the master before Ray starts: one line, exit 2, no sweep folder, no Ray.

Each case is a variant of tests/tasks/tiny_task.py run through the real ``caviar run`` command
in its own process, with ``RAY_TMPDIR`` pointing at a folder that must still not exist
afterwards (a Ray start would create it). The time each took is printed (``-s``), never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT

CAVIAR = os.path.join(os.path.dirname(sys.executable), "caviar")
HEADER = f"""
import sys
import numpy as np
import torch
from torch import nn
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
import tiny_task
from tiny_task import space  # noqa: F401
"""
TINY_DATA = "\ndef load_data():\n    return tiny_task.load_data()\n"
TINY_MODEL = "\ndef build_model(config):\n    return tiny_task.build_model(config)\n"


@dataclass(frozen=True)
class BadTask:
    id: str
    source: str
    error: str  # the whole stderr line after "caviar: error: task '<path>': "


CASES = [
    BadTask(
        "choice_of_tuples",  # the trials table cannot store a tuple: refused by the space, before any data loads
        TINY_DATA + TINY_MODEL + "\nfrom orchestrator.search.space import choice\n"
        "space = {**space, 'hidden': choice([(8,), (16, 8), (32,)])}\n",
        "parameter 'hidden': choice options must be str, int, float or bool (got tuple (16, 8)); "
        'name it as a string ("16-8") and parse it in build_model',
    ),
    BadTask(
        "wrong_keys",
        TINY_MODEL + "\ndef load_data():\n    tr, va, te = tiny_task.load_data()\n"
        "    return {'training': tr, 'validation': va, 'test': te}\n",
        "load_data: result lacks split(s) train, val (it has 'training', 'validation'): caviar reads the keys train, "
        "val, test",
    ),
    BadTask(
        "missing_split",
        TINY_MODEL + "\ndef load_data():\n    tr, va, te = tiny_task.load_data()\n"
        "    return {'train': tr, 'test': te}\n",
        "load_data: result lacks split(s) val: caviar reads the keys train, val, test",
    ),
    BadTask(
        "two_splits",
        TINY_MODEL + "\ndef load_data():\n    return tiny_task.load_data()[:2]\n",
        "load_data: return (train, val, test) or a dict with keys train, val, test",
    ),
    BadTask(
        "load_data_raises",
        TINY_MODEL + "\ndef load_data():\n    raise FileNotFoundError('/data/blobs.npz')\n",
        "load_data raised FileNotFoundError: /data/blobs.npz (bad_task.py:{raise_line})",
    ),
    BadTask(
        "fractional_targets",
        TINY_MODEL + "\ndef load_data():\n    (x, y), va, te = tiny_task.load_data()\n"
        "    return (x, y / 2.0), va, te\n",
        'load_data: train targets are floats (0.5); declare kind = "regression" or give integer class indices',
    ),
    BadTask(
        "negative_targets",
        TINY_MODEL + "\ndef load_data():\n    tr, (x, y), te = tiny_task.load_data()\n    return tr, (x, y - 1), te\n",
        "load_data: val targets include class -1; class indices start at 0",
    ),
    BadTask(
        "build_model_raises",
        TINY_DATA + "\ndef build_model(config):\n    raise ValueError('no such layer')\n",
        "build_model raised ValueError: no such layer (bad_task.py:{raise_line})"
        " (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "build_model_returns_none",
        TINY_DATA + "\ndef build_model(config):\n    return None\n",
        "build_model must return a torch.nn.Module, got NoneType (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "too_few_outputs",
        TINY_DATA + "\ndef build_model(config):\n    return nn.Linear(4, 2)\n",
        "the model's forward pass or loss_fn: the model outputs 2 scores per example but the targets have 3 classes:"
        ' give the model 3 outputs, one per class, or declare kind = "custom" with your own loss_fn and metrics'
        " (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "flat_logit_for_two_classes",  # a binary head squeezed to (N,), as BCEWithLogitsLoss users write it
        "\ndef load_data():\n    return [(x, (y > 0).astype(np.int64)) for x, y in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n    return nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))\n",
        "the model's forward pass or loss_fn: the model outputs shape (32,); classification needs one score per class,"
        " shape (batch, 2): for one logit per example give shape (batch, 1), without the squeeze"
        " (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "loss_broadcasts_outputs_against_targets",  # (N, 1) against (N,): torch warns and returns an (N, N) mean
        "\nkind = 'regression'\n"
        "\ndef load_data():\n    return [(x, x.sum(1)) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n    return nn.Linear(4, 1)\n"
        "\ndef loss_fn(out, y):\n    return nn.functional.mse_loss(out, y)\n",
        "loss_fn: outputs (32, 1) and targets (32,) broadcast to (32, 32), so the loss compares every output with"
        " every target (torch warns and goes on); give them one shape in loss_fn, e.g. outputs.squeeze(1) or"
        " targets.reshape(-1, 1) (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "hand_written_loss_broadcasts",  # (N, 1) - (N,) in plain torch arithmetic: no warning at all
        "\nkind = 'regression'\n"
        "\ndef load_data():\n    return [(x, x.sum(1)) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n    return nn.Linear(4, 1)\n"
        "\ndef loss_fn(out, y):\n    return ((out - y) ** 2).mean()\n",
        "loss_fn: its value on a training batch changes when the outputs (32, 1) are given the targets' shape (32,)"
        " (… against …): it broadcasts them, comparing every output with every target; give them one shape in it,"
        " e.g. outputs.squeeze(1) or targets.reshape(-1, 1) (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "metric_broadcasts",  # the objective itself: it would rank the sweep on (N, N) differences
        "\nkind = 'regression'\nobjective = 'val_abs_err'\nmode = 'min'\n"
        "\ndef load_data():\n    return [(x, x.sum(1)) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n    return nn.Linear(4, 1)\n"
        "\ndef metrics(out, y):\n    return {'abs_err': float((out - y).abs().mean())}\n",
        "metrics: 'abs_err': its value on a training batch changes when the outputs (32, 1) are given the targets'"
        " shape (32,) (… against …): it broadcasts them, … (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "metric_broadcasts_on_targets_far_from_zero",  # every untrained output below every target: |o_i - t_j|
        # averages the same over all pairs as over matching ones, so only a perfect prediction shows the broadcast
        "\nkind = 'regression'\nobjective = 'val_abs_err'\nmode = 'min'\n"
        "\ndef load_data():\n    return [(x, x.sum(1) + 100) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n    return nn.Linear(4, 1)\n"
        "\ndef metrics(out, y):\n    return {'abs_err': (out - y).abs().mean()}\n",
        "metrics: 'abs_err': its value on a training batch changes when the outputs (32, 1) are given the targets'"
        " shape (32,) (… against 0): it broadcasts them, … (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "hand_written_l1_loss_broadcasts_on_targets_far_from_zero",
        "\nkind = 'regression'\n"
        "\ndef load_data():\n    return [(x, x.sum(1) + 100) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n    return nn.Linear(4, 1)\n"
        "\ndef loss_fn(out, y):\n    return (out - y).abs().mean()\n",
        "loss_fn: its value on a training batch changes when the outputs (32, 1) are given the targets' shape (32,)"
        " (… against 0): it broadcasts them, … (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "metric_returns_its_number_as_text",  # formatted for a log line: parsed, it would rank on 3 decimals
        "\nkind = 'regression'\nobjective = 'val_abs_err'\nmode = 'min'\n"
        "\ndef load_data():\n    return [(x, x.sum(1, keepdims=True)) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n    return nn.Linear(4, 1)\n"
        "\ndef metrics(out, y):\n    return {'abs_err': f'{float((out - y).abs().mean()):.3f}'}\n",
        "metrics: 'abs_err' must be a number, got str ('…'): return the number itself, not its text…",
    ),
    BadTask(
        "mode_without_objective",  # mode written for the task's own Brier score, no objective naming it: the default
        # val_accuracy would be minimised, keeping the worst trials
        TINY_DATA + TINY_MODEL + "\nmode = 'min'\n\ndef metrics(out, y):\n    return {'brier': 0.0}\n",
        "mode = 'min' without an objective: the sweep ranks by val_accuracy, which is better when higher, so it would"
        " keep its worst trials; name the column mode is about (objective = \"val_<name>\" for a metric your metrics"
        " returns) or leave mode out",
    ),
    BadTask(
        "metric_raises_on_the_test_split",  # scikit-learn's ROC AUC on a test split of one class: raised only as each
        # trial ended, after all its training, failing every trial and losing its checkpoints
        "\ndef load_data():\n    train, val, (x, y) = tiny_task.load_data()\n    return train, val, (x, 0 * y)\n"
        + TINY_MODEL + "\ndef metrics(out, y):\n    if len(set(y.tolist())) < 2:\n"
        "        raise ValueError('Only one class present in y_true')\n    return {'auc_like': 0.5}\n",
        "metrics raised ValueError on the test split: Only one class present in y_true (bad_task.py:{raise_line})"
        " (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "outputs_in_another_layout",  # channels first against channels last: the same number of values
        "\nkind = 'regression'\n"
        "\ndef load_data():\n    return [(x, np.repeat(x[:, None, :], 2, 1)) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n    return nn.Sequential(nn.Linear(4, 8), nn.Unflatten(1, (4, 2)))\n",
        "the model's forward pass or loss_fn: model outputs have shape (32, 4, 2) but the targets (32, 2, 4): as many"
        " values in another layout, and caviar never guesses which output is which target; give the model outputs of"
        " the targets' shape (e.g. with permute) or targets of its shape (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "wrong_input_width",
        TINY_DATA + "\ndef build_model(config):\n    return nn.Linear(5, 3)\n",
        "the model's forward pass or loss_fn raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"
        " (32x4 and 5x3) (…) (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "float64_inputs_for_a_float32_model",
        TINY_MODEL + "\ndef load_data():\n    return [(x.astype(np.float64), y) for x, y in tiny_task.load_data()]\n",
        "load_data: the inputs are float64 but the model's parameters are float32; caviar never casts inputs: "
        "give X.astype('float32') or build a float64 model",
    ),
    BadTask(
        "int32_class_indices",  # numpy's default integer on Windows, pandas category codes
        TINY_MODEL + "\ndef load_data():\n    return [(x, y.astype(np.int32)) for x, y in tiny_task.load_data()]\n",
        "load_data: the targets are int32 class indices, and the default loss (torch's cross-entropy) takes int64: "
        "give y.astype('int64') (caviar never casts a target)",
    ),
    BadTask(
        "loss_without_a_gradient",  # .item() inside loss_fn: every trial would fail at its first backward
        TINY_DATA + TINY_MODEL + "\ndef loss_fn(logits, y):\n"
        "    return torch.tensor(nn.functional.cross_entropy(logits, y).item())\n",
        "loss_fn returns a loss without a gradient (detached by .item(), numpy, torch.tensor(...) or torch.no_grad), "
        "so no parameter can learn: compute it with torch operations on the outputs"
        " (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "backward_raises",  # an in-place change to a tensor autograd saved
        TINY_DATA + "\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)\n    def forward(self, x):\n"
        "        h = torch.sigmoid(self.a(x))\n        h += 1\n        return self.b(h)\n"
        "\ndef build_model(config):\n    return Net()\n",
        "the backward pass (loss.backward()) raised RuntimeError on a training batch: one of the variables needed for "
        "gradient computation has been modified by an inplace operation: … (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "huber_on_float64_targets",  # numpy's default float64 targets, a float32 model: huber_loss's backward raises
        "\nkind = 'regression'\ndef load_data():\n"
        "    return [(x, 2.0 * x[:, 0].astype(np.float64)) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n"
        "    return nn.Sequential(nn.Linear(4, config['hidden']), nn.ReLU(), nn.Linear(config['hidden'], 1))\n"
        "\ndef loss_fn(outputs, y):\n    return nn.functional.huber_loss(outputs.squeeze(1), y)\n",
        "the backward pass (loss.backward()) raised RuntimeError on a training batch: Found dtype Double but expected "
        "Float; the model's outputs are float32 and the targets float64: give the targets as float32 "
        "(y.astype('float32')), or cast them in loss_fn (y.to(outputs.dtype)) (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "regression_targets_whose_squares_overflow",  # energies in erg near 1e20, trained as they are
        "\nkind = 'regression'\ndef load_data():\n"
        "    return [(x, (1e20 * (1 + 0.1 * x[:, 0])).astype(np.float32)) for x, _ in tiny_task.load_data()]\n"
        "\ndef build_model(config):\n"
        "    return nn.Sequential(nn.Linear(4, config['hidden']), nn.ReLU(), nn.Linear(config['hidden'], 1))\n",
        "the model's forward pass or loss_fn: the default loss gives inf on the first batch of an untrained model; the "
        "targets reach …, whose squared errors float32 cannot hold: set standardize_targets = True (on each of the "
        "sweep's first 4 configs)",
    ),
    BadTask(
        "frozen_model",
        TINY_DATA + "\ndef build_model(config):\n    return nn.Linear(4, 3).requires_grad_(False)\n",
        "the model's forward pass or loss_fn: the model has no trainable parameters (requires_grad is False on every "
        "one) (on each of the sweep's first 4 configs)",
    ),
    BadTask(
        "loss_raises",
        TINY_DATA + TINY_MODEL + "\ndef loss_fn(logits, y):\n    raise KeyError('weights')\n",
        "the model's forward pass or loss_fn raised KeyError: 'weights' (bad_task.py:{raise_line})"
        " (on each of the sweep's first 4 configs)",
    ),
]

# A task's own loop is checked in a child forked from the master, which a process that joined Ray (this test
# session's) does not fork: these run as their own caviar process, as a user's do.
OWN_LOOP_CASES = [
    BadTask(  # a typo in the task's own loop: every trial failed on it, after the workers (or nodes) started
        "own_loop_typo",
        TINY_DATA + TINY_MODEL + "\ndef train_epoch(model, optimizer, batches, config):\n"
        "    for x, y in batches:\n        optimizer.zero_grad()\n"
        "        loss = nn.functional.cross_entropy(model(x), y)\n        loss.backwards()\n",
        "train_epoch raised AttributeError: 'Tensor' object has no attribute 'backwards' (bad_task.py:…)",
    ),
    BadTask(
        "own_loop_returns_nothing",
        TINY_DATA + TINY_MODEL + "\ndef train_epoch(model, optimizer, batches, config):\n"
        "    for x, y in batches:\n        optimizer.zero_grad()\n"
        "        nn.functional.cross_entropy(model(x), y).backward()\n        optimizer.step()\n",
        "train_epoch must return a dict with 'train_loss' (the epoch's mean training loss)",
    ),
]


def matches(expected: str, line: str) -> bool:
    """``…`` in ``expected`` stands for any text."""
    import re

    return re.fullmatch(".*".join(re.escape(p) for p in expected.split("…")), line) is not None


def write_task(folder, case: BadTask) -> tuple[str, str]:
    """The task file, and the error line expected from it."""
    folder.mkdir(exist_ok=True)
    task = folder / "bad_task.py"
    source = HEADER + case.source
    task.write_text(source)
    raise_line = next((i for i, line in enumerate(source.splitlines(), 1) if "raise " in line), 0)
    return str(task), f"caviar: error: task {str(task)!r}: {case.error.replace('{raise_line}', str(raise_line))}"


def caviar_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    """The real ``caviar`` entry point (orchestrator.app.cli.main) in this process: exit code and stderr lines."""
    from orchestrator.app.cli import main

    old = sys.argv
    sys.argv = ["caviar", *argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_each_bad_task_is_one_line_exit_2_and_no_folder(tmp_path, capsys):
    """The task is refused before the sweep folder is claimed, so before Ray could start (execute comes after)."""
    for case in CASES:
        folder = tmp_path / case.id
        task, expected = write_task(folder, case)
        start = time.monotonic()
        code, lines = caviar_main(["run", task, "--storage", str(folder / "runs"), "--name", "s", "--plain"], capsys)
        with capsys.disabled():
            print(f"{case.id}: refused in {time.monotonic() - start:.2f} s")
        assert code == 2, (case.id, lines)
        assert len(lines) == 1, (case.id, lines)
        assert matches(expected, lines[0]), (case.id, lines[0], expected)
        assert not (folder / "runs" / "s").exists(), case.id  # no sweep folder: the same name works again


def test_a_bad_task_starts_no_ray_and_the_corrected_one_runs_under_the_same_name(ray_session, tmp_path):
    """A real ``caviar run`` process; RAY_TMPDIR must not appear (a Ray start would create it)."""
    [case] = [c for c in CASES if c.id == "missing_split"]
    folder = tmp_path / case.id
    task, expected = write_task(folder, case)
    env = {**os.environ, "RAY_TMPDIR": str(folder / "ray"), "RAY_ADDRESS": "local"}
    out = subprocess.run(
        [CAVIAR, "run", task, "--storage", str(folder / "runs"), "--name", "s", "--plain"],
        capture_output=True, text=True, env=env, cwd=folder, timeout=300,
    )
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [expected])
    assert not (folder / "runs" / "s").exists() and not (folder / "ray").exists()

    from orchestrator.app.api import run_sweep

    with open(task, "w") as f:
        f.write(HEADER + TINY_DATA + TINY_MODEL)
    result = run_sweep(task, storage=str(folder / "runs"), name="s", trials=2, epochs=1, stages=1,
                       slots=2, ensemble=False)
    assert result.counts == {"completed": 2}


@pytest.mark.parametrize("case", OWN_LOOP_CASES, ids=[c.id for c in OWN_LOOP_CASES])
def test_a_tasks_own_loop_that_fails_is_refused_before_any_worker(tmp_path, case):
    folder = tmp_path / case.id
    task, expected = write_task(folder, case)
    out = subprocess.run([CAVIAR, "run", task, "--storage", str(folder / "runs"), "--name", "s", "--plain"],
                         capture_output=True, text=True, cwd=folder, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 2, out.stderr
    assert [line for line in out.stderr.strip().splitlines() if line.startswith("caviar: error")] == \
        out.stderr.strip().splitlines()[-1:]
    assert matches(expected, out.stderr.strip().splitlines()[-1]), (out.stderr, expected)
    assert not (folder / "runs" / "s").exists()
