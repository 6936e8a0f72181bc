"""Models whose weights are bfloat16 or float16: their val/test loss and metrics are measured in float32.

In-process on plain data (no Ray): the real contract check, the real trainer, real torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.worker.test_inputs import plain_task
from worker.check.contract import validate_contract
from worker.train.trainer import TrialRun, TrialSpec, model_outputs

CONFIG = {"lr": 0.01, "batch_size": 32, "optimizer": "adam"}


def half_digits(dtype: torch.dtype) -> tuple:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16))

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.integers(0, 10, n)
        return torch.tensor(centers[y] + rng.normal(size=(n, 16)), dtype=dtype), torch.from_numpy(y)

    return draw(300), draw(200), draw(200)


def test_a_bfloat16_models_val_loss_and_own_metrics_are_measured_in_float32():
    # val_loss was a bfloat16 cross-entropy (0.4824 beside val_log_loss 0.4863 on digits) and a metric got bfloat16
    seen: list[torch.dtype] = []

    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        seen.append(outputs.dtype)
        return {"mean_logit": float(outputs.mean())}

    data = half_digits(torch.bfloat16)
    task = plain_task(lambda config: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).to(torch.bfloat16),
                      load_data=lambda: data, metrics=metrics)
    splits = validate_contract(task, [CONFIG])
    run = TrialRun(task, splits, TrialSpec(0, 0, CONFIG, 0, 2), torch.device("cpu"))
    row = run.train_epoch()
    logits = model_outputs(run.model, splits.x_val).double().numpy()  # bfloat16 outputs, exactly, in float64
    y = splits.y_val.numpy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_loss = float(np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y]))
    assert seen and set(seen) == {torch.float32}
    assert abs(row["val_loss"] - log_loss) < 1e-5 and abs(row["metrics"]["val_log_loss"] - log_loss) < 1e-5
    assert abs(row["metrics"]["val_mean_logit"] - logits.mean()) < 1e-5


def test_a_float16_model_beside_adams_default_eps_is_named_in_one_warning_line_before_the_sweep(caplog):
    # eps 1e-8 is 0 in float16, where Adam keeps its state: every trial ended as "diverged", nothing said why
    data = half_digits(torch.float16)
    task = plain_task(lambda config: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).half(),
                      load_data=lambda: data)
    with caplog.at_level("WARNING", logger="caviar"):
        validate_contract(task, [CONFIG])
    [line] = [r.getMessage() for r in caplog.records if "eps" in r.getMessage()]
    assert line.startswith("the model's parameters are float16 and Adam's eps 1e-08 is 0 in float16")
    assert "\n" not in line
    caplog.clear()
    with caplog.at_level("WARNING", logger="caviar"):  # an eps float16 holds: it trains, and nothing is said
        splits = validate_contract(task, [{**CONFIG, "eps": 1e-4}])
    assert not [r for r in caplog.records if "eps" in r.getMessage()]
    run = TrialRun(task, splits, TrialSpec(0, 0, {**CONFIG, "eps": 1e-4}, 0, 2), torch.device("cpu"))
    assert np.isfinite(run.train_epoch()["val_loss"])


def test_a_fused_array_of_bfloat16_models_measures_val_loss_in_float32_as_a_plain_trial():
    # the fused path's val_loss was its own bfloat16 cross-entropy (0.486328 beside the plain trial's 0.486302)
    from worker.arrays.fused import FusedArray

    data = half_digits(torch.bfloat16)
    task = plain_task(lambda config: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).to(torch.bfloat16),
                      load_data=lambda: data)
    splits = validate_contract(task, [CONFIG])
    array = FusedArray(task, splits, [TrialSpec(i, 0, {**CONFIG, "lr": lr}, 7 + i, 2)
                                      for i, lr in enumerate((0.01, 0.003))], torch.device("cpu"))
    for row in array.train_epoch():
        assert abs(row["val_loss"] - row["metrics"]["val_log_loss"]) < 1e-6


def test_a_fused_bfloat16_arrays_ema_follows_as_a_plain_trials_does():
    # the array's EMA was kept in bfloat16, where (1 - decay) of a small step rounds away: it lagged (1.677 beside
    # the plain trial's 1.656 after three epochs)
    from worker.arrays.fused import FusedArray

    data = half_digits(torch.bfloat16)
    task = plain_task(lambda config: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).to(torch.bfloat16),
                      load_data=lambda: data)
    config = {**CONFIG, "batch_size": 4, "lr": 1e-3, "ema_decay": 0.999}
    splits = validate_contract(task, [config])
    specs = [TrialSpec(i, 0, {**config, "lr": lr}, 7 + i, 3) for i, lr in enumerate((1e-3, 5e-4))]
    array = FusedArray(task, splits, specs, torch.device("cpu"))
    fused = [array.train_epoch()[0] for _ in range(3)]
    run = TrialRun(task, splits, specs[0], torch.device("cpu"))
    plain = [run.train_epoch() for _ in range(3)]
    assert abs(fused[-1]["val_loss"] - plain[-1]["val_loss"]) < 2e-3  # the same training, to bfloat16's rounding
    assert abs(fused[-1]["ema_val_loss"] - plain[-1]["ema_val_loss"]) < 2e-3
    state = array.state_dict(0, "ema")
    assert all(v.dtype == torch.bfloat16 for v in state.values())  # checkpoints in the model's own dtype


def test_a_precision_that_autocast_cannot_apply_to_the_models_dtype_is_refused_in_one_line():
    # a float64 model under precision = "bf16" trained in float64 without a word (autocast leaves float64 alone)
    from orchestrator.errors import ConfigError
    from orchestrator.spec.settings import RunSettings

    rng = np.random.default_rng(0)
    data = tuple((rng.normal(size=(n, 4)), rng.integers(0, 2, n)) for n in (64, 32, 32))
    task = plain_task(lambda config: nn.Linear(4, 2).double(), load_data=lambda: data)
    with pytest.raises(ConfigError, match=r"^setting 'precision': bf16 autocasts a float32 model's operations, but "
                                          r"the model's parameters are float64, which autocast leaves as they are"):
        validate_contract(task, [CONFIG], RunSettings(precision="bf16"))
    validate_contract(task, [CONFIG], RunSettings(precision="fp32"))  # its own dtype: trains
    halves = half_digits(torch.bfloat16)
    bf16 = plain_task(lambda config: nn.Linear(16, 10).to(torch.bfloat16), load_data=lambda: halves)
    validate_contract(bf16, [CONFIG], RunSettings(precision="bf16"))  # what it does without autocast: allowed
    with pytest.raises(ConfigError, match="parameters are bfloat16"):
        validate_contract(bf16, [CONFIG], RunSettings(precision="fp16"))
