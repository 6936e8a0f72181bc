"""Scale of the master: decisions per second on the simulated backend, and reading a million metric rows.

No peer runs the simulated backend, so the decision rate is an absolute number (goal: >= 10,000/s);
the Parquet read is compared with DuckDB reading the same files in the same run.

    python benchmarks/scale.py            # 10,000 trials x 20 reports; 1,000,000 rows in 1,000 files
    python benchmarks/scale.py --tiny     # 200 trials x 5 reports; 20,000 rows in 20 files (CI)
    python benchmarks/scale.py --profile  # also print the top of a cProfile of the decision loop
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import resource
import sys
import tempfile
import time
import tracemalloc
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_table  # noqa: E402
from orchestrator.decide.controller import Controller, ControllerOptions  # noqa: E402
from orchestrator.decide.driver import drive  # noqa: E402
from orchestrator.decide.pruning import NoPruner, make_pruner  # noqa: E402
from orchestrator.decide.simulate import SimulatedBackend  # noqa: E402
from orchestrator.search.space import SearchSpace, choice, loguniform, one_minus_loguniform, randint  # noqa: E402
from orchestrator.search.stages import parse_plan  # noqa: E402
from orchestrator.store import schema  # noqa: E402
from orchestrator.store.storage import Storage  # noqa: E402

COLUMNS = ["case", "trials", "reports", "rows", "seconds", "decisions_per_s", "rows_per_s", "peak_mb", "memory",
           "ratio_vs_duckdb"]
SPACE = SearchSpace({"lr": loguniform(1e-5, 1.0), "momentum": one_minus_loguniform(0.8, 0.999),
                     "layers": randint(1, 4), "act": choice(["relu", "tanh"])})


def quality(config: dict[str, Any]) -> float:
    d = math.log10(config["lr"]) + 2.0
    return 0.3 + 0.65 * math.exp(-0.5 * d * d)


class EveryEpoch(NoPruner):
    """Never prunes but asks for a decision after every epoch: the master sees every report."""

    def next_decision_epoch(self, epoch: int) -> int:
        return min(epoch + 1, self.max_epochs)


class CountingController(Controller):
    def __post_init__(self) -> None:
        self.decisions = 0
        super().__post_init__()

    def on_report(self, report: Any) -> Any:
        self.decisions += 1
        return super().on_report(report)


def run_master(trials: int, epochs: int, pruner: str, slots: int, profile: bool) -> dict[str, Any]:
    def pruner_for(stage: Any) -> Any:
        if pruner == "every-epoch":
            return EveryEpoch(max_epochs=stage.epochs)
        return make_pruner(pruner, max_epochs=stage.epochs)

    controller = CountingController(SPACE, parse_plan(f"{trials}x{epochs}"), pruner_for, ControllerOptions(seed=0))
    backend = SimulatedBackend(quality, slots, noise=0.01)
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    drive(controller, backend, poll_timeout=0.0)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    # tracemalloc would slow the loop several-fold; the process's peak RSS is the honest upper bound.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    rows = backend.epochs_trained
    return {"case": f"master, {pruner} pruner, {slots} slots", "trials": trials, "reports": controller.decisions,
            "rows": rows, "seconds": seconds, "decisions_per_s": controller.decisions / seconds,
            "rows_per_s": rows / seconds, "peak_mb": peak / 2**20, "memory": "process max RSS"}


def write_metrics(root: str, rows: int, files: int) -> Storage:
    storage = Storage.from_uri(root)
    per_file = rows // files
    epochs = 20
    for f in range(files):
        tids = f * (per_file // epochs) + np.arange(per_file) // epochs
        data = [{"trial_id": int(t), "attempt": 0, "epoch": int(i % epochs) + 1, "stage": 0,
                 "train_loss": 1.0 / (i + 1), "val_loss": 1.0, "val_accuracy": 0.5, "score": 0.5,
                 "epoch_seconds": 0.05, "time": 0}
                for i, t in enumerate(tids)]
        storage.write_table(schema.metrics_path(f), schema.to_table(data, schema.METRICS))
    return storage


def run_read(rows: int, files: int) -> list[dict[str, Any]]:
    import duckdb

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = write_metrics(tmp, rows, files)
        tracemalloc.start()
        started = time.perf_counter()
        table = schema.effective_metrics(schema.read_dir(storage, "metrics", schema.METRICS))
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert table.num_rows == rows, table.num_rows
        con = duckdb.connect()
        started = time.perf_counter()
        # The same work: read every file, keep the highest attempt per (trial, epoch).
        relation = con.sql(
            f"SELECT * FROM read_parquet('{tmp}/metrics/*.parquet') "
            "QUALIFY row_number() OVER (PARTITION BY trial_id, epoch ORDER BY attempt DESC) = 1")
        duck = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
        duck_seconds = time.perf_counter() - started
        n = duck.num_rows
        assert n == rows, n
        out.append({"case": f"read metrics: caviar read_dir + effective_metrics ({files} files)", "rows": rows,
                    "seconds": seconds, "rows_per_s": rows / seconds, "peak_mb": peak / 2**20,
                    "memory": "tracemalloc peak", "ratio_vs_duckdb": seconds / duck_seconds})
        out.append({"case": f"read metrics: DuckDB read_parquet + dedup ({files} files)", "rows": rows,
                    "seconds": duck_seconds, "rows_per_s": rows / duck_seconds, "ratio_vs_duckdb": 1.0})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    trials, epochs, rows, files = (200, 5, 20_000, 20) if args.tiny else (10_000, 20, 1_000_000, 1_000)
    results = [run_master(trials, epochs, "every-epoch", 64, args.profile),
               run_master(trials, epochs, "asha", 64, args.profile),
               *run_read(rows, files)]
    kwargs = {"out_dir": args.out} if args.out else {}
    write_table("scale-tiny" if args.tiny else "scale", results, COLUMNS,
                notes=["decisions: reports the controller digested (each answered with continue/stop or an end)",
                       "peak_mb: for the master, the process's max RSS after the run (interpreter included);"
                       " for reads, the tracemalloc peak of the read (Arrow buffers included)"], **kwargs)


if __name__ == "__main__":
    main()
