"""Optimizers and learning-rate schedules built from a config, on torch.optim only.

Config keys (all optional except ``lr``): ``optimizer`` (sgd, momentum, nesterov, adagrad,
rmsprop, adam, adamw), ``momentum`` (beta for SGD momentum), ``beta1``, ``beta2``, ``eps``,
``rho`` (RMSprop decay), ``weight_decay`` (L2), ``schedule`` (constant, step, exponential,
inverse_time, plateau, cosine), ``decay_rate``, ``step_epochs``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from orchestrator.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "plateau", "cosine")


def build_optimizer(config: Mapping[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    name = str(config.get("optimizer", "adam"))
    lr = float(config["lr"]) if "lr" in config else 1e-3
    wd = float(config.get("weight_decay", 0.0))
    momentum = float(config.get("momentum", 0.9))
    betas = (float(config.get("beta1", 0.9)), float(config.get("beta2", 0.999)))
    eps = float(config.get("eps", 1e-8))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd, eps=eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=float(config.get("rho", 0.99)), eps=eps, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    raise ConfigError(f"optimizer: unknown {name!r} (one of {', '.join(OPTIMIZERS)})")


def build_schedule(config: Mapping[str, Any], optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """A per-epoch scheduler (``step()`` once an epoch; ``plateau`` takes the validation loss)."""
    name = str(config.get("schedule", "constant"))
    rate = float(config.get("decay_rate", 0.5))
    sched = torch.optim.lr_scheduler
    if name == "constant":
        return sched.LambdaLR(optimizer, lambda epoch: 1.0)
    if name == "step":
        return sched.StepLR(optimizer, step_size=int(config.get("step_epochs", max(1, epochs // 3))), gamma=rate)
    if name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=rate)
    if name == "inverse_time":  # lr0 / (1 + k t), the notes' 1/t decay
        return sched.LambdaLR(optimizer, lambda epoch: 1.0 / (1.0 + rate * epoch))
    if name == "plateau":
        return sched.ReduceLROnPlateau(optimizer, factor=rate, patience=int(config.get("patience", 2)))
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    raise ConfigError(f"schedule: unknown {name!r} (one of {', '.join(SCHEDULES)})")


def step_schedule(scheduler: Any, val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()
