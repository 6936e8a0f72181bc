"""Space entries nothing reads, named before the sweep: a typo trains every trial on a default, in silence.

``"dropuot": uniform(0.1, 0.5)`` beside a ``build_model`` that reads ``config.get("dropout", 0.1)`` searches a
value no model uses, and every trial trains with dropout 0.1; ``"batchsize": 32`` leaves caviar's loop on its
default 64. The master builds the model (and the task's own optimizer) on torch's meta device with configs that
note the keys they are asked for, runs one forward pass, and warns about each entry no build read.

Conservative by design: a task with its own ``train_epoch`` (which may read any key), a build that fails here, or builds
slower than a second after the first (a choice's other branch, left unbuilt, may read any key) give no warning at all.
"""

from __future__ import annotations

import difflib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from orchestrator.search.probes import LOOP_KEYS, edge_probes
from orchestrator.search.space import Choice, SearchSpace
from orchestrator.spec.builtin_values import loop_reads, readers_of
from orchestrator.spec.task import Task
from worker.data.splits import Splits

log = logging.getLogger("caviar")
# What a user searching a key for another optimizer likely meant (fastai and Keras call Adam's beta1 its momentum)
_USED_INSTEAD = {"momentum": " (Adam's and AdamW's momentum is beta1)", "rho": " (Adam's second-moment decay is beta2)"}
BUDGET_SECONDS = 1.0  # meta builds take milliseconds; a task slower than this is not judged


class KeyReads(dict):
    """A config that notes the keys its reader asks for; a reader that copies or walks all of it read them all."""

    def __init__(self, config: Mapping[str, Any], asked: set[str]):
        super().__init__(config)
        self.asked = asked

    def _all(self) -> None:
        self.asked.update(dict.keys(self))

    def __getitem__(self, key: Any) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key: Any) -> bool:
        self.asked.add(key)
        return super().__contains__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self.asked.add(key)
        return super().pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.asked.add(key)
        return super().setdefault(key, default)

    def __iter__(self) -> Iterator[Any]:
        self._all()
        return super().__iter__()

    def keys(self) -> Any:
        self._all()
        return super().keys()

    def items(self) -> Any:
        self._all()
        return super().items()

    def values(self) -> Any:
        self._all()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._all()
        return dict(dict.items(self))

    def __reduce__(self) -> Any:  # deepcopy or pickle: a copy whose reads are not seen
        self._all()
        return dict, (dict(dict.items(self)),)


def _asked_by_builds(task: Task, splits: Splits, configs: Sequence[Mapping[str, Any]]) -> set[str] | None:
    """The keys ``build_model`` (its model's forward pass too) and the task's ``build_optimizer`` asked for over
    ``configs``; None where any of it fails on the meta device or the builds outlast ``BUDGET_SECONDS`` (then
    nothing can be said)."""
    asked: set[str] = set()
    xb, _ = splits.sample(2)
    started: float | None = None  # from the first build's end: it pays torch's one-time meta-device set-up
    own_optimizer = task.get("build_optimizer")
    for config in configs:
        if started is not None and time.perf_counter() - started > BUDGET_SECONDS:
            # a branch the configs left unbuilt (a choice's other option) may read any key: no claim either way
            return None
        tracked = KeyReads(config, asked)
        try:
            with torch.device("meta"), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = task.get("build_model")(tracked)
                if not isinstance(model, torch.nn.Module):
                    return None
                model.eval()(xb.to("meta"))
                if own_optimizer is not None:
                    own_optimizer(tracked, [p for p in model.parameters() if p.requires_grad])
        except Exception:  # code that reads values cannot run on meta tensors: no claim either way
            return None
        started = started if started is not None else time.perf_counter()
    return asked


def _configs_to_build(space: SearchSpace, configs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The sweep's first configs, then each choice option around the first (a branch build_model takes only for
    one option reads keys the others do not)."""
    base = list(configs[:4])
    if not base:
        return []
    options = [p.config for p in edge_probes(space, base[0]) if isinstance(space.searched.get(p.param), Choice)]
    return base + options


def _possible(space: SearchSpace, name: str) -> list[Any]:
    """Every value ``name`` takes in a trial: a choice's options, the fixed value, or None (absent: the default)."""
    value = space.get(name)
    return list(value.options) if isinstance(value, Choice) else [value]


def unread_entries(task: Task, splits: Splits, space: SearchSpace,
                   configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One warning line per entry of ``space`` that neither the task's builds nor caviar's loop read, on the
    configs where it is active."""
    if task.get("train_epoch") is not None or not configs:
        return []
    built = _configs_to_build(space, configs)
    asked = _asked_by_builds(task, splits, built)
    if asked is None:
        return []
    active = {k for config in built for k, v in config.items() if v is not None}
    # caviar's loop reads a key only for the optimizer or schedule that takes it: momentum beside Adam is never used
    own_optimizer = task.get("build_optimizer") is not None
    loop_read = {k for optimizer in _possible(space, "optimizer") for schedule in _possible(space, "schedule")
                 for k in loop_reads({"optimizer": optimizer, "schedule": schedule}, own_optimizer=own_optimizer)}
    adam = not own_optimizer and bool({"adam", "adamw", None} & set(_possible(space, "optimizer")))
    names = list(space)
    unread = [k for k in names if k in active and k not in asked and k not in loop_read]
    missing = sorted(k for k in asked if isinstance(k, str) and k not in active and k not in names)
    lines = []
    for name in unread:
        entry = f"searched '{name}'" if name in space.searched else f"'{name}' = {space[name]!r}"
        close = difflib.get_close_matches(name, [k for k in missing + sorted(LOOP_KEYS) if k != name], n=1, cutoff=0.75)
        readers = readers_of(name, own_optimizer=own_optimizer)
        hint = (f"caviar's loop reads it only with {readers}, which no trial here trains with"
                f"{_USED_INSTEAD.get(name, '') if adam else ''}; leave it out of the space"
                if readers
                else f"build_model asks for '{close[0]}', which the space does not give: did you mean it?"
                if close and close[0] in missing else f"did you mean '{close[0]}'?" if close
                else f"read it in build_model{' or build_optimizer' if own_optimizer else ''}, or leave it out "
                     "of the space")
        lines.append(f"space: {entry} is read by neither build_model nor caviar's training loop, so every trial "
                     f"trains as if it were not there; {hint}")
    return lines
