"""tiny_task with slow epochs and a pause point, so a test can kill a process while a trial trains.

``epoch_sleep`` slows every epoch. When ``pause_dir`` is set, the first trial to begin epoch
``pause_epoch`` (over the whole sweep: an O_EXCL marker file decides) writes its process id
to ``pause_dir/paused`` and waits there, mid-epoch, until the test kills something. Both are
fixed values, not searched, so the sampled configs are those of tiny_task for the same seed.
"""

from __future__ import annotations

import os
import time

import torch.nn.functional as F
from tiny_task import build_model, load_data  # noqa: F401 (task pieces)
from tiny_task import space as tiny_space

space = {**tiny_space, "epoch_sleep": 0.05, "pause_dir": "", "pause_epoch": 2}
settings = {"trials": 4, "epochs": 3, "stages": 1, "pruner": "none", "checkpoint_seconds": 0.0}

PAUSE_SECONDS = 60.0  # far longer than a test waits: the pause ends with a kill


def train_epoch(model, optimizer, batches, config):
    model.epochs_begun = getattr(model, "epochs_begun", 0) + 1  # a resumed trial counts from its restart
    total, seen = 0.0, 0
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item() * len(yb), seen + len(yb)
    time.sleep(float(config["epoch_sleep"]))
    if config["pause_dir"] and model.epochs_begun == int(config["pause_epoch"]):
        pause(config["pause_dir"], config["lr"])
    return {"train_loss": total / max(seen, 1)}


def pause(folder: str, lr: float) -> None:
    try:
        fd = os.open(os.path.join(folder, "claimed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another trial paused already: one pause per sweep
    os.close(fd)
    with open(os.path.join(folder, ".paused.tmp"), "w") as f:
        f.write(f"{os.getpid()} {lr!r}")
    os.replace(os.path.join(folder, ".paused.tmp"), os.path.join(folder, "paused"))
    time.sleep(PAUSE_SECONDS)
