"""Per-trial dispatch overhead and busy fraction of a warm caviar actor pool.

The peer, measured in the same run: the same trials trained one after another in this
process with no Ray (the floor any dispatcher is compared against).

    python benchmarks/dispatch.py                 # full: 200 trivial trials, 40 trials x 5 epochs of ~50 ms
    python benchmarks/dispatch.py --tiny          # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TASK = os.path.join(ROOT, "benchmarks", "tasks", "sized_task.py")


def run_pool(trials: int, epochs: int, slots: int, storage: str, name: str) -> dict[str, float]:
    import ray

    from cluster.pool import RayBackend, Resources
    from orchestrator.app.api import controller_for, prepare_storage
    from orchestrator.decide.driver import drive
    from orchestrator.decide.sweeplog import SweepLog
    from orchestrator.spec.settings import RunSettings
    from orchestrator.spec.task import load_task

    task = load_task(TASK)
    settings = RunSettings(trials=trials, epochs=epochs, plan=f"{trials}x{epochs}", pruner="none", storage=storage,
                           name=name, slots=slots, checkpoint_seconds=3600).validate()
    root, sweep, _ = prepare_storage(settings, task)
    controller = controller_for(task.space, settings)
    backend = RayBackend(task.ref, root.uri, name, slots, Resources(cpus=1), {"threads": 1, "checkpoint_seconds": 3600})
    backend.wait_ready()  # actors have imported torch and loaded the data
    # Warm the pool as a long sweep would be: one trial per actor pays first-use costs.
    warm = RunSettings(trials=slots, epochs=1, plan=f"{slots}x1", pruner="none", storage=storage, name=name,
                       slots=slots).validate()
    drive(controller_for(task.space, warm), backend)
    log = SweepLog(sweep, task.space)
    started = time.perf_counter()
    drive(controller, backend, log, poll_timeout=1.0)
    backend.close()
    wall = time.perf_counter() - started
    del ray
    compute = sum(t.train_seconds for t in controller.trials.values())
    return {"wall_s": wall, "compute_s": compute, "trials": trials, "epochs": epochs, "slots": slots,
            "overhead_ms_per_trial": 1000 * (wall * slots - compute) / trials,
            "busy_fraction": compute / (wall * slots)}


def run_inline(trials: int, epochs: int, storage: str) -> dict[str, float]:
    """The same trials with no Ray: one WorkerSession in this process, trial after trial."""
    from orchestrator.decide.backend import Assignment
    from worker.train.session import WorkerSession

    session = WorkerSession(TASK, storage, "inline", {"threads": 1, "checkpoint_seconds": 3600})
    started = time.perf_counter()
    compute = 0.0
    for tid in range(trials):
        report = session.start(Assignment(tid, 0, {"lr": 0.01, "optimizer": "adam", "batch_size": 256}, tid, epochs,
                                          epochs))
        compute += sum(r["epoch_seconds"] for r in report.rows)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "compute_s": compute, "trials": trials, "epochs": epochs, "slots": 1,
            "overhead_ms_per_trial": 1000 * (wall - compute) / trials, "busy_fraction": compute / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    cases = [("trivial", 512, 16, 1), ("50ms-epochs", 24000, 8, 5)] if args.tiny else \
        [("trivial", 512, 200, 1), ("50ms-epochs", 24000, 40, 5)]
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, samples, trials, epochs in cases:
            os.environ["CAVIAR_BENCH_SAMPLES"] = str(samples)
            ray.shutdown()  # actors must see the new data size
            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False,
                     runtime_env={"env_vars": {"PYTHONPATH": ROOT, "CAVIAR_BENCH_SAMPLES": str(samples)}})
            pool = run_pool(trials, epochs, 2, tmp, f"pool-{label}")
            import importlib

            import orchestrator.spec.task as task_module
            task_module.sys.modules.pop(next((k for k in task_module.sys.modules if k.startswith("caviar_task_")), ""),
                                        None)
            importlib.invalidate_caches()
            inline = run_inline(trials, epochs, os.path.join(tmp, label))
            for runner, result in (("caviar pool (2 actors)", pool), ("in-process loop (no Ray)", inline)):
                rows.append({"case": label, "runner": runner, **{k: round(v, 4) for k, v in result.items()}})
    ray.shutdown()
    table = pa.Table.from_pylist(rows)
    os.makedirs(args.out, exist_ok=True)
    suffix = "-tiny" if args.tiny else ""
    pq.write_table(table, os.path.join(args.out, f"dispatch{suffix}.parquet"))
    header = ["case", "runner", "trials", "epochs", "slots", "wall_s", "compute_s", "overhead_ms_per_trial",
              "busy_fraction"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    meta = (f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"ray {ray.__version__}; command: python benchmarks/dispatch.py{' --tiny' if args.tiny else ''}")
    text = "\n".join([meta, "", *lines, ""])
    with open(os.path.join(args.out, f"dispatch{suffix}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
