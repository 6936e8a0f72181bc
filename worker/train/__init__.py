"""One trial's training: the epoch loop and evaluation (``trainer``), optimizers and schedules
(``optim``), EMA weights (``ema``), per-layer diagnostics (``diagnostics``), what a trial writes
(``recorder``, ``predictions``) and the session a Ray actor runs (``session``).
"""
