"""The torch side: the per-trial loop, models' optimizers and schedules, EMA, checkpoints, data,
task kinds and fused arrays, run inside Ray actors by ``cluster``; and loading trained models,
weight soups and ensembles (``ensemble_model``, ``soup``), run in the master's or the user's
own process.

Imports torch, numpy and pyarrow, never ray: the same code runs inside a Ray actor, a test,
or a plain process.
"""
