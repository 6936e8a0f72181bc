"""One trial's training, an epoch at a time: schedule, train, evaluate, record, checkpoint.

The actor (``cluster/``) keeps a :class:`TrialRun` alive between calls, so the master can
decide after any epoch whether the trial goes on.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from orchestrator.errors import TaskError
from orchestrator.spec.task import Task
from worker.data.kinds import (
    TargetKind,
    class_labels,
    class_scores,
    loss_function,
    objective_and_mode,
    predicted_classes,
    right_rows,
    score_of,
    split_metrics,
)
from worker.data.seeds import host_rng_state, seed_trial, set_host_rng_state
from worker.data.splits import Splits, batches, skips_single_batch
from worker.data.streams import Stream, eval_rows
from worker.train.diagnostics import Diagnostics, DiagnosticsOptions, gradient_norm
from worker.train.ema import EmaWeights
from worker.train.loop_state import attribute_names, loop_state, restore_loop_state
from worker.train.optim import build_optimizer, build_schedule, setting, step_schedule


@dataclass(frozen=True)
class TrialSpec:
    trial_id: int
    stage: int
    config: Mapping[str, Any]
    seed: int
    max_epochs: int
    attempt: int = 0


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any, batch_size: int | None = None
) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and the logits on one split, in eval mode (dropout off, BN frozen)."""
    was_training = model.training
    model.eval()
    rows = batch_size or eval_rows(tuple(x.shape[1:]))
    logits = torch.cat([model(x[i : i + rows]) for i in range(0, len(x), rows)])
    model.train(was_training)
    loss = float(loss_fn(logits, y))
    labels = y.argmax(dim=1) if y.ndim == 2 else y  # soft labels: the most probable class
    accuracy = float((predicted_classes(logits) == labels).float().mean())
    return loss, accuracy, logits


@torch.no_grad()
def model_outputs(model: torch.nn.Module, x: torch.Tensor | Stream, batch_size: int | None = None,
                  splits: Splits | None = None, device: torch.device | None = None) -> torch.Tensor:
    """The model's outputs on a whole split, in eval mode (dropout off, BN on running statistics).

    ``x`` is the split's inputs in memory, or its :class:`Stream` (read in order, batch by batch,
    standardised as ``splits`` says): only the outputs are kept. In memory ``batch_size`` rows at a time, by default
    fewer for large examples (:func:`~worker.data.streams.eval_rows`).
    """
    was_training = model.training
    model.eval()
    if isinstance(x, Stream):
        assert splits is not None
        outputs = torch.cat([model(splits.normalise(xb.to(device, non_blocking=True))) for xb, _ in x.eval_batches()])
    else:
        rows = batch_size or eval_rows(tuple(x.shape[1:]))
        outputs = torch.cat([model(x[i : i + rows]) for i in range(0, len(x), rows)])
    model.train(was_training)
    return outputs


def natural_outputs(kind: TargetKind, outputs: torch.Tensor) -> torch.Tensor:
    """What a prediction means for the kind: class log-probabilities, or values in the targets' original units.

    Log-probabilities, not probabilities: a confidently wrong model's probability of the true class underflows
    (below ~6e-8 in float16, ~1e-45 in float32) where its log does not, and the ensembles' log losses are then
    the ``val_log_loss`` the metrics report, not a clipped one."""
    if kind.kind == "classification":
        return torch.log_softmax(class_scores(outputs.float(), kind), dim=1)  # a logit: both classes' log-probs
    return kind.to_original(measured_width(outputs))


def measured_width(outputs: torch.Tensor) -> torch.Tensor:
    """A bfloat16 or float16 model's outputs cast up to float32 (exactly), others as they are: what is measured and
    stored. In bfloat16 a split's cross-entropy came out 0.4824 beside its float32 0.4863, a task's metric kept 3
    digits, and a regression's stored predictions failed every trial (numpy has no bfloat16)."""
    return outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs


@torch.no_grad()
def evaluate_split(task: Task, kind: TargetKind, loss_fn: Any, model: torch.nn.Module, x: torch.Tensor | Stream,
                   y: torch.Tensor, split: str, splits: Splits | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """``{split}_loss`` and every metric of one split, in the targets' original units; and the raw outputs.

    For regression trained on standardised targets the outputs are mapped back first, so the loss
    and metrics are the numbers a user recomputes from the original targets.
    """
    outputs = model_outputs(model, x, splits=splits, device=y.device)
    return split_values(task, kind, loss_fn, outputs, y, split), outputs


def split_values(task: Task, kind: TargetKind, loss_fn: Any, outputs: torch.Tensor, y: torch.Tensor,
                 split: str) -> dict[str, float]:
    """``{split}_loss`` and every metric of one split from a model's raw outputs on it (see :func:`evaluate_split`),
    half-precision outputs in float32 (:func:`measured_width`)."""
    outputs = measured_width(outputs)
    reported = kind.to_original(outputs) if kind.kind == "regression" else outputs
    values = {f"{split}_loss": _split_loss(task, kind, loss_fn, reported, y)}
    values.update(split_metrics(task, kind, reported, y, split))
    return values


def _split_loss(task: Task, kind: TargetKind, loss_fn: Any, reported: torch.Tensor, y: torch.Tensor) -> float:
    given = y.clone() if task.get("loss_fn") is not None else y  # as its metrics: editing its targets edits no split's
    return float(loss_fn(evaluated_in(task, kind, reported), given))


@torch.no_grad()
def loss_per_example(task: Task, kind: TargetKind, loss_fn: Any, outputs: torch.Tensor, y: torch.Tensor,
                     whole: float) -> bool:
    """Whether the task's loss on a split (``whole``) is the example-weighted mean of its values on the split's two
    halves, as an MSE or a cross-entropy is. A Cox partial likelihood (log-sums over the risk set), a batch-hard
    triplet loss (the hardest pair of the whole split) or a summed loss is not: the training loss, averaged over
    batches, is then not in ``val_loss``'s units, and a train/validation gap drawn from the two would be the split
    size's, not overfitting. Outputs in the units ``val_loss`` takes them (:func:`split_values`)."""
    n = len(y)
    if n < 4 or not math.isfinite(whole) or len(outputs) != n:
        return True
    reported = kind.to_original(outputs) if kind.kind == "regression" else outputs
    half = n // 2
    try:
        parts = [_split_loss(task, kind, loss_fn, reported[a:b], y[a:b]) for a, b in ((0, half), (half, n))]
    except Exception:  # a loss that needs the whole split (every class present): not judged
        return True
    mean = (parts[0] * half + parts[1] * (n - half)) / n
    # 5%: a class-weighted cross-entropy (a ratio of weighted sums) moves a percent or so between halves; a Cox
    # loss on 200 examples moved 16%, a batch-hard triplet loss 29%, a sum 100%
    return not math.isfinite(mean) or math.isclose(mean, whole, rel_tol=0.05, abs_tol=1e-6)


def evaluated_in(task: Task, kind: TargetKind, outputs: torch.Tensor) -> torch.Tensor:
    """Regression outputs as caviar's default MSE evaluates them: in float64, as ``val_mse`` is. In float32 a split's
    MSE of 1.7e10 came out 1338 off ``val_mse`` and its sum of squares overflowed past 3.4e38 (targets near 1e20,
    trained standardised), so every healthy trial read as diverged. A task's own loss_fn gets the outputs as they
    are."""
    if kind.kind == "regression" and task.get("loss_fn") is None and outputs.is_floating_point():
        return outputs.double()
    return outputs


def has_lazy_tensors(model: torch.nn.Module) -> bool:
    """Whether a lazy module (``nn.LazyLinear``, ``nn.LazyConv2d``) still waits for its first input to have shapes."""
    return any(torch.nn.parameter.is_lazy(t) for t in (*model.parameters(), *model.buffers()))


@torch.no_grad()
def materialise_lazy(model: torch.nn.Module, inputs: Any) -> None:
    """Give a lazy module's parameters their shapes with one forward pass on ``inputs`` (a callable is called
    first, so data is read only for a model that needs it), as torch's docs ask before an optimizer, a copy (EMA) or
    anything else reads them. In eval mode: no batch-norm statistics move, and a model that returns a tuple in
    training (its own loop's auxiliary head) returns its tensor."""
    if not has_lazy_tensors(model):
        return
    was_training = model.training
    model.eval()
    try:
        model(inputs() if callable(inputs) else inputs)
    finally:
        model.train(was_training)


def _same(state: Mapping[str, torch.Tensor], module: torch.nn.Module) -> bool:
    """Whether ``state`` holds exactly ``module``'s current weights and buffers."""
    current = module.state_dict()
    return current.keys() == state.keys() and all(
        torch.equal(v.detach(), state[k].to(v.device)) for k, v in current.items())


@torch.no_grad()
def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_``'s total norm, and its clipping when ``max_norm`` is finite, for sparse gradients too
    (torch's raised NotImplementedError for them at every step)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        if not math.isfinite(max_norm):  # no clipping: the norm alone (clip_grad_norm_ multiplies every gradient by 1)
            return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    total = torch.linalg.vector_norm(torch.stack([gradient_norm(g) for g in grads]))
    if math.isfinite(max_norm):
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # as torch's: never scaled up
        for g in grads:
            g.mul_(scale.to(g.dtype))
    return float(total)


def _flat_norm(tensors: list[torch.Tensor]) -> float:
    return (
        float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))) if tensors else 0.0
    )


def own_optimizer(build: Any, config: dict[str, Any], params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The task's ``build_optimizer(config, params)``, refused in one line naming it unless it gives an optimizer."""
    try:
        optimizer = build(config, params)
    except Exception as exc:
        raise TaskError(f"build_optimizer raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(optimizer, torch.optim.Optimizer):
        pair = " (an (optimizer, scheduler) pair? caviar steps the config's schedule; a schedule of your own " \
               "steps in train_epoch)" if isinstance(optimizer, (tuple, list)) else ""
        # torch's schedulers take nothing else (a wrapper with param_groups and step() failed in the schedule, said
        # as a forward-pass error); its step hooks are how grad_clip and the EMA follow a task's own loop
        wrapper = "" if pair else ", which does not subclass it (torch's schedulers take nothing else: a wrapper " \
                                  "subclasses torch.optim.Optimizer, as timm's Lookahead does)"
        raise TaskError(f"build_optimizer must return a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}{pair}{wrapper}")
    return optimizer


# Gradual unfreezing: what a trial can do instead (its schedule and resume follow the optimizer's first groups).
_UNFREEZE = ("caviar builds a trial's optimizer once, over the parameters trainable when it starts, and its schedule "
             "and resume follow those; train the backbone from the start instead, at a learning rate of its own (a "
             "parameter group in build_optimizer)")


def _step_needs_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` must be given a closure (``torch.optim.LBFGS``)."""
    try:
        closure = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):  # a step whose signature cannot be read: assumed to need none
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


class TrialRun:
    """A model, its optimizer, schedule, EMA and data order: everything one trial carries."""

    def __init__(self, task: Task, splits: Splits, spec: TrialSpec, device: torch.device, precision: str = "fp32"):
        self.task, self.splits, self.spec, self.device = task, splits, spec, device
        config = dict(spec.config)
        seed_trial(spec.seed)  # numpy's and Python's too: a Dataset's augmentation or build_model may draw from them
        try:
            self.model = task.get("build_model")(config).to(device)
        except Exception as exc:
            raise TaskError(f"build_model raised {type(exc).__name__}: {exc}") from exc
        materialise_lazy(self.model, lambda: splits.sample(2, device)[0])
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Frozen now: a loop that unfreezes one later must give it to the optimizer too (see _check_unfrozen_stepped).
        self._frozen_at_build = [(name, p) for name, p in self.model.named_parameters() if not p.requires_grad]
        custom_opt = task.get("build_optimizer")
        self.optimizer = own_optimizer(custom_opt, config, params) if custom_opt else build_optimizer(config, params)
        if custom_opt and not task.get("train_epoch") and _step_needs_closure(self.optimizer):
            raise TaskError(f"build_optimizer returns {type(self.optimizer).__name__}, whose step() needs a closure "
                            "that re-evaluates the loss, and caviar's training loop calls step() without one; step "
                            "it with your closure in the task's own train_epoch(model, optimizer, batches, config)")
        self.scheduler = build_schedule(config, self.optimizer, spec.max_epochs)
        self._optimizer_names = attribute_names(self.optimizer)  # what a task's loop adds later is its own state
        # A task's own loop under no schedule of caviar's owns the rate: a per-step decay or a OneCycleLR it keeps
        # across epochs goes on from where it left the rate (a constant schedule's step put the config's lr back).
        self.loop_owns_rate = bool(task.get("train_epoch")) and setting(config, "schedule", "constant") == "constant"
        self.kind = splits.target_kind
        self.loss_fn = loss_function(task, self.kind)
        self.objective, self.mode = objective_and_mode(task, self.kind)
        self.batch_size = int(setting(config, "batch_size", 64))
        # Batch norm cannot train on one example (torch raises): a last batch of one is left out of each epoch, a
        # different example each time, as DataLoader's drop_last would. The contract check says so before the sweep.
        self.skip_single = skips_single_batch(self.model, splits, self.batch_size)
        self.grad_clip = float(setting(config, "grad_clip", math.inf))
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.train_loader: Any = None  # streamed data: made on first use, kept for the trial
        ema_decay = config.get("ema_decay")
        self.ema = EmaWeights(self.model, float(ema_decay), build=lambda: self._built_again(config)) \
            if ema_decay else None
        if math.isfinite(self.grad_clip) and task.get("train_epoch") and _step_needs_closure(self.optimizer):
            # The hook below clips before step(), whose closure then computes the gradients it steps with anew
            raise TaskError(f"grad_clip = {self.grad_clip:g} with {type(self.optimizer).__name__}, whose step() "
                            "computes its own gradients in the closure: caviar cannot clip them; clip inside the "
                            "closure in the task's train_epoch and leave grad_clip out of the config")
        if math.isfinite(self.grad_clip) and task.get("train_epoch") and hasattr(self.optimizer,
                                                                                 "register_step_pre_hook"):
            # The task's own loop steps the optimizer: the config's grad_clip clips before each step, as in caviar's
            # loop; gradients the loop already clipped to it are left as they are (torch never scales up).
            def clip_before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                clip_grad_norm([p for group in optimizer.param_groups for p in group["params"]], self.grad_clip)

            self.optimizer.register_step_pre_hook(clip_before_step)
        if self.ema is not None and task.get("train_epoch") and hasattr(self.optimizer, "register_step_post_hook"):
            # The task's own loop steps the optimizer: the EMA follows each step, as in caviar's loop.
            ema = self.ema
            self.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: ema.update(self.model))
        # Mixed precision: the forward pass autocasts to bf16/fp16; fp16's narrow range also needs a loss scaler.
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        diagnostics = DiagnosticsOptions.from_task(task.get("diagnostics"))
        ids = {"trial_id": spec.trial_id, "attempt": spec.attempt, "stage": spec.stage}
        self.diagnostics = (
            Diagnostics(self.model, self.optimizer, splits.sample_inputs(diagnostics.probe_size, device), ids,
                        spec.max_epochs, diagnostics)
            if diagnostics
            else None
        )
        self.epoch = 0
        # Per weights ("raw", "ema"): (epoch, values, natural outputs on CPU) of the last epoch's validation pass.
        # A trial's end measures its last checkpoint on val again: these are the same numbers, already paid for.
        # On the CPU, so a GPU holds no extra copy while the next epoch trains.
        self.last_val: dict[str, tuple[int, dict[str, float], torch.Tensor]] = {}
        self.output_shape: tuple[int, ...] | None = None  # one example's outputs, once a pass has run
        # The task's loss_fn a mean over examples (None: not judged yet, or the kind's default loss, which is)
        self.loss_per_example: bool | None = None

    def _built_again(self, config: Mapping[str, Any]) -> torch.nn.Module:
        """The trial's model built once more (the EMA's copy where torch cannot deepcopy it), shapes and all."""
        model = self.task.get("build_model")(dict(config)).to(self.device)
        materialise_lazy(model, lambda: self.splits.sample(2, self.device)[0])
        return model

    # -- one epoch -----------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        started = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        custom = self.task.get("train_epoch")
        if custom:
            stats = self.own_epoch(_CountedBatches(self._batches(), self._batch_count))
        else:
            stats = self._standard_epoch()
            if stats["examples_trained"] == 0:  # a train_loss of 0.0 and weights that never moved, reported as such
                raise self._no_batch_error()
        self._check_unfrozen_stepped()
        s = self.splits
        val, val_outputs = evaluate_split(self.task, self.kind, self.loss_fn, self.model, self.inputs("val"), s.y_val,
                                          "val", s)
        self.output_shape = tuple(val_outputs.shape[1:])
        val_loss = val["val_loss"]
        if self.loss_per_example is None and self.task.get("loss_fn") is not None:
            self.loss_per_example = loss_per_example(self.task, self.kind, self.loss_fn, val_outputs, s.y_val, val_loss)
        if not self.loop_owns_rate:
            step_schedule(self.scheduler, val_loss if math.isfinite(val_loss) else math.inf)
        self.epoch += 1
        self.last_val = {"raw": (self.epoch, val, natural_outputs(self.kind, val_outputs).cpu())}
        if self.diagnostics is not None:  # per-layer rows; the recorder takes them with this epoch's metrics
            self.diagnostics.epoch_end(self.epoch)
        row: dict[str, Any] = {
            "trial_id": self.spec.trial_id,
            "attempt": self.spec.attempt,
            "epoch": self.epoch,
            "stage": self.spec.stage,
            "train_loss": stats.get("train_loss", math.nan),
            # a loss that is not a mean over examples has no training value in val_loss's units
            "train_loss_original": None if self.loss_per_example is False else stats.get("train_loss_original"),
            "train_accuracy": stats.get("train_accuracy"),
            "val_loss": val_loss,
            "val_accuracy": val.get("val_accuracy"),
            "metrics": {k: v for k, v in val.items() if k not in ("val_loss", "val_accuracy")},
            "lr": lr,
            "grad_norm": stats.get("grad_norm"),
            "update_ratio": stats.get("update_ratio"),
        }
        row["score"] = score_of(row, self.objective, self.mode)
        if self.ema is not None:
            ema, ema_outputs = evaluate_split(self.task, self.kind, self.loss_fn, self.ema.module, self.inputs("val"),
                                              s.y_val, "val", s)
            row["ema_val_loss"], row["ema_val_accuracy"] = ema["val_loss"], ema.get("val_accuracy")
            self.last_val["ema"] = (self.epoch, ema, natural_outputs(self.kind, ema_outputs).cpu())
        seconds = time.perf_counter() - started
        row["epoch_seconds"] = seconds
        # What trained: caviar's loop counts it (a task's own loader may drop a last batch); a task's train_epoch, not
        seen = s.n_train - self.skip_single if custom else stats["examples_trained"]
        row["samples_per_second"] = seen / seconds if seconds > 0 else None
        return row

    def own_epoch(self, counted: _CountedBatches) -> dict[str, Any]:
        """The task's ``train_epoch`` over ``counted``, what it returns checked: its epoch's training statistics."""
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        stats = dict(self.task.get("train_epoch")(self.model, self.optimizer, counted, dict(self.spec.config)) or {})
        self._check_param_groups_kept(len(scheduled))
        # A rate the task's loop set (a warm-up) holds for its own steps; the schedule goes on from its own value,
        # as torch's chained schedules (exponential, cosine, plateau) would otherwise scale the one left behind.
        if not self.loop_owns_rate:
            for group, rate in zip(self.optimizer.param_groups, scheduled):  # ``lr`` stays the first group's
                group["lr"] = rate
        if counted.exhausted and counted.count == 0:
            raise self._no_batch_error()
        if "train_loss" not in stats:
            raise TaskError("train_epoch must return a dict with 'train_loss' (the epoch's mean training loss)")
        for key in ("train_loss", "train_accuracy", "grad_norm", "update_ratio"):
            if stats.get(key) is not None:
                stats[key] = _epoch_number(stats[key], key)
        # The task's loop saw standardised targets: its loss in the original units is unknown, never rescaled.
        stats["train_loss_original"] = None if self.kind.standardised else stats["train_loss"]
        return stats

    def first_batches(self, count: int) -> _CountedBatches:
        """The epoch's first ``count`` training batches, as a task's ``train_epoch`` gets a whole epoch's."""
        return _CountedBatches(itertools.islice(self._batches(), count), lambda: count)

    def _check_unfrozen_stepped(self) -> None:
        """A parameter frozen when the optimizer was built (a backbone) and unfrozen since (gradual unfreezing) gets
        gradients, but the optimizer, built over the trainable parameters only, never steps it: refused, not
        trained as a frozen model while the task believes otherwise."""
        if not self._frozen_at_build:
            return
        stepped = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        unfrozen = [name for name, p in self._frozen_at_build if p.grad is not None and id(p) not in stepped]
        if unfrozen:
            more = f" (and {len(unfrozen) - 1} more)" if len(unfrozen) > 1 else ""
            raise TaskError(f"parameter {unfrozen[0]}{more} was frozen (requires_grad False) when the optimizer was "
                            f"built, has gradients now, and is not in the optimizer, which never steps it: {_UNFREEZE}")

    def _check_param_groups_kept(self, groups: int) -> None:
        """torch's schedules (and a resume's optimizer state) hold one entry per parameter group the optimizer was
        built with: a group the task's loop added would fail the epoch's schedule step with torch's "zip() argument 2
        is shorter than argument 1"."""
        if len(self.optimizer.param_groups) > groups:
            raise TaskError(f"train_epoch added a parameter group to the optimizer (optimizer.add_param_group): "
                            f"{_UNFREEZE}")

    def _no_batch_error(self) -> TaskError:
        """A training epoch that got no batch from the task's loader or Dataset, said with the likely cause."""
        n, size = self.splits.n_train, self.batch_size
        said = f"the training split gave no batch in epoch {self.epoch + 1} at batch_size {size} ({n} examples)"
        if isinstance(self.train_loader, DataLoader) and self.train_loader.drop_last and size > n:
            return TaskError(f"{said}: the train loader's DataLoader has drop_last=True, which drops a batch larger "
                             f"than the split whole; keep batch_size at most {n} in the space, or drop_last=False")
        return TaskError(f"{said}; an epoch trains on at least one batch (a Dataset's __iter__ must start a new pass "
                         "at each call)")

    def inputs(self, split: str) -> torch.Tensor | Stream:
        s = self.splits
        if s.streams:
            return s.streams[split]
        x = {"train": s.x_train, "val": s.x_val, "test": s.x_test}[split]
        assert x is not None
        return x

    def _batches(self) -> Any:
        """Training batches with the targets in the units the model trains on: what a task's ``train_epoch`` gets."""
        return ((xb, self.kind.to_training(yb)) for xb, yb in self._original_batches())

    def _original_batches(self) -> Any:
        """Training batches in the trial's order, the targets as the task gave them."""
        if self.splits.streams:
            return self._streamed_batches()
        assert self.splits.x_train is not None
        return batches(self.splits.x_train, self.splits.y_train, self.batch_size, self.generator,
                       skip_single=self.skip_single)

    def _batch_count(self) -> int:
        """How many batches an epoch gives (``len(batches)`` in a task's ``train_epoch``: a OneCycleLR's steps)."""
        if not self.splits.streams:
            return math.ceil((self.splits.n_train - int(self.skip_single)) / self.batch_size)
        try:
            return len(self._train_loader())
        except TypeError:  # an IterableDataset: its stream is not counted before it is read
            raise TypeError("len(batches): the training split is an IterableDataset, whose batches are not "
                            "counted before they are read; give it __len__, or count them in train_epoch") from None

    def _train_loader(self) -> Any:
        """This trial's DataLoader over the training Dataset, made on first use.

        Its workers start again each epoch, seeded from the trial's generator: a resumed or retried trial then reads
        the augmentation the uninterrupted run read (kept workers' streams went on from where they were)."""
        if self.train_loader is None:
            assert self.splits.streams is not None
            self.train_loader = self.splits.streams["train"].loader(self.batch_size, shuffle=True,
                                                                    generator=self.generator,
                                                                    drop_last=self.skip_single,
                                                                    workers_per_epoch=True)
        return self.train_loader

    def _streamed_batches(self) -> Any:
        """The training Dataset through this trial's DataLoader."""
        s, device = self.splits, self.device
        for xb, yb in self._train_loader():
            yield s.normalise(xb.to(device, non_blocking=True)), yb.to(device, non_blocking=True)

    def _standard_epoch(self) -> dict[str, float]:
        model, opt = self.model, self.optimizer
        model.train()
        total_loss = total_original = total_correct = total_seen = 0.0
        grad_norm_sum, steps = 0.0, 0
        update_ratio = math.nan
        n_batches = math.ceil((self.splits.n_train - self.skip_single) / self.batch_size)
        # The update ratio is measured on the epoch's last batch; a task's own loader owns its batch count (drop_last):
        # on its first.
        own_loader = bool(self.splits.streams) and self.splits.streams["train"].make_loader is not None
        measured = 0 if own_loader else n_batches - 1
        # What the optimizer steps: a task's build_optimizer may leave trainable parameters out (a head-only
        # fine-tune); their gradients are no part of the step grad_clip bounds, grad_norm and the update ratio.
        stepped = {id(p) for group in opt.param_groups for p in group["params"]}
        params = [p for p in model.parameters() if p.requires_grad and id(p) in stepped]
        for i, (xb, y_original) in enumerate(self._original_batches()):
            yb = self.kind.to_training(y_original)
            with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
                logits = model(xb)
                loss = self.loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)  # clip and measure the true gradients, not the scaled ones
            norm = clip_grad_norm(params, self.grad_clip)
            # fp16 gradients that overflowed at the loss scale: the scaler skips this step and lowers the scale (its
            # first steps often do), so the norm is no gradient the model took, nor a step the EMA follows
            stepped = not self.scaler.is_enabled() or math.isfinite(norm)
            if stepped:
                grad_norm_sum += norm
                steps += 1
            before = [p.detach().clone() for p in params] if i == measured else None
            self.scaler.step(opt)  # skips the step when fp16 gradients overflowed
            self.scaler.update()
            if before is not None:  # CS231n's health signal: ||update|| / ||w||, ~1e-3
                update_ratio = _flat_norm([p.detach() - b for p, b in zip(params, before)]) / max(
                    _flat_norm(before), 1e-12
                )
            if self.ema is not None and stepped:
                self.ema.update(model)
            n, batch_loss = len(yb), loss.item()
            total_loss += batch_loss * n
            total_original += (self._original_loss(logits, y_original) if self.kind.standardised else batch_loss) * n
            if self.kind.kind == "classification":
                labels = yb.argmax(dim=1) if self.kind.soft else class_labels(yb, self.kind)
                right = right_rows(logits.detach(), labels, self.kind)  # (example, label) or labelled position pairs
                total_correct += float(right.sum()) / max(right.numel() / n, 1e-12)
            total_seen += n
            if not math.isfinite(total_loss):
                break  # no point finishing an epoch that has already blown up
        return {
            "train_loss": total_loss / max(total_seen, 1),
            "train_loss_original": total_original / max(total_seen, 1),
            "train_accuracy": total_correct / max(total_seen, 1) if self.kind.kind == "classification" else None,
            "examples_trained": int(total_seen),
            "grad_norm": grad_norm_sum / steps if steps else None,  # None: every fp16 step overflowed
            "update_ratio": update_ratio,
        }

    @torch.no_grad()
    def _original_loss(self, logits: torch.Tensor, y_original: torch.Tensor) -> float:
        """A batch's loss on standardised targets as ``val_loss`` measures it: outputs mapped back to the targets'
        original units. Recomputed, never rescaled: with several target dimensions, each with its own std, the
        standardised loss is no constant multiple of the original one."""
        return float(self.loss_fn(evaluated_in(self.task, self.kind, self.kind.to_original(logits.detach())),
                                  y_original))

    # -- predictions and state -----------------------------------------------------------
    def predictions(self, state: Mapping[str, torch.Tensor], weights: str = "raw") -> dict[str, torch.Tensor]:
        """The kind's natural outputs on validation and test for a stored state (for ensembles)."""
        return {split: out for split, (out, _) in self.checkpoint_results(state, weights).items()}

    def checkpoint_results(self, state: Mapping[str, torch.Tensor], weights: str = "raw",
                           epoch: int | None = None) -> dict[str, tuple[torch.Tensor, dict[str, float]]]:
        """Per split (val, test): natural outputs on CPU, and the loss and metrics, for a stored state.

        ``epoch``: the epoch the state was taken at. A state of this epoch that equals the weights right now
        reuses the epoch's own validation pass and runs on test alone.
        """
        module = self.ema.module if weights == "ema" and self.ema is not None else self.model
        cached = self.last_val.get(weights)
        if epoch is not None and cached is not None and cached[0] == epoch == self.epoch and _same(state, module):
            _, val_values, val_outputs = cached
            s = self.splits
            test_values, test_outputs = evaluate_split(self.task, self.kind, self.loss_fn, module, self.inputs("test"),
                                                       s.y_test, "test", s)
            return {"val": (val_outputs, dict(val_values)),
                    "test": (natural_outputs(self.kind, test_outputs).cpu(), test_values)}
        saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(state)
        s = self.splits
        out = {}
        try:
            for split, y in (("val", s.y_val), ("test", s.y_test)):
                values, outputs = evaluate_split(self.task, self.kind, self.loss_fn, module, self.inputs(split), y,
                                                 split, s)
                self.output_shape = tuple(outputs.shape[1:])
                out[split] = (natural_outputs(self.kind, outputs).cpu(), values)
        finally:
            module.load_state_dict(saved)
        return out

    def weights_state(self, weights: str = "raw") -> dict[str, torch.Tensor]:
        module = self.ema.module if weights == "ema" and self.ema is not None else self.model
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}

    def resume_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: loadable with ``torch.load(weights_only=True)``."""
        return {
            "epoch": self.epoch,
            "model": self.weights_state("raw"),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            # What a task's own loop keeps on the optimizer (a OneCycleLR, a second optimizer, a step counter)
            "loop": loop_state(self.optimizer, self._optimizer_names) if self.task.get("train_epoch") else {},
            # and the gradients it left for its next step (accumulated over an odd epoch's last batch)
            "grads": {name: p.grad.detach().to("cpu", copy=True) for name, p in self.model.named_parameters()
                      if p.grad is not None} if self.task.get("train_epoch") else {},
            "scaler": self.scaler.state_dict(),  # fp16's loss scale ({} otherwise): a new one skips its first steps
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **host_rng_state(),
            # A GPU's own generator draws its dropout masks: without it a resumed trial's masks repeat its first epochs'
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
        }

    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("loop"):
            restore_loop_state(self.optimizer, state["loop"])
        grads = state.get("grads") or {}
        for name, p in self.model.named_parameters():
            if name in grads:
                p.grad = grads[name].to(p.device)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        set_host_rng_state(state)
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:  # not in states written on a CPU
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch = int(state["epoch"])


class _CountedBatches:
    """The batches a task's ``train_epoch`` iterates, counted: an epoch that got none is refused, not reported."""

    def __init__(self, batches: Any, length: Callable[[], int]):
        self._batches, self._length, self.count, self.exhausted = iter(batches), length, 0, False

    def __iter__(self) -> _CountedBatches:
        return self

    def __len__(self) -> int:
        return self._length()

    def __next__(self) -> Any:
        try:
            batch = next(self._batches)
        except StopIteration:
            self.exhausted = True
            raise
        self.count += 1
        return batch


def _epoch_number(value: Any, key: str) -> float:
    """A number from a task's ``train_epoch``: a one-element tensor (``loss`` summed without ``.item()``) is read
    as its value; anything else is refused, naming the key."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
    raise TaskError(f"train_epoch returned {key!r} as {type(value).__name__}{shape}; give one number per epoch "
                    "(e.g. the mean of loss.item() over its batches)")
