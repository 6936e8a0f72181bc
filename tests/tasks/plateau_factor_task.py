"""A plateau schedule whose factor is searched linearly below 1, ``decay_rate = uniform(0.1, 0.9)``.

After one epoch the highest learning rate wins on this linear data; with seed 312 that trial draws decay_rate = 0.898,
at the high edge of its range, so the next stage extends the range upward.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from uniform_beta_task import build_model, load_data  # noqa: E402, F401  (the same linear data and model)

from orchestrator.search.space import loguniform, uniform  # noqa: E402

kind = "regression"
space = {"optimizer": "adam", "lr": loguniform(1e-3, 3e-2), "schedule": "plateau", "decay_rate": uniform(0.1, 0.9),
         "batch_size": 32}
