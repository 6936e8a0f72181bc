"""Evaluation chunks shrink with the examples' size: large images are scored a few dozen at a time, not 4096."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from orchestrator.search.space import SearchSpace
from orchestrator.spec.task import Task
from worker.arrays.fused import FusedArray
from worker.data.splits import prepare
from worker.load.ensemble_model import EnsembleModel
from worker.train.trainer import TrialRun, TrialSpec

SHAPE = (3, 64, 64)  # 12288 numbers an image: 682 of them a chunk
MOST = 2**23 // (3 * 64 * 64)
CONFIG = {"lr": 0.01, "batch_size": 16, "optimizer": "sgd"}


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *SHAPE), dtype=np.float32), rng.integers(0, 2, n)


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 2, 3, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))


def evaluation_batches(model: nn.Module) -> list[int]:
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: None if module.training else seen.append(len(args[0])))
    return seen


def task(load_data) -> Task:
    return Task("inline", SimpleNamespace(build_model=lambda config: cnn(), load_data=load_data),
                SearchSpace(dict(CONFIG)), normalize=True)


def test_a_trial_scores_large_images_in_chunks_a_training_sized_gpu_holds():
    """A CNN training on batches of 16 images of 3x64x64 was scored on 4096 at once, in memory and streamed at 1024:
    activations 256 times training's, where a GPU ran out and the advice to lower batch_size could not help."""
    data = {"train": images(64, 0), "val": images(1500, 1), "test": images(40, 2)}
    streamed = {name: TensorDataset(*map(torch.as_tensor, pair)) for name, pair in data.items()}
    for raw in (data, streamed):
        run = TrialRun(task(lambda raw=raw: raw), prepare(raw), TrialSpec(0, 0, CONFIG, 0, 1), torch.device("cpu"))
        seen = evaluation_batches(run.model)
        run.train_epoch()
        assert seen and max(seen) <= MOST and sum(seen) >= 1500, seen


def test_a_fused_array_and_a_loaded_ensemble_score_large_images_in_chunks_too():
    splits = prepare({"train": images(64, 0), "val": images(1500, 1), "test": images(40, 2)})
    member = cnn()
    seen = evaluation_batches(member)
    model = EnsembleModel([member], [1.0], input_dtype=torch.float32, input_shape=SHAPE)
    assert len(model.predict(images(1500, 3)[0])) == 1500 and max(seen) <= MOST, seen
    small = np.zeros((5000, 8), dtype=np.float32)  # tabular rows keep the 4096 of before
    member = nn.Linear(8, 2)
    seen = evaluation_batches(member)
    EnsembleModel([member], [1.0], input_dtype=torch.float32, input_shape=(8,)).predict(small)
    assert seen == [4096, 904]
    array = FusedArray(task(lambda: None), splits, [TrialSpec(i, 0, CONFIG, i, 1) for i in range(2)],
                       torch.device("cpu"))
    x = splits.x_val
    calls: list[int] = []
    original = array._forward
    array._forward = lambda *args, **kwargs: calls.append(args[3].shape[1]) or original(*args, **kwargs)
    array.train_epoch()
    assert calls and max(calls) <= MOST // 2 and len(x) == 1500, calls
