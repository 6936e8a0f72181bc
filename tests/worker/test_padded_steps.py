"""Zero-padded sequences beside a recurrent model are named before the sweep: standardisation moves the padding.

In-process on plain data (no Ray): the real contract check, real torch.
"""

from __future__ import annotations

import logging

import numpy as np
from torch import nn

from tests.worker.test_inputs import plain_task
from worker.check.contract import validate_contract

CONFIG = {"lr": 0.05, "batch_size": 16, "optimizer": "adam"}
SAID = "training sequences (float32, shape (12, 3)) end or begin in 1 to 8 all-zero steps"


class ZeroMaskedGRU(nn.Module):
    """Finds each sequence's length from its all-zero padding, as many sequence models do."""

    def __init__(self, features: int):
        super().__init__()
        self.gru = nn.GRU(features, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        if x.ndim == 2:
            x = x.unsqueeze(-1)
        lengths = (x != 0).any(dim=-1).sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.head(h[-1])


def _series(padded: bool, shape=(12, 3)):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 0.5, size=(120, *shape)).astype(np.float32)
    if padded:  # lengths 4 to 12: zeros after each series' end
        for row, length in zip(x, rng.integers(4, shape[0] + 1, size=len(x))):
            row[length:] = 0
    y = (x[:, 0].reshape(len(x), -1)[:, 0] > 1).astype(np.int64)
    split = (x, y)
    return split, split, split


def _warnings(caplog, task) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(task, [CONFIG])
    return [r.getMessage() for r in caplog.records if "all-zero steps" in r.getMessage()]


def test_zero_padded_sequences_beside_a_gru_are_named(caplog):
    """Before: the padded steps reached the GRU as -mean/std, the lengths found from zeros were all 12, and the sweep
    trained on the padding without a word."""
    said = _warnings(caplog, plain_task(lambda config: ZeroMaskedGRU(3), lambda: _series(True)))
    assert len(said) == 1 and SAID in said[0]
    assert "beside a model with GRU" in said[0] and "set normalize = False in the task" in said[0]
    univariate = _warnings(caplog, plain_task(lambda config: ZeroMaskedGRU(1), lambda: _series(True, (12,))))
    assert len(univariate) == 1 and "shape (12,)" in univariate[0]


def test_unpadded_series_unstandardised_inputs_and_images_say_nothing(caplog):
    assert not _warnings(caplog, plain_task(lambda config: ZeroMaskedGRU(3), lambda: _series(False)))
    assert not _warnings(caplog, plain_task(lambda config: ZeroMaskedGRU(3), lambda: _series(True), normalize=False))
    # Blank rows at the edge of a picture beside a model without a recurrent or attention layer: not padding.
    images = plain_task(lambda config: nn.Sequential(nn.Flatten(), nn.Linear(36, 2)), lambda: _series(True))
    assert not _warnings(caplog, images)
