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
PROBE_SECONDS = 3.0  # probing stops after this long; a task whose one check took longer is not probed


def failing_values(task: Task, splits: Splits, space: SearchSpace, base: Mapping[str, Any],
                   budget: float = PROBE_SECONDS) -> list[tuple[Probe, str, BaseException]]:
    """(probe, the piece that raised, its exception) for each probe of ``space`` around ``base`` that fails."""
    probes = edge_probes(space, base)
    kind = splits.target_kind
    loss_fn = loss_function(task, kind)
    xb, yb = splits.sample(2)
    yb = kind.to_training(yb)
    started, failed = time.perf_counter(), []
    for tried, probe in enumerate(probes):
        if time.perf_counter() - started > budget:
            log.debug("space: %d of %d ends and options probed in %.1f s; the rest were not", tried, len(probes),
                      budget)
            break
        torch.manual_seed(0)
        try:
            with warnings.catch_warnings():  # torch's own ("zero-element tensors") for what fails below anyway
                warnings.simplefilter("ignore")
                model = task.get("build_model")(dict(probe.config))
        except Exception as exc:
            failed.append((probe, "build_model", exc))
            continue
        if not isinstance(model, torch.nn.Module):
            continue  # the contract check's own config says so when it happens there
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outputs = model.eval()(xb)
                if isinstance(outputs, torch.Tensor):
                    check_outputs(kind, outputs, yb, task)
                    loss_fn(outputs, yb)
        except Exception as exc:
            failed.append((probe, "the model's forward pass or loss_fn", exc))
    return failed
