"""Each searched parameter's ends and options built on the master before any worker starts (the probes of
orchestrator/search/probes.py): ``build_model``, then one forward pass and the loss on two training examples, in
eval mode. What fails is returned for the contract check to name in a warning line: the sweep still starts, as
the parameter's other values train."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from orchestrator.search.probes import Probe, edge_probes
from orchestrator.search.space import SearchSpace
from orchestrator.spec.task import Task
from worker.check.validate import check_outputs
from worker.data.kinds import loss_function
from worker.data.splits import Splits

log = logging.getLogger("caviar")
PROBE_SECONDS = 3.0  # probing stops after this long
# A task whose contract check of one config took longer is not probed: each probe would cost about as much.
# (The first check in a process also pays torch's lazy imports, 2-4 s: far below this.)
SLOW_CHECK_SECONDS = 15.0


def failing_values(task: Task, splits: Splits, space: SearchSpace, base: Mapping[str, Any],
                   budget: float = PROBE_SECONDS) -> list[tuple[Probe, str, BaseException]]:
    """(probe, the piece that raised, its exception) for each probe of ``space`` around ``base`` that fails."""
    probes = edge_probes(space, base)
    if not probes:
        return []
    batch = splits.sample(2)  # once: a streamed split reads it through its loader
    started, failed = time.perf_counter(), []
    for tried, probe in enumerate(probes):
        if time.perf_counter() - started > budget:
            log.debug("space: %d of %d ends and options probed in %.1f s; the rest were not", tried, len(probes),
                      budget)
            break
        error = config_error(task, splits, probe.config, batch)
        if error is not None:
            failed.append((probe, *error))
    return failed


def config_error(task: Task, splits: Splits, config: Mapping[str, Any],
                 batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[str, BaseException] | None:
    """(the piece that raised, its exception) when ``config``'s model cannot be built or run on two examples
    (``batch``, else the first two training examples).

    First on torch's meta device: shapes without memory or arithmetic, so a range's high end that would
    allocate gigabytes on the master costs nothing. Only what fails there runs again on the CPU, which decides:
    code that reads values (``.item()``, a data-dependent branch) cannot run on meta tensors.
    """
    xb, yb = batch if batch is not None else splits.sample(2)
    return _run_error(task, splits, config, xb, yb, "meta") and _run_error(task, splits, config, xb, yb, "cpu")


def _run_error(task: Task, splits: Splits, config: Mapping[str, Any], xb: torch.Tensor, yb: torch.Tensor,
               device: str) -> tuple[str, BaseException] | None:
    kind = splits.target_kind
    yb = kind.to_training(yb)
    torch.manual_seed(0)
    try:
        with torch.device(device), warnings.catch_warnings():  # torch's own ("zero-element tensors"): beside the point
            warnings.simplefilter("ignore")
            model = task.get("build_model")(dict(config))
    except Exception as exc:
        return "build_model", exc
    if not isinstance(model, torch.nn.Module):
        return None  # the contract check's own config says so when it happens there
    try:
        with torch.device(device), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = model.eval()(xb.to(device))
        if isinstance(outputs, torch.Tensor):
            if outputs.is_meta:  # the shape and dtype are what the checks below read; values of zero stand in
                outputs = torch.zeros(outputs.shape, dtype=outputs.dtype)
            check_outputs(kind, outputs, yb, task)
            loss_function(task, kind)(outputs, yb)
    except Exception as exc:
        return "the model's forward pass or loss_fn", exc
    return None
