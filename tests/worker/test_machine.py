"""A device or GPU share this machine lacks is refused before Ray starts when the trials would run here."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from orchestrator.errors import ConfigError
from tests.conftest import ROOT, TINY_TASK
from worker.check.machine import check_local_devices

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def settings(**overrides):
    return SimpleNamespace(**{"address": None, "device": "auto", "gpus_per_trial": 0, **overrides})


@no_gpu
def test_what_this_machine_lacks_is_refused_and_a_cluster_address_is_trusted():
    check_local_devices(settings())
    check_local_devices(settings(device="cpu"))
    with pytest.raises(ConfigError, match=r"^setting 'device': 'cuda:1', but this machine has no CUDA device"):
        check_local_devices(settings(device="cuda:1"))
    with pytest.raises(ConfigError, match=r"^setting 'gpus_per_trial': 0.25 GPU per trial, but this machine has no"):
        check_local_devices(settings(gpus_per_trial=0.25))
    check_local_devices(settings(address="ray://head:10001", device="cuda", gpus_per_trial=1))  # its nodes decide


@no_gpu
def test_the_cli_refuses_a_gpu_share_before_starting_ray_and_leaves_nothing(tmp_path):
    caviar = os.path.join(os.path.dirname(sys.executable), "caviar")
    done = subprocess.run([caviar, "run", TINY_TASK, "--gpus-per-trial", "0.5", "--storage", str(tmp_path),
                           "--name", "g"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("caviar: error: setting 'gpus_per_trial': 0.5 GPU per")
    assert "starting a private Ray" not in done.stderr + done.stdout
    assert not (tmp_path / "g").exists()  # a refused start leaves no sweep folder behind
