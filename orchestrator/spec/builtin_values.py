"""The values caviar's own training loop reads from a config, checked where the space is declared.

``optimizer``, ``schedule``, ``batch_size``, ``step_epochs``, ``patience``, ``ema_decay`` and ``grad_clip`` are read
by the workers' loop (``worker/train/optim.py``, ``worker/train/trainer.py``). A misspelt optimizer among a choice's
options, or a batch size of -5, would otherwise pass the master's one-config check and fail (or silently take no
optimizer step) in the trials that draw it; every option and range bound is known before any worker starts.
Pure: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from orchestrator.errors import SpaceError, did_you_mean
from orchestrator.search.space import Choice, Distribution, LogUniform, SearchSpace, Uniform

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "plateau", "cosine")


# The keys each optimizer and schedule of caviar's loop reads (worker/train/optim.py): Adam takes no ``momentum`` (its
# momentum is ``beta1``), cosine no ``decay_rate``. A key searched where nothing reads it is drawn, recorded, narrowed
# and charted while every trial trains on without it.
OPTIMIZER_READS: dict[str, tuple[str, ...]] = {
    "sgd": (), "momentum": ("momentum",), "nesterov": ("momentum",), "adagrad": ("eps",), "rmsprop": ("rho", "eps"),
    "adam": ("beta1", "beta2", "eps"), "adamw": ("beta1", "beta2", "eps"),
}
SCHEDULE_READS: dict[str, tuple[str, ...]] = {
    "constant": (), "step": ("decay_rate", "step_epochs"), "exponential": ("decay_rate",),
    "inverse_time": ("decay_rate",), "plateau": ("decay_rate", "patience"), "cosine": (),
}
ALWAYS_READ = ("schedule", "batch_size", "ema_decay", "grad_clip")
BUILT_OPTIMIZER_READS = ("optimizer", "lr", "weight_decay")  # by caviar's own build_optimizer alone


def loop_reads(config: Mapping[str, Any], *, own_optimizer: bool = False) -> set[str]:
    """The config keys caviar's loop reads for ``config``, as worker/train/optim.py does (a missing or None
    ``optimizer`` is Adam, a ``schedule`` constant); with the task's own ``build_optimizer``, not the optimizer's
    ``lr``, ``weight_decay`` or constants: the task's optimizer reads what it reads, and the schedule starts from
    the rate it was built with."""
    reads = set(ALWAYS_READ)
    if not own_optimizer:
        reads.update(BUILT_OPTIMIZER_READS)
        name = config.get("optimizer")
        reads.update(OPTIMIZER_READS.get("adam" if name is None else name, OPTIMIZER_DECAYS + ("eps",)))
    schedule = config.get("schedule")
    reads.update(SCHEDULE_READS.get("constant" if schedule is None else schedule, ("decay_rate", "step_epochs",
                                                                                  "patience")))
    return reads


def readers_of(key: str, *, own_optimizer: bool = False) -> str:
    """Which optimizers or schedules of caviar's loop read ``key`` ('' for a key that is not one of theirs; with the
    task's own ``build_optimizer``, for an optimizer's key)."""
    tables = (("schedule", SCHEDULE_READS),) if own_optimizer else (("optimizer", OPTIMIZER_READS),
                                                                     ("schedule", SCHEDULE_READS))
    for what, table in tables:
        names = [name for name, keys in table.items() if key in keys]
        if names:
            return f"{what} {' or '.join(names)}"
    return ""


def check_builtin_values(params: Mapping[str, Any], *, own_optimizer: bool = False) -> None:
    """Refuse, in one line naming the parameter, a value caviar's loop cannot use; ``params`` maps a name to a fixed
    value or a distribution (a search space, or one config). ``own_optimizer``: the task's ``build_optimizer`` reads
    ``optimizer`` itself."""
    rules: dict[str, tuple[Callable[[Any], bool], str]] = {
        "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        "batch_size": (_positive_int, "a positive integer (a range of them: randint or lograndint)"),
        # the step and plateau schedules read these as whole epochs: 3.74 once trained as 3, the table saying 3.74
        "step_epochs": (_positive_int, "a positive integer (a range of them: randint or lograndint)"),
        "patience": (lambda v: _positive_int(v) or v == 0 and not isinstance(v, bool),
                     "an integer >= 0 (a range of them: randint)"),
        "ema_decay": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1) (0: no EMA)"),
        "grad_clip": (lambda v: _number(v) and v > 0, "a number > 0 (inf: no clipping)"),
    }
    if not own_optimizer:
        rules["optimizer"] = (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}")
    for name, (allowed, wanted) in rules.items():
        for value in _values(params.get(name)):
            if value is not None and not allowed(value):
                hint = did_you_mean(value, OPTIMIZERS + SCHEDULES) if isinstance(value, str) else ""
                raise SpaceError(f"parameter '{name}': {value!r} is not {wanted}, as caviar's training loop reads it"
                                 f"{hint}")
    nesterov = not own_optimizer and "nesterov" in _values(params.get("optimizer"))
    if nesterov and _zero_for_nesterov(params.get("momentum")):
        raise SpaceError("parameter 'momentum': 0 beside optimizer 'nesterov': torch's SGD refuses Nesterov "
                         "momentum without a momentum, so every nesterov trial drawing 0 fails; keep momentum above 0 "
                         "(one_minus_loguniform(0.8, 0.999)), or draw it only for the momentum trials (when=...)")


def _zero_for_nesterov(momentum: Any) -> bool:
    """A fixed 0 or a choice with the option 0 that nesterov trials draw (a range draws exactly 0 with probability
    0; a momentum drawn only when optimizer is "momentum" leaves nesterov at its default)."""
    if isinstance(momentum, Distribution):
        drawn_for = momentum.condition.get("optimizer")
        if not isinstance(momentum, Choice) or (drawn_for is not None and "nesterov" not in drawn_for):
            return False
    return any(_number(v) and v == 0 for v in _values(momentum))


# Decay rates caviar's loop reads, which must stay below 1: torch's Adam refuses a beta of 1 or more, the EMA weights
# refuse an ema_decay of 1 or more, a momentum or RMSprop rho above 1 grows the update without bound, and so does a
# schedule's decay_rate the learning rate (torch's ReduceLROnPlateau refuses a factor of 1 or more). A uniform or
# log-uniform range declared below 1 (beta2 = uniform(0.9, 0.999), as Optuna users write it) could otherwise be
# extended past its edge to 1.05, and every trial drawn there fails or diverges.
OPTIMIZER_DECAYS = ("momentum", "beta1", "beta2", "rho")
BELOW_ONE = math.nextafter(1.0, 0.0)


def with_builtin_limits(space: SearchSpace, *, own_optimizer: bool = False) -> SearchSpace:
    """``space`` with the decay rates caviar's loop reads kept below 1 when a stage extends their range (decay_rate
    only where no trial's schedule is inverse_time, whose rate may pass 1).

    Only the upper limit of a ``uniform`` or ``loguniform`` range changes (one_minus_loguniform and dropout already
    stay below 1); a range declared up to 1 or past it is left as declared and is never extended further."""
    names = ("ema_decay",) + (() if own_optimizer else OPTIMIZER_DECAYS)
    if "inverse_time" not in _values(space.get("schedule", "constant")):  # k in 1 / (1 + k t) may pass 1
        names += ("decay_rate",)  # the factor of step, exponential and plateau (torch's plateau refuses 1 or more)
    capped = {}
    for name in names:
        dist = space.get(name)
        if type(dist) not in (Uniform, LogUniform):
            continue
        cap = max(dist.high, BELOW_ONE)
        if dist.limits[1] > cap:
            capped[name] = replace(dist, limits=(dist.limits[0], cap))
    return space.replace(**capped) if capped else space


def _values(value: Any) -> list[Any]:
    """The values a parameter can take that decide whether it is usable: a choice's options, a range's bounds (and
    whether it draws integers), or the fixed value."""
    if isinstance(value, Choice):
        return list(value.options)
    if isinstance(value, Distribution):
        bounds = [value.low, value.high]
        return bounds if value.kind == "int" else [float(b) for b in bounds]  # a float range draws fractions
    return [value]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
