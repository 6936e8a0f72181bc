"""Tabular inputs as data scientists bring them: features on very different scales, labels as files give them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from orchestrator.errors import TaskError
from orchestrator.search.space import SearchSpace
from orchestrator.spec.task import Task
from worker.check.validate import check_config
from worker.data.splits import prepare


def test_a_feature_varying_on_a_tiny_scale_is_scaled_in_memory_and_streamed():
    # A wavelength in metres (5e-7 +- 1e-7) varies: left at its own scale it reached the model as noise around 0.
    rng = np.random.default_rng(0)
    x = np.stack([5e-7 + 1e-7 * rng.normal(size=60), 1e-7 * rng.normal(size=60), np.zeros(60)], 1).astype(np.float32)
    y = np.zeros(60, np.int64)

    class Rows(Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return torch.from_numpy(x[i]), 0

    for splits in (prepare(((x, y), (x, y), (x, y))), prepare((Rows(), Rows(), Rows()))):
        std = splits.std.flatten().double()
        assert std[0] == pytest.approx(np.std(x[:, 0], ddof=1), rel=1e-3)
        assert std[1] == pytest.approx(np.std(x[:, 1], ddof=1), rel=1e-3)
        assert std[2] == 1.0  # a feature constant at 0 is still only centred
        scaled = splits.x_train if splits.x_train is not None else splits.normalise(torch.from_numpy(x))
        assert 0.5 < float(scaled[:, 0].std()) < 2.0


def _task(build_model) -> Task:
    namespace = SimpleNamespace(build_model=build_model, load_data=None)
    return Task("inline", namespace, SearchSpace({"lr": 0.05, "batch_size": 16, "optimizer": "adam"}))


def test_labels_counted_from_one_are_named_with_the_shift_to_give():
    # Classes 1-3 (as many UCI files and R give them) beside a 3-output head: before, the line said "give the model
    # 4 outputs", a model whose class 0 never occurs.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype(np.float32), rng.integers(1, 4, 60)
    task = _task(lambda config: nn.Linear(4, 3))
    with pytest.raises(TaskError, match=r"^the model outputs 3 scores per example but the targets hold classes 1 to "
                                        r"3, none of them 0: class indices start at 0, so give y - 1 "):
        check_config(task, prepare(((x, y), (x, y), (x, y))), {"batch_size": 16})
    # A label 0 anywhere (here only in test): the data has 4 classes, and the line stays as it was.
    y_test = y.copy()
    y_test[0] = 0
    with pytest.raises(TaskError, match=r"the targets have 4 classes: give the model 4 outputs"):
        check_config(task, prepare(((x, y), (x, y), (x, y_test))), {"batch_size": 16})



def test_labels_with_gaps_are_named_with_the_mapping_to_give():
    # Three classes labelled 0, 3 and 7 (codes kept from a larger scheme) beside a 3-output head: the line said "the
    # targets have 8 classes: give the model 8 outputs", of a data set with three.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype(np.float32), np.array([0, 3, 7])[rng.integers(0, 3, 60)]
    task = _task(lambda config: nn.Linear(4, 3))
    with pytest.raises(TaskError, match=r"^the model outputs 3 scores per example but the targets' 3 classes are "
                                        r"labelled 0, 3, 7, not 0 to 2: class indices count from 0 without gaps, so "
                                        r"give y as np.searchsorted\(classes, y\) in every split, with classes = "
                                        r"np.unique\(y_train\), or give the model 8 outputs, one per index up to 7$"):
        check_config(task, prepare(((x, y), (x, y), (x, y))), {"batch_size": 16})
    # Eight outputs take the labels as they are.
    check_config(_task(lambda config: nn.Linear(4, 8)), prepare(((x, y), (x, y), (x, y))), {"batch_size": 16})

FRAME_TASK = '''
import numpy as np
import pandas as pd
from torch import nn
from orchestrator.search.space import loguniform

space = {"lr": loguniform(1e-2, 1e-1)}
settings = {"trials": 2, "epochs": 2}
COLUMNS = ["age", "income", "score", "height"]


def frame(rows, seed):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(40, 10, rows), rng.normal(5e4, 1e4, rows), rng.normal(0, 1, rows),
                  rng.normal(170, 8, rows)], 1).astype("float32")
    return pd.DataFrame(x, columns=COLUMNS), (x[:, 2] > 0).astype("int64")


def load_data():
    return {"train": frame(120, 0), "val": frame(40, 1), "test": frame(40, 2)}


def build_model(config):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
'''


def test_a_dataframe_of_features_is_matched_by_its_column_names_when_loaded(tmp_path):
    # Before: load_data refused DataFrames, and load_ensemble took one by position: the same columns in another order
    # reached other inputs of the model, and its predictions were wrong without a word.
    import pandas as pd

    from orchestrator.app.api import run_sweep
    from orchestrator.errors import ConfigError
    from worker.load.ensemble_model import load_ensemble

    task = tmp_path / "frame_task.py"
    task.write_text(FRAME_TASK)
    result = run_sweep(str(task), storage=str(tmp_path / "runs"), name="frame", executor="processes", slots=1)
    model = load_ensemble(result.path, task=str(task))
    namespace = {}
    exec(compile(FRAME_TASK, "frame_task", "exec"), namespace)
    test_x, _ = namespace["frame"](40, 2)
    as_trained = model(test_x)
    assert torch.equal(model(test_x[["height", "score", "income", "age"]]), as_trained)
    assert torch.equal(model(test_x.to_numpy()), as_trained)  # arrays: the training order, as before
    with pytest.raises(ConfigError, match=r"^inputs: the DataFrame lacks 'height'; give the training columns "
                                          r"\(age, income, score, height\)$"):
        model(test_x[["age", "income", "score"]])
    with pytest.raises(ConfigError, match=r"has 'id', which the sweep did not train on"):
        model(pd.concat([test_x, pd.DataFrame({"id": np.arange(40, dtype="float32")})], axis=1))


def test_dataframes_load_data_cannot_hand_on_as_they_are_are_refused_in_one_line():
    import pandas as pd

    x = pd.DataFrame(np.zeros((60, 3), np.float32), columns=["a", "b", "c"])
    y = np.zeros(60, np.int64)
    splits = prepare(((x, y), (x, y), (x, y)))
    assert splits.feature_names == ("a", "b", "c") and splits.x_train.dtype == torch.float32
    with pytest.raises(TaskError, match=r"^load_data: val X's columns are in another order than train X's; give the "
                                        r"same columns in train's order"):
        prepare(((x, y), (x[["c", "b", "a"]], y), (x, y)))
    mixed = x.astype({"a": "float64"})
    with pytest.raises(TaskError, match=r"^load_data: train X is a DataFrame whose columns differ in dtype "
                                        r"\(float32, float64\); caviar never casts inputs"):
        prepare(((mixed, y), (x, y), (x, y)))
    words = pd.DataFrame({"a": ["x"] * 60})
    with pytest.raises(TaskError, match=r"^load_data: train X is a DataFrame of (object|str) columns; give numbers"):
        prepare(((words, y), (x, y), (x, y)))


def test_memory_mapped_arrays_load_without_torchs_not_writable_warning(tmp_path):
    """np.load(..., mmap_mode="r") gives read-only arrays; caviar never writes to them, so torch's warning that
    writing would be undefined (printed with a line of caviar's source) is noise the user cannot act on."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(40, 3)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 2, 40))
    code = f"""
import numpy as np
from worker.data.splits import prepare
x = np.load({str(tmp_path / "x.npy")!r}, mmap_mode="r")
y = np.load({str(tmp_path / "y.npy")!r}, mmap_mode="r")
s = prepare({{"train": (x[:20], y[:20]), "val": (x[20:30], y[20:30]), "test": (x[30:], y[30:])}})
assert np.allclose(s.y_val.numpy(), y[20:30]) and s.x_train.shape == (20, 3)
"""
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not writable" not in done.stderr
