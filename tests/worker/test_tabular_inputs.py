"""Tabular inputs as data scientists bring them: features on very different scales, labels as files give them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from worker.data.splits import prepare


def test_a_feature_varying_on_a_tiny_scale_is_scaled_in_memory_and_streamed():
    # A wavelength in metres (5e-7 +- 1e-7) varies: left at its own scale it reached the model as noise around 0.
    rng = np.random.default_rng(0)
    x = np.stack([5e-7 + 1e-7 * rng.normal(size=60), 1e-7 * rng.normal(size=60), np.zeros(60)], 1).astype(np.float32)
    y = np.zeros(60, np.int64)

    class Rows(Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return torch.from_numpy(x[i]), 0

    for splits in (prepare(((x, y), (x, y), (x, y))), prepare((Rows(), Rows(), Rows()))):
        std = splits.std.flatten().double()
        assert std[0] == pytest.approx(np.std(x[:, 0], ddof=1), rel=1e-3)
        assert std[1] == pytest.approx(np.std(x[:, 1], ddof=1), rel=1e-3)
        assert std[2] == 1.0  # a feature constant at 0 is still only centred
        scaled = splits.x_train if splits.x_train is not None else splits.normalise(torch.from_numpy(x))
        assert 0.5 < float(scaled[:, 0].std()) < 2.0
