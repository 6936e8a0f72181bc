"""``caviar submit / jobs / logs / stop``: run a sweep on a Ray cluster as a Ray job, from a laptop.

The commands talk only to the cluster's Job API (its dashboard, ``http://HEAD:8265``); Ray is
imported inside them, never when the CLI starts.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from orchestrator.app.cli_common import (
    PRUNER_NAMES,
    SAMPLER_NAMES,
    ArraySizeOption,
    FuseOption,
    StagePolicyOption,
    app,
    array_size_setting,
    fail,
)
from orchestrator.spec.settings import RunSettings

AddressOpt = Annotated[str | None, typer.Option(
    help="The cluster's dashboard (Job API): http://HEAD:8265. Default: $RAY_API_SERVER_ADDRESS.")]
JobArg = Annotated[str, typer.Argument(help="Job (submission) id, as `caviar submit` or `caviar jobs` print it.")]


def run_args(options: dict[str, Any], resources: list[str] | None, config: str | None = None) -> list[str]:
    """``caviar run`` flags for the options that were given; checked here, with the ``config`` file's [run] under
    them, so mistakes fail before submitting."""
    from orchestrator.app.api import parse_resources
    from orchestrator.app.lifecycle import check_plan_agrees
    from orchestrator.spec.settings import read_toml

    given = {**options, "resources": parse_resources(resources)} if resources else options
    # the task file may register the TOML's plug-in names (@register_sampler("mine")): the job's run checks those
    from_file = {**(read_toml(config)[0] if config else {}), "pruner": None, "sampler": None, "stage_policy": None}
    job = {"address": "auto", "executor": "ray"}  # what the job's command line sets, whatever the file says
    settings = RunSettings().merged(from_file).merged({**given, **job}).validate()
    check_plan_agrees(settings, [from_file, options])
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        args += [flag] if value is True else [flag, str(value)]
    for item in resources or []:
        args += ["--resource", item]
    return args


@app.command()
def submit(
    task: Annotated[str | None, typer.Argument(
        help="Task file (examples/digits_mlp.py) or module:attr; with --resume, your task to resume with.")] = None,
    address: AddressOpt = None,
    storage: Annotated[str | None, typer.Option(
        help="Where the sweep lands, reachable from every node: s3://..., gs://... or a shared path.")] = None,
    name: Annotated[str | None, typer.Option(help="Sweep name (default: TASK-DATE-TIME, chosen now).")] = None,
    trials: Annotated[int | None, typer.Option(help="Total trials over all stages.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epoch budget of the last (longest) stage.")] = None,
    plan: Annotated[str | None, typer.Option(help="Explicit stages, TRIALSxEPOCHS each: '64x1,24x5,8x20'.")] = None,
    stages: Annotated[int | None, typer.Option(help="Stages in the derived plan; 1 = plain random search.")] = None,
    slots: Annotated[int | None, typer.Option(help="Trials trained at once (default: what the cluster fits).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sweep seed.")] = None,
    config: Annotated[str | None, typer.Option(help=r"TOML \[run]/\[space] file inside the task's folder.")] = None,
    pruner: Annotated[str | None, typer.Option(help=f"{PRUNER_NAMES}.")] = None,
    sampler: Annotated[str | None, typer.Option(help=f"{SAMPLER_NAMES}.")] = None,
    stage_policy: StagePolicyOption = None,
    fuse: FuseOption = None,
    array_size: ArraySizeOption = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs each trial holds.")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial; 0.25 packs four on a GPU.")] = None,
    resource: Annotated[list[str] | None, typer.Option(help="Custom Ray resource per trial, NAME=AMOUNT.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16.")] = None,
    seed_copies: Annotated[int | None, typer.Option(help="Train the best config N more times from new seeds.")] = None,
    early_stopping: Annotated[int | None, typer.Option(
        help="End a trial once its objective has not improved for N epochs (default 0: off).")] = None,
    shared_storage: Annotated[bool, typer.Option(help="A local --storage path is a mount every node shares.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing sweep of the same name.")] = False,
    ensemble: Annotated[bool | None, typer.Option(
        help="Build ensembles when the sweep ends (default: yes; resumed: as started).")] = None,
    working_dir: Annotated[str | None, typer.Option(help="Folder shipped with the job (default: the task's).")] = None,
    ship_caviar: Annotated[bool, typer.Option(help="Ship this caviar's source (else the cluster's runs).")] = True,
    follow: Annotated[bool, typer.Option(help="Stream the job's logs until it ends.")] = False,
    wait_for_cluster_seconds: Annotated[float | None, typer.Option(
        help="How long the sweep waits for a node (autoscaler) to fit a trial (default 600).")] = None,
    python: Annotated[str | None, typer.Option(
        help="Interpreter on the head that runs the master (default: the Python that runs Ray there).")] = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue this stopped sweep (STORAGE/NAME) on the cluster instead of starting one.")] = None,
    trust_task_code: Annotated[bool, typer.Option(
        help="With --resume and no TASK: run the task copy stored in the sweep (checked against its sha256).")] = False,
) -> None:
    """Submit a sweep to a Ray cluster as a Ray job (or, with --resume, continue a stopped one there);
    prints the job id and where the results land."""
    from cluster.jobs import Jobs, is_local_path, plan_job
    from orchestrator.store.storage import redact_uri

    if resume:
        given = dict(storage=storage, name=name, trials=trials, epochs=epochs, plan=plan, stages=stages, seed=seed,
                     config=config, pruner=pruner, sampler=sampler, stage_policy=stage_policy, fuse=fuse,
                     array_size=array_size, cpus_per_trial=cpus_per_trial,
                     gpus_per_trial=gpus_per_trial, resource=resource, device=device, precision=precision,
                     seed_copies=seed_copies, early_stopping=early_stopping, overwrite=overwrite or None,
                     shared_storage=shared_storage or None, wait_for_cluster_seconds=wait_for_cluster_seconds)
        fixed = [key for key, value in given.items() if value is not None]
        if fixed:
            fail(f"option '--{fixed[0].replace('_', '-')}': a resumed sweep keeps the settings it started with; "
                 "with --resume only --slots and --ensemble/--no-ensemble apply")
        job_plan, staged = resume_plan(resume, task, trust_task_code, slots=slots, ensemble=ensemble,
                                       working_dir=working_dir, ship_caviar=ship_caviar, python=python)
        jobs = Jobs(address)
        if redact_uri(resume) != resume:
            _warn_credentials("sweep")
        with staged:  # the stored copy's folder lives until Ray has uploaded it
            _submit(jobs, job_plan, follow, resumed=True)
        return
    if not task:
        fail("missing argument 'TASK': the task file to sweep (or --resume SWEEP to continue a stopped sweep)")
    assert task is not None
    if trust_task_code:
        fail("option '--trust-task-code': applies to --resume only (a new sweep runs the TASK you give)")
    if not storage:
        fail("option '--storage': a submitted sweep needs storage every node reaches (s3://..., or a shared path)")
    assert storage is not None
    options = dict(trials=trials, epochs=epochs, plan=plan, stages=stages, slots=slots, seed=seed, pruner=pruner,
                   sampler=sampler, stage_policy=stage_policy, fuse=fuse, array_size=array_size_setting(array_size),
                   cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, device=device,
                   precision=precision, shared_storage=shared_storage, overwrite=overwrite, seed_copies=seed_copies,
                   early_stopping=early_stopping, wait_for_cluster_seconds=wait_for_cluster_seconds)
    args = run_args(options, resource, config) + (["--no-ensemble"] if ensemble is False else [])
    job_plan = plan_job(task, storage=storage, name=name, run_args=args, config=config, working_dir=working_dir,
                        ship_caviar=ship_caviar, python=python)
    refuse_a_taken_name_here(storage, job_plan.name, overwrite)
    jobs = Jobs(address)
    if is_local_path(storage) and not shared_storage:
        nodes = jobs.alive_nodes()
        if nodes and nodes > 1:
            fail(f"option '--storage': {storage!r} is a local path but the cluster at {jobs.address} has {nodes} "
                 "nodes; use a URI every node reaches (s3://, gs://) or pass --shared-storage if it is a shared mount")
    if redact_uri(storage) != storage:
        _warn_credentials("storage")
    _submit(jobs, job_plan, follow)


def refuse_a_taken_name_here(storage: str, name: str, overwrite: bool) -> None:
    """The job's master refuses a taken ``--name``, but only after the task's folder was uploaded and a job
    started: when this machine reads the storage, the same refusal comes now."""
    from orchestrator.app.api import is_taken, refuse_a_taken_name
    from orchestrator.store.storage import Storage

    if overwrite:
        return
    try:
        sweep = Storage.from_uri(storage).child(name)
        taken = is_taken(sweep)
    except Exception:  # storage this machine does not reach (the cluster's own mount or bucket): the job checks
        return
    if taken:
        refuse_a_taken_name(sweep, overwrite)


def _warn_credentials(what: str) -> None:
    typer.secho(f"warning: the {what} URI carries credentials; the cluster's dashboard shows them in the job's "
                "entrypoint. Prefer the nodes' own credentials (IAM role, env, ~/.aws).", fg="yellow", err=True)


def _submit(jobs: Any, job_plan: Any, follow: bool, resumed: bool = False) -> None:
    job_id = jobs.submit(job_plan)
    typer.echo(f"submitted job {job_id} to {jobs.address}")
    verb = "resumes; results (Parquet) stay in" if resumed else "results (Parquet) will land in"
    typer.echo(f"sweep {job_plan.name}: {verb} {job_plan.results}")
    if not follow:
        typer.echo(f"follow it: caviar logs {job_id} --address {jobs.address} --follow")
        return
    _follow(jobs, job_id)


def resume_plan(sweep: str, task: str | None, trust_task_code: bool, *, slots: int | None, ensemble: bool | None,
                working_dir: str | None, ship_caviar: bool, python: str | None) -> tuple[Any, Any]:
    """The resume job's plan, and a context holding the folder of the sweep's stored task copy until submitted.

    Checked here, before submitting: the sweep exists and, for its stored task, that the caller
    trusts it and its sha256 matches (the job runs those very bytes).
    """
    import contextlib
    import tempfile

    from cluster.jobs import check_resume_target, plan_resume_job
    from orchestrator.spec.task_source import copy_stored_task, refuse_an_edited_task
    from orchestrator.store import schema
    from orchestrator.store.storage import Storage, redact_uri

    check_resume_target(sweep)
    storage = Storage.from_uri(sweep)
    if not storage.exists(schema.SWEEP_PATH):
        fail(f"option '--resume': {redact_uri(sweep)!r} is not a sweep (no {schema.SWEEP_PATH} there)")
    args = run_args({"slots": slots}, None)
    args += [] if ensemble is None else ["--ensemble" if ensemble else "--no-ensemble"]
    if task:
        if trust_task_code:
            fail("option '--trust-task-code': you gave TASK, which the job runs; pass one or the other")
        refuse_an_edited_task(storage, task)  # here, before a job is submitted, not in the job's master
        plan = plan_resume_job(sweep, task, run_args=args, working_dir=working_dir, ship_caviar=ship_caviar,
                               python=python)
        return plan, contextlib.nullcontext()
    staged = tempfile.TemporaryDirectory(prefix="caviar-task-")
    try:
        ref = copy_stored_task(storage, staged.name, trust_task_code=trust_task_code)
        stored_file = ref.startswith(staged.name)  # else a module task, imported from the folder that travels
        plan = plan_resume_job(sweep, ref, run_args=args, ship_caviar=ship_caviar, python=python,
                               working_dir=None if stored_file else working_dir, stored_copy=stored_file)
    except BaseException:
        staged.cleanup()
        raise
    return plan, staged


@app.command()
def jobs(address: AddressOpt = None) -> None:
    """The cluster's jobs, newest first, with the sweep each caviar job writes."""
    from rich.console import Console
    from rich.table import Table

    from cluster.jobs import Jobs

    client = Jobs(address)
    table = Table(title=f"jobs on {client.address}")
    for column in ("job", "status", "started", "sweep results"):
        table.add_column(column)
    for job in client.list():
        started = datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if job.start_time else "-"
        results = (job.metadata or {}).get("caviar_results", "-")
        table.add_row(job.submission_id or job.job_id or "-", str(job.status), started, results)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


@app.command()
def logs(job: JobArg, address: AddressOpt = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False) -> None:
    """A job's output (the sweep's log lines); --follow streams it and exits non-zero if the job failed."""
    from cluster.jobs import Jobs, redact_text

    client = Jobs(address)
    if follow:
        _follow(client, job)
        return
    typer.echo(redact_text(client.logs(job)), nl=False)  # the log echoes the entrypoint, storage URI included


@app.command()
def stop(job: JobArg, address: AddressOpt = None) -> None:
    """Stop a job: Ray ends its master and actors; the sweep's tables keep everything written so far."""
    from cluster.jobs import STOP_GRACE_SECONDS, Jobs

    client = Jobs(address)
    if client.stop(job):
        typer.echo(f"stopping job {job}")
        metadata = client.info(job).metadata or {}
        results = metadata.get("caviar_results")
        if results and not metadata.get("caviar_resume") and sweep_begun(results) is False:
            client.wait(job, timeout=STOP_GRACE_SECONDS + 10)  # its master may still write the sweep as it stops
        for line in stop_advice(metadata, client.address):
            typer.echo(line)
    else:
        typer.echo(f"job {job} had already ended ({client.status(job)})")


def stop_advice(metadata: dict[str, str], address: str) -> list[str]:
    """What `caviar stop` says after stopping a sweep's job: the commands that resume it, quoted for a shell (a
    storage path with a space, an s3:// query with '&'), or why there is nothing to resume."""
    import shlex

    results = metadata.get("caviar_results")
    if not results:
        return []
    if not metadata.get("caviar_resume") and sweep_begun(results) is False:
        again = ("the same --name is free" if sweep_begun(results, lease=True) is False
                 else "its master's claim on the name remains: pass --overwrite")
        return [f"its sweep had not begun: no sweep was written to {results}, so there is nothing to resume; "
                f"run it again with `caviar submit` ({again})"]
    sweep, at = shlex.quote(results), shlex.quote(address)  # masked: the user puts their credentials back
    if stored_task_lacks_modules(results):  # its stored copy alone fails at `import helpers`
        task = metadata.get("caviar_task")
        shown = shlex.quote(task) if task else "TASK"
        lines = [f"resume it on the cluster: caviar submit {shown} --resume {sweep} --address {at} (the sweep stores "
                 "its task file, not the modules it imports from that folder)",
                 f"or from anywhere that reaches the storage: caviar resume {sweep} --task {shown}"]
        if not task:  # a job from before jobs recorded their task file
            lines.append("TASK: the task file the sweep ran, in the folder that holds the modules it imports")
        return lines
    return [f"resume it on the cluster: caviar submit --resume {sweep} --trust-task-code --address {at}",
            f"or from anywhere that reaches the storage: caviar resume {sweep} --trust-task-code"]


def sweep_begun(results: str, lease: bool = False) -> bool | None:
    """Whether the sweep at ``results`` has its sweep row (a resume can continue it), or with ``lease`` any claim on
    the name; None when this machine cannot read it there (masked credentials, storage only the cluster reaches)."""
    if "***" in results:
        return None
    from orchestrator.app.api import is_taken
    from orchestrator.store import schema
    from orchestrator.store.storage import Storage

    try:
        sweep = Storage.from_uri(results)
        return is_taken(sweep) if lease else sweep.exists(schema.SWEEP_PATH)
    except Exception:
        return None


def stored_task_lacks_modules(results: str) -> bool:
    """Whether the sweep at ``results`` (when this machine reads it) stores a task file that imports modules of
    its folder: a resume must then be given the task file, whose folder travels along."""
    if "***" in results:  # masked credentials: reading would only fail, perhaps after retries
        return False
    from orchestrator.spec.task_source import read_manifest
    from orchestrator.store.storage import Storage

    try:
        manifest = read_manifest(Storage.from_uri(results))
    except Exception:  # storage this machine does not reach: the usual advice stands
        return False
    return bool(manifest and manifest.kind == "file" and manifest.modules)


def _follow(client: Any, job_id: str) -> None:
    from cluster.jobs import redact_text
    from orchestrator.errors import exception_line

    status = client.follow(job_id, lambda chunk: typer.echo(redact_text(chunk), nl=False))
    if status != "SUCCEEDED":
        message = redact_text(client.info(job_id).message or "")
        typer.echo(f"caviar: job {job_id} ended {status}: {exception_line(message)}",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"job {job_id} {status}")
