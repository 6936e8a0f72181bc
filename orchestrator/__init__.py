"""caviar's master side: search spaces, decisions, the Parquet contract, the CLI and API.

Imports neither torch nor ray at import time (a test enforces it), so decisions and
results load anywhere.
"""

from orchestrator.search.space import (
    SearchSpace,
    choice,
    dropout,
    lograndint,
    loguniform,
    one_minus_loguniform,
    randint,
    uniform,
)

__all__ = [
    "SearchSpace", "choice", "dropout", "load", "loguniform", "lograndint", "one_minus_loguniform",
    "randint", "resume_sweep", "run_sweep", "uniform",
]


def __getattr__(name: str):  # the API pulls in pyarrow; keep `import orchestrator` light
    if name in ("run_sweep", "resume_sweep", "load"):
        from orchestrator.app import api

        return getattr(api, name)
    if name == "load_ensemble":  # torch loads here, only when asked for
        from worker.load.ensemble_model import load_ensemble

        return load_ensemble
    raise AttributeError(name)
