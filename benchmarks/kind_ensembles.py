"""Does the chosen ensemble beat the best single model on a task that is not one class per example?

Runs ``caviar``'s defaults on a task (by default ``examples/digits_segmentation.py``: a class for every
pixel, ranked by mean IoU) for several seeds, then reads the ensembles table: the best single model's
and the chosen ensemble's test numbers on the sweep's objective and on accuracy (over labelled
positions for a per-position task). The choice is made on validation; test is measured once after.

    python benchmarks/kind_ensembles.py                      # digits segmentation, 5 seeds, the task's settings
    python benchmarks/kind_ensembles.py --task examples/digits_attributes_multilabel.py --seeds 3
    python benchmarks/kind_ensembles.py --tiny               # 1 seed, 4 trials x 2 epochs (CI)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import write_table  # noqa: E402

TASK = os.path.join(ROOT, "examples", "digits_segmentation.py")
COLUMNS = ["task", "seed", "answer", "method", "members", "objective", "val_objective", "test_objective",
           "test_accuracy", "epochs_trained", "sweep_s"]


def one_sweep(task: str, seed: int, tiny: bool) -> list[dict]:
    from orchestrator.app.api import load, run_sweep
    from orchestrator.ensemble.ensemble_run import read_ensembles
    from orchestrator.store.storage import Storage

    sizes = {"trials": 4, "epochs": 2} if tiny else {}
    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        result = run_sweep(task, storage=storage, name="sweep", seed=seed, slots=2, **sizes)
        seconds = time.perf_counter() - started
        epochs = load(result.path).metrics.num_rows
        rows = read_ensembles(Storage.from_uri(result.path))
    single = next(r for r in rows if r.method == "single")
    chosen = next(r for r in rows if r.chosen)
    out = []
    for answer, record in (("best single model", single), ("chosen ensemble", chosen)):
        detail = record.detail
        objective = detail.get("chosen_by") or "val_log_loss"
        val, test = detail.get("val_objective"), detail.get("test_objective")
        if val is None:  # chosen on caviar's own log loss: the table's columns are the objective
            val, test = record.val_log_loss, record.test_log_loss
        out.append({"task": os.path.basename(task), "seed": seed, "answer": answer, "method": record.method,
                    "members": len(record.members), "objective": objective, "val_objective": val,
                    "test_objective": test, "test_accuracy": record.test_accuracy, "epochs_trained": epochs,
                    "sweep_s": round(seconds, 1)})
    return out


def summary(rows: list[dict]) -> list[str]:
    notes = []
    for answer in ("best single model", "chosen ensemble"):
        picked = [r for r in rows if r["answer"] == answer]
        for column in ("test_objective", "test_accuracy"):
            values = [float(r[column]) for r in picked]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            notes.append(f"{answer}: {column} mean {statistics.mean(values):.4f} ± {sd:.4f} over {len(values)} seeds")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    seeds = 1 if args.tiny else args.seeds
    rows = [row for seed in range(seeds) for row in one_sweep(args.task, seed, args.tiny)]
    write_table("kind_ensembles", rows, COLUMNS, args.out, notes=summary(rows))


if __name__ == "__main__":
    main()
