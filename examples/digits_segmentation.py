"""Semantic segmentation: label every pixel of an 8x8 digit (scikit-learn's bundled digits) with what it shows.

Each pixel's class is 0 for background and 1 + the digit for ink (11 classes), so a pixel's class
depends on the whole stroke around it, as in semantic segmentation of scenes. Faint pixels at the
stroke's edge carry the label -100, torch's ``ignore_index``: no loss, no accuracy, as Pascal VOC marks
object boundaries "void". The targets (N, 8, 8) are integer class indices per position, so caviar
trains classification per pixel: a fully convolutional network gives scores (N, 11, 8, 8), the
cross-entropy and accuracy are over labelled pixels, and the ensembles average each pixel's class
probabilities. Trials are ranked on the mean intersection over union of the classes (``metrics``
below), the usual segmentation score. Run it with ``caviar run examples/digits_segmentation.py``; the
loaded ensemble returns (N, 11, 8, 8) probabilities and ``predict`` the (N, 8, 8) class map.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.search.space import choice, dropout, lograndint, loguniform, randint

space = {
    "lr": loguniform(1e-4, 1e-1),
    "optimizer": choice(["adam", "adamw", "momentum"]),
    "weight_decay": loguniform(1e-6, 1e-2),
    "channels": lograndint(8, 64),
    "layers": randint(1, 3),
    "dropout": dropout(0.0, 0.3),
    "batch_size": lograndint(16, 128),
}

settings = {"trials": 24, "epochs": 10}
objective = "val_mean_iou"
mode = "max"

CLASSES = 11  # background and the ten digits
INK, FAINT = 6, 2  # pixel values (0-16) at or above INK are ink; between FAINT and INK the edge, left unlabelled


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """1797 images (N, 1, 8, 8) scaled to [0, 1], split 60/20/20 with a fixed permutation; one class per pixel."""
    from sklearn.datasets import load_digits

    images, digit = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(images))
    images, digit = images[order].reshape(-1, 8, 8), digit[order]
    y = np.where(images >= INK, 1 + digit[:, None, None], 0).astype(np.int64)
    y[(images > FAINT) & (images < INK)] = -100
    x = (images / 16.0).astype(np.float32)[:, None]
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


class Segmenter(nn.Module):
    """3x3 convolutions for the local stroke, and a summary of the whole image beside every pixel for the digit it
    belongs to (the global context of ParseNet and PSPNet, here a linear layer over the 8x8 map): (N, 11, 8, 8)."""

    def __init__(self, width: int, layers: int, dropout: float):
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Conv2d(1 if i == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.local = nn.Sequential(*blocks)
        self.whole = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * 64, width), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(2 * width, width, 1), nn.ReLU(), nn.Conv2d(width, CLASSES, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local(x)
        whole = self.whole(local)[:, :, None, None].expand_as(local)
        return self.head(torch.cat([local, whole], dim=1))


def build_model(config: dict) -> nn.Module:
    return Segmenter(int(config["channels"]), int(config["layers"]), float(config["dropout"]))


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean intersection over union over the classes present in the split or predicted, labelled pixels only."""
    keep = targets != -100
    predicted, truth = outputs.argmax(dim=1)[keep], targets[keep]
    ious = []
    for c in range(CLASSES):
        union = int(((predicted == c) | (truth == c)).sum())
        if union:
            ious.append(int(((predicted == c) & (truth == c)).sum()) / union)
    return {"mean_iou": float(np.mean(ious))}
