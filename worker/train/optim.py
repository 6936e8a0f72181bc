"""Optimizers and learning-rate schedules built from a config, on torch.optim only.

Config keys (all optional except ``lr``): ``optimizer`` (sgd, momentum, nesterov, adagrad,
rmsprop, adam, adamw), ``momentum`` (beta for SGD momentum), ``beta1``, ``beta2``, ``eps``,
``rho`` (RMSprop decay), ``weight_decay`` (L2), ``schedule`` (constant, step, exponential,
inverse_time, plateau, cosine), ``decay_rate``, ``step_epochs``. A key whose value is ``None``
(a conditional hyperparameter inactive in this trial) counts as absent: the default applies.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from orchestrator.errors import ConfigError, TaskError
from orchestrator.spec.builtin_values import OPTIMIZER_READS, OPTIMIZERS, SCHEDULE_READS, SCHEDULES


def setting(config: Mapping[str, Any], key: str, default: Any) -> Any:
    """``config[key]``, or ``default`` where the key is missing or ``None`` (inactive)."""
    value = config.get(key)
    return default if value is None else value


def sparse_embeddings(model: nn.Module) -> list[str]:
    """The names of the model's trainable embeddings that give sparse gradients."""
    return [name or type(m).__name__ for name, m in model.named_modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad]


def build_optimizer(config: Mapping[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    name = str(setting(config, "optimizer", "adam"))
    params = list(params)
    if not params:  # torch's own "empty parameter list": no config value is at fault
        return _optimizer(name, config, params)
    read = ("lr", "weight_decay", *OPTIMIZER_READS.get(name, ()))
    with _refused_values(f"optimizer {name!r}", config, read):
        return _optimizer(name, config, params)


def _optimizer(name: str, config: Mapping[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    lr = float(setting(config, "lr", 1e-3))
    wd = float(setting(config, "weight_decay", 0.0))
    momentum = float(setting(config, "momentum", 0.9))
    betas = (float(setting(config, "beta1", 0.9)), float(setting(config, "beta2", 0.999)))
    eps = float(setting(config, "eps", 1e-8))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd, eps=eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=float(setting(config, "rho", 0.99)), eps=eps, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    raise ConfigError(f"optimizer: unknown {name!r} (one of {', '.join(OPTIMIZERS)})")


def build_schedule(config: Mapping[str, Any], optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """A per-epoch scheduler (``step()`` once an epoch; ``plateau`` takes the validation loss)."""
    name = str(setting(config, "schedule", "constant"))
    with _refused_values(f"schedule {name!r}", config, SCHEDULE_READS.get(name, ())):
        return _schedule(name, config, optimizer, epochs)


@contextmanager
def _refused_values(what: str, config: Mapping[str, Any], keys: Iterable[str]) -> Iterator[None]:
    """torch's refusal of a config's values (a nesterov momentum of 0, a plateau factor of 1.5) as one line naming
    the config keys, not as an error of the model's forward pass."""
    try:
        yield
    except ValueError as exc:
        given = ", ".join(f"{k} {config[k]!r}" for k in keys if config.get(k) is not None)
        raise TaskError(f"{what}{f' with {given}' if given else ''}: torch refused these config values "
                        f"({exc}); keep them in range in the space") from None


def _schedule(name: str, config: Mapping[str, Any], optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    rate = float(setting(config, "decay_rate", 0.5))
    sched = torch.optim.lr_scheduler
    if name == "constant":
        return sched.LambdaLR(optimizer, lambda epoch: 1.0)
    if name == "step":
        return sched.StepLR(optimizer, step_size=int(setting(config, "step_epochs", max(1, epochs // 3))), gamma=rate)
    if name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=rate)
    if name == "inverse_time":  # lr0 / (1 + k t), CS231n's 1/t decay
        return sched.LambdaLR(optimizer, lambda epoch: 1.0 / (1.0 + rate * epoch))
    if name == "plateau":
        return sched.ReduceLROnPlateau(optimizer, factor=rate, patience=int(setting(config, "patience", 2)))
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    raise ConfigError(f"schedule: unknown {name!r} (one of {', '.join(SCHEDULES)})")


def step_schedule(scheduler: Any, val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
        return
    with warnings.catch_warnings():
        # Stepped at an epoch's end, after its optimizer steps; torch warns when fp16's loss scaler skipped every one
        # of them (an overflowing first epoch), which is no mistake in the user's code
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                category=UserWarning)
        scheduler.step()
