"""Whether a process may be forked from this one (the process executor's workers, the own-loop check) or must be
spawned afresh.

A forked child has to stay on one torch thread: GNU OpenMP does not survive a fork once the parent has used its
thread pool, and a child asking for more threads hangs.
"""

from __future__ import annotations

import sys
from typing import Any


def start_method(threads: int, splits: Any) -> str:
    """``fork`` on Linux for one-thread workers over the master's in-memory data; else ``spawn``.

    A forked child has to stay on one torch thread (see the module's note). Streamed data is read through the
    task's own Datasets, whose open files (an HDF5 handle, a file offset) a fork would share with
    the master, so those workers start fresh; so do a resumed sweep's, whose data the master has not loaded, and
    those of a model built with ``torch.compile`` (:func:`compiled_here`).
    """
    forkable = sys.platform.startswith("linux")  # macOS frameworks are not fork-safe (Python spawns there too)
    in_memory = splits is not None and not getattr(splits, "streams", False)
    return "fork" if forkable and threads == 1 and in_memory and not compiled_here() else "spawn"


def compiled_here() -> bool:
    """Whether torch.compile has compiled code in this process (the contract check ran a compiled model): inductor's
    compile workers do not survive a fork, and a forked child compiling its own model waited on them for ever."""
    return "torch._inductor.async_compile" in sys.modules
