"""``caviar run``, ``caviar status`` and ``caviar top``: run a sweep and read its trials back."""

from __future__ import annotations

import os
import tempfile
from typing import Annotated, Any

import typer

from orchestrator.app.cli_common import (
    EXECUTOR_HELP,
    PRUNER_NAMES,
    SAMPLER_NAMES,
    ArraySizeOption,
    FuseOption,
    StagePolicyOption,
    StorageOption,
    SweepArg,
    TaskArg,
    app,
    array_size_setting,
    exit_on_interrupt,
    fail,
    find_sweep,
    print_failures,
    print_result,
    print_top,
    task_file_ref,
)


@app.command()
def run(
    task: TaskArg,
    trials: Annotated[int | None, typer.Option(help="Total trials over all stages.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epoch budget of the last (longest) stage.")] = None,
    plan: Annotated[str | None, typer.Option(help="Explicit stages, TRIALSxEPOCHS each: '64x1,24x5,8x20'.")] = None,
    stages: Annotated[int | None, typer.Option(help="Stages in the derived plan; 1 = plain random search.")] = None,
    slots: Annotated[
        int | None, typer.Option(help="Trials trained at once (default: the CPUs this process may use, or the "
                                      "cluster's, / cpus-per-trial).")
    ] = None,
    storage: Annotated[str | None, typer.Option(help="Where sweeps live: a path or pyarrow.fs URI.")] = None,
    name: Annotated[str | None, typer.Option(help="Sweep name (default: TASK-DATE-TIME).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Sweep seed: fixes the first stage and each trial's torch seed (README: Reruns).")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help=r"TOML file with \[run] settings and \[space] ranges.")
    ] = None,
    pruner: Annotated[str | None, typer.Option(help=f"{PRUNER_NAMES}.")] = None,
    sampler: Annotated[str | None, typer.Option(help=f"{SAMPLER_NAMES}.")] = None,
    stage_policy: StagePolicyOption = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs each trial holds.")] = None,
    gpus_per_trial: Annotated[
        float | None, typer.Option(help="GPUs each trial holds; 0.25 packs four on a GPU.")
    ] = None,
    resource: Annotated[
        list[str] | None, typer.Option(help="Custom Ray resource per trial, NAME=AMOUNT; repeatable.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (autocast; fp16 scales the loss).")] = None,
    shared_storage: Annotated[bool, typer.Option(help="A local --storage path is a mount every node shares.")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto or ray://HOST:10001 (default: run here, see --executor).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing sweep of the same name.")] = False,
    # None when neither flag is given, so a TOML file's or the task's `ensemble = false` holds
    ensemble: Annotated[
        bool | None, typer.Option(help="Build ensembles when the sweep ends (default: on, or the --config's).")
    ] = None,
    plain: Annotated[bool, typer.Option(help="Log lines instead of the live view.")] = False,
    report: Annotated[bool, typer.Option(help="Write SWEEP/report.html (plots) when the sweep ends.")] = True,
    dashboard: Annotated[bool, typer.Option(help="Start Ray's dashboard with a local Ray.")] = False,
    dashboard_host: Annotated[str | None, typer.Option(help="Where it listens (default: 127.0.0.1).")] = None,
    fuse: FuseOption = None,
    array_size: ArraySizeOption = None,
    seed_copies: Annotated[
        int | None,
        typer.Option(help="After the last stage, train the best config N more times from new seeds (a seed ensemble)."),
    ] = None,
    early_stopping: Annotated[
        int | None,
        typer.Option(help="End a trial once its objective has not improved for N epochs (default 0: off).")
    ] = None,
    wait_for_cluster_seconds: Annotated[
        float | None, typer.Option(help="With --address: how long to wait for a node to fit a trial (default 600).")
    ] = None,
    executor: Annotated[str | None, typer.Option(help=EXECUTOR_HELP)] = None,
) -> None:
    """Run a sweep: sample, train (child processes here, Ray actors on a cluster), prune, narrow, write Parquet."""
    from orchestrator.app.report_helper import ReportHelper

    helper = ReportHelper.start() if report else None  # first: before torch, Ray or any thread exists
    try:
        _run(task, config, plain, report, helper, resource, overrides=dict(
            trials=trials,
            epochs=epochs,
            plan=plan,
            stages=stages,
            slots=slots,
            storage=storage,
            name=name,
            seed=seed,
            pruner=pruner,
            sampler=sampler,
            stage_policy=stage_policy,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            device=device,
            address=address,
            overwrite=overwrite or None,
            ensemble=ensemble,
            precision=precision,
            shared_storage=shared_storage or None,
            fuse=fuse,
            dashboard=dashboard or None,
            dashboard_host=dashboard_host,
            seed_copies=seed_copies,
            early_stopping=early_stopping,
            wait_for_cluster_seconds=wait_for_cluster_seconds,
            array_size=array_size_setting(array_size),
            executor=executor,
        ))
    finally:
        if helper is not None:
            helper.close()


def _run(task: str, config: str | None, plain: bool, report: bool, helper: Any, resource: list[str] | None,
         overrides: dict[str, Any]) -> None:
    from orchestrator.app.api import parse_resources, run_sweep
    from orchestrator.app.progress import Progress

    if resource:
        overrides["resources"] = parse_resources(resource)
    from orchestrator.app.progress import quiet_ray, starting_line

    expected = expected_executor(config, overrides)
    ray_log = os.path.join(tempfile.gettempdir(), f"caviar-ray-{os.getpid()}.log")
    starting = starting_line(overrides["address"], overrides["slots"], ray_log, executor=expected)
    task_ref = task_file_ref(task)  # before the run: a job's working directory may not outlive it
    with exit_on_interrupt(task_ref), Progress(force_plain=plain, starting=starting) as progress:
        quiet_ray(ray_log)  # applied when Ray starts: on Ray, or when the task's own settings turn out to need it
        result = run_sweep(task, config_file=config, on_tick=progress, **overrides)
    print_result(result, report=report, task_ref=task_ref, helper=helper)


def expected_executor(config: str | None, overrides: dict[str, Any]) -> str:
    """Where the trials will run, as the command line and a ``--config`` file say, for the first line.

    The run itself reads the task's settings too and decides (``RunSettings.resolved_executor``); a task whose
    own settings ask for Ray still gets it, after a line that says so.
    """
    from orchestrator.spec.settings import RunSettings, read_toml

    # A bad value here is refused now, with the line the run would give, not after a first line about Ray:
    # the task's settings come first in the run, so nothing they hold can make a value given here valid.
    # Except plug-in names: the task file may register them (@register_sampler("mine")), and it loads later.
    plugin_names = {"pruner": None, "sampler": None, "stage_policy": None}
    settings = RunSettings().merged({**(read_toml(config)[0] if config else {}), **plugin_names})
    settings = settings.merged({**overrides, **plugin_names}).validate()
    return settings.resolved_executor(ray_running=False)


@app.command()
def status(sweep: SweepArg, storage: StorageOption = None) -> None:
    """Trials by status and stage, read from the sweep's Parquet tables only."""
    from orchestrator.app.answer import format_config, shown_number, shown_score, sweep_objective
    from orchestrator.app.api import load
    from orchestrator.app.tables import no_trials_yet, open_sweep, resume_command
    from orchestrator.decide.restore import last_detail
    from orchestrator.errors import StorageError
    from orchestrator.store import schema
    from orchestrator.store.lease import master_alive
    from orchestrator.store.sweeps import rerun_command

    path = find_sweep(sweep, storage)
    found = open_sweep(path)
    if not found.exists(schema.TRIALS_PATH) and not found.list_files("stages"):  # no first flush (yet): say why
        row = found.read_table(schema.SWEEP_PATH).to_pylist()[0]
        typer.echo(f"sweep {row['name']} (task {row['task']}, seed {row['seed']})")
        typer.echo(f"  {no_trials_yet(found, path)}")
        return
    tables = load(path)
    trials = tables.trials.to_pylist()
    by_stage: dict[int, dict[str, int]] = {}
    for t in trials:
        counts = by_stage.setdefault(t["stage"], {})
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    row = tables.sweep.to_pylist()[0]
    typer.echo(f"sweep {row['name']} (task {row['task']}, seed {row['seed']})")
    for stage, counts in sorted(by_stage.items()):
        text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        typer.echo(f"  stage {stage}: {text}")
    typer.echo(f"  {tables.metrics.num_rows} epochs recorded, {tables.checkpoints.num_rows} checkpoints kept")
    unfinished = [t for t in trials if t["status"] not in ("completed", "pruned", "failed")]
    aborted = last_detail(tables.events.to_pylist(), "sweep_aborted")
    if aborted is not None:  # its trials left pending wait for nothing: resume does not continue such a sweep
        typer.echo(f"  stopped early: {aborted.get('message') or 'aborted'}; resume does not continue it: once its "
                   f"cause is fixed, start it again with {rerun_command(path)}")
        unfinished = []
    try:
        writing = bool(unfinished) and master_alive(found)
    except StorageError as exc:  # a damaged lease: say so where the master's state goes, and show the rest
        typer.echo(f"  writer unknown: {exc}")
        writing = True
    if unfinished and not writing:  # "running" is what a killed master left
        typer.echo(f"  stopped: no caviar process is writing this sweep, so its {len(unfinished)} running or pending "
                   f"trials wait for {resume_command(found, path)}")
    elif not unfinished and aborted is None:
        from orchestrator.app.resume import ensembles_to_rebuild

        try:  # a live master is building them now; a damaged lease leaves that unknown: nothing said
            behind = None if master_alive(found) else ensembles_to_rebuild(found)
        except StorageError:
            behind = None
        if behind:  # its master stopped while it built them: the answer load_ensemble gives is missing or old
            typer.echo(f"  ensembles {behind} (its master stopped while building them); to build them: "
                       f"{resume_command(found, path)}")
    best = tables.top(1).to_pylist()
    if best:
        t = best[0]
        name, value = shown_score(t["best_score"], sweep_objective(found))
        typer.echo(f"  best: trial {t['trial_id']} (stage {t['stage']}) {name} {shown_number(value)}: "
                   f"{format_config(t['config'])}")
    print_failures(trials, row)


@app.command()
def top(
    sweep: SweepArg,
    k: Annotated[int, typer.Option("-k", help="How many trials.")] = 10,
    storage: StorageOption = None,
) -> None:
    """The best trials with their configs (later stages first: they trained longest)."""
    from orchestrator.app.tables import open_sweep, read_trials
    from orchestrator.store import schema

    if k < 1:
        fail("option '-k': expected a positive integer")
    path = find_sweep(sweep, storage)
    opened = open_sweep(path)
    opened.read_table(schema.SWEEP_PATH)  # a damaged sweep row is named, as every verb names it
    print_top(path, read_trials(opened, path), k)
