"""Ray's own start-up chatter (token notices, dashboard hints) goes to a log file, not the user's terminal.

Errors still reach the terminal as caviar's one line. Ray configures its ``ray`` logger when imported (a stderr handler,
no propagation) and again in ``ray.init`` (no handler, propagating to the root logger), so both
are covered: the import-time handler is swapped, and the root logger gets a file handler for
``ray.*`` records plus a stderr handler for everything else caviar's own modules warn about.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_log_path: list[str] = []  # the CLI's Ray log file, once send_ray_logs_to named it
_deferred: list[str] = []  # the CLI's file, used once the run starts or joins Ray (apply_deferred)


def _is_ray(record: logging.LogRecord) -> bool:
    return record.name == "ray" or record.name.startswith("ray.")


def send_ray_logs_to(path: str) -> None:
    import ray  # noqa: F401  (configures the "ray" logger; replaced below)

    _log_path[:] = [path]
    to_file = logging.FileHandler(path, encoding="utf-8", delay=True)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_file.addFilter(_is_ray)
    terminal = logging.StreamHandler(sys.stderr)  # what Python's last-resort handler printed before
    terminal.setLevel(logging.WARNING)
    terminal.addFilter(lambda r: not _is_ray(r) or r.levelno >= logging.ERROR)

    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        ray_logger.removeHandler(handler)
    ray_logger.propagate = True
    root = logging.getLogger()
    root.addHandler(to_file)
    root.addHandler(terminal)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # Ray's info lines reach the file; the terminal handler still says WARNING


def send_ray_logs_if_started(path: str) -> None:
    """``send_ray_logs_to(path)`` when caviar starts or joins Ray (:func:`apply_deferred`), not now: importing Ray
    costs a second or two that a run in child processes never needs, and Ray logs nothing before it starts."""
    _deferred[:] = [path]


def apply_deferred() -> None:
    if _deferred and not _log_path:
        send_ray_logs_to(_deferred[0])


def ray_log_path() -> str | None:
    """The file Ray's own messages go to (a CLI run), or None (the Python API: Ray logs as it likes)."""
    return _log_path[0] if _log_path else None


@contextmanager
def stderr_to_ray_log() -> Iterator[None]:
    """While Ray connects or starts, what it writes to stderr goes to the Ray log file, not the terminal.

    Ray's C++ core logs straight to file descriptor 2 (a wrong token: ``gcs_client.cc ... InvalidAuthToken``
    once a second for 20 s), and Ray Client warns through Python's ``warnings``: neither passes through
    the logging handlers above, so the descriptor itself is pointed at the log file for the call, then
    restored. caviar's one-line error comes after. Without a log file (the Python API) nothing changes.
    """
    if not _log_path:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(_log_path[0], "ab") as log:
            os.dup2(log.fileno(), 2)
    except OSError:  # no log file to write: leave stderr as it is
        os.close(saved)
        yield
        return
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
