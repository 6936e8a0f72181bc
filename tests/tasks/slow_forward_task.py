"""tiny_task whose training forward passes sleep, so a fused array's call lasts long enough to be killed mid-call.

A kill test that looks for an actor mid-call could otherwise find it only at the call's end, after the results
had gone back to the master (the array trains 6 epochs of tiny_task in well under a second).
"""

from __future__ import annotations

import time

from tiny_task import load_data  # noqa: F401 (task piece)
from tiny_task import space as tiny_space
from torch import nn

space = {**tiny_space, "step_sleep": 0.04}
settings = {"trials": 4, "epochs": 2}


class SlowMLP(nn.Module):
    def __init__(self, hidden: int, step_sleep: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
        self.step_sleep = step_sleep

    def forward(self, x):
        if self.training:
            time.sleep(self.step_sleep)
        return self.net(x)


def build_model(config):
    return SlowMLP(int(config["hidden"]), float(config["step_sleep"]))
