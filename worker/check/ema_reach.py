"""An ``ema_decay`` the EMA's warm-up never reaches, named before the sweep.

The EMA weights follow ``min(ema_decay, (1 + t) / (10 + t))`` at their update ``t`` (worker/train/ema.py): 0.99 only
after 891 optimizer steps, 0.999 after 8991. In trials shorter than that every ``ema_decay`` from the warm-up's last
value up gives the same EMA weights, so those drawn values are recorded, narrowed and charted while none of them acts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from orchestrator.search.space import Choice, Distribution
from orchestrator.spec.task import Task
from worker.data.splits import Splits
from worker.train.ema import ema_decay_at

log = logging.getLogger("caviar")


def _numbers(value: Any) -> list[float]:
    """The values that bound what a space entry gives: a choice's options, a range's ends, or the fixed value."""
    if isinstance(value, Choice):
        values = list(value.options)
    elif isinstance(value, Distribution):
        values = [value.low, value.high]
    else:
        values = [value]
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def warn_if_ema_decay_unreached(task: Task, splits: Splits, space: Mapping[str, Any] | None,
                                settings: Any) -> str | None:
    """One warning line when a searched ``ema_decay`` can be higher than the warm-up reaches in the sweep's longest
    trials (its ``epochs`` at the smallest declared ``batch_size``); returns it (for tests). A task's own
    ``train_epoch`` steps the optimizer as often as it likes: nothing is said."""
    if space is None or settings is None or task.get("train_epoch") is not None:
        return None
    entry = space.get("ema_decay")
    if not isinstance(entry, Distribution) or isinstance(entry, Choice) and len(entry.options) < 2:
        return None  # a fixed decay ranks nothing: the warm-up simply holds it lower in short trials, by design
    decays = [d for d in _numbers(entry) if 0 < d < 1]
    sizes = [b for b in _numbers(space.get("batch_size", 64)) if b >= 1]
    epochs = int(getattr(settings, "epochs", 0) or 0)
    if not decays or not sizes or epochs < 1 or not splits.n_train:
        return None
    batch = int(min(sizes))
    steps = epochs * math.ceil(splits.n_train / batch)
    reach = ema_decay_at(steps - 1, 1.0)  # the warm-up's decay at the last update of the longest trial
    if max(decays) <= reach:
        return None
    message = (f"space: ema_decay searched up to {max(decays):g}, but the EMA's warm-up, min(ema_decay, (1 + t) / "
               "(10 + t)) at its update t, "
               f"reaches only {reach:.4g} by the end of the sweep's longest trials ({steps} optimizer steps: {epochs} "
               f"epochs of {splits.n_train} examples at batch_size {batch}): every ema_decay from {reach:.4g} up "
               "gives the same EMA weights; search ema_decay below it, or train for more steps")
    log.warning(message)
    return message
