"""tiny_task with two slips in its space: 'dropuot' searched while build_model reads 'dropout', and 'batchsize'
fixed while caviar's loop reads 'batch_size'. Every trial would train at dropout 0.1 and batch size 64."""

from __future__ import annotations

import os
import sys

from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_task import load_data  # noqa: E402, F401

from orchestrator.search.space import choice, loguniform, uniform  # noqa: E402

space = {
    "lr": loguniform(1e-2, 3e-1),
    "act": choice(["relu", "tanh"]),
    "dropuot": uniform(0.0, 0.5),
    "batchsize": 32,
}


def build_model(config):
    act = nn.ReLU() if config["act"] == "relu" else nn.Tanh()
    return nn.Sequential(nn.Linear(4, 16), act, nn.Dropout(config.get("dropout", 0.1)), nn.Linear(16, 3))
