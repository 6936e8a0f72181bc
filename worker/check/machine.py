"""What this machine can run, checked on the master before Ray starts when the trials will run here.

A private Ray started by caviar (no ``address``) has this machine's devices and no others, and never grows.
Asking it for a GPU this machine lacks used to cost a Ray start and a pool of actors failing one after another.
"""

from __future__ import annotations

from typing import Any

import torch

from orchestrator.errors import ConfigError


def check_local_devices(settings: Any) -> None:
    """Refuse, in one line, a device or GPU share this machine cannot give (only for trials that run here)."""
    if settings.address:  # a cluster's nodes may have what this one lacks
        return
    kind = str(settings.device).split(":")[0]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    elsewhere = "or pass --address to join a Ray cluster that has them"
    if kind == "cuda" and not gpus:
        raise ConfigError(f"setting 'device': {settings.device!r}, but this machine has no CUDA device and without "
                          f"--address the trials run here; use --device auto (or cpu), {elsewhere}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"setting 'device': 'mps', but this machine has no Apple GPU; use --device auto (or cpu), "
                          f"{elsewhere}")
    if settings.gpus_per_trial and not gpus:
        raise ConfigError(f"setting 'gpus_per_trial': {settings.gpus_per_trial:g} GPU per trial, but this machine has "
                          f"no CUDA device and without --address the trials run here; drop --gpus-per-trial, "
                          f"{elsewhere}")
