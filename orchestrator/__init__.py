"""caviar's master side: search spaces, decisions, the Parquet contract, the CLI and API.

Imports neither torch nor ray at import time (a test enforces it), so decisions and
results load anywhere.
"""

from orchestrator.space import (
    SearchSpace,
    choice,
    dropout,
    loguniform,
    lograndint,
    one_minus_loguniform,
    randint,
    uniform,
)

__all__ = [
    "SearchSpace", "choice", "dropout", "load", "loguniform", "lograndint", "one_minus_loguniform",
    "randint", "run_sweep", "uniform",
]


def __getattr__(name: str):  # the API pulls in pyarrow; keep `import orchestrator` light
    if name in ("run_sweep", "load", "load_ensemble"):
        from orchestrator import api

        return getattr(api, name)
    raise AttributeError(name)
