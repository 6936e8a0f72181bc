"""Streamed data with augmentation: the 8x8 digits as 1x8x8 images, a small CNN with batch norm.

``load_data`` returns torch ``Dataset`` objects: caviar reads them through a ``DataLoader`` per
trial (the batch size from the config, ``num_workers`` worker processes kept across epochs),
never stacking them into memory, so the same task works for data larger than RAM. The training
Dataset shifts each image by up to one pixel at random on every read (train-only augmentation);
validation and test read the images as they are. Run it with
``caviar run examples/digits_cnn_augment.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from orchestrator.search.space import choice, lograndint, loguniform

num_workers = 0  # DataLoader worker processes per trial; raise it when reading an example is slow (files, decoding)

space = {
    "lr": loguniform(1e-4, 1e-1),
    "optimizer": choice(["adam", "adamw", "momentum"]),
    "weight_decay": loguniform(1e-6, 1e-3),
    "channels": lograndint(8, 32),
    "batch_size": lograndint(32, 128),
}

settings = {"trials": 12, "epochs": 8}


class Digits(Dataset):
    """Images of one split, made one at a time; ``shift``: random translations (training only)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, shift: int = 0):
        self.images, self.labels, self.shift = images, labels, shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[i]).reshape(1, 8, 8)
        if self.shift:
            dx, dy = np.random.randint(-self.shift, self.shift + 1, size=2)
            image = torch.roll(image, shifts=(int(dy), int(dx)), dims=(1, 2))
        return image, int(self.labels[i])


def load_data() -> dict[str, Dataset]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int64)
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": Digits(x[:a], y[:a], shift=1), "val": Digits(x[a:b], y[a:b]), "test": Digits(x[b:], y[b:])}


def build_model(config: dict) -> nn.Module:
    c = int(config["channels"])
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * c * 16, 10),
    )
