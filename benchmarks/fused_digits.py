"""Trials per hour, fused versus one after another, for the digits MLP on this machine.

The same K configs (one model shape; per-trial learning rate, betas, eps, weight decay,
schedule, EMA decay, init, seed and, in one case, dropout rate) are
trained for the same epochs three ways in one process: one ``TrialRun`` after another (what
a caviar worker does without fusing), a ``FusedArray`` on the ``bmm`` engine, and one on the
``vmap`` engine. Runs are interleaved and repeated; the table keeps each repeat.

    python benchmarks/fused_digits.py              # K = 32, 10 epochs, 3 repeats, 2 cases, 1 thread
    python benchmarks/fused_digits.py --tiny       # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TASK = os.path.join(ROOT, "examples", "digits_mlp.py")
COLUMNS = ["case", "runner", "engine", "k", "epochs", "threads", "repeat", "wall_s", "cpu_s", "trials_per_hour",
           "speedup", "cpu_speedup", "same_to_1e-4", "median_rel_diff"]
# Shape-defining values shared by the array; everything else is sampled per trial.
CASES = {
    "mlp-2x64": {"layers": 2, "hidden": 64, "activation": "relu", "batch_norm": False, "dropout": 0.0,
                 "batch_size": 64, "optimizer": "adam"},
    "mlp-2x64-bn-dropout-sgd": {"layers": 2, "hidden": 64, "activation": "tanh", "batch_norm": True, "dropout": None,
                                "batch_size": 64, "optimizer": "nesterov"},
}


def make_configs(shape: dict[str, Any], k: int, seed: int = 0) -> list[dict[str, Any]]:
    """K draws from the digits space with the shape fixed (``dropout: None`` keeps each trial's own rate)."""
    from orchestrator.search.sampler import sample_configs
    from orchestrator.spec.task import load_task

    configs = sample_configs(load_task(TASK).space, k, seed=seed)
    for c in configs:
        c.update({key: v for key, v in shape.items() if v is not None})
        if c["schedule"] == "plateau":
            c["schedule"] = "step"  # keep the comparison about compute, not about a plateau's patience
    return configs


def run_unfused(task: Any, splits: Any, specs: list[Any]) -> tuple[float, float, dict[int, list[dict[str, Any]]]]:
    import torch

    from worker.train.trainer import TrialRun

    started, cpu = time.perf_counter(), time.process_time()
    rows = {}
    for spec in specs:
        run = TrialRun(task, splits, spec, torch.device("cpu"))
        rows[spec.trial_id] = [run.train_epoch() for _ in range(spec.max_epochs)]
    return time.perf_counter() - started, time.process_time() - cpu, rows


def run_fused(task: Any, splits: Any, specs: list[Any], engine: str
              ) -> tuple[float, float, dict[int, list[dict[str, Any]]]]:
    import torch

    from worker.arrays.fused import FusedArray

    started, cpu = time.perf_counter(), time.process_time()
    array = FusedArray(task, splits, specs, torch.device("cpu"), engine=engine)
    rows: dict[int, list[dict[str, Any]]] = {s.trial_id: [] for s in specs}
    for _ in range(specs[0].max_epochs):
        for row in array.train_epoch():
            rows[row["trial_id"]].append(row)
    return time.perf_counter() - started, time.process_time() - cpu, rows


def agreement(a: dict[int, list[dict[str, Any]]], b: dict[int, list[dict[str, Any]]]) -> tuple[str, float]:
    """Trials whose every val_loss agrees to 1e-4 relative between two runs, and the median trial's largest difference.

    Trials that disagree are unstable ones (large learning rates): moving the unfused run's
    inputs by one ulp changes their curves as much (docs/FUSED.md).
    """
    worst = []
    for tid, rows in a.items():
        diffs = [abs(x["val_loss"] - y["val_loss"]) / max(abs(x["val_loss"]), 1e-12) for x, y in zip(rows, b[tid])]
        worst.append(max(diffs) if all(d == d for d in diffs) else math.inf)
    return f"{sum(w <= 1e-4 for w in worst)}/{len(worst)}", float(f"{statistics.median(worst):.1e}")


def bench(case: str, k: int, epochs: int, repeats: int, threads: int) -> list[dict[str, Any]]:
    import torch

    from orchestrator.errors import NotFusable
    from orchestrator.search.sampler import trial_seed
    from orchestrator.spec.task import load_task
    from worker.data.splits import prepare
    from worker.train.trainer import TrialSpec

    torch.set_num_threads(threads)
    task = load_task(TASK)
    splits = prepare(task.get("load_data")(), normalize=task.normalize)
    configs = make_configs(CASES[case], k)
    specs = [TrialSpec(i, 0, c, trial_seed(0, i), epochs) for i, c in enumerate(configs)]
    exact = all(c["dropout"] == 0 for c in configs)
    out = []
    run_fused(task, splits, specs[:2], "bmm")  # first-use costs (allocator, kernels) paid outside the timings
    for repeat in range(repeats):
        unfused_s, unfused_cpu, unfused_rows = run_unfused(task, splits, specs)
        results: list[tuple[str, str, float, float, tuple[str, float] | None]] = [
            ("one after another", "-", unfused_s, unfused_cpu, None)]
        for engine in ("bmm", "vmap"):
            try:
                seconds, cpu, rows = run_fused(task, splits, specs, engine)
            except NotFusable:  # vmap keeps one dropout rate per array
                continue
            results.append((f"fused array (K={k})", engine, seconds, cpu,
                            agreement(unfused_rows, rows) if exact else None))
        for runner, engine, seconds, cpu, agree in results:
            out.append({"case": case, "runner": runner, "engine": engine, "k": k, "epochs": epochs, "threads": threads,
                        "repeat": repeat, "wall_s": round(seconds, 3), "cpu_s": round(cpu, 3),
                        "trials_per_hour": round(k / seconds * 3600), "speedup": round(unfused_s / seconds, 2),
                        "cpu_speedup": round(unfused_cpu / cpu, 2), "same_to_1e-4": agree[0] if agree else None,
                        "median_rel_diff": agree[1] if agree else None})
            print(out[-1], flush=True)
    return out


def summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| case | runner | engine | threads | median trials/hour | median speedup | median CPU-time speedup |",
             "|---|---|---|---|---|---|---|"]
    def key(r: dict[str, Any]) -> tuple[str, str, str, int]:
        return r["case"], r["runner"], r["engine"], r["threads"]

    for case, runner, engine, threads in sorted({key(r) for r in rows}, key=lambda t: (t[0], t[3], t[2])):
        sel = [r for r in rows if key(r) == (case, runner, engine, threads)]
        lines.append(f"| {case} | {runner} | {engine} | {threads} | "
                     f"{statistics.median(r['trials_per_hour'] for r in sel):.0f} | "
                     f"{statistics.median(r['speedup'] for r in sel):.2f} | "
                     f"{statistics.median(r['cpu_speedup'] for r in sel):.2f} |")
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="K=4, 1 epoch, 1 repeat, one case: seconds")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads (workers use 1 per CPU)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    if args.tiny:
        args.k, args.epochs, args.repeats, args.threads = 4, 1, 1, [1]
    cases = ["mlp-2x64"] if args.tiny else list(CASES)
    load_before = os.getloadavg()[0]
    rows = [r for case in cases for t in args.threads for r in bench(case, args.k, args.epochs, args.repeats, t)]
    load = f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    os.makedirs(args.out, exist_ok=True)
    name = "fused_digits-tiny" if args.tiny else "fused_digits"
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(args.out, f"{name}.parquet"))
    command = "python benchmarks/fused_digits.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = (f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}; {load}; command: {command.strip()}")
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in COLUMNS) + " |" for r in rows]
    notes = ["", " ".join([
        "Runs are interleaved (unfused, bmm, vmap) and repeated; the speedup of each repeat is against the unfused",
        "run just before it. The CPU-time speedup (process time, one thread) is the steadier number on a shared",
        "machine; trials per hour are wall-clock. vmap is absent where members have different dropout rates (one",
        "rate per module). same_to_1e-4: trials whose every val_loss equals the unfused run's to 1e-4; the others",
        "are unstable (large learning rates), and moving the unfused run's inputs by one ulp changes them as much."])]
    text = "\n".join([meta, "", *summary(rows), *notes, "", "Every run:", "", *table, ""])
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
