"""Sparse embeddings (``sparse=True``) beside a built-in optimizer that refuses their sparse gradients.

torch's Adam, AdamW and RMSprop refuse sparse gradients, and every optimizer refuses them with a weight decay: each
such trial failed at its first step, after the sweep had started. Each config's optimizer is stepped once on a tiny
sparse embedding of its own, so the answer is torch's, whatever its version takes."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from orchestrator.errors import ConfigError
from worker.train.optim import build_optimizer, setting, sparse_embeddings


def refuse_optimizers_without_sparse_gradients(model: nn.Module, configs: Sequence[Mapping[str, Any]]) -> None:
    """One line naming the sparse embeddings and the configs' optimizers that refuse their gradients."""
    names = sparse_embeddings(model)
    if not names:
        return
    refused: dict[str, str] = {}
    for config in configs:
        what = _optimizer_named(config)
        if what not in refused and (error := _refusal(config)) is not None:
            refused[what] = error
    if not refused:
        return
    shown = ", ".join(f"{n!r}" for n in names[:3]) + (f" (and {len(names) - 3} more)" if len(names) > 3 else "")
    raise ConfigError(
        f"optimizer: the model's {'embedding' if len(names) == 1 else 'embeddings'} {shown} "
        f"{'has' if len(names) == 1 else 'have'} sparse=True, and their sparse gradients are refused by "
        f"{'; '.join(f'{w} ({e})' for w, e in refused.items())}: every such trial would fail at its first step. "
        "Use optimizer 'sgd', 'momentum' or 'adagrad' without weight_decay, or a build_optimizer returning "
        "torch.optim.SparseAdam (every trainable weight sparse) or torch.optim.Adagrad, or sparse=False")


def _optimizer_named(config: Mapping[str, Any]) -> str:
    name = f"optimizer {str(setting(config, 'optimizer', 'adam'))!r}"
    decay = float(setting(config, "weight_decay", 0.0))
    return f"{name} with weight_decay {decay:g}" if decay else name


def _refusal(config: Mapping[str, Any]) -> str | None:
    probe = nn.Embedding(2, 1, sparse=True)
    optimizer = build_optimizer(config, probe.parameters())
    probe(torch.tensor([0, 0, 1])).sum().backward()
    try:
        with warnings.catch_warnings():  # Adagrad's note on sparse invariant checks, about this probe only
            warnings.simplefilter("ignore")
            optimizer.step()
    except RuntimeError as exc:  # torch's own words: "Adam does not support sparse gradients", ...
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None
