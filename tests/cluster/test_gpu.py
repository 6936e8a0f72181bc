"""The GPU path: device placement per actor, fractional GPU packing, mixed precision.

Mixed precision and the device rules are checked everywhere (autocast runs on CPU too);
what needs a CUDA GPU skips, saying so, on machines without one.
"""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.spec.settings import RunSettings
from orchestrator.spec.task import load_task
from tests.conftest import TINY_TASK
from worker.data.splits import prepare
from worker.train.trainer import TrialRun, TrialSpec

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
CONFIG = {"lr": 0.05, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": 0.9}


def train(device: str, precision: str, epochs: int = 3) -> tuple[TrialRun, list[dict], set[torch.dtype]]:
    task = load_task(TINY_TASK)
    splits = prepare(task.get("load_data")()).to(torch.device(device))
    run = TrialRun(task, splits, TrialSpec(0, 0, CONFIG, seed=1, max_epochs=epochs), torch.device(device), precision)
    seen: set[torch.dtype] = set()
    run.model.register_forward_hook(lambda module, args, out: seen.add(out.dtype) if module.training else None)
    rows = [run.train_epoch() for _ in range(epochs)]
    return run, rows, seen


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_autocasts_the_forward_pass_and_still_learns(precision, dtype):
    _, reference, _ = train("cpu", "fp32")
    run, rows, seen = train("cpu", precision)
    assert seen == {dtype}  # training forward passes ran in the low precision
    assert run.scaler.is_enabled() == (precision == "fp16")  # fp16 alone needs loss scaling
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_accuracy"] == pytest.approx(reference[-1]["val_accuracy"], abs=0.1)
    assert rows[-1]["val_loss"] == pytest.approx(reference[-1]["val_loss"], rel=0.1)


def test_auto_device_is_cuda_only_for_actors_that_hold_a_gpu(ray_session):
    from cluster.runner import actor_device

    assert actor_device(RunSettings(device="auto", gpus_per_trial=0)) == "cpu"
    assert actor_device(RunSettings(device="auto", gpus_per_trial=0.25)) == "auto"  # -> cuda:0, its own GPU
    assert actor_device(RunSettings(device="cpu", gpus_per_trial=1)) == "cpu"


@needs_cuda
def test_each_actor_sees_only_the_gpu_ray_assigned_it(ray_session, tmp_path):
    import os

    import ray

    @ray.remote(num_gpus=0.5, num_cpus=0.5)
    def placement(storage: str) -> dict:
        from worker.train.session import WorkerSession

        session = WorkerSession(TINY_TASK, storage, "placement", {"device": "auto"})
        return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "assigned": [str(i) for i in ray.get_gpu_ids()],
                "count": torch.cuda.device_count(), "device": str(session.device),
                "data": str(session.splits.x_train.device)}

    for seen in ray.get([placement.remote(str(tmp_path)) for _ in range(2)]):
        assert seen["visible"] is not None and seen["visible"].split(",") == seen["assigned"]
        assert seen["count"] == len(seen["assigned"]) == 1
        assert seen["device"] == "cuda" and seen["data"] == "cuda:0"  # data moved to its GPU once, at load


@needs_cuda
def test_fractional_gpus_pack_several_trials_on_one_gpu(ray_session, storage_dir):
    import ray

    from cluster.runner import slots_for
    from orchestrator.app.api import run_sweep

    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = ray.cluster_resources().get("CPU", 0)
    slots = slots_for(RunSettings(gpus_per_trial=0.25, cpus_per_trial=0.5))
    assert slots == min(int(cpus // 0.5), int(gpus // 0.25))
    result = run_sweep(TINY_TASK, storage=storage_dir, name="packed", trials=4, epochs=2, gpus_per_trial=0.25,
                       cpus_per_trial=0.5, precision="bf16")
    assert set(result.counts) <= {"completed", "pruned"} and sum(result.counts.values()) == 4


@needs_cuda
@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_on_cuda(precision, dtype):
    run, rows, seen = train("cuda", precision)
    assert seen == {dtype} and next(run.model.parameters()).device.type == "cuda"
    assert all(math.isfinite(r["train_loss"]) for r in rows) and rows[-1]["train_loss"] < rows[0]["train_loss"]


@needs_cuda
def test_a_trial_resumed_on_a_gpu_draws_the_dropout_masks_the_uninterrupted_run_drew():
    """The resume state held the CPU's generator only: on a GPU a resumed trial's dropout masks started again from
    the trial's seed (its first epochs' masks), so it trained to other numbers than the run it continues."""
    import dataclasses
    import io
    from types import SimpleNamespace

    from torch import nn

    base = load_task(TINY_TASK)
    task = dataclasses.replace(base, namespace=SimpleNamespace(
        load_data=base.namespace.load_data,
        build_model=lambda config: nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))))
    device = torch.device("cuda")
    splits = prepare(base.namespace.load_data()).to(device)

    def run() -> TrialRun:
        return TrialRun(task, splits, TrialSpec(0, 0, CONFIG, seed=1, max_epochs=4), device)

    straight = run()
    expected = [straight.train_epoch()["val_loss"] for _ in range(4)]
    first = run()
    first.train_epoch()
    first.train_epoch()
    buf = io.BytesIO()
    torch.save(first.resume_state(), buf)
    second = run()
    second.load_resume_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert [second.train_epoch()["val_loss"] for _ in range(2)] == expected[2:]
