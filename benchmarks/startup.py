"""Where a sweep's start goes: the master's phases, one actor's phases, and a second sweep in the same process.

One child interpreter runs, with timestamps:

- the master: importing caviar, importing the task (``load_task``), ``ray.init`` (on Ray), the contract check
  (``load_data``, one model build and one batch), then ``run_sweep`` until its first epoch began, its
  training phase and its end (final writes, ensembles);
- on Ray, one trial actor made as the pool makes it: from ``.remote()`` to ready, split into Ray's worker
  process start, importing torch and caviar, importing the task, its data, and torch's warm-up;
- the same ``run_sweep`` again in the same process (a notebook's second sweep).

    python benchmarks/startup.py                  # digits MLP, 32 trials x 10 epochs, 2 slots, the defaults
    python benchmarks/startup.py --tiny           # 4 trials x 2 epochs (CI)
    python benchmarks/startup.py --tools caviar-ray   # the trials on Ray actors: ray.init and actor rows too

``caviar`` is run_sweep's defaults (executor "auto": here child processes forked from the master, no Ray);
``caviar-processes`` names that executor explicitly.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    DIGITS_MLP,
    ROOT,
    SLOTS,
    chosen_tools,
    emit,
    peer_parser,
    phases,
    run_child,
    write_table,
)

COLUMNS = ["phase", "seconds", "share_of_wall"]
TOOLS = {"caviar": "auto", "caviar-processes": "processes", "caviar-ray": "ray"}  # tool -> executor


def first_epoch_and_phases(result: Any, began_wall: float, ended_wall: float) -> dict[str, float]:
    from orchestrator.app.api import load

    metrics = load(result.path).metrics
    ends = [t.timestamp() for t in metrics["time"].to_pylist()]
    return phases(began_wall, ended_wall, list(zip(ends, metrics["epoch_seconds"].to_pylist())), SLOTS)


def actor_phases() -> dict[str, float]:
    import ray

    from cluster.actor import TrialActor

    with tempfile.TemporaryDirectory() as storage:
        made = time.perf_counter()
        actor = TrialActor.options(num_cpus=1, max_concurrency=1).remote(DIGITS_MLP, storage, "probe",
                                                                        {"threads": 1})
        ray.get(actor.ready.remote())
        total = time.perf_counter() - made
        parts = ray.get(actor.start_seconds.remote())
        ray.kill(actor)
    return {"actor: Ray worker process start": total - sum(parts.values()),
            "actor: import torch and caviar": parts["torch_import"], "actor: import the task": parts["task_import"],
            "actor: load_data (no shared data)": parts["data"], "actor: torch warm-up (first optimizer)":
            parts["warm_up"], "actor: total, .remote() to ready": total}


def child(trials: int, epochs: int, executor: str = "auto") -> None:
    out: dict[str, float] = {}
    began = time.perf_counter()
    from orchestrator.app import lifecycle
    from orchestrator.app.api import run_sweep

    out["master: import caviar"] = time.perf_counter() - began
    mark = time.perf_counter()
    from orchestrator.spec.task import load_task

    task = load_task(DIGITS_MLP)
    out["master: import the task (load_task)"] = time.perf_counter() - mark
    if executor == "ray":
        import ray

        mark = time.perf_counter()
        ray.init(num_cpus=SLOTS, include_dashboard=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
        out["master: ray.init"] = time.perf_counter() - mark
    mark = time.perf_counter()
    from worker.check.contract import validate_contract

    settings, space = lifecycle.build_settings(task, None, {"trials": trials, "epochs": epochs})
    controller = lifecycle.controller_for(space, settings, lifecycle.choose_plugins(task.settings, {}))
    validate_contract(task, [t.config for t in controller.trials.values()], settings, space)
    out["master: contract check, once (load_data, one build, one batch)"] = time.perf_counter() - mark
    if executor == "ray":
        out.update(actor_phases())
    for label in ("first sweep", "second sweep, same process"):
        with tempfile.TemporaryDirectory() as storage:
            wall_began, mark = time.time(), time.perf_counter()
            result = run_sweep(task, trials=trials, epochs=epochs, storage=storage, name="s", slots=SLOTS,
                               executor=executor)
            wall = time.perf_counter() - mark
            split = first_epoch_and_phases(result, wall_began, wall_began + wall)
        out[f"{label}: run_sweep wall"] = wall
        out[f"{label}: call to first epoch's start"] = split["startup_s"]
        out[f"{label}: training phase"] = split["train_phase_s"]
        out[f"{label}: training busy fraction"] = split["train_busy_fraction"]
        out[f"{label}: after the last epoch (writes, ensembles)"] = split["after_s"]
    out["child process, all of the above"] = time.perf_counter() - began
    emit(out)


def main() -> None:
    parser = peer_parser(__doc__, tuple(TOOLS), ("caviar",), ("TRIALS", "EPOCHS", "EXECUTOR"))
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2])
        return
    [tool] = chosen_tools(parser, args.tools, tuple(TOOLS))
    executor = TOOLS[tool]
    trials, epochs = (4, 2) if args.tiny else (32, 10)
    result = run_child([os.path.abspath(__file__), "--child", str(trials), str(epochs), executor])
    result.pop("process_s", None)
    wall = result["first sweep: run_sweep wall"]
    rows = [{"phase": k, "seconds": v, "share_of_wall": v / wall if k.startswith("first sweep") and "busy" not in k
             else None} for k, v in result.items()]
    for row in rows:
        print(f"{row['phase']}: {row['seconds']:.2f}", flush=True)
    kwargs = {"out_dir": args.out} if args.out else {}
    name = ("startup-tiny" if args.tiny else "startup") + {"auto": ""}.get(executor, f"-{executor}")
    write_table(name, rows, COLUMNS, notes=[
        f"digits MLP, {trials} trials x {epochs} epochs, {SLOTS} slots, run_sweep defaults, executor={executor!r}; "
        "one child interpreter",
        *(["the actor row set is one TrialActor made alone (as the pool makes each), without the master's shared "
           "data", "a sweep's own actors get the master's checked data through Ray's object store and skip load_data"]
          if executor == "ray" else
          ["no Ray: each slot is a child forked from the master after its contract check (worker/pool/processes.py;"
           " executor 'auto' chooses it on one machine)"]),
    ], **kwargs)


if __name__ == "__main__":
    main()
