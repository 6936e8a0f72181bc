"""run_sweep called from a notebook or a script: what the caller's process holds before a call is what it holds
after it (its random generators, a usable Ray after a stop), with real sweeps of the notebook43_* tasks."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from orchestrator.app.api import run_sweep
from tests.conftest import ROOT

TASKS = os.path.join(ROOT, "tests", "tasks")
CNN_TASK = os.path.join(TASKS, "notebook43_cnn_task.py")


def generator_states() -> tuple[bytes, bytes, tuple]:
    return torch.get_rng_state().numpy().tobytes(), np.random.get_state()[1].tobytes(), random.getstate()


def test_a_sweep_with_ensembles_leaves_the_callers_random_generators_as_they_were(storage_dir):
    # The soup at a sweep's end builds models in the caller's process: their initial weights came from torch's
    # global generator, so a notebook's torch.manual_seed(...) before run_sweep no longer fixed its draws after it.
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    before = generator_states()
    result = run_sweep(CNN_TASK, storage=storage_dir, name="cnn", executor="processes", slots=1)
    assert result.ensemble is not None and result.counts.get("completed", 0) >= 2  # the soup had members to build
    assert generator_states() == before
