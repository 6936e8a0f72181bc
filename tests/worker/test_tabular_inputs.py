"""Tabular inputs as data scientists bring them: features on very different scales, labels as files give them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from orchestrator.errors import TaskError
from orchestrator.search.space import SearchSpace
from orchestrator.spec.task import Task
from worker.check.validate import check_config
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


def _task(build_model) -> Task:
    namespace = SimpleNamespace(build_model=build_model, load_data=None)
    return Task("inline", namespace, SearchSpace({"lr": 0.05, "batch_size": 16, "optimizer": "adam"}))


def test_labels_counted_from_one_are_named_with_the_shift_to_give():
    # Classes 1-3 (as many UCI files and R give them) beside a 3-output head: before, the line said "give the model
    # 4 outputs", a model whose class 0 never occurs.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype(np.float32), rng.integers(1, 4, 60)
    task = _task(lambda config: nn.Linear(4, 3))
    with pytest.raises(TaskError, match=r"^the model outputs 3 scores per example but the targets hold classes 1 to "
                                        r"3, none of them 0: class indices start at 0, so give y - 1 "):
        check_config(task, prepare(((x, y), (x, y), (x, y))), {"batch_size": 16})
    # A label 0 anywhere (here only in test): the data has 4 classes, and the line stays as it was.
    y_test = y.copy()
    y_test[0] = 0
    with pytest.raises(TaskError, match=r"the targets have 4 classes: give the model 4 outputs"):
        check_config(task, prepare(((x, y), (x, y), (x, y_test))), {"batch_size": 16})
