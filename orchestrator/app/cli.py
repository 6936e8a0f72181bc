"""The ``caviar`` command: its verbs, gathered from the ``cli_*`` modules, and the process entry point.

Every error caviar knows about is one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

import typer

# Each command module registers its verbs on `app` when imported (cli_common.VERBS orders the help).
from orchestrator.app import cli_check, cli_cluster, cli_ensemble, cli_next, cli_report, cli_resume, cli_run  # noqa: F401
from orchestrator.app.cli_common import app
from orchestrator.errors import CaviarError
from orchestrator.store.storage import redact_uri


def main() -> None:
    usage_error = typer.BadParameter.__mro__[1]  # click's UsageError, whether typer vendors click or not
    try:
        code = app(standalone_mode=False)  # click's usage errors come here, to be printed as one line
    except CaviarError as exc:  # masked as a whole: an SDK's text inside it may repeat a URI with its secret
        from orchestrator.spec.task_source import as_submitted

        typer.echo(redact_uri(as_submitted(f"caviar: error: {exc}")), err=True)
        sys.exit(2)
    except usage_error as exc:  # a bad option value, an unknown option or verb, a missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # `caviar` alone: the help, as before
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if exc.ctx else "caviar"
        message = " ".join(exc.format_message().split())
        typer.echo(redact_uri(f"caviar: error: {message} (see '{command} --help')"), err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def entry_point() -> None:
    """The ``caviar`` script: :func:`main`, then an exit that skips native teardown.

    Python's own clean-up runs (atexit: Ray's shutdown, flushed output); the C++ static destructors
    do not: pyarrow's thread pools can abort a finished process there ("terminate called without
    an active exception", exit 134), which would turn a successful command into a failure.
    """
    import atexit

    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            sys.stderr.write(f"{done.code}\n")
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # python -m orchestrator.app.cli
    entry_point()
