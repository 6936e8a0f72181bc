"""A task that reads its space in every way a careful one does, and leaves nothing unread: a key read only on one
branch of a choice ('kernel' for the conv model), a key read in forward (a module keeping the config), and the
task's own build_optimizer reading 'head_lr' and 'scale'."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_task import load_data  # noqa: E402, F401

from orchestrator.search.space import choice, loguniform, randint, uniform  # noqa: E402

space = {  # no 'lr': its own build_optimizer sets the rate from these two
    "head_lr": loguniform(1e-3, 1e-1),
    "arch": choice(["mlp", "conv"]),
    "kernel": choice([1, 3]),
    "width": randint(4, 16),
    "scale": uniform(0.5, 2.0),
    "skip": choice([True, False]),
}


class Scaled(nn.Module):
    def __init__(self, body, config):
        super().__init__()
        self.body, self.config = body, config
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        out = self.head(x) if self.config["skip"] else 0.0  # read at call time, not at build time
        return out + self.body(x)


def build_model(config):
    if config["arch"] == "conv":
        body = nn.Sequential(nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 3, config["kernel"], padding="same"),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten())
    else:
        body = nn.Sequential(nn.Linear(4, config["width"]), nn.ReLU(), nn.Linear(config["width"], 3))
    return Scaled(body, config)


def build_optimizer(config, params):
    return torch.optim.Adam(params, lr=config["head_lr"] * config["scale"])
