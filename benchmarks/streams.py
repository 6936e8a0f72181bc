"""Streamed DataLoader path versus the in-memory path, same data, same trial: epochs per second.

The digits as 1x8x8 images (examples/digits_cnn_augment.py without its augmentation), trained by
one TrialRun for a few epochs either from tensors held in memory or from a map-style Dataset read
through a DataLoader. Alternating runs, best of ``--repeats``; one torch thread.

    nice -n 10 .venv/bin/python benchmarks/streams.py --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.spec.task import load_task  # noqa: E402
from worker.data.splits import prepare  # noqa: E402
from worker.train.trainer import TrialRun, TrialSpec  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                       "digits_cnn_augment.py")


def epochs_per_second(task, splits, epochs: int, config: dict) -> float:
    run = TrialRun(task, splits, TrialSpec(0, 0, config, 0, epochs + 1), torch.device("cpu"))
    run.train_epoch()  # first-use costs (optimizer state, loader start) left out
    started = time.perf_counter()
    for _ in range(epochs):
        run.train_epoch()
    return epochs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_task(EXAMPLE)
    data = task.get("load_data")()
    plain = {name: task.get("Digits")(d.images, d.labels) for name, d in data.items()}  # no augmentation
    pairs = {name: (torch.stack([d[i][0] for i in range(len(d))]), torch.tensor(d.labels)) for name, d in plain.items()}
    config = {"lr": 1e-2, "optimizer": "adam", "channels": 16, "batch_size": args.batch_size}
    rates: dict[str, list[float]] = {"in_memory": [], "streamed": []}
    for _ in range(args.repeats):
        rates["in_memory"].append(epochs_per_second(task, prepare(pairs), args.epochs, config))
        rates["streamed"].append(epochs_per_second(task, prepare(plain), args.epochs, config))
    best = {k: max(v) for k, v in rates.items()}
    print(f"| path | epochs/s (best of {args.repeats}) |\n| --- | --- |")
    for name, rate in best.items():
        print(f"| {name} | {rate:.2f} |")
    print(f"streamed / in-memory: {best['streamed'] / best['in_memory']:.2f}")


if __name__ == "__main__":
    main()
