"""Search quality: the model each tool hands back, caviar's defaults against Optuna (TPE, random) and Ray Tune.

Three tasks (the digits MLP of examples/, a digits CNN and a breast cancer MLP from benchmarks/tasks/),
several seeds each, every tool training through worker.train.trainer.TrialRun (an epoch is the same work
everywhere) with 2 parallel slots. Two comparisons:

- ``settings``: the same user-facing settings for every tool, ``--trials`` trials of at most
  ``--epochs`` epochs. caviar: ``run_sweep`` defaults (coarse-to-fine stages + ASHA, ensembles);
  Optuna TPE and Optuna random: SuccessiveHalvingPruner(min_resource 1, reduction factor 3);
  Ray Tune: random search + ASHAScheduler(grace 1, reduction factor 3).
- ``epochs``: the same total epochs: Optuna TPE (+ successive halving) keeps starting trials until it
  has trained as many epochs as caviar's sweep of the same seed did. Optuna's n_jobs threads make a run
  differ from its rerun, so ``--peer-repeats R`` runs TPE R times per seed; caviar is paired with their mean.

Per run: the test accuracy of the tool's final answer (peers: the best trial's weights at its best
validation epoch; caviar: the chosen ensemble, and its best single model's kept best checkpoint),
epochs trained and wall seconds. The summary rows give mean and standard deviation over seeds (a seed's
repeated TPE runs count by their mean there).

    python benchmarks/quality.py                     # 3 tasks x 5 seeds, 32 trials x 10 epochs, all tools
    python benchmarks/quality.py --seeds 0,1,2 --tasks digits_mlp --tools caviar,optuna-tpe
    python benchmarks/quality.py --caviar '{"promote_fraction": 0.25}'   # caviar with other settings
    python benchmarks/quality.py --seeds $(seq -s, 0 19) --in-process   # 20 seeds in one interpreter (warm actors)
    python benchmarks/quality.py --seeds $(seq -s, 0 39) --in-process --tools caviar,optuna-tpe --modes epochs \
        --peer-repeats 3                             # same epochs, TPE 3 times per seed
    python benchmarks/quality.py --tiny              # 1 task, 1 seed, 4 trials x 2 epochs, caviar + Optuna TPE (CI)
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    DIGITS_MLP,
    ROOT,
    SLOTS,
    chosen_tools,
    emit,
    init_ray,
    peer_parser,
    run_caviar,
    run_child,
    run_optuna,
    run_tune,
    write_table,
)

TASKS = {
    "digits_mlp": DIGITS_MLP,
    "digits_cnn": os.path.join(ROOT, "benchmarks", "tasks", "digits_cnn.py"),
    "breast_cancer": os.path.join(ROOT, "benchmarks", "tasks", "breast_cancer_mlp.py"),
}
TOOLS = ("caviar", "optuna-tpe", "optuna-random", "tune")
COLUMNS = ["task", "mode", "tool", "seed", "repeat", "trials", "max_epochs", "epochs_trained", "wall_s", "wall_ratio",
           "answer_test_accuracy", "answer_test_sd", "best_test_accuracy", "best_test_sd", "ensemble_test_accuracy",
           "best_val_accuracy", "plan"]


def child(tool: str, task: str, seed: int, trials: int, epochs: int, extra: dict[str, Any]) -> None:
    """One tool, one task, one seed, in its own interpreter; prints one JSON line."""
    ray_start = init_ray() if tool in ("caviar", "tune") else None
    emit({**measure(tool, task, seed, trials, epochs, extra), "ray_start_s": ray_start})


def measure(tool: str, task: str, seed: int, trials: int, epochs: int, extra: dict[str, Any]) -> dict[str, Any]:
    """One tool, one task, one seed, in this interpreter (Ray already started for caviar and Tune)."""
    path = TASKS[task]
    with tempfile.TemporaryDirectory() as storage:
        if tool == "caviar":
            result = run_caviar(trials, epochs, storage, path, seed=seed, **extra.get("caviar", {}))
        elif tool == "tune":
            result = run_tune(trials, epochs, storage, path, seed=seed)
        else:
            result = run_optuna(trials, epochs, path, seed=seed, sampler=tool.split("-")[1],
                                budget_epochs=extra.get("budget_epochs"))
    return result


def one_run(tool: str, task: str, seed: int, mode: str, trials: int, epochs: int, extra: dict[str, Any],
            in_process: bool = False, repeat: int = 0) -> dict[str, Any]:
    if in_process:
        result = measure(tool, task, seed, trials, epochs, extra)
    else:
        argv = [os.path.abspath(__file__), "--child", tool, task, str(seed), str(trials), str(epochs),
                json.dumps(extra)]
        result = run_child(argv)
    best = result.get("test_accuracy_best")
    ensemble = result.get("ensemble_test_accuracy")
    row = {"task": task, "mode": mode, "tool": tool, "seed": str(seed), "repeat": repeat, "max_epochs": epochs,
           **result, "best_test_accuracy": best, "answer_test_accuracy": ensemble if ensemble is not None else best}
    print(f"{task} {mode} {tool} seed {seed}{f' repeat {repeat}' if repeat else ''}: "
          f"answer {row['answer_test_accuracy']}, {row['epochs_trained']} epochs, {row['wall_s']:.1f} s", flush=True)
    return row


def runs_by_seed(rows: Sequence[dict[str, Any]], task: str, mode: str, tool: str, name: str) -> dict[str, list[float]]:
    """``name`` of every run of (task, mode, tool), by seed: several where the tool was repeated on a seed."""
    runs: dict[str, list[float]] = {}
    for r in rows:
        if (r["task"], r["mode"], r["tool"]) == (task, mode, tool) and r.get(name) is not None:
            runs.setdefault(r["seed"], []).append(r[name])
    return runs


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (task, mode, tool); sd over seeds; wall_ratio: mean of per-seed ratios to caviar.

    A seed's repeated runs count by their mean; as every seed has as many, the mean is that of all runs.
    """
    caviar_wall = {(r["task"], r["seed"]): r["wall_s"] for r in rows if r["tool"] == "caviar"}
    for r in rows:
        base = caviar_wall.get((r["task"], r["seed"]))
        r["wall_ratio"] = r["wall_s"] / base if base else None
    out = []
    for key in dict.fromkeys((r["task"], r["mode"], r["tool"]) for r in rows):
        group = [r for r in rows if (r["task"], r["mode"], r["tool"]) == key]

        seeds = len({r["seed"] for r in group})

        def seed_means(name: str, key: tuple[str, str, str] = key) -> list[float]:
            return [statistics.mean(v) for v in runs_by_seed(rows, *key, name).values()]

        def mean(name: str) -> float | None:
            values = seed_means(name)
            return statistics.mean(values) if values else None

        def sd(name: str) -> float | None:
            values = seed_means(name)
            return statistics.stdev(values) if len(values) > 1 else None

        out.append({"task": key[0], "mode": key[1], "tool": key[2],
                    "seed": f"mean of {seeds}" + (f" ({len(group)} runs)" if len(group) > seeds else ""),
                    "plan": group[0].get("plan"), "max_epochs": group[0]["max_epochs"],
                    "answer_test_sd": sd("answer_test_accuracy"), "best_test_sd": sd("best_test_accuracy"),
                    **{name: mean(name) for name in ("trials", "epochs_trained", "wall_s", "wall_ratio",
                                                     "answer_test_accuracy", "best_test_accuracy",
                                                     "ensemble_test_accuracy", "best_val_accuracy")}})
    return out


def paired_gap(rows: Sequence[dict[str, Any]], task: str, column: str, peer: tuple[str, str],
               ours: tuple[str, str] = ("settings", "caviar")) -> str:
    """caviar minus a peer on ``column``, paired by seed: mean ± standard error, and seeds ahead/level/behind.

    Pairing by seed removes what the seeds share (the same first random configs, the same splits); the
    standard error says whether a mean gap is more than the seeds' noise (about 2 SE or more).
    """
    def by_seed(mode: str, tool: str) -> dict[str, float]:  # a repeated tool: the mean of its runs on the seed
        return {s: statistics.mean(v) for s, v in runs_by_seed(rows, task, mode, tool, column).items()}

    mine, theirs = by_seed(*ours), by_seed(*peer)
    gaps = [round(mine[s] - theirs[s], 6) for s in mine if s in theirs]
    if not gaps:
        return ""
    se = statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else math.nan
    ahead, behind = sum(g > 0 for g in gaps), sum(g < 0 for g in gaps)
    return (f"; paired by seed: {statistics.mean(gaps):+.4f} ± {se:.4f} (SE), ahead on {ahead}, level on "
            f"{len(gaps) - ahead - behind}, behind on {behind} of {len(gaps)} seeds")


def verdicts(summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The issue's goals, checked on the means: one line per task and comparison (with paired gaps from ``rows``)."""
    lines = []
    for task in dict.fromkeys(s["task"] for s in summary):
        at = {s["tool"]: s for s in summary if s["task"] == task and s["mode"] == "settings"}
        caviar = at.get("caviar")
        peers = [s for tool, s in at.items() if tool != "caviar" and s["answer_test_accuracy"] is not None]
        if caviar and peers:
            top = max(peers, key=lambda s: s["answer_test_accuracy"])
            # rounded: torch's float32 accuracies and caviar's float64 ones differ in the 8th digit for equal counts
            beats = all(round(caviar["answer_test_accuracy"], 6) > round(p["answer_test_accuracy"], 6) for p in peers)
            lines.append(f"{task}, same settings: caviar's answer {caviar['answer_test_accuracy']:.4f} "
                         f"{'beats' if beats else 'does not beat'} every peer (best peer {top['tool']} "
                         f"{top['answer_test_accuracy']:.4f}); epochs {caviar['epochs_trained']:.0f} vs "
                         f"{top['epochs_trained']:.0f} for {top['tool']}"
                         + paired_gap(rows, task, "answer_test_accuracy", ("settings", top["tool"])))
        same = {s["tool"]: s for s in summary if s["task"] == task and s["mode"] == "epochs"}
        if caviar and "optuna-tpe" in same:
            tpe = same["optuna-tpe"]
            ok = round(caviar["best_test_accuracy"], 6) >= round(tpe["best_test_accuracy"], 6)
            lines.append(f"{task}, same epochs: caviar's best single model {caviar['best_test_accuracy']:.4f} "
                         f"{'>=' if ok else '<'} Optuna TPE's {tpe['best_test_accuracy']:.4f} "
                         f"({tpe['epochs_trained']:.0f} epochs vs caviar's {caviar['epochs_trained']:.0f})"
                         + paired_gap(rows, task, "best_test_accuracy", ("epochs", "optuna-tpe"))
                         + repeat_spread(rows, task))
    return lines


def repeat_spread(rows: Sequence[dict[str, Any]], task: str) -> str:
    """How far one same-epochs TPE run is from its rerun (same seed, same budget): "" unless TPE was repeated."""
    runs = [v for v in runs_by_seed(rows, task, "epochs", "optuna-tpe", "best_test_accuracy").values() if len(v) > 1]
    if not runs:
        return ""
    spread = statistics.mean(statistics.stdev(v) for v in runs)
    differ = sum(len(set(v)) > 1 for v in runs)
    return (f"; TPE's runs of a seed: sd {spread:.4f} (mean over seeds), differing on {differ} of {len(runs)} "
            "seeds")


def main() -> None:
    parser = peer_parser(__doc__, TOOLS, TOOLS, ("TOOL", "TASK", "SEED", "TRIALS", "EPOCHS", "EXTRA"))
    parser.add_argument("--tasks", default=None, help=f"comma-separated subset of {', '.join(TASKS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2,3,4; tiny: 0)")
    parser.add_argument("--trials", type=int, default=None, help="default 32 (tiny: 4)")
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (tiny: 2)")
    parser.add_argument("--modes", default="settings,epochs", help="settings, epochs or both")
    parser.add_argument("--caviar", default="{}", help="JSON of run_sweep settings on top of caviar's defaults")
    parser.add_argument("--tune-seeds", default=None,
                        help="run Ray Tune (slow to schedule) only on these seeds (default: every seed)")
    parser.add_argument("--name", default=None, help="result file name (default quality, tiny: quality-tiny)")
    parser.add_argument("--peer-repeats", type=int, default=1,
                        help="same epochs: run Optuna TPE this many times per seed (its threads make runs differ)")
    parser.add_argument("--in-process", action="store_true",
                        help="every run in this interpreter with one Ray: caviar's later sweeps of a task reuse its "
                             "warm actors, so many seeds fit in little time; wall times then compare nothing")
    args = parser.parse_args()
    if args.child:
        tool, task, seed, trials, epochs, extra = args.child
        child(tool, task, int(seed), int(trials), int(epochs), json.loads(extra))
        return
    tools = chosen_tools(parser, "caviar,optuna-tpe" if args.tiny and args.tools == ",".join(TOOLS) else args.tools,
                         TOOLS)
    tasks = [t.strip() for t in (args.tasks or ("breast_cancer" if args.tiny else ",".join(TASKS))).split(",")]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"--tasks: unknown {', '.join(unknown)} (known: {', '.join(TASKS)})")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - {"settings", "epochs"} or not modes:
        parser.error("--modes: settings, epochs, or both")
    try:
        caviar_settings = json.loads(args.caviar)
    except ValueError as exc:
        parser.error(f"--caviar: not JSON ({exc})")
    if args.peer_repeats < 1:
        parser.error("--peer-repeats: at least 1")
    seeds = [int(s) for s in (args.seeds or ("0" if args.tiny else "0,1,2,3,4")).split(",")]
    trials = args.trials or (4 if args.tiny else 32)
    epochs = args.epochs or (2 if args.tiny else 10)
    rows: list[dict[str, Any]] = []
    loads = []
    if args.in_process and ({"caviar", "tune"} & set(tools)):
        init_ray()
    for task in tasks:
        for seed in seeds:  # seeds outer, tools inner: slow drift of the shared machine's load hits every tool alike
            loads.append(os.getloadavg()[0])
            caviar_row = None
            for tool in tools:
                if tool == "tune" and args.tune_seeds is not None and str(seed) not in args.tune_seeds.split(","):
                    continue
                extra = {"caviar": caviar_settings} if tool == "caviar" else {}
                if tool == "caviar" or "settings" in modes:
                    row = one_run(tool, task, seed, "settings", trials, epochs, extra, args.in_process)
                    caviar_row = row if tool == "caviar" else caviar_row
                    rows.append(row)
            if "epochs" in modes and caviar_row is not None and "optuna-tpe" in tools:
                budget = {"budget_epochs": int(caviar_row["epochs_trained"])}
                for repeat in range(args.peer_repeats):  # the same call again: only its threads' timing differs
                    rows.append(one_run("optuna-tpe", task, seed, "epochs", trials, epochs, budget, args.in_process,
                                        repeat))
            loads.append(os.getloadavg()[0])
            report(args, rows, loads, trials, epochs, caviar_settings)  # after every seed: a stopped run keeps its rows


def report(args: Any, rows: list[dict[str, Any]], loads: list[float], trials: int, epochs: int,
           caviar_settings: dict[str, Any]) -> None:
    summary = summarise(rows)
    notes = [
        f"{SLOTS} slots for every tool; Optuna: n_jobs={SLOTS} threads; "
        + ("every run in one interpreter with one Ray (caviar's actors warm after a task's first seed; wall times "
           "compare nothing)" if args.in_process else "each run in its own interpreter"),
        f"settings: {trials} trials x at most {epochs} epochs for every tool; caviar: run_sweep defaults"
        + (f" with {json.dumps(caviar_settings)}" if caviar_settings else "")
        + "; Optuna: SuccessiveHalvingPruner(min_resource 1, rf 3); Ray Tune: ASHAScheduler(grace 1, rf 3)",
        "epochs: Optuna TPE + successive halving starts trials until it has trained caviar's epochs (same seed)"
        + (f", {args.peer_repeats} times per seed (repeat column); caviar is paired with their mean"
           if args.peer_repeats > 1 else ""),
        *([f"Ray Tune on seeds {args.tune_seeds} only"] if args.tune_seeds is not None else []),
        "answer_test_accuracy: caviar's chosen ensemble (its best single model where no ensemble was built); a peer's"
        " best trial at its best validation epoch. best_test_accuracy: the best single model. *_sd: sd over seeds",
        "wall_ratio: per-seed wall time over caviar's, averaged; the machine is shared, so only ratios mean much",
        f"1-minute load average during the run: min {min(loads):.1f}, max {max(loads):.1f}",
        *verdicts(summary, rows),
    ]
    kwargs = {"out_dir": args.out} if args.out else {}
    write_table(args.name or ("quality-tiny" if args.tiny else "quality"), summary + rows, COLUMNS, notes=notes,
                **kwargs)


if __name__ == "__main__":
    main()
