"""Per-trial and per-report overhead: caviar versus Ray Tune (Tuner defaults, and with actor reuse).

Identical work on every side: the trivial task (benchmarks/tasks/trivial.py, one linear layer,
one batch per epoch) trained through worker.train.trainer.TrialRun, one epoch per report. Each tool runs
in its own interpreter, the Ray tools with the same ``ray.init``; ``wall_s`` is the run itself (Ray already
up), ``ray_start_s`` the ``ray.init`` before it and ``process_s`` the whole child (interpreter and imports).

    python benchmarks/overhead.py                     # 64 trials x 1 report; 8 trials x 100 reports
    python benchmarks/overhead.py --tiny              # 4 x 1 and 2 x 5 (CI)
    python benchmarks/overhead.py --tools caviar,tune-reuse --trials 2
    python benchmarks/overhead.py --tools caviar,caviar-warm   # caviar-warm: a second sweep in one process
    python benchmarks/overhead.py --tools caviar,caviar-ray,caviar-ray-warm,tune-reuse   # -ray: on Ray actors

``caviar`` is run_sweep's defaults: without a Ray in the process, child processes of the master (executor
"auto"); ``caviar-processes`` names that executor explicitly, ``caviar-ray`` runs the same sweep on Ray actors.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, chosen_tools, emit, peer_parser, run_child, write_table  # noqa: E402

TASK = os.path.join(ROOT, "benchmarks", "tasks", "trivial.py")
TOOLS = ("caviar", "caviar-warm", "caviar-ray", "caviar-ray-warm", "caviar-processes", "caviar-processes-warm", "tune",
         "tune-reuse")
COLUMNS = ["case", "tool", "trials", "reports_per_trial", "wall_s", "s_per_trial", "s_per_report", "ratio_vs_caviar",
           "ray_start_s", "process_s", "compute_s"]
SLOTS = 2


def init_ray() -> float:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=SLOTS, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    return time.perf_counter() - started


def run_caviar(trials: int, reports: int, storage: str, executor: str = "auto") -> dict[str, Any]:
    from orchestrator.app.api import load, run_sweep

    started = time.perf_counter()
    run_sweep(TASK, plan=f"{trials}x{reports}", pruner="none", ensemble=False, checkpoint_seconds=1e9,
              storage=storage, name="overhead", overwrite=True, slots=SLOTS, executor=executor)
    wall = time.perf_counter() - started
    metrics = load(os.path.join(storage, "overhead")).metrics
    return {"wall_s": wall, "compute_s": float(sum(metrics["epoch_seconds"].to_pylist()))}


_CACHE: dict[str, Any] = {}


def tune_trainable(config: dict[str, Any]) -> None:
    """Ray Tune's side of the same work: a TrialRun on the same task, one epoch per ``tune.report``."""
    from ray import tune

    from orchestrator.spec.task import load_task
    from worker.data.splits import prepare
    from worker.train.trainer import TrialRun, TrialSpec, pick_device

    if "splits" not in _CACHE:  # what a reused actor keeps, like caviar's long-lived actors
        import torch

        torch.set_num_threads(1)
        _CACHE["task"] = task = load_task(config["task"])
        _CACHE["splits"] = prepare(task.get("load_data")(), normalize=task.normalize)
    task, splits = _CACHE["task"], _CACHE["splits"]
    reports = int(config["reports"])
    run = TrialRun(task, splits, TrialSpec(0, 0, task.space.fixed, 0, reports), pick_device("cpu"))
    for _ in range(reports):
        row = run.train_epoch()
        tune.report({"val_accuracy": row["val_accuracy"], "epoch_seconds": row["epoch_seconds"]})


def run_tune(trials: int, reports: int, storage: str, reuse: bool) -> dict[str, Any]:
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, {"cpu": 1}),
        param_space={"task": TASK, "reports": reports},
        tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=reuse, metric="val_accuracy", mode="max"),
        run_config=tune.RunConfig(storage_path=storage, name="overhead", verbose=0),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - started
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"Ray Tune trials failed: {errors[0]}")
    compute = sum(float(r.metrics_dataframe["epoch_seconds"].sum()) for r in grid)
    return {"wall_s": wall, "compute_s": compute}


def child(tool: str, trials: int, reports: int) -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    on_ray = tool.startswith(("caviar-ray", "tune"))
    ray_start = init_ray() if on_ray else None  # the rest never import Ray
    executor = {"caviar": "auto", "caviar-processes": "processes", "caviar-ray": "ray"}.get(tool.removesuffix("-warm"))
    with tempfile.TemporaryDirectory() as storage:
        if executor is None:
            result = run_tune(trials, reports, storage, reuse=tool == "tune-reuse")
        else:
            if tool.endswith("-warm"):  # a notebook's second sweep: torch warmed up (on Ray: the actors still warm)
                run_caviar(2, 1, os.path.join(storage, "first"), executor=executor)
            result = run_caviar(trials, reports, storage, executor=executor)
    emit({**result, "ray_start_s": ray_start})


def main() -> None:
    parser = peer_parser(__doc__, TOOLS, TOOLS, ("TOOL", "TRIALS", "REPORTS"))
    parser.add_argument("--trials", type=int, default=None, help="trials of the one-report case")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    tools = chosen_tools(parser, args.tools, TOOLS)
    n = args.trials or (4 if args.tiny else 64)
    long_trials, long_reports = (2, 5) if args.tiny else (8, 100)
    cases = [("trivial trials, 1 report", n, 1), (f"long trials, {long_reports} reports", long_trials, long_reports)]
    rows = []
    for case, trials, reports in cases:
        base = None
        for tool in tools:
            result = run_child([os.path.abspath(__file__), "--child", tool, str(trials), str(reports)])
            row = {"case": case, "tool": tool, "trials": trials, "reports_per_trial": reports, **result,
                   "s_per_trial": result["wall_s"] / trials, "s_per_report": result["wall_s"] / (trials * reports)}
            base = row["wall_s"] if tool == "caviar" else base
            row["ratio_vs_caviar"] = row["wall_s"] / base if base else None
            rows.append(row)
            print(f"{case}: {tool} {row['wall_s']:.2f} s", flush=True)
    kwargs = {"out_dir": args.out} if args.out else {}
    write_table("overhead-tiny" if args.tiny else "overhead", rows, COLUMNS, notes=[
        f"{SLOTS} slots (ray.init(num_cpus={SLOTS}) for the Ray tools), 1 CPU per trial, for every tool",
        "wall_s: the run (with Ray already started for the Ray tools); ratio_vs_caviar = wall_s / caviar's wall_s"
        " in the same case",
        "caviar: run_sweep defaults, here child processes forked from the master (no Ray; wall includes the contract"
        " check and the forks); caviar-processes: the same executor named; caviar-ray: the trials on Ray actors",
        "-warm: the same sweep run right after a 2-trial sweep in the same process (torch warm; Ray: warm actors)",
        "caviar with pruner none asks for all epochs at once: a trial's reports arrive as one batch of metric rows",
    ], **kwargs)


if __name__ == "__main__":
    main()
