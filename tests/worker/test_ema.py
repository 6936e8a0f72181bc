"""EMA weights: a hand computation over a few steps (warm-up included), batch-norm buffers, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from worker.train.ema import EmaWeights, ema_decay_at


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def float_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def train_step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    model.train()  # a forward in train mode moves the BN running statistics too
    x = torch.randn(8, 3, generator=gen) * 2 + 1
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_decay_warms_up_then_holds():
    assert ema_decay_at(0, 0.99) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay_at(1, 0.99) == pytest.approx(2 / 11)
    assert ema_decay_at(10_000, 0.99) == 0.99
    assert ema_decay_at(0, 0.99, warmup=False) == 0.99


def test_ema_equals_a_hand_computation_with_warmup_and_bn_buffers():
    model, decay = bn_model(), 0.9
    ema = EmaWeights(model, decay)
    expected = float_tensors(model)  # the EMA starts as a copy of the model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        train_step(model, opt, gen)
        d = min(decay, (1 + step) / (10 + step))  # warm-up: 0.1, 0.18, 0.25, 0.31, 0.36
        now = float_tensors(model)
        expected = {k: d * expected[k] + (1 - d) * now[k] for k in expected}
        ema.update(model)
    got = ema.module.state_dict()
    for name, value in expected.items():  # weights, biases and BN running mean/var alike
        assert torch.allclose(got[name], value, atol=1e-6), name
    assert "1.running_mean" in expected and "1.running_var" in expected
    # Integer buffers are copied, not averaged: the EMA model has seen as many batches.
    assert int(got["1.num_batches_tracked"]) == int(model.state_dict()["1.num_batches_tracked"]) == 5
    assert ema.step == 5


def test_without_warmup_a_short_run_stays_near_the_initial_weights():
    model = bn_model()
    initial = float_tensors(model)
    warm, cold = EmaWeights(model, 0.999), EmaWeights(model, 0.999, warmup=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        train_step(model, opt, gen)
        warm.update(model)
        cold.update(model)
    final = float_tensors(model)
    name = "0.weight"
    moved = (final[name] - initial[name]).norm()
    assert (cold.module.state_dict()[name] - initial[name]).norm() < 0.01 * moved
    assert (warm.module.state_dict()[name] - final[name]).norm() < 0.5 * moved


def test_ema_module_is_frozen_in_eval_mode_and_its_state_loads_into_the_plain_model():
    model = bn_model()
    ema = EmaWeights(model, 0.95)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        train_step(model, opt, gen)
        ema.update(model)
    plain = bn_model()
    plain.load_state_dict(ema.module.state_dict())  # same keys: a checkpoint of EMA weights is a plain model
    again = EmaWeights(bn_model(), 0.95)
    again.load_state_dict(ema.state_dict())
    assert again.step == 3
    for k, v in ema.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[k], v)


def test_decay_out_of_range_is_refused():
    with pytest.raises(ValueError, match="ema_decay"):
        EmaWeights(bn_model(), 1.0)


class TiedWithBuffer(nn.Module):
    """Tied input/output weights (averaged once, not twice) and a buffer the forward pass reassigns."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("seen", torch.zeros(3))

    def forward(self, ids):
        h = self.embed(ids)
        if self.training:
            self.seen = 0.5 * self.seen + h.detach().mean(dim=0)  # a new tensor object every step
        return self.out(h)


def test_tied_weights_are_averaged_once_and_a_reassigned_buffer_is_followed():
    torch.manual_seed(0)
    model, decay = TiedWithBuffer(), 0.8
    ema = EmaWeights(model, decay)
    expected = float_tensors(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(4):
        model.train()
        loss = model(torch.tensor([0, 1, 2, 3])).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        d = min(decay, (1 + step) / (10 + step))
        now = float_tensors(model)
        expected = {k: d * expected[k] + (1 - d) * now[k] for k in expected}
        ema.update(model)
    got = ema.module.state_dict()
    for name, value in expected.items():  # out.weight is embed.weight: one average, not two
        assert torch.allclose(got[name], value, atol=1e-6), name
    assert ema.module.out.weight is ema.module.embed.weight


def test_a_buffer_holding_infinities_is_kept_not_averaged_into_nan():
    # A causal mask of 0 and -inf: lerp(-inf, -inf) is NaN, and the EMA model gave NaN on every example.
    model = nn.Linear(3, 2)
    model.register_buffer("mask", torch.triu(torch.full((4, 4), float("-inf")), 1))
    model.register_buffer("best", torch.full((2,), float("-inf")))  # a running maximum, not yet finite
    ema = EmaWeights(model, 0.9)
    model.best.fill_(5.0)
    for _ in range(3):
        ema.update(model)
    assert torch.equal(ema.module.mask, model.mask)
    assert torch.equal(ema.module.best, model.best)  # copied while it was not finite in the average


def test_a_task_with_a_causal_mask_buffer_reports_finite_ema_metrics_plain_and_fused():
    from orchestrator.spec.task import load_task
    from tests.conftest import ROOT
    from worker.arrays.fused import FusedArray
    from worker.data.splits import prepare
    from worker.train.trainer import TrialRun, TrialSpec

    task = load_task(f"{ROOT}/tests/tasks/causal_mask_task.py")
    splits = prepare(task.get("load_data")(), normalize=task.normalize)
    specs = [TrialSpec(i, 0, {"lr": lr, "batch_size": 32, "optimizer": "adam", "ema_decay": 0.9}, 100 + i, 2)
             for i, lr in enumerate((0.02, 0.01))]
    array = FusedArray(task, splits, specs, torch.device("cpu"))
    fused = [array.train_epoch() for _ in range(2)][-1]
    for spec, got in zip(specs, fused):
        alone = TrialRun(task, splits, spec, torch.device("cpu"))
        row = [alone.train_epoch() for _ in range(2)][-1]
        assert row["ema_val_loss"] == pytest.approx(got["ema_val_loss"], rel=1e-4)
        assert row["ema_val_loss"] < 1.2  # finite, and a model: ln 3 = 1.10 is chance
        assert torch.equal(alone.weights_state("ema")["mask"], alone.model.mask.cpu())
        assert torch.equal(array.state_dict(spec.trial_id, "ema")["mask"], alone.model.mask.cpu())


class CachedMask(nn.Module):
    """A causal mask cached on first use in a buffer registered as None, rebuilt for a longer sequence: a common
    way to write attention."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.register_buffer("mask", None, persistent=False)

    def forward(self, x):
        t = x.shape[1]
        if self.mask is None or self.mask.shape[0] < t:
            self.mask = torch.triu(torch.full((t, t), float("-inf")), 1)
        return self.proj(x) + self.mask[:t, :t].exp().sum(1, keepdim=True)


def test_a_buffer_the_forward_pass_creates_or_resizes_is_taken_not_averaged():
    model = CachedMask()
    ema = EmaWeights(model, 0.9)  # copied while the mask is still None
    model(torch.randn(4, 3, 2))
    ema.update(model)  # raised AttributeError: 'NoneType' object has no attribute 'is_floating_point'
    assert torch.equal(ema.module.mask, model.mask) and ema.module.mask is not model.mask
    model(torch.randn(4, 5, 2))  # a longer sequence: the cache grows to 5 x 5
    ema.update(model)
    assert ema.module.mask.shape == (5, 5) and torch.equal(ema.module.mask, model.mask)
    assert torch.isfinite(ema.module(torch.randn(1, 5, 2))).all()


def test_ema_decays_above_what_the_warm_up_reaches_give_the_same_weights_and_are_named_before_the_sweep(caplog):
    import logging
    from types import SimpleNamespace

    from orchestrator.search.space import SearchSpace, one_minus_loguniform
    from orchestrator.spec.task import load_task
    from tests.conftest import ROOT
    from worker.check.contract import validate_contract
    from worker.data.splits import prepare
    from worker.train.trainer import TrialRun, TrialSpec

    task = load_task(f"{ROOT}/tests/tasks/tiny_task.py")  # 180 examples at batch_size 32: 6 steps an epoch
    splits = prepare(task.get("load_data")())

    def ema_weights(decay: float) -> dict[str, torch.Tensor]:
        config = {"lr": 0.05, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": decay}
        run = TrialRun(task, splits, TrialSpec(0, 1, config, seed=3, max_epochs=2), torch.device("cpu"))
        run.train_epoch(), run.train_epoch()
        return run.weights_state("ema")

    # 12 updates: the warm-up's last decay is 12 / 21 = 0.571, so 0.6 and 0.99 average the very same way
    same, other = ema_weights(0.6), ema_weights(0.99)
    assert all(torch.equal(same[k], other[k]) for k in same)
    assert not all(torch.equal(same[k], v) for k, v in ema_weights(0.5).items())

    space = SearchSpace(dict(task.get("space"), ema_decay=one_minus_loguniform(0.5, 0.99)))
    config = {"lr": 0.05, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": 0.9}
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(task, [config], SimpleNamespace(epochs=2, trials=4), space)
    said = [r.getMessage() for r in caplog.records if "ema_decay" in r.getMessage()]
    assert said == ["space: ema_decay searched up to 0.99, but the EMA's warm-up, min(ema_decay, (1 + t) / (10 + t)) "
                    "at its update t, reaches only 0.5714 by the end of the sweep's longest trials (12 optimizer "
                    "steps: 2 epochs of 180 examples at batch_size 32): every ema_decay from 0.5714 up gives the same "
                    "EMA weights; search ema_decay below it, or train for more steps"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="caviar"):  # 200 epochs: 1200 updates reach 0.99
        validate_contract(task, [config], SimpleNamespace(epochs=200, trials=4), space)
    assert not [r for r in caplog.records if "ema_decay" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="caviar"):  # a fixed decay ranks nothing: no word (the task's 0.9)
        validate_contract(task, [config], SimpleNamespace(epochs=2, trials=4), task.space)
    assert not [r for r in caplog.records if "ema_decay" in r.getMessage()]


@pytest.mark.parametrize("spectral_norm", [parametrizations.spectral_norm, torch.nn.utils.spectral_norm])
def test_ema_of_a_spectral_norm_keeps_its_layer_at_spectral_norm_one(spectral_norm):
    """The power-iteration vectors u and v were averaged like weights: rotating between steps, their averages
    shrank (|u| 0.22 after 600 steps) and the EMA model's layer, u.W.v apart from W's norm, had spectral norm 20
    (the older hook's 4.9)."""
    torch.manual_seed(0)
    model = nn.Sequential(spectral_norm(nn.Linear(32, 32)), nn.ReLU(), spectral_norm(nn.Linear(32, 4)))
    ema = EmaWeights(model, 0.99)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2000, 32)
    y = (x[:, :4] * 2).tanh()
    for _ in range(600):
        rows = torch.randint(0, 2000, (64,))
        loss = ((model(x[rows]) - y[rows]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
    layer = ema.module[0]
    with torch.no_grad():
        layer(torch.zeros(1, 32))  # the hook's weight is computed at a forward pass (eval: no power iteration)
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), 2).item()
    assert sigma == pytest.approx(1.0, abs=0.05)  # one power iteration a step, as training takes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_models_ema_follows_the_exact_average_and_resumes_with_it(dtype):
    # in bfloat16 each update of (1 - 0.999) of a small step rounded away: the average froze 0.04 off the exact one
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32)).to(dtype)
    ema = EmaWeights(model, 0.999)
    exact = {k: v.double() for k, v in float_tensors(model).items()}
    resumed = None
    for t in range(1500):
        with torch.no_grad():
            for p in [*model.parameters(), model[1].running_mean]:
                p.add_(1e-3 * torch.randn_like(p) + 4e-5)  # a drifting trajectory, steps below bfloat16's resolution
        weight = 1 - ema_decay_at(t, 0.999)
        for k, v in float_tensors(model).items():
            exact[k].lerp_(v.double(), weight)
        ema.update(model)
        if t == 999:  # a resumed trial's EMA goes on from the same average
            resumed = EmaWeights(model, 0.999)
            resumed.load_state_dict(ema.state_dict())
        elif resumed is not None:
            resumed.update(model)
    for averaged in (ema, resumed):
        got = float_tensors(averaged.module)
        for k, v in exact.items():
            ulp = torch.finfo(dtype).eps * v.abs().max()
            assert float((got[k].double() - v).abs().max()) <= ulp, k
