"""A real sweep on the digits example: caviar (stages + ASHA) versus Ray Tune (ASHAScheduler) versus Optuna.

Same task (examples/digits_mlp.py), same search space (converted from caviar's SearchSpace),
same trial count and maximum epochs, pruning on, 2 parallel slots. Every side trains through
worker.train.trainer.TrialRun, so an epoch is the same work everywhere; ``busy_fraction`` is the sum of
epoch compute divided by (wall time x slots). Test accuracy is that of the best trial's weights at
its best validation epoch (caviar: its kept best checkpoint).

    python benchmarks/real_sweep.py                 # 32 trials x up to 10 epochs
    python benchmarks/real_sweep.py --tiny          # 4 trials x 2 epochs (CI)
    python benchmarks/real_sweep.py --tools caviar,optuna --trials 8 --epochs 3
    python benchmarks/real_sweep.py --tools caviar,caviar-ray,optuna   # caviar-ray: the trials on a private Ray
    python benchmarks/real_sweep.py --tools caviar-ray,caviar-warm   # caviar-warm: a second sweep on Ray's warm actors

``caviar`` is run_sweep's defaults: on one machine without a Ray of its own, child processes of the master
(executor "auto"); ``caviar-processes`` names that executor explicitly.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402  (re-exported: the peer runners live in common.py)
    DIGITS_MLP,
    SLOTS,
    caviar_best_test_accuracy,
    chosen_tools,
    decode,
    emit,
    init_ray,
    peer_parser,
    run_caviar,
    run_child,
    run_optuna,
    run_tune,
    suggest_optuna,
    to_tune,
    write_table,
)

__all__ = ["caviar_best_test_accuracy", "decode", "suggest_optuna", "to_tune"]

TASK = DIGITS_MLP
TOOLS = ("caviar", "caviar-ray", "caviar-warm", "caviar-unfused", "caviar-processes", "tune", "optuna")
DEFAULT_TOOLS = ("caviar", "caviar-ray", "tune", "optuna")
NO_RAY = ("optuna", "caviar", "caviar-processes")  # the rest share one ray.init, timed apart (ray_start_s)
COLUMNS = ["tool", "trials", "max_epochs", "epochs_trained", "wall_s", "ratio_vs_caviar", "wall_with_data_s",
           "compute_s", "busy_fraction", "best_val_accuracy", "test_accuracy_best", "ensemble_test_accuracy",
           "startup_s", "train_phase_s", "train_busy_fraction", "after_s", "ray_start_s", "process_s",
           "idle_trial_starts_s", "idle_between_epochs_s", "idle_trial_ends_s", "idle_no_trial_s"]


def child(tool: str, trials: int, epochs: int) -> None:
    ray_start = init_ray() if tool not in NO_RAY else None
    with tempfile.TemporaryDirectory() as storage:
        if tool == "caviar":  # the defaults: no Ray in this process, so executor "auto" runs child processes
            result = run_caviar(trials, epochs, storage)
        elif tool == "caviar-ray":  # the trials on Ray actors (this process joined a Ray, so "auto" uses it)
            result = run_caviar(trials, epochs, storage, executor="ray")
        elif tool == "caviar-warm":  # a notebook's second sweep: the first one's actors are still warm
            run_caviar(2, 1, os.path.join(storage, "first"))
            result = run_caviar(trials, epochs, storage)
        elif tool == "caviar-unfused":  # on Ray, fuse off named (the default since fusing became opt-in)
            result = run_caviar(trials, epochs, storage, fuse="off", executor="ray")
        elif tool == "caviar-processes":  # trials in forked children of this process: no Ray at all
            result = run_caviar(trials, epochs, storage, executor="processes")
        elif tool == "tune":
            result = run_tune(trials, epochs, storage)
        else:
            result = run_optuna(trials, epochs)
    emit({**result, "ray_start_s": ray_start})


def main() -> None:
    parser = peer_parser(__doc__, TOOLS, DEFAULT_TOOLS, ("TOOL", "TRIALS", "EPOCHS"))
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    tools = chosen_tools(parser, args.tools, TOOLS)
    trials = args.trials or (4 if args.tiny else 32)
    epochs = args.epochs or (2 if args.tiny else 10)
    rows, base, extra = [], None, []
    for tool in tools:
        load_before = os.getloadavg()[0]
        result = run_child([os.path.abspath(__file__), "--child", tool, str(trials), str(epochs)])
        extra.append(f"{tool}: 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
                     + (f"; backend: {result['backend']}" if result.get("backend") else ""))
        row = {"tool": tool, "max_epochs": epochs, "wall_with_data_s": result["wall_s"], **result,
               "busy_fraction": result["compute_s"] / (result["wall_s"] * SLOTS)}
        base = row["wall_s"] if tool == "caviar" else base
        row["ratio_vs_caviar"] = row["wall_s"] / base if base else None
        rows.append(row)
        print(f"{tool}: {row['wall_s']:.2f} s", flush=True)
    kwargs = {"out_dir": args.out} if args.out else {}
    write_table("real_sweep-tiny" if args.tiny else "real_sweep", rows, COLUMNS, notes=[
        f"{SLOTS} slots for every tool; Ray tools share one ray.init(num_cpus={SLOTS}); Optuna: n_jobs={SLOTS} threads",
        "caviar: run_sweep defaults (coarse-to-fine stages + ASHA; executor auto, here child processes, no Ray);"
        " caviar-ray: the same on Ray actors; Ray Tune: ASHAScheduler(grace 1, rf 3);"
        " Optuna: RandomSampler + SuccessiveHalvingPruner(min_resource 1, rf 3)",
        "wall_s excludes Ray start and interpreter start (see ray_start_s, process_s) and the driver's import of the"
        " task module; Optuna's task and data are loaded before the clock",
        "wall_with_data_s: the same clock started before the data load for every tool: Optuna's adds its warm-up"
        " (load_data, one model and optimizer built: torch's first optimizer imports torch._dynamo), which"
        " caviar's and Tune's walls already hold",
        "startup_s: until the first epoch began (workers start, import torch, load data); train_phase_s: first epoch's"
        " start to last epoch's end; train_busy_fraction: compute_s / (train_phase_s x slots); after_s: from the last"
        " epoch's end to the tool's return (final writes, caviar's ensembles)",
        "idle_*_s (caviar only; slot-seconds of the training phase, from its trials and metrics tables): trial starts"
        " (started to first epoch), between a trial's epochs, trial ends (last epoch to finished: checkpoints scored,"
        " predictions written), and no trial on the slot (stage ends, the master's next assignment, the last tail)",
        *extra,
    ], **kwargs)


if __name__ == "__main__":
    main()
