"""A task's own train_epoch that keeps state on its optimizer across epochs, as loops do: a step counter, a
OneCycleLR stepped every two batches (gradient accumulation, carried across epochs: 9 batches an epoch), a smoothed
loss as a tensor and a second optimizer for an adversary head."""

import numpy as np
import torch
from torch import nn

kind = "custom"
objective = "val_mae"
mode = "min"
EPOCHS = 4
space = {"lr": 0.01, "batch_size": 16, "optimizer": "adam", "ema_decay": 0.9, "grad_clip": 1.0}


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=240)).astype(np.float32)[:, None]
    # 9 batches of 16: each epoch's last batch leaves its gradient for the next epoch's first step
    return (x[:144], y[:144]), (x[160:200], y[160:200]), (x[200:], y[200:])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        self.disc = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.gen(x)


def build_model(config):
    return Net()


def loss_fn(outputs, targets):
    return (outputs - targets).abs().mean()


def metrics(outputs, targets):
    return {"mae": float((outputs - targets).abs().mean())}


def train_epoch(model, optimizer, batches, config):
    if not hasattr(optimizer, "adversary"):
        optimizer.adversary = torch.optim.SGD(model.disc.parameters(), lr=0.01, momentum=0.9)
        optimizer.one_cycle = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config["lr"], total_steps=EPOCHS * ((len(batches) + 1) // 2))
    total = n = 0
    for i, (x, y) in enumerate(batches):
        pred = model.gen(x)
        real, fake = model.disc(torch.cat([x, y], 1)), model.disc(torch.cat([x, pred.detach()], 1))
        adversary_loss = nn.functional.softplus(-real).mean() + nn.functional.softplus(fake).mean()
        optimizer.adversary.zero_grad()
        adversary_loss.backward()
        optimizer.adversary.step()
        loss = (pred - y).abs().mean() + 0.01 * nn.functional.softplus(-model.disc(torch.cat([x, pred], 1))).mean()
        (loss / 2).backward()
        for p in model.disc.parameters():
            p.grad = None
        if i % 2 == 1:
            optimizer.step()
            optimizer.zero_grad()
            optimizer.one_cycle.step()
            optimizer.steps_taken = getattr(optimizer, "steps_taken", 0) + 1
            optimizer.smoothed = 0.9 * getattr(optimizer, "smoothed", torch.zeros(())) + 0.1 * loss.detach()
        total += float(loss.detach()) * len(x)
        n += len(x)
    return {"train_loss": total / n}
