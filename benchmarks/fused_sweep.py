"""A whole ``caviar run`` of the digits example, fused versus unfused: wall time, trials per hour, best accuracy.

``benchmarks/fused_digits.py`` times the training loop alone; this times everything a user
waits for: the command, Ray's start, actors, the fusing probe, sampling, dispatch, every
member's metric rows, checkpoints, predictions and diagnostics, and the pruning decisions.
Each run is one ``caviar run`` process with the same task, seed, trial count and epoch budget;
only ``--fuse`` (and ``--array-size``) differ. Runs are interleaved per repeat, and the
1-minute load average is recorded around each (the machine may be shared): compare ratios
within one repeat.

With fusing on, each block of K trials in a stage shares its model shape (``orchestrator.decide.fusing
.share_shapes``) while keeping its own draws of everything else, so the two sweeps do not
train the same configs; ``best_val_accuracy`` shows what the shared shapes cost the search.

    python benchmarks/fused_sweep.py                      # 256 trials, 10 epochs: off, on (auto K), on (K=32)
    python benchmarks/fused_sweep.py --tiny               # 8 trials x 2 epochs, off and on (the test)
    python benchmarks/fused_sweep.py --trials 128 --epochs 5 --repeats 2 --runs off,on:32
    python benchmarks/fused_sweep.py --runs off,on:auto,on:auto:ray   # fused in child processes and on Ray
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, write_table  # noqa: E402

TASK = os.path.join("examples", "digits_mlp.py")
COLUMNS = [
    "repeat",
    "fuse",
    "array_size",
    "executor",
    "k_used",
    "trials",
    "max_epochs",
    "plan",
    "wall_s",
    "sweep_s",
    "train_s",
    "trials_per_hour",
    "speedup",
    "sweep_trials_per_hour",
    "sweep_speedup",
    "train_speedup",
    "epochs_trained",
    "best_val_accuracy",
    "pruned",
    "failed",
    "load_before",
    "load_after",
    "command",
]


def caviar_command(fuse: str, array_size: str, executor: str, args: argparse.Namespace, storage: str,
                   name: str) -> list[str]:
    cli = os.path.join(os.path.dirname(sys.executable), "caviar")
    base = [cli] if os.path.exists(cli) else [sys.executable, "-m", "orchestrator.app.cli"]
    return [
        *base,
        "run",
        TASK,
        "--trials",
        str(args.trials),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--slots",
        str(args.slots),
        "--fuse",
        fuse,
        "--array-size",
        array_size,
        "--executor",
        executor,
        "--storage",
        storage,
        "--name",
        name,
        "--plain",
        "--no-ensemble",
    ]


def one_run(fuse: str, array_size: str, executor: str, args: argparse.Namespace, repeat: int,
            storage: str) -> dict[str, Any]:
    name = f"{fuse}-{array_size}-{executor}-{repeat}"
    command = caviar_command(fuse, array_size, executor, args, storage, name)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    from orchestrator.app.api import load

    tables = load(os.path.join(storage, name))
    trials = tables.trials.to_pylist()
    created = tables.sweep.to_pylist()[0]["created"]  # written before Ray starts, in both runs alike
    end = max(t["finished"] for t in trials if t["finished"] is not None)
    sweep_s = _seconds(end - created)
    # Training starts when the first epoch began: its row's time less its epoch_seconds (a fused member's share of
    # its array's epoch, so this starts the fused run's clock a few ms late); Ray and actor start-up are left out.
    first = min(tables.metrics.to_pylist(), key=lambda r: r["time"])
    train_s = _seconds(end - first["time"]) + float(first["epoch_seconds"] or 0.0)
    ran_on = [json.loads(e["detail"]) if isinstance(e["detail"], str) else e["detail"]
              for e in tables.events.to_pylist() if e["kind"] == "executor"]
    fusing = [
        json.loads(e["detail"]) if isinstance(e["detail"], str) else e["detail"]
        for e in tables.events.to_pylist()
        if e["kind"] == "fusing_on"
    ]
    plan = ",".join(
        f"{sum(t['stage'] == s for t in trials)}x{max(t['epochs_run'] for t in trials if t['stage'] == s)}"
        for s in sorted({t["stage"] for t in trials})
    )
    return {
        "repeat": repeat,
        "fuse": fuse,
        "array_size": array_size,
        "executor": ran_on[0]["executor"] if ran_on else executor,
        "k_used": fusing[0]["array_size"] if fusing else 1,
        "trials": len(trials),
        "max_epochs": args.epochs,
        "plan": plan,
        "wall_s": round(wall, 2),
        "sweep_s": round(sweep_s, 2),
        "train_s": round(train_s, 2),
        "trials_per_hour": round(len(trials) / wall * 3600),
        "sweep_trials_per_hour": round(len(trials) / max(sweep_s, 1e-9) * 3600),
        "epochs_trained": tables.metrics.num_rows,
        "best_val_accuracy": max((t["best_val_accuracy"] or 0.0) for t in trials),
        "pruned": sum(t["status"] == "pruned" for t in trials),
        "failed": sum(t["status"] == "failed" for t in trials),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "command": " ".join(command[1:] if command[0].endswith("caviar") else command[3:]).replace(storage, "STORAGE"),
    }


def _seconds(delta: Any) -> float:
    return delta.total_seconds() if hasattr(delta, "total_seconds") else float(delta) / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs", default="off,on:auto,on:32",
                        help="FUSE[:ARRAY_SIZE[:EXECUTOR]], comma-separated, in order (executor: auto, ray, processes)")
    parser.add_argument("--tiny", action="store_true", help="8 trials x 2 epochs, off and on (seconds; the test)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    if args.tiny:
        args.trials, args.epochs, args.runs = 8, 2, "off,on:auto"
    runs = [(r.split(":") + ["auto", "auto"])[:3] for r in args.runs.split(",")]
    storage = tempfile.mkdtemp(prefix="caviar-fused-sweep-")
    rows: list[dict[str, Any]] = []
    try:
        for repeat in range(args.repeats):
            base = None
            for fuse, array_size, executor in runs:
                row = one_run(fuse, array_size, executor, args, repeat, storage)
                if fuse == "off":
                    base = row
                if base is not None:
                    row["speedup"] = round(row["trials_per_hour"] / base["trials_per_hour"], 2)
                    row["sweep_speedup"] = round(row["sweep_trials_per_hour"] / base["sweep_trials_per_hour"], 2)
                    row["train_speedup"] = round(base["train_s"] / row["train_s"], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    notes = [
        "wall_s: the whole `caviar run` process (interpreter, Ray's start on Ray, workers, probe, training, writes); "
        "trials_per_hour = trials / wall_s. sweep_s: from the sweep row (written before Ray starts) to the last "
        "trial's end, so without interpreter start and exit; sweep_trials_per_hour = trials / sweep_s. train_s: from "
        "the first epoch's start to the last trial's end (no Ray or actor start-up, no probe); train_speedup = "
        "off's train_s / this train_s.",
        "executor: where the trials trained (the sweep's executor event): child processes of the master, or Ray. "
        "speedup: against the fuse=off run of the same repeat. k_used: the array size the run adopted "
        "(fusing_on event); 1 = unfused.",
        "Fused sweeps share shape-defining hyperparameters in blocks of K (per-member ones stay per trial), so the "
        "configs differ from the unfused sweep's; best_val_accuracy is the best trial's best epoch.",
    ]
    write_table(
        "fused_sweep-tiny" if args.tiny else "fused_sweep",
        rows,
        COLUMNS,
        out_dir=args.out or os.path.join(ROOT, "benchmarks", "results"),
        notes=notes,
    )


if __name__ == "__main__":
    main()
