"""A trial's seed applied to every global generator a task's code may draw from: torch's, numpy's and Python's.

Augmentation in a Dataset often draws from ``np.random`` or ``random`` (albumentations, hand-written crops and
flips), and ``build_model`` may too (fixed random features). Seeding torch alone left those streams where the
worker process happened to be: a forked worker starts from the master's numpy state and carries it from trial
to trial, so a config trained to other numbers when it ran again, and a resumed trial went on with other draws
than the run it continues. DataLoader worker processes seed numpy and ``random`` from torch's generator
themselves; this covers the process that trains.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_trial(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators with a trial's seed (below 2**32, as trial seeds are)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def host_rng_state() -> dict[str, Any]:
    """numpy's and Python's global generator states in types ``torch.load(weights_only=True)`` reads back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy_rng": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                          "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python_rng": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}}


def set_host_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`host_rng_state` saved; a resume state from before it was saved leaves them as they are."""
    numpy_rng, python_rng = state.get("numpy_rng"), state.get("python_rng")
    if numpy_rng:
        keys = numpy_rng["keys"].numpy().astype(np.uint32)
        np.random.set_state((numpy_rng["name"], keys, numpy_rng["pos"], numpy_rng["has_gauss"],
                             numpy_rng["cached_gaussian"]))
    if python_rng:
        random.setstate((python_rng["version"], tuple(python_rng["internal"]), python_rng["gauss_next"]))


@contextmanager
def preserved_randomness(device: torch.device | None = None) -> Iterator[None]:
    """Python's, numpy's and torch's global generators (and ``device``'s, a GPU) as they were before the block.

    The master seeds them as trials do while it checks a task: a notebook's own draws after ``run_sweep`` must not
    start from a trial's seed (nor an unseeded split in its next ``load_data`` repeat the last one's draws)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextmanager
def seeded_randomness(seed: int, device: torch.device) -> Iterator[None]:
    """Python's, numpy's and torch's global generators seeded for the block, restored after it.

    A training Dataset that augments (``np.random`` or ``torch.rand`` per read) or a task's loader that
    shuffles then gives the same batches every time; DataLoader workers derive their seeds from torch's.
    """
    with preserved_randomness(device):
        seed_trial(seed)
        yield
