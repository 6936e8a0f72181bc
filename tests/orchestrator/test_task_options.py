"""A task's plain options (the ones workers read) are refused in one line when they are not what caviar reads, never
cast: a string read as true, a fractional worker count, a string taken for a set of names."""

from __future__ import annotations

import pytest

from orchestrator.errors import TaskError
from orchestrator.spec.task import load_task

TASK = '''
import numpy as np
from orchestrator.search.space import loguniform

kind = "regression"
OPTION
space = {"lr": loguniform(1e-3, 1e-1), "batch_size": 16}

def load_data():
    x = np.zeros((10, 3), "float32")
    return {"train": (x, x[:, :1]), "val": (x, x[:, :1]), "test": (x, x[:, :1])}

def build_model(config):
    from torch import nn
    return nn.Linear(3, 1)
'''


def task_with(tmp_path, option: str):
    path = tmp_path / "task.py"
    path.write_text(TASK.replace("OPTION", option))
    return load_task(str(path))


@pytest.mark.parametrize(("option", "line"), [
    ('standardize_targets = "no"', "standardize_targets must be True or False, got 'no'"),  # trained standardised
    ("standardize_targets = 1", "standardize_targets must be True or False, got 1"),
    ("num_workers = 1.5", "num_workers must be an integer >= 0 (DataLoader worker processes per trial), got 1.5"),
    ('num_workers = "2"', "num_workers must be an integer >= 0"),
    ("num_workers = -1", "num_workers must be an integer >= 0"),  # was "load_data raised ValueError" from torch
    ("num_workers = True", "num_workers must be an integer >= 0"),
    ('fuse_per_member = "hidden"', "fuse_per_member must be a set of parameter names"),  # its letters were names
])
def test_an_option_caviar_would_have_cast_is_refused_in_one_line(tmp_path, option, line):
    with pytest.raises(TaskError) as caught:
        task_with(tmp_path, option)
    assert line in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("option", ["standardize_targets = True", "standardize_targets = False", "num_workers = 0",
                                    "num_workers = 4", 'fuse_per_member = {"label_smoothing"}',
                                    'fuse_per_member = ["a", "b"]', ""])
def test_the_options_as_documented_load(tmp_path, option):
    task_with(tmp_path, option)


def test_one_task_loaded_by_two_threads_at_once_is_whole_in_both(tmp_path):
    # Two notebook threads starting sweeps of one task: the second found the first's module half-imported in
    # sys.modules (AttributeError: ... has no attribute '__caviar_sources__', or no build_model yet).
    import threading
    import time

    path = tmp_path / "slow_import_task.py"
    path.write_text("import time\ntime.sleep(0.5)  # reads its data at import\n" + TASK.replace("OPTION", ""))
    loaded: list[object] = []

    def load() -> None:
        try:
            loaded.append(load_task(str(path)).get("build_model"))
        except Exception as exc:
            loaded.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    assert len(loaded) == 2 and all(callable(f) for f in loaded), loaded


def test_a_toml_file_that_leaves_a_condition_no_options_says_the_child_is_never_drawn(tmp_path, caplog):
    # opt's options changed to sgd and adamw: beta1 (when opt in [adam]) was never sampled, without a word
    from orchestrator.app.lifecycle import build_settings
    from orchestrator.search.space import SearchSpace, choice, uniform

    class Task:
        space = SearchSpace({"opt": choice(["sgd", "adam"]), "beta1": uniform(0.8, 0.95, when={"opt": ["adam"]})})
        settings: dict = {}

    config = tmp_path / "sweep.toml"
    config.write_text('[space]\nopt = { dist = "choice", options = ["sgd", "adamw"] }\n')
    build_settings(Task, str(config), {})  # type: ignore[arg-type]
    assert (f"{config}: parameter 'beta1' is never drawn: its condition opt in ['adam'] keeps none of opt's options "
            "there; give 'beta1' a 'when' of its own if it should be") in caplog.text
    caplog.clear()
    config.write_text('[space]\nopt = { dist = "choice", options = ["sgd", "adam", "adamw"] }\n')
    build_settings(Task, str(config), {})  # type: ignore[arg-type]
    assert "never drawn" not in caplog.text
