"""Staged coarse-to-fine search with pruning versus plain random search, at the same epoch budget, on digits.

Every arm is given the same budget of trial-epochs: what a plain random search of ``--trials``
trials x ``--epochs`` epochs costs. Arms:

- ``random``: that random search, no pruning (spends the whole budget);
- ``random_asha``: the same trials with ASHA (spends less: pruned trials stop early);
- ``staged_asha``: caviar's default coarse-to-fine plan with the most trials that fits the
  budget without pruning (``stages.default_plan_for_budget``), ASHA inside each stage;
- ``staged``: the same plan, no pruning;
- ``staged_asha_fresh``: the staged arm with ``promote_fraction=0`` (every later-stage trial a
  fresh sample from the narrowed ranges, as before promotion was added): the ablation.

Per sweep: epochs trained (metrics rows), wall seconds, the best trial's best validation
accuracy (what the sweep selects on) and the test accuracy of that trial's kept best
checkpoint, measured once after selection. Ratios are taken against ``random`` with the same
seed in the same run. The digits val and test splits have 359 and 360 examples (one
error = 0.28 points), and a sweep's ASHA decisions depend on which trial reports first, so
several seeds are run and a rerun of one seed can differ.

    python benchmarks/staged_vs_random.py                # 5 seeds, budget 16 x 12 = 192 epochs, all arms
    python benchmarks/staged_vs_random.py --tiny         # 1 seed, budget 6 x 2 epochs, 2 arms (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import write_table  # noqa: E402

TASK = os.path.join(ROOT, "examples", "digits_mlp.py")
ARMS = ("random", "random_asha", "staged_asha", "staged", "staged_asha_fresh")
TINY_ARMS = ("random", "staged_asha")
COLUMNS = [
    "arm",
    "seed",
    "plan",
    "pruner",
    "trials",
    "epochs_trained",
    "wall_s",
    "best_val_accuracy",
    "test_accuracy",
    "test_errors",
    "best_stage",
    "val_sd",
    "test_sd",
    "epochs_ratio",
    "wall_ratio",
    "val_error_ratio",
    "test_error_ratio",
]


def arm_settings(arm: str, budget_trials: int, epochs: int) -> dict[str, Any]:
    """run_sweep settings of one arm; every arm costs at most ``budget_trials * epochs`` epochs unpruned."""
    from orchestrator.search.stages import default_plan_for_budget, plan_to_str

    if arm.startswith("random"):
        plan = f"{budget_trials}x{epochs}"
    else:
        plan = plan_to_str(default_plan_for_budget(budget_trials * epochs, epochs))
    settings: dict[str, Any] = {"plan": plan, "pruner": "asha" if arm.endswith(("asha", "asha_fresh")) else "none"}
    if arm.endswith("fresh"):
        settings["promote_fraction"] = 0.0
    return settings


def one_sweep(arm: str, seed: int, args: argparse.Namespace, storage: str) -> dict[str, Any]:
    from benchmarks.real_sweep import caviar_best_test_accuracy
    from orchestrator.app.api import load, run_sweep
    from orchestrator.spec.settings import RunSettings

    settings = arm_settings(arm, args.trials, args.epochs)
    if "fuse" in {f.name for f in dataclasses.fields(RunSettings)}:
        settings["fuse"] = "off"  # fused arrays share model shapes in blocks: search strategies compared unfused
    started = time.perf_counter()
    result = run_sweep(
        TASK,
        **settings,
        slots=args.slots,
        storage=storage,
        name=f"{arm}-{seed}",
        seed=seed,
        overwrite=True,
        ensemble=False,
    )
    wall = time.perf_counter() - started
    tables = load(result.path)
    test = caviar_best_test_accuracy(result, tables)  # once, after selection on validation
    best_stage = next(r["stage"] for r in tables.trials.to_pylist() if r["trial_id"] == result.best_trial_id)
    return {
        "arm": arm,
        "seed": str(seed),
        "plan": settings["plan"],
        "pruner": settings["pruner"],
        "trials": tables.trials.num_rows,
        "epochs_trained": tables.metrics.num_rows,
        "wall_s": wall,
        "best_val_accuracy": result.best_score,
        "test_accuracy": test,
        "test_errors": None if test is None else round((1 - test) * args.n_test),
        "best_stage": best_stage,
    }


def error_ratio(accuracy: float | None, reference: float | None) -> float | None:
    """Errors of an arm over errors of the reference (below 1: fewer errors)."""
    if accuracy is None or reference is None or reference >= 1.0:
        return None
    return (1.0 - accuracy) / (1.0 - reference)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row against the ``random`` row of the same seed (same run)."""
    reference = {r["seed"]: r for r in rows if r["arm"] == "random"}
    for row in rows:
        ref = reference.get(row["seed"])
        if ref is None:
            continue
        row["epochs_ratio"] = row["epochs_trained"] / ref["epochs_trained"]
        row["wall_ratio"] = row["wall_s"] / ref["wall_s"]
        row["val_error_ratio"] = error_ratio(row["best_val_accuracy"], ref["best_val_accuracy"])
        row["test_error_ratio"] = error_ratio(row["test_accuracy"], ref["test_accuracy"])


def summary(arm: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds (ratios: mean of the per-seed ratios), with the seeds' standard deviation of val and test."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.mean(values) if values else None

    def sd(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.stdev(values) if len(values) > 1 else None

    out = {
        "arm": arm,
        "seed": f"mean of {len(rows)}",
        "plan": rows[0]["plan"],
        "pruner": rows[0]["pruner"],
        "val_sd": sd("best_val_accuracy"),
        "test_sd": sd("test_accuracy"),
    }
    for key in (
        "trials",
        "epochs_trained",
        "wall_s",
        "best_val_accuracy",
        "test_accuracy",
        "test_errors",
        "epochs_ratio",
        "wall_ratio",
        "val_error_ratio",
        "test_error_ratio",
    ):
        out[key] = mean(key)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--arms", default=None, help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated sweep seeds (default 0,1,2,3,4; tiny: 0)")
    parser.add_argument("--trials", type=int, default=None, help="budget: random-search trials (default 16; tiny: 6)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of a full trial (default 12; tiny: 2)")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--storage", default=None, help="keep the sweeps here (default: a temporary folder)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    arms = args.arms.split(",") if args.arms else list(TINY_ARMS if args.tiny else ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)} (one of {', '.join(ARMS)})")
    if "random" not in arms:
        arms.insert(0, "random")  # the reference of every ratio
    args.trials = args.trials or (6 if args.tiny else 16)
    args.epochs = args.epochs or (2 if args.tiny else 12)
    seeds = [int(s) for s in (args.seeds or ("0" if args.tiny else "0,1,2,3,4")).split(",")]
    from orchestrator.spec.task import load_task

    data = load_task(TASK).get("load_data")()
    args.n_val, args.n_test = len(data["val"][1]), len(data["test"][1])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # seeds outermost: slow drift of the shared machine's load hits every arm alike
            seed_rows = [one_sweep(arm, seed, args, args.storage or tmp) for arm in arms]
            add_ratios(seed_rows)
            rows += seed_rows
    summaries = [summary(arm, [r for r in rows if r["arm"] == arm]) for arm in arms]
    budget = args.trials * args.epochs
    notes = [
        f"budget: {budget} trial-epochs = plain random search of {args.trials} trials x {args.epochs} epochs; "
        "every arm's plan costs at most that without pruning",
        f"{args.slots} slots; validation {args.n_val} / test {args.n_test} examples "
        f"(one test error = {100 / args.n_test:.2f} points)",
        "best_val_accuracy: the selected trial's best validation accuracy (later stages first, as caviar selects); "
        "test_accuracy: its kept best checkpoint on the test split, measured once after selection",
        "ratios against `random` of the same seed in the same run, then averaged; error ratios below 1 mean fewer "
        "errors than random",
        "val_sd, test_sd: standard deviation over seeds",
        f"machine load while running: 1-minute load average {load_average()} at the end",
    ]
    kwargs = {"out_dir": args.out} if args.out else {}
    write_table(
        "staged_vs_random-tiny" if args.tiny else "staged_vs_random", summaries + rows, COLUMNS, notes=notes, **kwargs
    )


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
