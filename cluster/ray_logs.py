"""Ray's own start-up chatter (token notices, dashboard hints) goes to a log file, not the user's terminal.

Errors still reach the terminal. Ray configures its ``ray`` logger when imported (a stderr handler,
no propagation) and again in ``ray.init`` (no handler, propagating to the root logger), so both
are covered: the import-time handler is swapped, and the root logger gets a file handler for
``ray.*`` records plus a stderr handler for everything else caviar's own modules warn about.
"""

from __future__ import annotations

import logging
import sys


def _is_ray(record: logging.LogRecord) -> bool:
    return record.name == "ray" or record.name.startswith("ray.")


def send_ray_logs_to(path: str) -> None:
    import ray  # noqa: F401  (configures the "ray" logger; replaced below)

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
