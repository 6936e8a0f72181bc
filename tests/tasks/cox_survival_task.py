"""kind = "custom" survival: (time, event) targets, a Cox partial likelihood (each term a log-sum over its risk set,
so the loss of a whole split is not the mean of its batches') and Harrell's concordance index as the objective."""

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import loguniform

kind = "custom"
objective = "val_cindex"
mode = "max"
space = {"lr": loguniform(1e-3, 3e-2), "batch_size": 32, "optimizer": "adam"}


def load_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    t = rng.exponential(np.exp(-(x @ np.array([1.0, -0.5, 0.3, 0.0]))))
    c = rng.exponential(2.0, size=400)
    y = np.stack([np.minimum(t, c), (t <= c)], 1).astype(np.float32)
    return (x[:240], y[:240]), (x[240:320], y[240:320]), (x[320:], y[320:])


def build_model(config):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))


def loss_fn(outputs, targets):
    order = torch.argsort(targets[:, 0], descending=True)
    risk, event = outputs[order, 0], targets[order, 1]
    return -((risk - torch.logcumsumexp(risk, 0)) * event).sum() / event.sum().clamp(min=1)


def metrics(outputs, targets):
    risk, time, event = outputs[:, 0].double(), targets[:, 0].double(), targets[:, 1]
    comparable = (time[:, None] < time[None, :]) & (event[:, None] > 0)
    concordant = (risk[:, None] > risk[None, :]).double() + 0.5 * (risk[:, None] == risk[None, :]).double()
    return {"cindex": float((concordant * comparable).sum() / comparable.sum())}
