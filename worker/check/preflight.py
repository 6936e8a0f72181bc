"""Preflight: the CS231n notes' sanity checks, run on a task before a sweep spends cluster hours.

1. The initial loss, regularisation off, is close to ``ln C`` (softmax over C classes with
   small initial logits predicts roughly uniform probabilities).
2. Raising the L2 strength raises the loss (the regularisation term is part of the loss).
3. The model overfits a tiny subset (20 examples) to near-zero loss, regularisation off.
4. Gradient check: analytic gradients against centred differences in float64, dropout off
   and the seed fixed, on a random sample of dimensions of every parameter tensor, scored
   by relative error with CS231n's thresholds (> 1e-2 wrong, 1e-4..1e-2 suspicious,
   < 1e-7 good). Dimensions whose finite difference crosses a ReLU-like kink are noted and
   left out of the verdict: there the numeric gradient is not the derivative.
5. The space's ends build: each searched range's ends and each choice's options with the checked
   config's other values, one forward pass and the loss (worker/check/edges.py, as ``caviar run``
   does before its workers start); a value that fails is a warning, as other values still train.

The checks run on one config: the midpoint of every searched range in its sampling scale
(``from_unit(0.5)``: the geometric middle of a log range, the middle option of a choice),
or a seeded random sample, with every regularisation knob (``weight_decay*``, ``l2*``, and any name
holding ``dropout``, ``drop_path``, ``drop_rate``, ``drop_prob``, ``drop_connect`` or ``stochastic_depth``)
set to 0. Models are always in training mode with every dropout module switched off, so batch norm uses batch
statistics as it does in training.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from orchestrator.errors import TaskError
from orchestrator.search.probes import edge_probes
from orchestrator.search.space import Distribution, SearchSpace
from orchestrator.spec.task import Task, far_from_unit_scale
from worker.check.absent_classes import warn_if_classes_absent
from worker.check.contract import describe, refuse_as_run_would, value_failure_notes
from worker.check.edges import config_error, failing_values
from worker.check.left_out import left_out_note
from worker.check.overlap import row_hashes, warn_if_splits_share_examples
from worker.check.prefixes import prefix_ceiling
from worker.check.unread import unread_entries
from worker.check.validate import check_class_index_dtype, refuse_multilabel_shape, warn_if_classes_missing_from_train
from worker.data.kinds import TargetKind, class_labels, loss_function, right_rows
from worker.data.seeds import preserved_randomness, seed_trial
from worker.data.splits import Splits, padding_rows, prepare_task_data
from worker.train.trainer import own_optimizer

# Relative-error bands from the CS231n notes (gradient check).
WRONG, SUSPICIOUS, GOOD = 1e-2, 1e-4, 1e-7
# Both gradients below this are zero to float64 precision (a dead unit, an unused weight):
# centred differences carry ~1e-10 of round-off, which would read as a 100% relative error.
# Round-off grows with the loss (eps * |loss| / h), so the bar is this times the loss where it is above 1.
ZERO_GRADIENT = 1e-9
STEP = 1e-5  # CS231n's h; in float64 round-off (~eps/h) and truncation (~h^2) both stay near 1e-10
L2_STRENGTHS = (0.0, 1e-3, 1e-2, 1e-1)
NEAR_ZERO_LOSS = 0.05
INITIAL_LOSS_TOLERANCE = 0.5  # |loss - ln C| <= 0.5 * ln C: He-initialised logits add ~sigma^2/2 to ln C
PASS, WARN, FAIL = "pass", "warn", "fail"


class LowPrecisionLoss(Exception):
    """The loss comes back below float64 from the float64 model copy: its centred differences would be round-off."""


@dataclass
class CheckResult:
    name: str
    status: str  # pass / warn / fail
    value: str  # what was measured
    expected: str  # what a healthy model shows
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status != FAIL


@dataclass
class TensorCheck:
    """Gradient check of one parameter tensor."""

    name: str
    shape: tuple[int, ...]
    dims: int  # dimensions checked
    max_rel_error: float  # over dimensions without a kink
    kinks: int  # dimensions whose finite difference crossed a kink
    zeros: int  # dimensions where both gradients are zero
    level: str  # good / ok / suspicious / wrong


@dataclass
class PreflightReport:
    config: dict[str, Any]
    num_classes: int | None
    checks: list[CheckResult] = field(default_factory=list)
    tensors: list[TensorCheck] = field(default_factory=list)
    space_notes: list[str] = field(default_factory=list)  # one line per parameter with a range end that fails
    kind: str = "classification"
    soft: bool = False
    labels: int | None = None  # multi-label: the label count (num_classes is 2, per label)
    mode_note: str = ""  # why the checks ran the model in eval mode (empty: training mode, dropout off)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def title(self) -> str:
        if self.labels is not None:
            return f"{self.labels} binary labels (multi-label)"
        if self.kind == "classification":
            return f"{self.num_classes} classes" + (" (probability targets)" if self.soft else "")
        return self.kind


# -- the config ------------------------------------------------------------------------------

REGULARISATION_PREFIXES = ("weight_decay", "l2")
# Anywhere in the name: attn_dropout, hidden_dropout_prob (Hugging Face), drop_path_rate and attn_drop_rate (timm),
# drop_connect_rate (EfficientNet), stochastic_depth: each keeps a model from overfitting 20 examples.
DROP_WORDS = ("dropout", "drop_path", "drop_rate", "drop_prob", "drop_connect", "stochastic_depth")


def is_regulariser(name: str) -> bool:
    lower = name.lower()
    return lower.startswith(REGULARISATION_PREFIXES) or any(word in lower for word in DROP_WORDS)


def preflight_config(space: SearchSpace, *, how: str = "midpoint", seed: int = 0) -> dict[str, Any]:
    """One config of ``space`` (its midpoint or a seeded sample) with regularisation off."""
    if how not in ("midpoint", "sample"):
        raise TaskError(f"preflight config: 'how' must be midpoint or sample, got {how!r}")
    rng = np.random.default_rng(seed)
    config = {}
    for name, value in space.items():
        if isinstance(value, Distribution):
            value = value.from_unit(0.5 if how == "midpoint" else rng.random())
        config[name] = value
    return regularisation_off(space.deactivate(config))  # inactive conditional parameters: None, as in a trial


def regularisation_off(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (0.0 if is_regulariser(k) and isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in config.items()}


# -- building models -----------------------------------------------------------------------

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def dropout_off(model: nn.Module) -> nn.Module:
    """Training mode (batch norm on batch statistics) with every dropout module inert."""
    model.train()
    for module in model.modules():
        if isinstance(module, _DROPOUTS):
            module.eval()
    return model


def model_builder(task: Task, config: Mapping[str, Any], seed: int, device: torch.device,
                  eval_mode: bool = False) -> Callable[[], nn.Module]:
    """Fresh models of ``config``, seeded alike: in training mode with dropout off, or in eval mode."""
    build = task.get("build_model")

    def fresh() -> nn.Module:
        torch.manual_seed(seed)
        try:
            model = build(dict(config))
        except Exception as exc:
            raise TaskError(f"build_model raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise TaskError(f"build_model must return a torch.nn.Module, got {type(model).__name__}")
        model = dropout_off(model.to(device))
        return model.eval() if eval_mode else model

    return fresh


def l2_term(model: nn.Module) -> torch.Tensor:
    """0.5 * sum of squared weights (tensors of 2+ dims: biases and norm scales are not decayed)."""
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    if not weights:
        return torch.zeros((), dtype=torch.float64)
    return 0.5 * sum(p.double().pow(2).sum() for p in weights)


# -- the checks ----------------------------------------------------------------------------


def check_initial_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any, num_classes: int | None,
                       *, tolerance: float = INITIAL_LOSS_TOLERANCE, expected: float | None = None,
                       kind: TargetKind | None = None, own_loss: bool = False) -> CheckResult:
    """Classification: ``ln C`` (near-uniform softmax); with the task's own ``loss_fn`` (``own_loss``: a focal, a
    class-weighted or a label-smoothed loss is no plain cross-entropy), that loss at uniform outputs. Regression with
    the MSE: ``mean(y^2)`` = variance + mean^2 of the targets (an untrained model predicts near 0), a warning when
    off. Custom, or a regression trained by its own ``loss_fn`` (a Poisson or pinball loss is no MSE): only
    ``expected``."""
    kind = kind or TargetKind("classification", num_classes=num_classes)
    with torch.no_grad():
        outputs = model(x)
        loss = float(loss_fn(outputs, y))
        uniform = _loss_at_uniform(loss_fn, outputs, y, kind) if kind.kind == "classification" and own_loss else None
    if expected is not None:
        target, what, miss = expected, loss_text(expected), FAIL
    elif uniform is not None:
        target, what, miss = uniform, f"the task's loss_fn at uniform outputs = {loss_text(uniform)}", FAIL
    elif kind.kind == "classification" and own_loss:
        return CheckResult("initial loss", WARN if not math.isfinite(loss) else PASS, loss_text(loss), "-",
                           "the task's own loss_fn gives no finite loss at uniform outputs: pass --expected-loss to "
                           "judge the initial loss")
    elif kind.kind == "classification":
        target = math.log(kind.num_classes or 1)
        what, miss = f"ln {kind.num_classes} = {loss_text(target)}", FAIL
    elif kind.kind == "regression" and own_loss:
        return CheckResult("initial loss", WARN if not math.isfinite(loss) else PASS, loss_text(loss), "-",
                           "the task's own loss_fn: pass --expected-loss to judge the initial loss")
    elif kind.kind == "regression":
        target = float(y.double().pow(2).mean())
        what, miss = f"variance + mean² of the targets = {loss_text(target)}", WARN
    else:
        return CheckResult("initial loss", WARN if not math.isfinite(loss) else PASS, loss_text(loss), "-",
                           "custom kind: pass --expected-loss to judge the initial loss")
    off = abs(loss - target) / max(abs(target), 1e-12)
    ok = math.isfinite(loss) and off <= tolerance
    hint = unscaled_targets_hint(y, kind) if not ok and expected is None else ""
    return CheckResult("initial loss", PASS if ok else (FAIL if not math.isfinite(loss) else miss), loss_text(loss),
                       f"{what} (±{tolerance:.0%})",
                       "" if ok else f"off by {off:.0%}: check the loss scaling and the last layer's "
                                     f"initialisation{hint}")


def loss_text(value: float) -> str:
    """Four decimals, or four significant digits below 0.01: targets in metres have losses near 1e-7, which four
    decimals print as 0.0000."""
    return format(value, ".4g") if 0 < abs(value) < 0.01 else f"{value:.4f}"


def _loss_at_uniform(loss_fn: Any, outputs: torch.Tensor, y: torch.Tensor, kind: TargetKind) -> float | None:
    """The task's loss for outputs that say nothing: every class equally likely. Scores of ``log(1/C)`` are uniform
    both as logits and as log-probabilities (a LogSoftmax head); a sigmoid head (one logit, or multi-label) takes 0.
    None when the loss raises on them or is not finite."""
    one_logit = outputs.dim() == 2 and outputs.shape[1] == 1
    fill = 0.0 if kind.multilabel or one_logit else -math.log(kind.num_classes or outputs.shape[1])
    try:
        value = float(loss_fn(torch.full_like(outputs, fill), y))
    except Exception:  # user code that cannot take them: the row says to pass --expected-loss
        return None
    return value if math.isfinite(value) else None


def check_regularisation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any,
                         strengths: tuple[float, ...] = L2_STRENGTHS) -> CheckResult:
    with torch.no_grad():
        data_loss = float(loss_fn(model(x), y))
        penalty = float(l2_term(model))
    losses = [data_loss + s * penalty for s in strengths]
    rising = all(b > a for a, b in zip(losses, losses[1:])) and all(map(math.isfinite, losses))
    value = " < ".join(loss_text(v) for v in losses) if rising else ", ".join(loss_text(v) for v in losses)
    detail = "" if rising else ("no weight tensor reaches the loss" if penalty == 0 else "loss does not rise with L2")
    return CheckResult("L2 raises the loss", PASS if rising else FAIL, value,
                       f"rising over L2 strength {', '.join(f'{s:g}' for s in strengths)}", detail)


def least_loss(loss_fn: Any, outputs: torch.Tensor, y: torch.Tensor, steps: int = 300) -> float:
    """The least loss any outputs reach on ``y``: free outputs of ``outputs``' shape, fitted by Adam. A task's own
    classification loss may stay above 0 at its best (label smoothing: about 0.5 for 10 classes at 0.1)."""
    free = torch.zeros_like(outputs.detach(), requires_grad=True)
    optimizer = torch.optim.Adam([free], lr=0.5)
    least = math.inf
    for _ in range(steps):
        loss = loss_fn(free, y)
        least = min(least, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return least


def fitted_outputs(loss_fn: Any, y: torch.Tensor, start: torch.Tensor, shape: torch.Size, lr: float,
                   steps: int = 300) -> tuple[float, torch.Tensor]:
    """The least loss Adam finds for outputs of ``shape`` grown from ``start`` (one row for every example when
    ``start`` has one row), and those outputs. The rate decays to 0, so a loss with kinks (a pinball loss) settles
    instead of swinging about its least value by the step size."""
    free = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([free], lr=lr)
    least, best = math.inf, free.detach().expand(shape).clone()
    for step in range(steps):
        optimizer.param_groups[0]["lr"] = lr * (1 - step / steps)
        outputs = free.expand(shape).contiguous()  # a loss_fn may .view() its outputs, as a model's are contiguous
        loss = loss_fn(outputs, y)
        value = float(loss.detach())
        if math.isfinite(value) and value < least:
            least, best = value, outputs.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return least, best


def _or_none(compute: Any, *args: Any) -> Any:
    """``compute(*args)``, or None where the loss fails on free outputs it takes from the model (it reads the model's
    own attributes, or needs outputs the model alone gives): the bar then falls back to the kind's plain one."""
    try:
        return compute(*args)
    except Exception:
        return None


def own_regression_span(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any,
                        near_zero: float) -> tuple[float, float] | None:
    """A regression's own loss judged in its own units, as ``(floor, scale)`` for the bar ``floor + near_zero * scale``.

    ``floor`` is its least value on ``y`` (free outputs: an exact fit), ``gap`` how far above it the best constant
    prediction stays. MSE must fall to ``near_zero`` of that gap (the targets' variance): outputs ``sqrt(near_zero)``
    of the way from the fit to the constant. A loss growing as the residual's power ``p`` (1 for a pinball loss, in the
    targets' units; between for a Poisson loss on log-rates) gets that closeness of fit, ``sqrt(near_zero) ** p`` of
    its gap, ``p`` measured halfway between the two (and held to [1, 2]). The targets' variance, the bar before, said
    nothing of such losses: a model ignoring its inputs passed. None when no span is found (targets one constant
    fits)."""
    with torch.no_grad():
        outputs = model(x).detach()
    starts = [(torch.zeros_like(outputs), 0.5)]  # outputs on another scale than the targets (log-rates): from 0
    if y.numel() == outputs.numel() and y.is_floating_point():  # outputs in the targets' units: from the targets
        values = y.detach().reshape(outputs.shape).to(outputs.dtype)
        spread = float(values.std()) if values.numel() > 1 else 0.0
        starts.append((values, max(0.05 * spread, 1e-6)))
    floor, fit = min((fitted_outputs(loss_fn, y, s, outputs.shape, lr) for s, lr in starts), key=lambda r: r[0])
    constant, flat = min((fitted_outputs(loss_fn, y, s.mean(dim=0, keepdim=True), outputs.shape, lr)
                          for s, lr in starts), key=lambda r: r[0])
    gap = constant - floor
    if not (math.isfinite(floor) and math.isfinite(gap) and gap > 0):
        return None
    with torch.no_grad():
        half = float(loss_fn(fit + 0.5 * (flat - fit), y)) - floor
    power = math.log(half / gap) / math.log(0.5) if math.isfinite(half) and 0 < half < gap else 2.0
    power = min(max(power, 1.0), 2.0)
    return floor, gap * near_zero ** (power / 2) / near_zero


def check_overfit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any, *, steps: int = 500,
                  lr: float = 1e-2, near_zero: float = NEAR_ZERO_LOSS, kind: TargetKind | None = None,
                  own_loss: bool = False) -> CheckResult:
    """Adam on ``x`` (one full batch) until the loss is near its floor (and, for class indices, every example right).

    The floor and scale follow the kind: class indices, loss < ``near_zero`` and 100% right; soft labels,
    loss within ``near_zero`` of the targets' entropy (the least cross-entropy possible); regression, loss
    below ``near_zero`` x the targets' variance (the task's own loss: the same closeness of fit in its own units,
    :func:`own_regression_span`); custom, ``near_zero`` of the way from the first loss down to its least value (free
    outputs; 0 for a loss that starts above 0 and never below it, twice the first for one that starts below 0).
    Judged by loss alone but for class indices. ``own_loss``: the task's ``loss_fn`` on a classification kind, whose
    floor is :func:`least_loss` (label smoothing, a distillation temperature).
    """
    kind = kind or TargetKind("classification")
    params = [p for p in model.parameters() if p.requires_grad]
    floor, scale, by_accuracy = 0.0, 1.0, kind.hard_classes
    if own_loss and kind.kind == "classification" and params:
        with torch.no_grad():
            outputs = model(x)
        least = least_loss(loss_fn, outputs, y)
        floor = least if math.isfinite(least) else 0.0  # a loss without a least value: judged against 0
    elif kind.kind == "classification" and kind.soft:
        floor = float(-(y * torch.log(y.clamp_min(1e-12))).sum(dim=1).mean())
    elif kind.kind == "regression" and own_loss and params and (
            span := _or_none(own_regression_span, model, x, y, loss_fn, near_zero)):
        floor, scale = span
    elif kind.kind == "regression":
        # the loss of predicting the subset's mean: against mean(y^2), targets far from 0 (temperatures in kelvin)
        # pass while the model has learnt only their offset
        scale = float(y.double().reshape(len(y), -1).var(dim=0, unbiased=False).mean())
        scale = scale if scale > 0 else 1.0  # one target value: any constant fits it
    ceiling, shared = 1.0, ""
    if by_accuracy and kind.per_position and not own_loss and (most := prefix_ceiling(x, y)) is not None:
        ceiling, floor = most[0], most[1]  # a causal model cannot tell positions whose prefixes are the same
        shared = (f" (the most a model reading each position's prefix gets: {most[2]} positions share a prefix with "
                  "other targets)")
    expected = (f"loss < {floor + near_zero:.4g}, {_share(ceiling)} accuracy on {len(x)} examples{shared}"
                if by_accuracy else f"loss < {floor + near_zero * scale:.4g} on {len(x)} examples")
    if not params:
        return CheckResult("overfit tiny subset", FAIL, "-", expected, "the model has no trainable parameters")
    optimizer = _adam(model, params, lr)
    loss_value, accuracy, taken = math.nan, 0.0, 0
    for taken in range(1, steps + 1):  # noqa: B007 (the count is reported)
        logits = model(x)
        loss = loss_fn(logits, y)
        loss_value = float(loss.detach())
        if kind.kind == "custom" and taken == 1:
            # a loss that starts below 0 (a Gaussian NLL) must still fall by 95% of its size, not pass untrained; one
            # whose least value is above 0 (a negative binomial NLL of counts) falls 95% of the way down to it
            floor = min(0.0, 2 * loss_value) if math.isfinite(loss_value) else 0.0
            fitted = _or_none(fitted_outputs, loss_fn, y, torch.zeros_like(logits.detach()), logits.shape, 0.5) \
                if math.isfinite(loss_value) else None
            least = math.nan if fitted is None else fitted[0]
            floor = least if math.isfinite(least) and floor < least < loss_value else floor
            scale = loss_value - floor if math.isfinite(loss_value) and loss_value != floor else 1.0
            expected = f"loss < {floor + near_zero * scale:.4g} on {len(x)} examples"
        accuracy = float(right_rows(logits, class_labels(y, kind), kind).float().mean()) if by_accuracy else 1.0
        if loss_value - floor < near_zero * scale and accuracy >= ceiling - 1e-9:
            break
        if not loss.requires_grad:
            return CheckResult("overfit tiny subset", FAIL, loss_text(loss_value), expected,
                               "the loss does not depend on any parameter (detached output?)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss_value):
            break
    ok = loss_value - floor < near_zero * scale and accuracy >= ceiling - 1e-9
    hint = unscaled_targets_hint(y, kind) if not ok else ""
    value = f"{loss_text(loss_value)} ({accuracy:.0%} right, {taken} steps)" if by_accuracy else \
        f"{loss_value:.4g} ({taken} steps)"
    return CheckResult("overfit tiny subset", PASS if ok else FAIL, value, expected,
                       "" if ok else f"cannot fit {len(x)} examples: the model or its loss cannot learn{hint}")


def _share(value: float) -> str:
    """``100%``, or ``97.8%``: a ceiling just under 100% is not rounded up to it."""
    return "100%" if value >= 1.0 else f"{math.floor(value * 1000) / 10:.1f}%"


def unscaled_targets_hint(y: torch.Tensor, kind: TargetKind) -> str:
    """Regression targets far from unit scale and not standardised: the usual reason a regressor cannot fit."""
    if kind.kind != "regression" or kind.target_std is not None or len(y) < 2:
        return ""
    flat = y.double().reshape(len(y), -1)
    mean, sd = flat.mean(dim=0), flat.std(dim=0)
    if not far_from_unit_scale(float(torch.maximum(mean.abs(), sd).max())):
        return ""
    if len(mean) == 1:
        described = f"mean {float(mean[0]):.3g}, sd {float(sd[0]):.3g}"
    else:  # each output on its own, as the end of a sweep says it: the first alone hid a price beside a rate
        more = ", ..." if len(mean) > 4 else ""
        described = ("means " + ", ".join(f"{float(m):.3g}" for m in mean[:4]) + more
                     + "; sds " + ", ".join(f"{float(v):.3g}" for v in sd[:4]) + more)
    return f"; the targets ({described}) are trained on as they are: set standardize_targets = True"


class _Optimizers:
    """Several optimizers stepped as one (``step``, ``zero_grad``)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def _adam(model: nn.Module, params: list[nn.Parameter], lr: float) -> Any:
    """Adam, with SparseAdam for the weights of sparse embeddings (``sparse=True``), whose gradients Adam refuses."""
    sparse = {id(m.weight) for m in model.modules()
              if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad}
    if not sparse:
        return torch.optim.Adam(params, lr=lr)
    dense = [p for p in params if id(p) not in sparse]
    optimizers = [torch.optim.SparseAdam([p for p in params if id(p) in sparse], lr=lr)]
    return _Optimizers(*optimizers, *([torch.optim.Adam(dense, lr=lr)] if dense else []))


def error_level(error: float) -> str:
    if error > WRONG:
        return "wrong"
    if error > SUSPICIOUS:
        return "suspicious"
    return "good" if error <= GOOD else "ok"


# ReLU-like modules and the inputs where their derivative jumps.
def _kinks_of(module: nn.Module) -> tuple[float, ...] | None:
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.RReLU)):
        return (0.0,)
    if isinstance(module, nn.ReLU6):
        return (0.0, 6.0)
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    if isinstance(module, (nn.Hardswish, nn.Hardsigmoid)):
        return (-3.0, 3.0)
    if isinstance(module, (nn.Softshrink, nn.Hardshrink)):
        return (-float(module.lambd), float(module.lambd))
    return None


_F = torch.nn.functional
_AT_ZERO = {torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, _F.relu, _F.relu_, _F.leaky_relu,
            _F.leaky_relu_, torch.abs, torch.Tensor.abs}
_CLAMPS = {torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clip, torch.clamp_min, torch.Tensor.clamp_min,
           torch.clamp_max, torch.Tensor.clamp_max}


def _kinks_of_call(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The kinks of a functional ReLU-like call (``torch.relu(x)``, ``x.clamp(min=0)``) on its first argument."""
    if func in _AT_ZERO:
        return (0.0,)
    if func is _F.relu6:
        return (0.0, 6.0)
    if func in (_F.hardtanh, _F.hardtanh_):
        low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return (float(low), float(high))
    if func in (_F.hardswish, _F.hardsigmoid):
        return (-3.0, 3.0)
    if func in _CLAMPS:
        name = func.__name__
        keys = ("max",) if name.endswith("clamp_max") else ("min",) if name.endswith("clamp_min") else ("min", "max")
        given = [args[1 + i] if len(args) > 1 + i else kwargs.get(key) for i, key in enumerate(keys)]
        return tuple(float(v) for v in given if isinstance(v, (int, float)))  # a tensor bound: not followed
    return None


class _FunctionalKinks(TorchFunctionMode):
    """Sees ReLU-like calls made as functions in a forward pass (``torch.relu``, ``F.relu``, ``clamp``), which
    leave no module for a hook."""

    def __init__(self, watch: KinkWatch):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor):
            kinks = _kinks_of_call(func, args, kwargs)
            if kinks:
                self.watch.record(args[0], kinks)
        return func(*args, **kwargs)


class KinkWatch:
    """Records which side of each kink every ReLU-like input sits on, per forward pass: those of modules through
    hooks, and functional calls while ``watching()``."""

    def __init__(self, model: nn.Module):
        self.regions: list[torch.Tensor] = []
        self.handles = []
        for module in model.modules():
            kinks = _kinks_of(module)
            if kinks is not None:
                self.handles.append(module.register_forward_hook(self._hook(kinks)))

    def record(self, x: torch.Tensor, kinks: tuple[float, ...]) -> None:
        x = x.detach()
        self.regions.append(sum((x > k).to(torch.int8) for k in kinks))

    def watching(self) -> _FunctionalKinks:
        return _FunctionalKinks(self)

    def _hook(self, kinks: tuple[float, ...]) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self.record(inputs[0], kinks)

        return hook

    def take(self) -> list[torch.Tensor]:
        out, self.regions = self.regions, []
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _crossed(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) != len(b) or any(not torch.equal(p, q) for p, q in zip(a, b))


def gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any, *, dims_per_tensor: int = 10,
                   seed: int = 0, step: float = STEP, in_place: bool = False) -> list[TensorCheck]:
    """Analytic vs centred-difference gradients on a float64 copy of ``model``, tensor by tensor (in the mode
    ``model`` is in: training mode with dropout off, or eval mode).

    ``in_place``: ``model`` is a fresh build the caller gives away, made float64 itself rather than copied (torch's
    deepcopy refuses a model holding a computed tensor, as ``torch.nn.utils.weight_norm`` leaves)."""
    with preserved_randomness():  # each forward pass seeds the global generators: the caller's are put back
        return _gradient_check(model, x, y, loss_fn, dims_per_tensor=dims_per_tensor, seed=seed, step=step,
                               in_place=in_place)


def _gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any, *, dims_per_tensor: int,
                    seed: int, step: float, in_place: bool) -> list[TensorCheck]:
    training = model.training
    model = dropout_off((model if in_place else copy.deepcopy(model)).double()).train(training)
    x = x.double() if x.is_floating_point() else x
    # Float targets meet the float64 outputs in float64, as float32 ones meet float32 outputs in training: torch's
    # huber_loss takes mixed dtypes forward but its backward raises "Found dtype Float but expected Double".
    y = y.double() if y.is_floating_point() else y
    watch = KinkWatch(model)

    def loss_at() -> torch.Tensor:
        seed_trial(seed)  # any randomness left in the forward pass repeats exactly: torch's, numpy's or Python's
        with watch.watching():
            return loss_fn(model(x), y)

    try:
        model.zero_grad(set_to_none=True)
        try:
            loss = loss_at()
        except RuntimeError as exc:  # a float32 tensor made inside loss_fn (class weights) meets the float64 copy
            if "Double" not in str(exc) or "Float" not in str(exc):
                raise
            raise LowPrecisionLoss(f"loss_fn raises on the float64 model copy ({str(exc).splitlines()[0]}): a float32 "
                                   "tensor inside it, such as class weights? make it with .to(outputs.dtype) to "
                                   "check gradients; training in float32 is not affected") from None
        if loss.is_floating_point() and loss.dtype != torch.float64:
            # a cast in the task's loss_fn (targets.float()) rounds the loss to float32, whose differences over
            # h = 1e-5 are noise: every tensor would read "wrong" while its gradient is right
            dtype = str(loss.dtype).removeprefix("torch.")
            raise LowPrecisionLoss(f"loss_fn returns {dtype} on the float64 model copy (a cast such as "
                                   "targets.float()?): cast with targets.to(outputs.dtype) to check gradients")
        if loss.requires_grad:
            loss.backward()
        watch.take()
        # targets trained as they are (prices near 1e4) give losses near 1e8, whose differences carry ~1e-3 of
        # round-off: gradients or disagreements below that are no measurement
        size = abs(float(loss.detach()))
        noise = ZERO_GRADIENT * max(1.0, size) if math.isfinite(size) else ZERO_GRADIENT
        rng = np.random.default_rng(seed)
        results = []
        frozen = padding_rows(model)
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            grad = param.grad
            analytic = torch.zeros_like(param) if grad is None else \
                grad.detach().to_dense() if grad.is_sparse else grad.detach().clone()  # a sparse embedding's
            dims = np.arange(param.numel())
            if name in frozen:  # no gradient on purpose while the loss reads it: its difference quotient is no check
                dims = dims[dims // param.shape[1] != frozen[name]]
            count = min(dims_per_tensor, len(dims))
            picks = rng.choice(dims, size=count, replace=False)
            errors, kinks, zeros = [], 0, 0
            for flat in picks:
                index = tuple(int(i) for i in np.unravel_index(int(flat), tuple(param.shape)))
                with torch.no_grad():
                    original = float(param[index])
                    param[index] = original + step
                    plus = float(loss_at())
                    plus_regions = watch.take()
                    param[index] = original - step
                    minus = float(loss_at())
                    minus_regions = watch.take()
                    param[index] = original
                numeric = (plus - minus) / (2 * step)
                a = float(analytic[index])
                if _crossed(plus_regions, minus_regions):
                    kinks += 1
                    continue
                scale = max(abs(a), abs(numeric))
                if scale < noise:
                    zeros += 1
                    errors.append(0.0)
                    continue
                error = abs(a - numeric) / scale if math.isfinite(scale) else math.inf
                # a disagreement the loss's round-off explains is no sign of a wrong gradient (smaller ones are kept:
                # they are what the check measures)
                errors.append(0.0 if error > SUSPICIOUS and abs(a - numeric) < noise else error)
            worst = max(errors, default=0.0)
            results.append(TensorCheck(name, tuple(param.shape), count, worst, kinks, zeros, error_level(worst)))
        return results
    finally:
        watch.close()


def summarise_gradients(tensors: list[TensorCheck]) -> CheckResult:
    expected = f"rel. error: good < {GOOD:g}, warn > {SUSPICIOUS:g}, fail > {WRONG:g}"
    if not tensors:
        return CheckResult("gradient check", FAIL, "-", expected, "the model has no trainable parameters")
    worst = max(tensors, key=lambda t: t.max_rel_error)
    dims = sum(t.dims for t in tensors)
    kinks = sum(t.kinks for t in tensors)
    status = FAIL if worst.level == "wrong" else WARN if worst.level == "suspicious" else PASS
    value = f"max {worst.max_rel_error:.1e}, {worst.level} ({worst.name}) over {dims} dims in {len(tensors)} tensors"
    notes = []
    if status == FAIL:
        bad = [t.name for t in tensors if t.level == "wrong"]
        notes.append(f"wrong gradient in {', '.join(bad)}")
    elif status == WARN:
        notes.append(f"{worst.name} between {SUSPICIOUS:g} and {WRONG:g}: suspicious")
    if kinks:
        notes.append(f"{kinks} dims crossed a ReLU kink (skipped)")
    return CheckResult("gradient check", status, value, expected, "; ".join(notes))


# -- all together ----------------------------------------------------------------------------


def run_preflight(task: Task, splits: Splits | None = None, *, config: Mapping[str, Any] | None = None,
                  how: str = "midpoint", seed: int = 0, device: str = "cpu", overfit_examples: int = 20,
                  overfit_steps: int = 500, grad_examples: int = 4, dims_per_tensor: int = 10,
                  tolerance: float = INITIAL_LOSS_TOLERANCE, expected_loss: float | None = None) -> PreflightReport:
    """Every check on one config of ``task``; each failure is a row, never an exception."""
    if splits is None:
        splits = prepare_task_data(task)
    threads = torch.get_num_threads()
    # Every tensor here is tiny (4 to 1024 examples): one thread beats several that spin-wait on each
    # other (float64 batch norm on 4 examples: 0.14 ms on one thread, 11 ms on two on a busy machine).
    torch.set_num_threads(1)
    try:
        return _run_checks(task, splits, config=config, how=how, seed=seed, device=device,
                           overfit_examples=overfit_examples, overfit_steps=overfit_steps, grad_examples=grad_examples,
                           dims_per_tensor=dims_per_tensor, tolerance=tolerance, expected_loss=expected_loss)
    finally:
        torch.set_num_threads(threads)


def _run_checks(task: Task, splits: Splits, *, config: Mapping[str, Any] | None, how: str, seed: int, device: str,
                overfit_examples: int, overfit_steps: int, grad_examples: int, dims_per_tensor: int,
                tolerance: float, expected_loss: float | None) -> PreflightReport:
    config = regularisation_off(config) if config is not None else preflight_config(task.space, how=how, seed=seed)
    run_error = refuse_as_run_would(task, splits, config)  # "all checks passed" must not precede run's refusal
    warn_if_splits_share_examples(splits)  # the warning lines caviar run gives about the splits, before the table
    warn_if_classes_missing_from_train(splits)
    warn_if_classes_absent(splits)
    dev = torch.device(device)
    fresh = model_builder(task, config, seed, dev)
    kind = splits.target_kind
    loss_fn = loss_function(task, kind)
    x, y = splits.sample(1024) if splits.streams else (splits.x_train, splits.y_train)  # streamed: the first 1024
    x, y = x.to(dev), kind.to_training(y).to(dev)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(dev)
    report = PreflightReport(dict(config), splits.num_classes, kind=kind.kind, soft=kind.soft, labels=kind.labels)
    sample = order[:1024]  # the initial loss is an average: a thousand examples pin it down
    tiny, few = distinct_inputs(x, order, overfit_examples), order[:grad_examples]
    if task.get("train_epoch") is not None:
        with torch.no_grad():
            training_outputs = fresh()(x[few])
        if not isinstance(training_outputs, torch.Tensor):  # an auxiliary head's (logits, aux): the task's loop
            fresh = model_builder(task, config, seed, dev, eval_mode=True)
            report.mode_note = (f"the model returns {type(training_outputs).__name__} in training mode, which the "
                                "task's own train_epoch handles: every check ran it in eval mode, as caviar "
                                "evaluates it")
    check_class_index_dtype(kind, y, task)  # as caviar run: one line, not torch's error in every check below
    if run_error is not None:  # the batches below are of other sizes, so they may not meet it
        batch = config.get("batch_size", 64)
        report.checks.append(CheckResult("a training batch", FAIL, "error", f"one batch of {batch} trains, as in "
                                         "each trial", describe(run_error)))
    if kind.multilabel:  # the loss flattens outputs and targets, so every check below would pass a (batch, L, 1) head
        with torch.no_grad():
            refuse_multilabel_shape(kind, fresh()(x[few]), y[few])
    report.checks.append(guarded("initial loss", lambda: check_initial_loss(
        fresh(), x[sample], y[sample], loss_fn, splits.num_classes, tolerance=tolerance, expected=expected_loss,
        kind=kind, own_loss=task.get("loss_fn") is not None)))
    report.checks.append(guarded("L2 raises the loss", lambda: check_regularisation(
        fresh(), x[sample], y[sample], loss_fn)))
    report.checks.append(guarded("overfit tiny subset", lambda: check_overfit(
        fresh(), x[tiny], y[tiny], loss_fn, steps=overfit_steps, kind=kind, own_loss=task.get("loss_fn") is not None)))

    def gradients() -> CheckResult:
        try:
            report.tensors = gradient_check(fresh(), x[few], y[few], loss_fn, dims_per_tensor=dims_per_tensor,
                                            seed=seed, in_place=True)
        except LowPrecisionLoss as exc:  # nothing measured: not a wrong gradient
            return CheckResult("gradient check", WARN, "not run", "a float64 loss from the float64 model", str(exc))
        return summarise_gradients(report.tensors)

    report.checks.append(guarded("gradient check", gradients))
    def space_ends() -> CheckResult:
        result, report.space_notes = check_space_ends(task, splits, config)
        return result

    report.checks.append(guarded("space ends build", space_ends))

    def entries_read() -> CheckResult:
        result, lines = check_entries_read(task, splits, config)
        report.space_notes = [*report.space_notes, *lines]
        return result

    report.checks.append(guarded("space entries read", entries_read))

    def optimized() -> CheckResult:
        result, lines = check_parameters_optimized(task, fresh, config)
        report.space_notes = [*report.space_notes, *lines]
        return result

    if task.get("build_optimizer") is not None:  # caviar's own optimizer takes every trainable parameter
        report.checks.append(guarded("parameters optimized", optimized))
    return report


def distinct_inputs(x: torch.Tensor, order: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` indices of ``order`` whose inputs differ from those before: tabular data with few distinct
    rows repeats inputs under different labels (noise), and no model fits both labels of one input."""
    candidates = order[:1024]  # not the whole training split: a copy of it could be gigabytes
    _, first = np.unique(row_hashes(x[candidates].cpu()), return_index=True)
    keep = np.sort(first)[:count]
    return candidates[torch.as_tensor(keep, device=order.device)]


def check_entries_read(task: Task, splits: Splits, config: Mapping[str, Any]) -> tuple[CheckResult, list[str]]:
    """Whether every space entry is read by the task's builds or caviar's loop (worker/check/unread.py), as
    ``caviar run`` warns before its workers start; a line for each one nothing reads."""
    expected = "each by build_model or caviar's loop"
    if task.get("train_epoch") is not None:
        return CheckResult("space entries read", PASS, "not judged", expected, "the task's own train_epoch may read "
                           "any key"), []
    lines = unread_entries(task, splits, task.space, [config])
    names = len(list(task.space))
    if not lines:
        return CheckResult("space entries read", PASS, f"{names} of {names}", expected), []
    unread = ", ".join(line.split("'")[1] for line in lines)
    return CheckResult("space entries read", WARN, f"{names - len(lines)} of {names}", expected,
                       f"{unread} unread (below)"), lines


def check_parameters_optimized(task: Task, fresh: Callable[[], nn.Module],
                               config: Mapping[str, Any]) -> tuple[CheckResult, list[str]]:
    """Whether the task's own ``build_optimizer`` gives every trainable parameter a group, as ``caviar run`` warns
    before its workers start (worker/check/left_out.py); the line naming those it leaves out."""
    expected = "every trainable parameter in a parameter group"
    build = task.get("build_optimizer")
    model = fresh()
    trainable = [p for p in model.parameters() if p.requires_grad]
    note = left_out_note(model, own_optimizer(build, dict(config), trainable))
    if note is None:
        return CheckResult("parameters optimized", PASS, f"{len(trainable)} of {len(trainable)}", expected), []
    left = int(note.split("leaves ")[1].split(" ")[0])
    return CheckResult("parameters optimized", WARN, f"{len(trainable) - left} of {len(trainable)}", expected,
                       "build_optimizer leaves some out (below)"), [note]


def check_space_ends(task: Task, splits: Splits, config: Mapping[str, Any]) -> tuple[CheckResult, list[str]]:
    """Each searched parameter's ends and options built with ``config``'s other values (worker/check/edges.py),
    as ``caviar run`` does before its workers start; and a line for each parameter with a value that fails."""
    expected = "every range end and option"
    probes = edge_probes(task.space, config)
    if not probes:
        return CheckResult("space ends build", PASS, "nothing to build", expected), []
    failed = config_error(task, splits, config)
    if failed is not None:  # every end would fail the same way: the rows above say why
        return CheckResult("space ends build", WARN, "not run", expected,
                           f"the checked config itself fails: {failed[0]} raised {type(failed[1]).__name__}"), []
    notes = value_failure_notes(failing_values(task, splits, task.space, config), base="the checked config")
    value = f"{len(probes) - sum(len(n['values']) for n in notes)} of {len(probes)} build"
    if not notes:
        return CheckResult("space ends build", PASS, value, expected), []
    named = "; ".join(f"{n['param']} = {', '.join(map(repr, n['values']))}" for n in notes)
    return CheckResult("space ends build", WARN, value, expected, f"{named} (below)"), [n["message"] for n in notes]


def guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    """A check whose model or loss raises is a failed row naming the error; a bad task file is not."""
    try:
        return check()
    except TaskError:
        raise
    except Exception as exc:  # user code: report it, keep checking the rest
        return CheckResult(name, FAIL, "error", "-", f"{type(exc).__name__}: {exc}")
