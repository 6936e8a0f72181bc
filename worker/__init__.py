"""Training: the per-trial loop, models' optimizers and schedules, EMA, checkpoints, data.

Imports torch, numpy and pyarrow, never ray: a worker runs the same inside a Ray actor,
a test, or a plain process.
"""
