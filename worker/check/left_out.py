"""Trainable parameters a task's ``build_optimizer`` gives to no parameter group.

Splitting parameters into groups (weight decay on weights only, a backbone at a lower rate) drops some easily: a
filter ``p.ndim > 1`` for the decayed group and no group for the rest leaves every bias and norm out. They still get
gradients in every step and never move, and nothing says so. Left out on purpose (a head-only fine-tune), they are
better frozen with ``requires_grad_(False)``: no gradients computed, and the model says what trains.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("caviar")


def left_out_note(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """One line naming the trainable parameters in none of ``optimizer``'s groups, or None when it steps them all."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) not in stepped]
    if not missing:
        return None
    names = ", ".join(name for name, _ in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    values = sum(p.numel() for _, p in missing)
    return (f"build_optimizer leaves {len(missing)} trainable parameter{'s' if len(missing) > 1 else ''} out of every "
            f"parameter group ({names}; {values} values): they get gradients and never move; give them a group "
            "(weight_decay 0 for biases and norms), or freeze them in build_model with requires_grad_(False)")


def warn_if_optimizer_leaves_out(task_has_own: bool, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    if task_has_own and (note := left_out_note(model, optimizer)) is not None:
        log.warning(note)
