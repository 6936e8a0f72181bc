"""A process that writes the end-of-run report, forked when ``caviar run`` (or ``resume``) starts.

Forked at the command's start, before torch, Ray or any thread exists, the helper imports and warms up
matplotlib and scikit-learn while the master imports torch and the task on its one core, then sleeps until
the sweep ends. It then reads the sweep's tables and draws while the master prints the answer (and, on Ray,
shuts Ray down). A master that joined Ray may not fork (its gRPC threads), so there the report used to be
drawn one plot after another; the helper, forked before Ray started, draws on every core.

The helper exits when the master's end of the pipe closes, the master's death included; if it is gone
when asked, the caller draws the report itself.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
from typing import Any

WRITTEN, FAILED = "written", "failed"
REPORT_FILE = "report.html"  # beside the table folders of a sweep, never inside one


class ReportHelper:
    def __init__(self, process: Any, conn: Any) -> None:
        self._process, self._conn = process, conn
        self._asked = self._answered = False

    @classmethod
    def start(cls) -> ReportHelper | None:
        """The helper, or None where forking is not safe or would gain nothing (one CPU)."""
        from orchestrator.spec.settings import ray_joined

        if ("fork" not in multiprocessing.get_all_start_methods() or ray_joined() or threading.active_count() > 1
                or (os.cpu_count() or 1) < 2):
            return None
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, ours), name="caviar-report", daemon=False)
        process.start()
        theirs.close()
        helper = cls(process, ours)
        atexit.register(helper.close)  # a caller that forgot: before multiprocessing's own exit joins the child
        return helper

    def ask(self, sweep_uri: str) -> bool:
        """Start writing ``sweep_uri``'s report; False if the helper is gone (draw it here instead)."""
        if "://" not in sweep_uri:
            sweep_uri = os.path.abspath(sweep_uri)  # the helper kept the working directory the command started in
        try:
            self._conn.send(sweep_uri)
        except (BrokenPipeError, OSError):
            return False
        self._asked = True
        return True

    def answer(self) -> tuple[str, str] | None:
        """(WRITTEN, where) or (FAILED, why) once the report is done; None if the helper died before saying.

        ``where`` names the sweep as the helper was asked for it, a local path made absolute."""
        if not self._asked:
            return None
        try:
            answer = self._conn.recv()
        except (EOFError, OSError):
            return None
        self._answered = True
        return answer

    def close(self) -> None:
        """Let the helper go. One never answered (a run that failed or was interrupted) is stopped at once, not
        waited for: it may still be warming up, and a failing command must exit at once."""
        if self._conn.closed:
            return
        self._conn.close()
        if not self._answered:
            self._process.kill()
        self._process.join(timeout=10)


def _serve(conn: Any, masters_end: Any) -> None:
    """The helper's life: warm up, write the one report asked for, or exit when the master lets go."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the master's to handle; the pipe tells us
    masters_end.close()  # else our own copy would keep the pipe open after the master dies
    try:
        _warm_up()
    except Exception:  # noqa: BLE001  a warm-up that fails costs nothing: the report says what is wrong, later
        pass
    try:
        sweep_uri = conn.recv()
    except (EOFError, OSError):
        return
    try:
        answer = (WRITTEN, write_report_of(sweep_uri))
    except Exception as exc:  # noqa: BLE001  matplotlib missing, a plot failing on odd data, a read-only store...
        answer = (FAILED, f"{type(exc).__name__}: {exc}")
    try:
        conn.send(answer)
    except OSError:  # the master is gone: nobody to tell
        pass


def write_report_of(sweep_uri: str, tables: Any = None) -> str:
    """Draw the sweep's report and write it into the sweep folder; where it is (credentials left out)."""
    from orchestrator.app.report import build_report
    from orchestrator.store.storage import Storage

    built = build_report(sweep_uri, tables)
    Storage.from_uri(sweep_uri).write_bytes(REPORT_FILE, built.html.encode("utf-8"))
    return report_location(sweep_uri)


def report_location(sweep_uri: str) -> str:
    from orchestrator.store.storage import redact_uri, split_query

    return f"{split_query(redact_uri(sweep_uri))[0].rstrip('/')}/{REPORT_FILE}"


def _warm_up() -> None:
    """What every report loads before its first plot: the report modules, scikit-learn's forest, and
    matplotlib with its fonts (the first text drawn reads the font files)."""
    import io

    import sklearn.ensemble  # noqa: F401  the importance forest
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    import orchestrator.app.report  # noqa: F401

    figure = Figure(figsize=(2, 2), dpi=40)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([1, 10], [0, 1])
    axes.set_xscale("log")
    axes.set_title("warm")
    figure.savefig(io.BytesIO(), format="png")

