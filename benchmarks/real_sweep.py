"""A real sweep on the digits example: caviar (stages + ASHA) versus Ray Tune (ASHAScheduler) versus Optuna.

Same task (examples/digits_mlp.py), same search space (converted from caviar's SearchSpace),
same trial count and maximum epochs, pruning on, 2 parallel slots. Every side trains through
worker.trainer.TrialRun, so an epoch is the same work everywhere; ``busy_fraction`` is the sum of
epoch compute divided by (wall time x slots). Test accuracy is that of the best trial's weights at
its best validation epoch (caviar: its kept best checkpoint).

    python benchmarks/real_sweep.py                 # 32 trials x up to 10 epochs
    python benchmarks/real_sweep.py --tiny          # 4 trials x 2 epochs (CI)
    python benchmarks/real_sweep.py --tools caviar,optuna --trials 8 --epochs 3
    python benchmarks/real_sweep.py --tools caviar,caviar-unfused   # caviar with fuse=off beside its default
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, chosen_tools, emit, peer_parser, run_child, write_table  # noqa: E402
from orchestrator.space import (  # noqa: E402
    Choice,
    Distribution,
    LogRandInt,
    LogUniform,
    OneMinusLogUniform,
    RandInt,
    SearchSpace,
    Uniform,
)

TASK = os.path.join(ROOT, "examples", "digits_mlp.py")
TOOLS = ("caviar", "caviar-unfused", "tune", "optuna")
DEFAULT_TOOLS = ("caviar", "tune", "optuna")
SLOTS = 2
COLUMNS = ["tool", "trials", "max_epochs", "epochs_trained", "wall_s", "ratio_vs_caviar", "compute_s", "busy_fraction",
           "best_val_accuracy", "test_accuracy_best", "ensemble_test_accuracy", "startup_s", "train_phase_s",
           "train_busy_fraction", "after_s", "ray_start_s", "process_s"]


# -- one search space, three spellings ------------------------------------------------------

def to_tune(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune's param_space; a one-minus-log beta travels as its scale x = -log10(1 - beta) (see decode)."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, value in space.items():
        if not isinstance(value, Distribution):
            out[name] = value
        elif isinstance(value, Choice):
            out[name] = tune.choice(list(value.options))
        elif isinstance(value, LogRandInt):
            out[name] = tune.lograndint(int(value.low), int(value.high) + 1)  # Tune's upper bound is exclusive
        elif isinstance(value, RandInt):
            out[name] = tune.randint(int(value.low), int(value.high) + 1)
        elif isinstance(value, LogUniform):
            out[name] = tune.loguniform(value.low, value.high)
        elif isinstance(value, (OneMinusLogUniform, Uniform)):
            out[name] = tune.uniform(value.scale_low, value.scale_high)
        else:
            raise TypeError(f"parameter '{name}': no Ray Tune spelling for {type(value).__name__}")
    return out


def suggest_optuna(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Optuna's define-by-run spelling of the same space; returns a caviar config."""
    raw: dict[str, Any] = {}
    for name, value in space.items():
        if not isinstance(value, Distribution):
            raw[name] = value
        elif isinstance(value, Choice):
            raw[name] = trial.suggest_categorical(name, list(value.options))
        elif isinstance(value, RandInt):
            raw[name] = trial.suggest_int(name, int(value.low), int(value.high), log=isinstance(value, LogRandInt))
        elif isinstance(value, LogUniform):
            raw[name] = trial.suggest_float(name, value.low, value.high, log=True)
        elif isinstance(value, (OneMinusLogUniform, Uniform)):
            raw[name] = trial.suggest_float(name, value.scale_low, value.scale_high)
        else:
            raise TypeError(f"parameter '{name}': no Optuna spelling for {type(value).__name__}")
    return decode(raw, space)


def decode(raw: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """Map scale-uniform draws (one-minus-log betas) back to values, exactly as caviar's sampler does."""
    out = dict(raw)
    for name, value in space.items():
        if isinstance(value, OneMinusLogUniform):
            out[name] = value._finish(value.from_scale(float(raw[name])))
    return out


# -- the shared epoch loop of the peers -----------------------------------------------------

_CACHE: dict[str, Any] = {}


def trial_run(config: Mapping[str, Any], max_epochs: int, seed: int = 0) -> Any:
    """A caviar TrialRun of the digits task on ``config`` (task and data loaded once per process)."""
    import torch

    from orchestrator.task import load_task
    from worker.data import prepare
    from worker.trainer import TrialRun, TrialSpec, pick_device

    if "splits" not in _CACHE:
        _CACHE["task"] = task = load_task(TASK)
        _CACHE["splits"] = prepare(task.get("load_data")(), normalize=task.normalize)
    torch.set_num_threads(1)
    return TrialRun(_CACHE["task"], _CACHE["splits"], TrialSpec(seed, 0, dict(config), seed, max_epochs),
                    pick_device("cpu"))


def test_accuracy(run: Any) -> float:
    from worker.trainer import evaluate

    s = run.splits
    return evaluate(run.model, s.x_test, s.y_test, run.loss_fn)[1]


def tune_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    space = _CACHE.get("space") or load_space()
    run = trial_run(decode(config, space), int(config["__max_epochs"]))
    for _ in range(int(config["__max_epochs"])):
        row = run.train_epoch()
        tune.report({"val_accuracy": row["val_accuracy"], "epoch_seconds": row["epoch_seconds"],
                     "epoch_end": time.time(), "test_accuracy": test_accuracy(run)})


def load_space() -> SearchSpace:
    from orchestrator.task import load_task

    _CACHE["space"] = load_task(TASK).space
    return _CACHE["space"]


# -- the three sides --------------------------------------------------------------------------

def init_ray() -> float:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=SLOTS, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    return time.perf_counter() - started


def phases(started: float, finished: float, epochs: list[tuple[float, float]]) -> dict[str, Any]:
    """Where the wall time went, from (epoch end, epoch seconds) wall-clock pairs: before the first epoch began
    (worker start-up), from there to the last epoch's end (training), and after it (final writes, ensembles)."""
    if not epochs:
        return {}
    first = min(end - seconds for end, seconds in epochs)
    last = max(end for end, _ in epochs)
    compute = sum(seconds for _, seconds in epochs)
    return {"startup_s": first - started, "train_phase_s": last - first, "after_s": finished - last,
            "train_busy_fraction": compute / ((last - first) * SLOTS) if last > first else None}


def run_caviar(trials: int, epochs: int, storage: str, **settings: Any) -> dict[str, Any]:
    from orchestrator.api import load, run_sweep
    from orchestrator.task import load_task

    task = load_task(TASK)  # the driver's import of the task module, before the clock as for Tune and Optuna
    started, wall_started = time.perf_counter(), time.time()
    result = run_sweep(task, trials=trials, epochs=epochs, storage=storage, name="digits", overwrite=True, slots=SLOTS,
                       **settings)
    wall = time.perf_counter() - started
    tables = load(result.path)
    metrics = tables.metrics
    ends = [t.timestamp() for t in metrics["time"].to_pylist()]  # stamped as each epoch is recorded
    epoch_times = list(zip(ends, metrics["epoch_seconds"].to_pylist()))
    out = {"wall_s": wall, **phases(wall_started, wall_started + wall, epoch_times),
           "compute_s": float(sum(metrics["epoch_seconds"].to_pylist())),
           "epochs_trained": metrics.num_rows, "best_val_accuracy": max(metrics["val_accuracy"].to_pylist()),
           "test_accuracy_best": caviar_best_test_accuracy(result, tables), "trials": len(tables.trials)}
    out["ensemble_test_accuracy"] = caviar_ensemble_test_accuracy(result)
    fused = [e for e in tables.events.to_pylist() if e["kind"] == "fusing_on"]
    out["backend"] = f"fused arrays ({fused[0]['reason']})" if fused else "one trial per actor"
    return out


def caviar_best_test_accuracy(result: Any, tables: Any) -> float | None:
    """The best trial's kept best checkpoint (safetensors), rebuilt and measured on the test split."""
    from safetensors.torch import load_file

    ckpt = [r for r in tables.checkpoints.to_pylist() if r["trial_id"] == result.best_trial_id and r["weights"] == "raw"
            and "best" in (r["kept_as"] or "")]
    if not ckpt or result.best_config is None:
        return None
    run = trial_run(result.best_config, 1)
    run.model.load_state_dict(load_file(os.path.join(result.path, ckpt[-1]["path"])))
    return test_accuracy(run)


def caviar_ensemble_test_accuracy(result: Any) -> float | None:
    """The best ensemble's test accuracy, where the sweep wrote an ``ensembles`` table (else n/a)."""
    from orchestrator import schema
    from orchestrator.storage import Storage

    for attr in ("ensemble", "ensembles", "best_ensemble"):
        value = getattr(result, attr, None)
        if value is not None:
            acc = getattr(value, "test_accuracy", None) if not isinstance(value, (list, dict)) else None
            if acc is not None:
                return float(acc)
    table = schema.read_dir(Storage.from_uri(result.path), "ensembles")
    if table is None or table.num_rows == 0 or "test_accuracy" not in table.column_names:
        return None
    rows = [r for r in table.to_pylist() if r.get("test_accuracy") is not None]
    key = "val_accuracy" if rows and "val_accuracy" in rows[0] else "test_accuracy"
    return float(max(rows, key=lambda r: r[key] or 0.0)["test_accuracy"]) if rows else None


def run_tune(trials: int, epochs: int, storage: str) -> dict[str, Any]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    space = load_space()
    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, {"cpu": 1}),
        param_space={**to_tune(space), "__max_epochs": epochs},
        tune_config=tune.TuneConfig(num_samples=trials, metric="val_accuracy", mode="max",
                                    scheduler=ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=3)),
        run_config=tune.RunConfig(storage_path=storage, name="digits", verbose=0),
    )
    started, wall_started = time.perf_counter(), time.time()
    grid = tuner.fit()
    wall = time.perf_counter() - started
    frames = [r.metrics_dataframe for r in grid if r.metrics_dataframe is not None and len(r.metrics_dataframe)]
    best_frame = max(frames, key=lambda f: f["val_accuracy"].max())
    at_best = best_frame.loc[best_frame["val_accuracy"].idxmax()]
    epoch_times = [(float(e), float(s)) for f in frames for e, s in zip(f["epoch_end"], f["epoch_seconds"])]
    return {"wall_s": wall, **phases(wall_started, wall_started + wall, epoch_times),
            "compute_s": float(sum(f["epoch_seconds"].sum() for f in frames)),
            "epochs_trained": int(sum(len(f) for f in frames)), "best_val_accuracy": float(at_best["val_accuracy"]),
            "test_accuracy_best": float(at_best["test_accuracy"]), "trials": len(frames)}


def run_optuna(trials: int, epochs: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space()
    lock = threading.Lock()
    totals = {"compute_s": 0.0, "epochs_trained": 0}
    epoch_times: list[tuple[float, float]] = []

    def objective(trial: Any) -> float:
        run = trial_run(suggest_optuna(trial, space), epochs, seed=trial.number)
        best, best_test = -math.inf, None
        for epoch in range(1, epochs + 1):
            row = run.train_epoch()
            with lock:
                totals["compute_s"] += row["epoch_seconds"]
                totals["epochs_trained"] += 1
                epoch_times.append((time.time(), row["epoch_seconds"]))
            if row["val_accuracy"] > best:
                best, best_test = row["val_accuracy"], test_accuracy(run)
                trial.set_user_attr("test_accuracy", best_test)
            trial.report(row["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    trial_run({k: v for k, v in space.fixed.items()} | {"lr": 0.01, "optimizer": "sgd", "layers": 1, "hidden": 16,
              "activation": "relu", "batch_norm": False, "dropout": 0.0, "init": "he", "batch_size": 64,
              "schedule": "constant"}, 1)  # load task and data before the clock, as the actors do
    started, wall_started = time.perf_counter(), time.time()
    study.optimize(objective, n_trials=trials, n_jobs=SLOTS)
    wall = time.perf_counter() - started
    done = [t for t in study.trials if t.user_attrs.get("test_accuracy") is not None]
    # A pruned trial's intermediate values count too: best validation accuracy over everything trained.
    best = max(done, key=lambda t: max(t.intermediate_values.values()))
    return {"wall_s": wall, **totals, **phases(wall_started, wall_started + wall, epoch_times),
            "best_val_accuracy": max(best.intermediate_values.values()),
            "test_accuracy_best": best.user_attrs["test_accuracy"], "trials": len(study.trials)}


def child(tool: str, trials: int, epochs: int) -> None:
    ray_start = init_ray() if tool != "optuna" else None
    with tempfile.TemporaryDirectory() as storage:
        if tool == "caviar":
            result = run_caviar(trials, epochs, storage)
        elif tool == "caviar-unfused":
            result = run_caviar(trials, epochs, storage, fuse="off")
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
        row = {"tool": tool, "max_epochs": epochs, **result,
               "busy_fraction": result["compute_s"] / (result["wall_s"] * SLOTS)}
        base = row["wall_s"] if tool == "caviar" else base
        row["ratio_vs_caviar"] = row["wall_s"] / base if base else None
        rows.append(row)
        print(f"{tool}: {row['wall_s']:.2f} s", flush=True)
    kwargs = {"out_dir": args.out} if args.out else {}
    write_table("real_sweep-tiny" if args.tiny else "real_sweep", rows, COLUMNS, notes=[
        f"{SLOTS} slots for every tool; Ray tools share one ray.init(num_cpus={SLOTS}); Optuna: n_jobs={SLOTS} threads",
        "caviar: run_sweep defaults (coarse-to-fine stages + ASHA); Ray Tune: ASHAScheduler(grace 1, rf 3);"
        " Optuna: RandomSampler + SuccessiveHalvingPruner(min_resource 1, rf 3)",
        "wall_s excludes Ray start and interpreter start (see ray_start_s, process_s) and the driver's import of the"
        " task module; Optuna's task and data are loaded before the clock",
        "startup_s: until the first epoch began (workers start, import torch, load data); train_phase_s: first epoch's"
        " start to last epoch's end; train_busy_fraction: compute_s / (train_phase_s x slots); after_s: from the last"
        " epoch's end to the tool's return (final writes, caviar's ensembles)",
        *extra,
    ], **kwargs)


if __name__ == "__main__":
    main()
