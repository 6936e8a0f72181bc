"""Exponential moving average of a model's weights, with warm-up (as timm's ModelEmaV3).

Batch norm: the running mean and variance are averaged like the weights (floating-point
buffers follow the same EMA); integer buffers such as ``num_batches_tracked`` are copied.
An averaged buffer tracks the statistics the averaged weights would see closely enough
for the decays we sample, and costs no extra pass over the data.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """Decay for update number ``step`` (0-based): ``min(decay, (1 + t) / (10 + t))`` with warm-up.

    Without warm-up a short run's average stays near the random initial weights.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EmaWeights:
    """A plain copy of the model whose parameters and float buffers follow an EMA."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay, self.warmup, self.step = decay, warmup, 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        weight = 1.0 - ema_decay_at(self.step, self.decay, self.warmup)
        ema_float, new_float = [], []
        for (_, ema_t), (_, new_t) in zip(self._tensors(self.module), self._tensors(model)):
            if ema_t.is_floating_point():
                ema_float.append(ema_t)
                new_float.append(new_t.detach())
            else:
                ema_t.copy_(new_t)
        if ema_float:
            torch._foreach_lerp_(ema_float, new_float, weight)
        self.step += 1

    @staticmethod
    def _tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        return list(module.named_parameters()) + list(module.named_buffers())

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "weights": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.module.load_state_dict(state["weights"])
