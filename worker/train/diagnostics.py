"""Per-layer training diagnostics, cheap enough to leave on: one probe per epoch, never per step.

What the CS231n notes say to watch, per layer and epoch:

- **parameters** (one row per trainable tensor): weight norm, gradient norm and the
  update-to-weight ratio ``||dw|| / ||w||`` (healthy near 1e-3), all measured on the
  *first optimizer step of the epoch*: a one-shot optimizer hook copies the weights before
  that step and compares after it, so training pays one copy of the weights per epoch;
- **activations** (one row per leaf module): mean, std, the fraction of exact zeros and of
  dead units (zero on every probe example: dead ReLUs), from forward hooks attached only
  during one forward pass of a fixed probe batch at epoch end, in eval mode (no dropout
  randomness drawn, no batch-norm statistics moved: training stays bit-for-bit the same);
- **histograms** (20 bins) of weights and activations, kept sparsely: the first epoch,
  every ``hist_every`` epochs, and the last.

Tasks can tune or disable it with a ``diagnostics`` attribute: ``False``, or a dict with
``probe_size``, ``hist_every``, ``bins``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from orchestrator.store import schema
from orchestrator.store.storage import Storage

SKIPPED_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten)


@dataclass(frozen=True)
class DiagnosticsOptions:
    probe_size: int = 256
    hist_every: int = 5
    bins: int = 20

    @classmethod
    def from_task(cls, value: Any) -> DiagnosticsOptions | None:
        """``None``/``True`` -> defaults; ``False`` -> off; a dict -> those fields."""
        if value is False:
            return None
        if isinstance(value, Mapping):
            return cls(**{k: int(v) for k, v in value.items() if k in cls.__dataclass_fields__})
        return cls()


class UpdateProbe:
    """Measures one optimizer step per arming: weight, gradient and update norms per tensor."""

    def __init__(self, optimizer: Any, params: Mapping[str, nn.Parameter]):
        self.params = dict(params)
        self.armed = True
        self.before: dict[str, torch.Tensor] | None = None
        self.result: dict[str, tuple[float, float | None, float]] = {}
        self.handles = []
        if hasattr(optimizer, "register_step_pre_hook"):  # any torch.optim.Optimizer
            self.handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _pre(self, *_: Any) -> None:
        if self.armed:
            self.before = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def _post(self, *_: Any) -> None:
        if self.before is None:
            return
        names = list(self.params)
        zero = torch.zeros((), device=next(iter(self.params.values())).device)
        weights = [torch.linalg.vector_norm(self.before[n].float()) for n in names]
        updates = [torch.linalg.vector_norm((self.params[n].detach() - self.before[n]).float()) for n in names]
        grads = [gradient_norm(self.params[n].grad) if self.params[n].grad is not None else zero for n in names]
        values = torch.stack([torch.stack(weights), torch.stack(updates), torch.stack(grads)]).tolist()  # one sync
        self.result = {}
        for i, n in enumerate(names):
            has_grad = self.params[n].grad is not None
            self.result[n] = (values[0][i], values[2][i] if has_grad else None, values[1][i])
        self.before, self.armed = None, False

    def take(self) -> dict[str, tuple[float, float | None, float]]:
        """Norms from the step measured since the last call; re-arms for the next step."""
        out, self.result, self.armed = self.result, {}, True
        return out


def histogram(values: torch.Tensor, bins: int) -> tuple[list[float], list[int]]:
    flat = values.detach().float().flatten()
    if flat.numel() == 0:
        return [], []
    low, high = (float(v) for v in torch.aminmax(flat))
    if not (math.isfinite(low) and math.isfinite(high)):  # rare (a diverging trial): filter, then bin the rest
        flat = flat[torch.isfinite(flat)]
        if flat.numel() == 0:
            return [], []
        low, high = (float(v) for v in torch.aminmax(flat))
    if high <= low:
        high = low + 1e-12
    counts = torch.histc(flat, bins=bins, min=low, max=high)
    step = (high - low) / bins
    return [low + i * step for i in range(bins)] + [high], [int(c) for c in counts.tolist()]


def activation_stats(output: torch.Tensor) -> torch.Tensor:
    """mean, std, zero fraction, dead-unit fraction of one module's output (dim 1 = units/channels)."""
    x = output.detach().float()
    zero = x == 0
    if x.dim() >= 2:  # a unit (feature or channel) is dead when it is zero for every example and position
        dead = zero.reshape(x.shape[0], x.shape[1], -1).all(dim=2).all(dim=0).float().mean()
    else:
        dead = zero.all().float()
    std = x.std() if x.numel() > 1 else torch.zeros((), device=x.device)
    return torch.stack([x.mean(), std, zero.float().mean(), dead])


class Diagnostics:
    """Collects diagnostic rows for one trial; the recorder takes them with :meth:`take`."""

    def __init__(self, model: nn.Module, optimizer: Any, x_train: torch.Tensor, ids: Mapping[str, int],
                 max_epochs: int, options: DiagnosticsOptions | None = None):
        self.model, self.ids, self.max_epochs = model, dict(ids), max_epochs
        self.options = options or DiagnosticsOptions()
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.updates = UpdateProbe(optimizer, self.params)
        # A fixed probe batch, chosen without touching the global RNG (training must not notice).
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
        self.probe = x_train[order[: self.options.probe_size].to(x_train.device)]
        self.rows: list[dict[str, Any]] = []
        self.probe_error: str | None = None  # a model the probe cannot run stops only the activation rows

    def keeps_histograms(self, epoch: int) -> bool:
        return epoch == 1 or epoch == self.max_epochs or epoch % max(self.options.hist_every, 1) == 0

    def epoch_end(self, epoch: int) -> None:
        hist = self.keeps_histograms(epoch)
        base = {**self.ids, "epoch": epoch}
        updates = self.updates.take()
        with torch.no_grad():  # one device sync for every tensor's mean and std
            moments = torch.stack([_moments(p) for p in self.params.values()]).tolist() if self.params else []
        for (name, param), (mean, std) in zip(self.params.items(), moments):
            weight_norm, grad_norm, update_norm = updates.get(name, (None, None, None))
            row = {**base, "kind": "parameter", "layer": name, "module": _owner_type(self.model, name),
                   "numel": param.numel(), "mean": mean, "std": std, "weight_norm": weight_norm,
                   "grad_norm": grad_norm, "update_ratio": update_norm / weight_norm if weight_norm else None}
            if hist:
                row["hist_edges"], row["hist_counts"] = histogram(param, self.options.bins)
            self.rows.append(row)
        captured = self._probe() if self.probe_error is None else []
        stats = torch.stack([activation_stats(out) for _, _, out in captured]).tolist() if captured else []
        for (name, module, output), (mean, std, zeros, dead) in zip(captured, stats):
            row = {**base, "kind": "activation", "layer": name, "module": type(module).__name__,
                   "numel": output[0].numel(), "mean": mean, "std": std, "zero_fraction": zeros, "dead_fraction": dead}
            if hist:
                row["hist_edges"], row["hist_counts"] = histogram(output, self.options.bins)
            self.rows.append(row)

    @torch.no_grad()
    def _probe(self) -> list[tuple[str, nn.Module, torch.Tensor]]:
        """One eval-mode forward pass of the probe batch with hooks on every leaf module."""
        captured: list[tuple[str, nn.Module, torch.Tensor]] = []
        handles = []
        for name, module in self.model.named_modules():
            if next(module.children(), None) is None and name and not isinstance(module, SKIPPED_MODULES):
                def hook(mod: nn.Module, _: Any, out: Any, name: str = name) -> None:
                    if isinstance(out, torch.Tensor) and out.is_nested:
                        out = _real_positions(out)
                    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() > 0:
                        captured.append((name, mod, out))
                handles.append(module.register_forward_hook(hook))
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(self.probe)
        except Exception as exc:  # diagnostics never end a trial
            self.probe_error = f"{type(exc).__name__}: {exc}"
            captured = []
        finally:
            self.model.train(was_training)
            for handle in handles:
                handle.remove()
        return captured

    def take(self) -> list[dict[str, Any]]:
        out, self.rows = self.rows, []
        return out


def _real_positions(out: torch.Tensor) -> torch.Tensor:
    """A nested tensor's values as one plain tensor, a row per position, the padding left out.

    torch's transformer layers run a fast path in eval mode with a padding mask, and the modules inside an
    ``nn.TransformerEncoder`` then return nested tensors, which have no ``shape`` to reshape or index by.
    """
    return torch.cat([t.reshape(-1, t.shape[-1]) if t.dim() >= 1 else t.reshape(1, 1) for t in out.unbind()])


def gradient_norm(grad: torch.Tensor) -> torch.Tensor:
    """One gradient's L2 norm in float32; a sparse one (``nn.Embedding(sparse=True)``) over its coalesced values,
    which torch's vector norm cannot take."""
    return torch.linalg.vector_norm((grad.coalesce().values() if grad.is_sparse else grad).float())


def _moments(param: torch.Tensor) -> torch.Tensor:
    x = param.detach().float()
    return torch.stack([x.mean(), x.std() if x.numel() > 1 else torch.zeros_like(x.mean())])


def _owner_type(model: nn.Module, param_name: str) -> str:
    owner = model.get_submodule(param_name.rpartition(".")[0]) if "." in param_name else model
    return type(owner).__name__


def compact_diagnostics(storage: Storage, trial_id: int) -> None:
    """Fold this trial's ``trial-N.a*.p*`` parts (and an earlier compaction) into ``trial-N.parquet``."""
    prefix = f"diagnostics/trial-{trial_id:06d}."
    target = schema.diagnostics_path(trial_id)
    parts = [f for f in storage.list_files("diagnostics") if f.startswith(prefix)]
    if not parts or parts == [target]:
        return
    ordered = ([target] if target in parts else []) + [p for p in parts if p != target]
    table = pa.concat_tables([storage.read_table(f) for f in ordered], promote_options="default")
    storage.write_table(target, table.sort_by([("attempt", "ascending"), ("epoch", "ascending")]))
    for part in parts:
        if part != target:
            storage.delete(part)
