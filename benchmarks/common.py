"""Shared pieces of the benchmark scripts: the results table (Markdown + Parquet) with its header.

Every table records the machine, library versions, date and the exact command, so a number
in BENCHMARKS.md can be traced back to the run that produced it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PEERS = ("ray", "optuna", "torch", "pyarrow", "duckdb")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PEERS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def header() -> dict[str, str]:
    """Machine, versions, date and command of this run."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], meta: Mapping[str, str]) -> str:
    lines = [f"- {key}: {value}" for key, value in meta.items()]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out_dir: str = RESULTS,
                notes: Sequence[str] = ()) -> tuple[str, str]:
    """Write ``<out_dir>/<name>.md`` and ``.parquet`` (header in the Parquet schema metadata); returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    meta = header()
    md_path, pq_path = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.parquet")
    text = markdown(rows, columns, meta)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with open(md_path, "w") as f:
        f.write(text)
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    pq.write_table(table, pq_path)
    print(text)
    return md_path, pq_path


def run_child(argv: Sequence[str], timeout: float = 3600) -> dict[str, Any]:
    """Run one tool's measurement in a fresh interpreter (its own Ray); it prints one JSON line last."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    outer = time.perf_counter() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1])
    result["process_s"] = outer  # includes interpreter start and imports
    return result


def emit(result: Mapping[str, Any]) -> None:
    """The child's answer: one JSON line on stdout."""
    print(json.dumps(dict(result)), flush=True)


def peer_parser(doc: str, tools: Sequence[str], default_tools: Sequence[str], child_meta: tuple[str, ...]
                ) -> argparse.ArgumentParser:
    """The options every peer benchmark takes: --tiny, --tools, --out, and the hidden --child re-entry."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--tools", default=",".join(default_tools),
                        help=f"comma-separated subset of {', '.join(tools)}")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=len(child_meta), metavar=child_meta, help=argparse.SUPPRESS)
    return parser


def chosen_tools(parser: argparse.ArgumentParser, text: str, tools: Sequence[str]) -> list[str]:
    """``--tools`` as a list, refusing names it does not know."""
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = set(chosen) - set(tools)
    if unknown:
        parser.error(f"--tools: unknown {', '.join(sorted(unknown))} (known: {', '.join(tools)})")
    return chosen


# -- the peers: one search space in three spellings, one epoch loop for every tool ----------------------
# Every tool trains through worker.train.trainer.TrialRun, so an epoch is the same work everywhere. Task files are
# passed by path; the digits MLP is the default. Used by real_sweep.py and quality.py.

DIGITS_MLP = os.path.join(ROOT, "examples", "digits_mlp.py")
SLOTS = 2
_CACHE: dict[str, Any] = {}


def to_tune(space: Any) -> dict[str, Any]:
    """Ray Tune's param_space; a one-minus-log beta travels as its scale x = -log10(1 - beta) (see decode)."""
    from ray import tune

    from orchestrator.search.space import (
        Choice,
        Distribution,
        LogRandInt,
        LogUniform,
        OneMinusLogUniform,
        RandInt,
        Uniform,
    )

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


def suggest_optuna(trial: Any, space: Any) -> dict[str, Any]:
    """Optuna's define-by-run spelling of the same space; returns a caviar config."""
    from orchestrator.search.space import (
        Choice,
        Distribution,
        LogRandInt,
        LogUniform,
        OneMinusLogUniform,
        RandInt,
        Uniform,
    )

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


def decode(raw: Mapping[str, Any], space: Any) -> dict[str, Any]:
    """Map scale-uniform draws (one-minus-log betas) back to values, exactly as caviar's sampler does."""
    from orchestrator.search.space import OneMinusLogUniform

    out = dict(raw)
    for name, value in space.items():
        if isinstance(value, OneMinusLogUniform):
            out[name] = value._finish(value.from_scale(float(raw[name])))
    return out


def load_space(task_path: str = DIGITS_MLP) -> Any:
    from orchestrator.spec.task import load_task

    key = ("space", task_path)
    if key not in _CACHE:
        _CACHE[key] = load_task(task_path).space
    return _CACHE[key]


def trial_run(config: Mapping[str, Any], max_epochs: int, seed: int = 0, task_path: str = DIGITS_MLP) -> Any:
    """A caviar TrialRun of the task on ``config`` (task and data loaded once per process)."""
    import torch

    from orchestrator.spec.task import load_task
    from worker.data.splits import prepare
    from worker.train.trainer import TrialRun, TrialSpec, pick_device

    if ("splits", task_path) not in _CACHE:
        task = _CACHE["task", task_path] = load_task(task_path)
        _CACHE["splits", task_path] = prepare(task.get("load_data")(), normalize=task.normalize)
    torch.set_num_threads(1)
    return TrialRun(_CACHE["task", task_path], _CACHE["splits", task_path],
                    TrialSpec(seed, 0, dict(config), seed, max_epochs), pick_device("cpu"))


def test_accuracy(run: Any) -> float:
    from worker.train.trainer import evaluate

    s = run.splits
    return evaluate(run.model, s.x_test, s.y_test, run.loss_fn)[1]


def warm_up(task_path: str) -> None:
    """Load the task and its data before a clock starts, as caviar's actors do before their first trial."""
    from orchestrator.search.sampler import sample_configs

    trial_run(sample_configs(load_space(task_path), 1, seed=0)[0], 1, task_path=task_path)


def init_ray(slots: int = SLOTS) -> float:
    import logging

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=slots, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    return time.perf_counter() - started


def phases(started: float, finished: float, epochs: list[tuple[float, float]], slots: int = SLOTS) -> dict[str, Any]:
    """Where the wall time went, from (epoch end, epoch seconds) wall-clock pairs: before the first epoch began
    (worker start-up), from there to the last epoch's end (training), and after it (final writes, ensembles)."""
    if not epochs:
        return {}
    first = min(end - seconds for end, seconds in epochs)
    last = max(end for end, _ in epochs)
    compute = sum(seconds for _, seconds in epochs)
    return {"startup_s": first - started, "train_phase_s": last - first, "after_s": finished - last,
            "train_busy_fraction": compute / ((last - first) * slots) if last > first else None}


def idle_breakdown(trials: list[dict[str, Any]], metrics: list[dict[str, Any]], slots: int = SLOTS) -> dict[str, Any]:
    """Where the slots' idle time in the training phase went, in slot-seconds, from caviar's own tables.

    Each trial: from its ``started`` stamp to its first epoch's start (a worker building the model), between its
    epochs (reports to the master), from its last epoch's end to ``finished`` (checkpoints scored on val and test,
    predictions and index written). The rest of ``train_phase_s x slots - compute_s`` is a slot holding no trial:
    waiting at a stage's end for its last trials, for the master's next assignment, or after its last trial.
    """
    if not metrics:
        return {}
    by_trial: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for row in metrics:
        end = row["time"].timestamp()
        by_trial.setdefault((row["trial_id"], row["attempt"]), []).append((end - row["epoch_seconds"], end))
    starts = ends = between = 0.0
    for trial in trials:
        epochs = sorted(by_trial.get((trial["trial_id"], trial["attempt"]), []))
        if not epochs or trial["started"] is None or trial["finished"] is None:
            continue
        starts += max(0.0, epochs[0][0] - trial["started"].timestamp())
        ends += max(0.0, trial["finished"].timestamp() - epochs[-1][1])
        between += sum(max(0.0, b[0] - a[1]) for a, b in zip(epochs, epochs[1:]))
    first = min(start for spans in by_trial.values() for start, _ in spans)
    last = max(end for spans in by_trial.values() for _, end in spans)
    idle = (last - first) * slots - sum(row["epoch_seconds"] for row in metrics)
    return {"idle_trial_starts_s": starts, "idle_between_epochs_s": between, "idle_trial_ends_s": ends,
            "idle_no_trial_s": idle - starts - between - ends}


def run_caviar(trials: int, epochs: int, storage: str, task_path: str = DIGITS_MLP, slots: int = SLOTS,
               **settings: Any) -> dict[str, Any]:
    """One caviar sweep with ``settings`` on top of its defaults; the best model's and the chosen ensemble's test."""
    from orchestrator.app.api import load, run_sweep
    from orchestrator.spec.task import load_task

    task = load_task(task_path)  # the driver's import of the task module, before the clock as for Tune and Optuna
    started, wall_started = time.perf_counter(), time.time()
    result = run_sweep(task, trials=trials, epochs=epochs, storage=storage, name="sweep", overwrite=True, slots=slots,
                       **settings)
    wall = time.perf_counter() - started
    tables = load(result.path)
    metrics = tables.metrics
    ends = [t.timestamp() for t in metrics["time"].to_pylist()]  # stamped as each epoch is recorded
    epoch_times = list(zip(ends, metrics["epoch_seconds"].to_pylist()))
    out = {"wall_s": wall, **phases(wall_started, wall_started + wall, epoch_times, slots),
           "compute_s": float(sum(metrics["epoch_seconds"].to_pylist())),
           "epochs_trained": metrics.num_rows, "best_val_accuracy": result.best_score,
           "test_accuracy_best": caviar_best_test_accuracy(result, tables, task_path), "trials": len(tables.trials),
           "plan": ",".join(f"{r['trials']}x{r['epochs']}" for r in tables.stages.to_pylist()),
           **idle_breakdown(tables.trials.to_pylist(), metrics.to_pylist(), slots)}
    out["ensemble_test_accuracy"] = caviar_ensemble_test_accuracy(result)
    fused = [e for e in tables.events.to_pylist() if e["kind"] == "fusing_on"]
    executor = [json.loads(e["detail"])["executor"] for e in tables.events.to_pylist() if e["kind"] == "executor"][-1]
    one_each = "one trial per forked process" if executor == "processes" else "one trial per actor"
    out["backend"] = f"fused arrays ({fused[0]['reason']})" if fused else one_each
    return out


def caviar_best_test_accuracy(result: Any, tables: Any, task_path: str = DIGITS_MLP) -> float | None:
    """The best trial's kept best checkpoint (safetensors), rebuilt and measured on the test split."""
    from safetensors.torch import load_file

    ckpt = [r for r in tables.checkpoints.to_pylist() if r["trial_id"] == result.best_trial_id and r["weights"] == "raw"
            and "best" in (r["kept_as"] or "")]
    if not ckpt or result.best_config is None:
        return None
    run = trial_run(result.best_config, 1, task_path=task_path)
    run.model.load_state_dict(load_file(os.path.join(result.path, ckpt[-1]["path"])))
    return test_accuracy(run)


def caviar_ensemble_test_accuracy(result: Any) -> float | None:
    """The test accuracy of the ensemble the sweep chose on validation (the ``chosen`` row), else n/a."""
    from orchestrator.store import schema
    from orchestrator.store.storage import Storage

    value = getattr(result, "ensemble", None)
    if value is not None and getattr(value, "test_accuracy", None) is not None:
        return float(value.test_accuracy)
    table = schema.read_dir(Storage.from_uri(result.path), "ensembles")
    if table is None or table.num_rows == 0 or "test_accuracy" not in table.column_names:
        return None
    rows = [r for r in table.to_pylist() if r.get("test_accuracy") is not None]
    chosen = [r for r in rows if r.get("chosen")]
    if chosen:
        return float(chosen[-1]["test_accuracy"])
    return float(max(rows, key=lambda r: r["val_accuracy"] or 0.0)["test_accuracy"]) if rows else None


def tune_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    task_path = config["__task"]
    run = trial_run(decode(config, load_space(task_path)), int(config["__max_epochs"]), int(config["__trial_seed"]),
                    task_path)
    for _ in range(int(config["__max_epochs"])):
        row = run.train_epoch()
        tune.report({"val_accuracy": row["val_accuracy"], "epoch_seconds": row["epoch_seconds"],
                     "epoch_end": time.time(), "test_accuracy": test_accuracy(run)})


def run_tune(trials: int, epochs: int, storage: str, task_path: str = DIGITS_MLP, seed: int = 0) -> dict[str, Any]:
    """Ray Tune: random search (seeded) + ASHAScheduler(grace 1, reduction factor 3)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    space = load_space(task_path)
    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, {"cpu": 1}),
        param_space={**to_tune(space), "__max_epochs": epochs, "__task": task_path,
                     "__trial_seed": tune.randint(0, 2**31 - 1)},
        tune_config=tune.TuneConfig(num_samples=trials, metric="val_accuracy", mode="max",
                                    search_alg=BasicVariantGenerator(random_state=seed),
                                    scheduler=ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=3)),
        run_config=tune.RunConfig(storage_path=storage, name="sweep", verbose=0),
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


def run_optuna(trials: int, epochs: int, task_path: str = DIGITS_MLP, seed: int = 0, sampler: str = "random",
               budget_epochs: int | None = None, slots: int = SLOTS) -> dict[str, Any]:
    """Optuna (``random`` or ``tpe`` sampler) + SuccessiveHalvingPruner(min_resource 1, reduction factor 3).

    With ``budget_epochs``, trials go on (``trials`` ignored) until exactly that many epochs are trained: the
    same total epochs as another tool. Each epoch is claimed before it is trained, so a trial running when the
    budget is spent stops there (pruned; what it trained counts). A trial's test accuracy is taken at its best
    validation epoch.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(task_path)
    lock = threading.Lock()
    totals = {"compute_s": 0.0, "epochs_trained": 0}
    claimed = [0]  # epochs started; with a budget, never more than it (two threads check it at once)
    epoch_times: list[tuple[float, float]] = []

    def objective(trial: Any) -> float:
        config = suggest_optuna(trial, space)
        run = trial_run(config, epochs, seed=seed * 100_003 + trial.number, task_path=task_path)
        best = -math.inf
        for epoch in range(1, epochs + 1):
            with lock:
                if budget_epochs is not None and claimed[0] >= budget_epochs:
                    raise optuna.TrialPruned()
                claimed[0] += 1
            row = run.train_epoch()
            with lock:
                totals["compute_s"] += row["epoch_seconds"]
                totals["epochs_trained"] += 1
                epoch_times.append((time.time(), row["epoch_seconds"]))
            if row["val_accuracy"] > best:
                best = row["val_accuracy"]
                trial.set_user_attr("test_accuracy", test_accuracy(run))
            trial.report(row["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    def stop_at_budget(study: Any, _trial: Any) -> None:
        if budget_epochs is not None and totals["epochs_trained"] >= budget_epochs:
            study.stop()

    made = (optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(direction="maximize", sampler=made,
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    loading = time.perf_counter()
    warm_up(task_path)
    started, wall_started = time.perf_counter(), time.time()
    study.optimize(objective, n_trials=budget_epochs or trials, n_jobs=slots, callbacks=[stop_at_budget])
    wall = time.perf_counter() - started
    loaded = started - loading  # what caviar's wall holds and Optuna's leaves out: load_data, first optimizer
    done = [t for t in study.trials if t.user_attrs.get("test_accuracy") is not None]
    # A pruned trial's intermediate values count too: best validation accuracy over everything trained.
    best = max(done, key=lambda t: max(t.intermediate_values.values()))
    return {"wall_s": wall, "wall_with_data_s": wall + loaded, **totals,
            **phases(wall_started, wall_started + wall, epoch_times, slots),
            "best_val_accuracy": max(best.intermediate_values.values()),
            "test_accuracy_best": best.user_attrs["test_accuracy"], "trials": len(study.trials)}
