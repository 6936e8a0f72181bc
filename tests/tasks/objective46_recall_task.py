"""tiny_task's blobs ranked by the recall of class 1 alone: always predicting class 1 scores 1.0 without learning."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_task import build_model, load_data, space  # noqa: E402, F401  (the same data and model)

settings = {"trials": 2, "epochs": 2}
objective = "val_recall1"
mode = "max"


def metrics(outputs, targets):
    predicted = outputs.argmax(1)
    recalls = [float((predicted == c)[targets == c].float().mean()) for c in range(3)]
    return {"recall1": recalls[1], "macro_recall": sum(recalls) / 3}
