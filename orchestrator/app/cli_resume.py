"""``caviar resume SWEEP_DIR``: continue a sweep whose master died, from its Parquet tables alone."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestrator.app.cli_common import (
    EXECUTOR_HELP,
    StorageOption,
    SweepArg,
    app,
    exit_on_interrupt,
    find_sweep,
    print_result,
    task_file_ref,
)


@app.command()
def resume(
    sweep: SweepArg,
    slots: Annotated[int | None, typer.Option(help="Trials trained at once (default: as started).")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto or ray://HOST:10001 (default: run here, see --executor).")
    ] = None,
    ensemble: Annotated[
        bool | None, typer.Option(help="Build ensembles when the sweep ends (default: as started).")
    ] = None,
    executor: Annotated[str | None, typer.Option(help=EXECUTOR_HELP + " Default: as started.")] = None,
    plain: Annotated[bool, typer.Option(help="Log lines instead of the live view.")] = False,
    report: Annotated[bool, typer.Option(help="Write SWEEP/report.html (plots) when the sweep ends.")] = True,
    task: Annotated[str | None, typer.Option(help="Your task file (or module:attr) to train with.")] = None,
    trust_task_code: Annotated[bool, typer.Option(
        help="Run the task copy stored in the sweep (checked against its sha256).")] = False,
    storage: StorageOption = None,
) -> None:
    """Continue an interrupted sweep: finished trials kept, interrupted ones resumed from their checkpoints."""
    import os
    import tempfile

    from orchestrator.app.api import resume_sweep
    from orchestrator.app.progress import Progress, quiet_ray
    from orchestrator.app.report_helper import ReportHelper

    # `caviar resume NAME --storage runs`, as status, top and report take it
    sweep = find_sweep(sweep, storage)

    given = dict(slots=slots, address=address, ensemble=ensemble, executor=executor)
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    helper = ReportHelper.start() if report else None  # as `caviar run`: before torch, Ray or any thread exists
    try:
        with exit_on_interrupt(task_file_ref(task), what="resume"), Progress(force_plain=plain) as progress:
            # As `caviar run`; the sweep's stored executor decides whether Ray starts at all.
            quiet_ray(os.path.join(tempfile.gettempdir(), f"caviar-ray-{os.getpid()}.log"))
            result = resume_sweep(sweep, on_tick=progress, task=task, trust_task_code=trust_task_code, **overrides)
        if result.note:
            typer.echo(result.note)
        # A finished sweep: nothing written, no report.
        print_result(result, task_ref=task_file_ref(task), report=report and not result.note, helper=helper)
    finally:
        if helper is not None:
            helper.close()
