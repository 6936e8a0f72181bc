"""Exponential moving average of a model's weights, with warm-up (as TensorFlow's ExponentialMovingAverage with
``num_updates``; the copy updated by lerp as timm's ModelEmaV3).

Batch norm: the running mean and variance are averaged like the weights (floating-point
buffers follow the same EMA, but entries that are not finite, a causal mask's -inf, are copied);
integer buffers such as ``num_batches_tracked`` are copied. A bfloat16 or float16 model's averages are kept in
float32 (with the trial's resume state), the averaged module holding their rounding.
A spectral norm's power-iteration vectors (``u``, ``v``) are not averaged: averages of unit vectors that rotate
between steps shrink (to a third in a few hundred steps), and the averaged model's layer came out several times
larger than spectral norm 1. They take one power iteration on the averaged weights at each update instead, as the
trained model's take on its own weights at each training forward.
An averaged buffer tracks the statistics the averaged weights would see closely enough
for the decays we sample, and costs no extra pass over the data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm as SpectralNormHook

HALF = (torch.float16, torch.bfloat16)


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """Decay for update number ``step`` (0-based): ``min(decay, (1 + t) / (10 + t))`` with warm-up.

    Without warm-up a short run's average stays near the random initial weights.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EmaWeights:
    """A plain copy of the model whose parameters and float buffers follow an EMA."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True,
                 build: Callable[[], torch.nn.Module] | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay, self.warmup, self.step = decay, warmup, 0
        self.module = _copy(model, build).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        # Where each parameter and buffer lives, found once: walking named_parameters() every step cost
        # about a tenth of a small model's epoch. Looked up by name each step, so a reassigned buffer is seen.
        self._slots: list[tuple[str, str, str, torch.nn.Module]] | None = None
        self._estimates = power_iteration_buffers(self.module)
        self._ema_modules: dict[str, torch.nn.Module] | None = None
        # float32 copies of a half-precision model's averages: in bfloat16 an update of (1 - 0.999) of a small step
        # rounds away, and the average froze (0.04 off the exact one after 3000 steps, more than the weights moved)
        self._wide: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        weight = 1.0 - ema_decay_at(self.step, self.decay, self.warmup)
        if self._slots is None:
            self._slots = _tensor_slots(model)
        ema_modules = self._modules_by_path()
        ema_float, new_float = [], []
        for path, table, name, model_module in self._slots:
            ema_t, new_t = getattr(ema_modules[path], table)[name], getattr(model_module, table)[name]
            if new_t is None or ema_t is None or ema_t.shape != new_t.shape:
                # A buffer the model sets in its forward pass (a causal mask cached on first use, registered as
                # None; rebuilt for a longer sequence): nothing to average yet, the model's is taken as it is.
                getattr(ema_modules[path], table)[name] = None if new_t is None else new_t.detach().clone()
                continue
            if (path, name) in self._estimates:
                continue  # estimated again for the averaged weights below
            if ema_t.dtype in HALF:
                self._average_wide(f"{path}|{table}|{name}", ema_t, new_t.detach(), weight)
                continue
            if ema_t.is_floating_point() and table == "_buffers":
                average_buffer(ema_t, new_t, weight)
            elif ema_t.is_floating_point():
                ema_float.append(ema_t)
                new_float.append(new_t.detach())
            else:
                ema_t.copy_(new_t)
        if ema_float:
            torch._foreach_lerp_(ema_float, new_float, weight)
        if self._estimates:
            power_iteration(self.module)
        self.step += 1

    def _average_wide(self, key: str, ema_t: torch.Tensor, new_t: torch.Tensor, weight: float) -> None:
        """The average of a half-precision tensor kept in float32, ``ema_t`` its rounding."""
        wide = self._wide.get(key)
        if wide is None or wide.shape != ema_t.shape:
            wide = self._wide[key] = ema_t.float()
        average_buffer(wide, new_t.float(), weight)
        ema_t.copy_(wide)

    def _modules_by_path(self) -> dict[str, torch.nn.Module]:
        if self._ema_modules is None:
            self._ema_modules = dict(self.module.named_modules())
        return self._ema_modules

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "weights": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "wide": {k: v.cpu().clone() for k, v in self._wide.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.module.load_state_dict(state["weights"])
        device = next(iter(self.module.state_dict().values()), torch.empty(0)).device
        self._wide = {k: v.to(device) for k, v in state.get("wide", {}).items()}  # none in earlier states: rounded


def _copy(model: torch.nn.Module, build: Callable[[], torch.nn.Module] | None) -> torch.nn.Module:
    """A copy of ``model``: ``deepcopy``, or where that raises, ``build()`` (the same model built again) given its
    state. torch's deepcopy refuses a module holding a computed tensor, as ``torch.nn.utils.weight_norm`` leaves."""
    try:
        return copy.deepcopy(model)
    except RuntimeError:
        if build is None:
            raise
    with torch.random.fork_rng(devices=[]):  # the trial's own random stream goes on as if nothing was built
        twin = build()
    twin.load_state_dict(model.state_dict())
    return twin.to(next(iter(model.parameters())).device)


def power_iteration_buffers(model: torch.nn.Module) -> set[tuple[str, str]]:
    """(module path, buffer name) of every spectral norm's ``u`` and ``v``: the parametrization's and the older
    hook's (``torch.nn.utils.spectral_norm``)."""
    out = set()
    for path, module in model.named_modules():
        if isinstance(module, _SpectralNorm):
            out |= {(path, "_u"), (path, "_v")}
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNormHook):
                out |= {(path, f"{hook.name}_u"), (path, f"{hook.name}_v")}
    return out


@torch.no_grad()
def power_iteration(model: torch.nn.Module) -> None:
    """Each spectral norm's ``u`` and ``v`` moved by its power iterations towards its current weight's singular
    vectors, in place, as a forward pass in training mode moves them, whatever mode ``model`` is in."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNormHook):
                setattr(module, hook.name, hook.compute_weight(module, do_power_iteration=True))
        if not parametrize.is_parametrized(module):
            continue
        for chain in module.parametrizations.values():
            if not any(isinstance(p, _SpectralNorm) for p in chain):
                continue
            originals = [chain.original] if chain.is_tensor else [getattr(chain, f"original{i}")
                                                                   for i in range(chain.ntensors)]
            value = tuple(originals)  # the weight as each parametrization of the chain sees it
            for p in chain:
                was = p.training
                value = (p.train(was or isinstance(p, _SpectralNorm))(*value),)
                p.train(was)


def average_buffer(ema: torch.Tensor, new: torch.Tensor, weight: float | torch.Tensor) -> None:
    """``ema.lerp_(new, weight)`` in place, but entries that are not finite in either are copied from ``new``.

    A float buffer may hold infinities on purpose (a causal mask of 0 and -inf): a lerp of -inf towards -inf is NaN,
    and every output of the averaged model with it.
    """
    finite = torch.isfinite(ema) & torch.isfinite(new)
    ema.copy_(torch.where(finite, torch.lerp(ema, new, weight), new))


def _tensor_slots(model: torch.nn.Module) -> list[tuple[str, str, str, torch.nn.Module]]:
    """(module path, ``_parameters`` or ``_buffers``, name, module) of every tensor, tied ones once, in
    ``named_parameters()`` then ``named_buffers()`` order; a buffer still ``None`` too (a cache the forward pass
    sets later)."""
    seen: set[int] = set()
    slots = []
    for table in ("_parameters", "_buffers"):
        for path, module in model.named_modules():
            for name, tensor in getattr(module, table).items():
                if (tensor is None and table == "_parameters") or (tensor is not None and id(tensor) in seen):
                    continue
                if tensor is not None:
                    seen.add(id(tensor))
                slots.append((path, table, name, module))
    return slots
