"""What a task's own ``train_epoch`` keeps on its optimizer between epochs, carried through a resume.

A loop keeps what must outlive an epoch on the optimizer it is given (``optimizer.warm_step``, a OneCycleLR stepped
per batch, a second optimizer for an adversary): a resumed trial got a new optimizer without them, so its loop
started its warm-up, its schedule and its adversary's momentum again, and the resumed epochs differed from an
uninterrupted run's without a word. Plain values are kept as they are; an object with ``state_dict()`` (torch's
optimizers, schedulers, ``GradScaler``) keeps its state, loaded into the object the loop makes again on its first
resumed epoch, when it assigns it to the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

_PLAIN = (bool, int, float, str, type(None), torch.Tensor)


def attribute_names(optimizer: torch.optim.Optimizer) -> frozenset[str]:
    """The optimizer's own attributes (and caviar's schedule's), before the task's loop adds any."""
    return frozenset(vars(optimizer))


def loop_state(optimizer: torch.optim.Optimizer, built: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Per attribute the loop added: ``{"value": v}`` for plain data, ``{"state_dict": s}`` for a stateful object;
    what is neither (a function, a data iterator) is left out, to be made again by the loop as on a first epoch."""
    kept: dict[str, dict[str, Any]] = {}
    for name, value in vars(optimizer).items():
        if name in built:
            continue
        if _plain(value):
            kept[name] = {"value": value}
        elif callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None)):
            kept[name] = {"state_dict": value.state_dict()}
    return kept


def restore_loop_state(optimizer: torch.optim.Optimizer, kept: Mapping[str, Mapping[str, Any]]) -> None:
    """Put plain values back now; load each stateful object's state when the loop assigns its new one."""
    pending = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device if params else torch.device("cpu")  # resume states are read onto the CPU
    for name, entry in kept.items():
        if "value" in entry:
            setattr(optimizer, name, _on(entry["value"], device))
        else:
            pending[name] = entry["state_dict"]
    if pending:
        _load_on_assignment(optimizer, pending)


def _load_on_assignment(optimizer: torch.optim.Optimizer, pending: dict[str, Any]) -> None:
    # A scheduler's constructor sets the groups' rate (and a OneCycleLR's momentum) to its first step's: the
    # checkpoint's values, as restored from the optimizer's state, are put back once its own state is loaded.
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    cls = type(optimizer)

    def assign(self: torch.optim.Optimizer, name: str, value: Any) -> None:
        cls.__setattr__(self, name, value)
        state = pending.pop(name, None)
        if state is not None and callable(getattr(value, "load_state_dict", None)):
            value.load_state_dict(state)
            for group, saved in zip(self.param_groups, groups):
                group.update(saved)
        if not pending:
            object.__setattr__(self, "__class__", cls)

    optimizer.__class__ = type(cls.__name__, (cls,), {"__setattr__": assign, "__module__": cls.__module__})


def _on(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_on(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _on(v, device) for k, v in value.items()}
    return value


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return isinstance(value, _PLAIN)
