"""Which trials can be trained together as one fused array: pure functions of their configs.

A fused array (``worker.arrays.fused.FusedArray``) gives every member its own learning rate,
optimizer constants, weight decay, schedule, EMA decay, init draw, dropout rate and seed;
everything else in a config may change the model's shape (layers, width, activation,
batch norm), the batch size or the optimizer's kind, and must agree within an array. The
master does not know which of a task's hyperparameters are which, so it is conservative:
every parameter not in :data:`PER_MEMBER` is part of the key. A task can widen the set
(``fuse_per_member = {"label_smoothing"}``) when its model ignores a parameter's value.

Random search rarely draws two equal shapes (width alone has hundreds of values), so
:func:`share_shapes` makes arrays possible on purpose: each block of ``k`` trials takes the
shape of its first trial and keeps its own values for everything else. Every parameter's
marginal distribution is unchanged; only trials in one block share a shape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import ConfigError

log = logging.getLogger("caviar")

# Hyperparameters a fused array takes per member (see worker/arrays/fused.py).
PER_MEMBER = frozenset({
    "lr", "momentum", "beta1", "beta2", "eps", "rho", "weight_decay", "schedule", "decay_rate", "step_epochs",
    "patience", "ema_decay", "init", "grad_clip", "dropout",
})
# Per member as a rate, but a rate of zero removes the Dropout layer: zero and non-zero differ in shape.
LAYER_IF_NONZERO = frozenset({"dropout"})

Key = tuple[tuple[str, str], ...]


def shape_key(config: Mapping[str, Any], per_member: Iterable[str] = PER_MEMBER) -> Key:
    """What must agree for two configs to share an array (values as ``repr``, so any value is hashable)."""
    free = set(per_member)
    key = []
    for name in sorted(config):
        if name in LAYER_IF_NONZERO and name in free:
            key.append((name, "on" if _nonzero(config[name]) else "off"))
        elif name not in free:
            key.append((name, repr(config[name])))
    return tuple(key)


def _nonzero(value: Any) -> bool:
    try:
        return float(value) != 0.0
    except (TypeError, ValueError):
        return bool(value)


def group_trials(configs: Mapping[int, Mapping[str, Any]], max_size: int,
                 per_member: Iterable[str] = PER_MEMBER) -> list[list[int]]:
    """Trial ids in arrays of at most ``max_size`` with equal keys; trial order kept within and across groups.

    A group of one is a trial to run on its own.
    """
    if max_size < 1:
        raise ConfigError(f"fuse: array size must be at least 1, got {max_size}")
    free = frozenset(per_member)
    by_key: dict[Key, list[int]] = {}
    for tid, config in configs.items():
        by_key.setdefault(shape_key(config, free), []).append(tid)
    groups = [ids[i : i + max_size] for ids in by_key.values() for i in range(0, len(ids), max_size)]
    return sorted(groups, key=lambda g: g[0])


def share_shapes(configs: Sequence[Mapping[str, Any]], k: int, per_member: Iterable[str] = PER_MEMBER,
                 shape_params: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Copies of ``configs`` in which each block of ``k`` takes its first config's shape-defining values.

    ``shape_params`` names them explicitly; by default they are every parameter outside ``per_member``.
    A per-member rate that also switches a layer on (dropout) follows the block's first config
    only when the two disagree about zero.
    """
    if k < 1:
        raise ConfigError(f"fuse: array size must be at least 1, got {k}")
    free = frozenset(per_member)
    out = []
    for start in range(0, len(configs), k):
        leader = configs[start]
        shared = set(shape_params) if shape_params is not None else {n for n in leader if n not in free}
        for config in configs[start : start + k]:
            copy = dict(config)
            copy.update({n: leader[n] for n in shared if n in leader})
            for n in LAYER_IF_NONZERO & free:
                if n in copy and n in leader and _nonzero(copy[n]) != _nonzero(leader[n]):
                    copy[n] = leader[n]
            out.append(copy)
    return out


def mean_array_size(groups: Sequence[Sequence[int]]) -> float:
    """Trials per array: 1.0 means nothing fuses and the sweep should run unfused."""
    return sum(len(g) for g in groups) / len(groups) if groups else 0.0


# -- deciding whether and how wide to fuse (the runner measures, these decide) -------------------
FUSE_MODES = ("auto", "off", "on")
AUTO_BLOCK = 32  # most trials sharing one shape when the array size is "auto" (the probe picks K up to it)
TASK_HOOKS_THAT_BLOCK = ("train_epoch", "build_optimizer")


@dataclass(frozen=True)
class FusePlan:
    """The fused set-up's decision as a value; the controller applies it (``Controller.apply_fusing``).

    Fused: the trials share model shapes in blocks of at most ``block_cap`` spread over ``workers``.
    Either way ``reason`` and ``detail`` make the event (``fusing_on``, or ``fusing_off`` saying why not).
    """

    fused: bool
    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    block_cap: int = 0
    workers: int = 1
    per_member: frozenset[str] = PER_MEMBER

    @property
    def event_kind(self) -> str:
        return "fusing_on" if self.fused else "fusing_off"


def fuse_blocker(task_hooks: Iterable[str], precision: str) -> str | None:
    """Why a task's trials cannot share arrays, known before any model is built; ``None`` when they may."""
    for hook in TASK_HOOKS_THAT_BLOCK:
        if hook in set(task_hooks):
            return f"the task defines {hook}: its trials train one at a time"
    if precision != "fp32":
        return f"precision {precision}: fused arrays train in fp32"
    return None


def useful_array_size(stage_trials: Iterable[int], workers: int) -> int:
    """The widest array that can keep every worker busy: the largest stage split over the workers."""
    largest = max(stage_trials, default=1)
    return max(1, math.ceil(largest / max(workers, 1)))


def block_size(stage_trials: int, workers: int, array_size: int) -> int:
    """Trials per shared shape in one stage: at most ``array_size``, and small enough to reach every worker."""
    return max(1, min(array_size, math.ceil(stage_trials / max(workers, 1))))


def probe_sizes(limit: int, largest: int = 64) -> list[int]:
    """Array sizes to time: powers of two up to ``limit`` (at most ``largest``), and ``limit`` itself."""
    top = max(1, min(limit, largest))
    sizes = [1 << i for i in range(top.bit_length()) if 1 << i <= top]
    return sizes + ([top] if sizes[-1] != top else [])


def choose_array_size(rates: Mapping[int, float], *, keep: float = 0.9, limit: int | None = None,
                      peak_bytes: Mapping[int, float] | None = None, free_bytes: float | None = None,
                      headroom: float = 2.0, smallest: int = 1) -> int:
    """The smallest K past which throughput stops improving, among the sizes that fit.

    ``rates`` is trials per second measured at each size K. A size fits when it is at most ``limit``
    (wider arrays would leave workers idle) and, where memory was measured, when ``headroom`` times
    its peak use fits in ``free_bytes``. Of those, the smallest K within ``keep`` of the best rate
    wins: past it, a wider array buys (almost) nothing but coarser shape sharing. ``smallest`` is a
    floor on the answer (2 when fusing was asked for explicitly).
    """
    if not rates:
        raise ConfigError("fuse: the array-size probe measured nothing")
    if not 0 < keep <= 1:
        raise ConfigError(f"fuse: keep must lie in (0, 1], got {keep}")

    def fits(k: int) -> bool:
        if limit is not None and k > limit:
            return False
        if peak_bytes is not None and free_bytes is not None and k in peak_bytes:
            return headroom * peak_bytes[k] <= free_bytes
        return True

    usable = {k: r for k, r in rates.items() if fits(k) and k >= smallest and math.isfinite(r)}
    if not usable:
        return max(smallest, min(rates))
    best = max(usable.values())
    return min(k for k, r in usable.items() if r >= keep * best)


PROBED_CONFIGS = 4  # as the contract check's build_model tries: a config that fails alone passes the probe on
BUILD_FAILED = "TaskError: build_model raised"  # the probe's error when the config itself cannot be built


MOST_STRUCTURES = 8  # further configs the probe tries, each of another structure than the first


def other_structures(configs: Sequence[Mapping[str, Any]], probed: Mapping[str, Any],
                     per_member: Iterable[str] = PER_MEMBER) -> list[tuple[Mapping[str, Any], str]]:
    """The first config of each other structure than ``probed``'s, with the values that differ (``pool='gru'``).

    A structure is a config's string and bool values (a choice of layer kind, batch norm on or off): a GRU may not
    fuse where a mean over positions does, while widths and rates change no layer kind. Values each member holds
    apart (a schedule) are no structure."""
    free = frozenset(per_member)

    def structure(config: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted((n, v) for n, v in config.items() if isinstance(v, (str, bool)) and n not in free))

    seen, out = {structure(probed)}, []
    for config in configs:
        key = structure(config)
        if key in seen:
            continue
        seen.add(key)
        differs = ", ".join(f"{n}={v!r}" for n, v in key if probed.get(n) != v)
        out.append((config, differs))
    return out[:MOST_STRUCTURES]


def setup_fusing(
    fuse: str,
    array_size: int | str,
    blocker: str | None,
    per_member: frozenset[str],
    stage_trials: Sequence[int],
    pending_configs: Sequence[Mapping[str, Any]],
    workers: int,
    open_fused: Callable[[int], Any],
    open_plain: Callable[[], Any],
) -> tuple[Any, FusePlan | None]:
    """Whether a sweep trains its trials as fused arrays, and how wide: decided once, before the first trial.

    ``fuse = "off"`` opens the plain backend. With ``auto`` or ``on``: ``blocker`` (the task's own
    training loop or optimizer, mixed precision, another kind: known before any model is built) comes
    first; then ``open_fused(k)``'s first worker, on its own device, trains two members of the first
    pending trial's model (does it fuse at all? a config whose build_model raises, which fails that trial alone,
    passes the probe on to the next, up to ``PROBED_CONFIGS``) and times a short epoch at a few array sizes, and
    :func:`choose_array_size` picks K from those numbers. A model that cannot be fused: with ``auto``
    the plain backend, a log line and a ``fusing_off`` plan saying why; with ``on`` a one-line error
    naming the reason (the layer, where one failed). Whatever hosts the workers (Ray actors, child
    processes) comes in through the two ``open_`` callables; the fused one has ``wait_ready``,
    ``probe``, ``set_array_size`` and ``close`` (``orchestrator.decide.fused_slots.FusedSlots``).
    """

    def plain(reason: str | None) -> tuple[Any, FusePlan | None]:
        plan = None
        if reason is not None:
            if fuse == "on":
                raise ConfigError(f"setting 'fuse': on, but these trials cannot be fused: {reason}")
            log.warning("trials train one per worker, not fused: %s", reason)
            plan = FusePlan(False, reason, {"fuse": fuse})
        return open_plain(), plan

    if fuse == "off":
        return plain(None)
    fixed = array_size if isinstance(array_size, int) else None
    # Shapes are shared in blocks of at most `cap`: a function of the settings and the plan, never of a timing,
    # so the same seed samples the same configs; the probe only picks how many members a worker trains at once.
    cap = fixed or AUTO_BLOCK
    limit = min(useful_array_size(stage_trials, workers), cap)
    if blocker is None and limit < 2:
        blocker = (
            "array_size 1: one trial per array"
            if fixed == 1
            else f"no stage has more trials than workers ({workers}): nothing to put in one array"
        )
    if blocker or not pending_configs:
        return plain(blocker)
    backend = open_fused(fixed or 1)
    try:
        backend.wait_ready()  # the probe times one worker while the others are idle, not importing torch
        sizes = [] if fixed else probe_sizes(limit)
        results = []
        for config in pending_configs[:PROBED_CONFIGS]:
            results.append(backend.probe(config, sizes))
            if not str(results[-1]["error"] or "").startswith(BUILD_FAILED):
                break
        result = results[-1] if not results[-1]["error"] else results[0]  # every config failed: the first says why
        rates = result["trials_per_second"]
        if result["error"]:
            backend.close()
            return plain(result["error"])
        # the config that passed, against the first of each other layer kind or switch the sweep draws
        for other, differs in other_structures(pending_configs, pending_configs[len(results) - 1],
                                                per_member or PER_MEMBER):
            error = backend.probe(other, [])["error"]
            if error and not str(error).startswith(BUILD_FAILED):
                backend.close()
                return plain(f"{error} (the trials with {differs})")
        k = fixed or choose_array_size(
            rates, limit=limit, peak_bytes=result["peak_bytes"], free_bytes=result["free_bytes"], smallest=2
        )
        backend.set_array_size(k)
    except BaseException:
        backend.close()
        raise
    why = "array_size setting" if fixed else f"probe on {result['device']}: trials/s by size {_rounded(rates)}"
    plan = FusePlan(
        True,
        f"arrays of up to {k} trials ({why})",
        {
            "array_size": k,
            "block_cap": cap,
            "workers": workers,
            "engine": result["engine"],
            "device": result["device"],
            "trials_per_second": {str(s): r for s, r in rates.items()},
            "per_member": sorted(per_member),
        },
        block_cap=cap,
        workers=workers,
        per_member=per_member,
    )
    log.info("fused arrays of up to %d trials on %d workers (%s)", k, workers, why)
    return backend, plan


def _rounded(rates: Mapping[int, float]) -> str:
    return ", ".join(f"{k}: {r:.3g}" for k, r in sorted(rates.items()))
