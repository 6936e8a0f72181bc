"""tiny_task's data split by a permutation drawn without a seed: every process that calls load_data draws another."""

from __future__ import annotations

import numpy as np
from tiny_task import build_model, space  # noqa: F401 (task pieces)
from tiny_task import load_data as tiny_data

settings = {"trials": 2, "epochs": 1, "stages": 1}


def load_data():
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = tiny_data()
    x, y = np.concatenate([x_tr, x_va, x_te]), np.concatenate([y_tr, y_va, y_te])
    order = np.random.permutation(len(y))  # no seed: the user's mistake
    x, y = x[order], y[order]
    a, b = len(y_tr), len(y_tr) + len(y_va)
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])
