"""float16 parameters beside an optimizer whose ``eps`` float16 cannot hold: one warning line before the sweep."""

from __future__ import annotations

import logging

import torch

from orchestrator.errors import ConfigError

log = logging.getLogger("caviar")


def warn_if_eps_vanishes_in_float16(optimizer: torch.optim.Optimizer) -> str | None:
    """Adam, AdamW, RMSprop and Adagrad keep their state in the parameters' dtype and divide by ``sqrt(v) + eps``:
    in float16 an ``eps`` below its smallest value (about 6e-8; Adam's default 1e-8) is 0, so the first step that
    meets a zero gradient divides 0 by 0 and every trial ends as diverged, with nothing saying why. Returns the line
    (for tests)."""
    for group in optimizer.param_groups:
        eps = group.get("eps")
        if not isinstance(eps, (int, float)) or eps <= 0 or torch.tensor(eps, dtype=torch.float16).item() != 0:
            continue
        if any(p.dtype == torch.float16 for p in group["params"]):
            message = (f"the model's parameters are float16 and {type(optimizer).__name__}'s eps {eps:g} is 0 in "
                       "float16 (its state is kept in the parameters' dtype): its steps divide by zero and the trials "
                       "will diverge; build a float32 model and set precision = \"fp16\" (autocast with a loss "
                       "scaler), or use eps 1e-4 or more")
            log.warning(message)
            return message
    return None


def refuse_precision_autocast_skips(model: torch.nn.Module, precision: str) -> None:
    """``precision`` bf16 or fp16 autocasts float32 operations only: a float64 model trained in float64, a bfloat16
    one was cast to float16 under fp16, while the sweep recorded the precision it was given: refused in one line."""
    if precision not in ("bf16", "fp16"):
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    # a bfloat16 model under bf16 trains as it would without (fp16's loss scaler refuses float16 gradients)
    same = torch.bfloat16 if precision == "bf16" else torch.float32
    other = sorted(str(d).removeprefix("torch.") for d in dtypes if d not in (torch.float32, same))
    if other:
        effect = "leaves as they are" if other == ["float64"] else "would cast or leave"
        raise ConfigError(f"setting 'precision': {precision} autocasts a float32 model's operations, but the model's "
                          f"parameters are {', '.join(other)}, which autocast {effect}: build a float32 model (inputs "
                          "float32), or set precision = \"fp32\" to train the model in its own dtype")
