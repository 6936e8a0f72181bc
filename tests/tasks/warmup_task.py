"""Regression trained by the task's own epoch, which warms the learning rate up over its first 30 steps (1.5 epochs
of 20 batches) and then leaves it to the config's schedule."""

from __future__ import annotations

import numpy as np
from torch import nn

kind = "regression"
space = {"lr": 0.01, "batch_size": 16, "optimizer": "sgd", "schedule": "exponential", "decay_rate": 0.5}
WARMUP = 30
USED: list[list[float]] = []  # each epoch's learning rate at each step


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(480, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5], dtype="float32"))[:, None]
    return (x[:320], y[:320]), (x[320:400], y[320:400]), (x[400:], y[400:])


def build_model(config):
    return nn.Linear(3, 1)


def train_epoch(model, optimizer, batches, config):
    total = n = 0
    step = getattr(optimizer, "warm_step", 0)
    USED.append([])
    for x, y in batches:
        if step < WARMUP:  # from near 0 up to the config's lr, then the schedule's
            for group in optimizer.param_groups:
                group["lr"] = config["lr"] * (step + 1) / WARMUP
        step += 1
        USED[-1].append(optimizer.param_groups[0]["lr"])
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(x)
        n += len(x)
    optimizer.warm_step = step
    return {"train_loss": total / n}
