"""User code that raises: the trial is ``failed`` with its traceback, the sweep goes on, or stops early by name."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from orchestrator.app.api import load, run_sweep
from tests.conftest import ROOT

# tiny_task whose model factory raises for some configs (``hidden`` at or above a threshold in the space).
BROKEN_TASK = f"""
import sys
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model as tiny_model, load_data  # noqa: F401
from tiny_task import space as tiny_space

space = {{**tiny_space, "broken_from": 0}}


def build_model(config):
    if config["hidden"] >= config["broken_from"]:
        raise ValueError(f"no layer of width {{config['hidden']}} in this zoo")
    return tiny_model(config)
"""


@pytest.fixture
def broken_task(tmp_path):
    path = tmp_path / "broken_task.py"
    path.write_text(BROKEN_TASK)
    return str(path)


def test_a_raising_model_factory_fails_its_trial_with_the_traceback_and_the_sweep_goes_on(
    ray_session, broken_task, tmp_path
):
    config = tmp_path / "half.toml"
    config.write_text("[space]\nbroken_from = 10\n")  # hidden is 4..16: some trials build, some raise
    result = run_sweep(
        broken_task,
        config_file=str(config),
        trials=6,
        epochs=1,
        stages=1,
        slots=2,
        seed=1,
        fail_fast=6,
        storage=str(tmp_path / "runs"),
        name="half",
        ensemble=False,
    )
    trials = load(result.path).trials.to_pylist()
    assert len(trials) == 6 and result.aborted is None
    broken = [t for t in trials if t["config"]["hidden"] >= 10]
    assert broken and len(broken) < 6
    for t in trials:
        if t in broken:
            assert t["status"] == "failed" and t["reason"] == "error"
            assert "Traceback" in t["error"] and t["error"].strip().endswith(
                f"ValueError: no layer of width {t['config']['hidden']} in this zoo"
            )
        else:
            assert t["status"] == "completed" and t["error"] is None
    # Said before any worker started: the range's high end was built with the checked config's other values.
    from orchestrator.app.report_data import collect_warnings, read_sweep

    said = [e for e in load(result.path).events.to_pylist() if e["kind"] == "value_fails"]
    assert [e["reason"].split(" fails ")[0] for e in said] == ["space: hidden = 16"]
    assert "build_model raised ValueError: no layer of width 16 in this zoo (broken_task.py:" in said[0]["reason"]
    assert f"stage 1: {said[0]['reason']} (value fails)" in collect_warnings(read_sweep(result.path))


# tiny_task whose training loop raises past its first batches: the contract check (one forward pass and loss, the
# loop on two batches) passes, every trial fails.
FAILING_LOOP_TASK = f"""
import sys
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, load_data, space  # noqa: F401


def train_epoch(model, optimizer, batches, config):
    for i, _ in enumerate(batches):
        if i == 3:
            raise ValueError(f"no layer of width {{config['hidden']}} in this zoo")
    return {{"train_loss": 1.0}}
"""

# tiny_task whose data loads in the master (the contract check passes) but in no worker.
WORKERS_CANNOT_LOAD_TASK = f"""
import os
import sys
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
import tiny_task
from tiny_task import build_model, space  # noqa: F401


def load_data():
    if os.environ.get("CAVIAR_TEST_MASTER_PID") != str(os.getpid()):
        raise OSError("the data lives on the master's disk only")
    return tiny_task.load_data()
"""

WORKERS_CANNOT_IMPORT_TASK = f"""
import os
import sys
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, load_data, space  # noqa: F401

if os.environ.get("CAVIAR_TEST_MASTER_PID") != str(os.getpid()):
    raise OSError("a module it needs lives on the master's disk only")
"""


def test_when_the_first_trials_all_fail_the_sweep_stops_naming_the_most_common_error(ray_session, tmp_path):
    task = tmp_path / "failing_loop.py"
    task.write_text(FAILING_LOOP_TASK)
    result = run_sweep(
        str(task),
        trials=8,
        epochs=1,
        stages=1,
        slots=2,
        seed=1,
        fail_fast=3,
        storage=str(tmp_path / "runs"),
        name="all-broken",
        ensemble=False,
    )
    assert result.aborted.startswith("the first ")
    assert "trials all failed; most common error (" in result.aborted
    assert result.aborted.endswith("in this zoo")
    tables = load(result.path)
    statuses = [t["status"] for t in tables.trials.to_pylist()]
    assert statuses.count("failed") >= 3 and "completed" not in statuses
    assert "pending" in statuses  # it stopped before trying them all
    assert tables.events["kind"].to_pylist().count("sweep_aborted") == 1  # trials failing after it change nothing
    assert result.aborted.startswith("the first 3 trials all failed")
    from orchestrator.app.report_data import collect_warnings, read_sweep

    # The report's warning is the whole line, not the event's one-word reason.
    assert f"stage 1: {result.aborted} (sweep aborted)" in collect_warnings(read_sweep(result.path))


def test_partial_failures_are_summarised_by_error_with_counts_and_trial_ids(ray_session, broken_task, tmp_path):
    """The run summary and `caviar status` name the most common error, its count and the trials."""
    import subprocess
    import sys

    from orchestrator.app.failures import error_summary

    config = tmp_path / "half.toml"
    config.write_text("[space]\nbroken_from = 10\n")
    result = run_sweep(broken_task, config_file=str(config), trials=6, epochs=1, stages=1, slots=2, seed=1,
                       fail_fast=6, storage=str(tmp_path / "runs"), name="half", ensemble=False)
    trials = load(result.path).trials.to_pylist()
    failed = sorted(t["trial_id"] for t in trials if t["status"] == "failed")
    lines = error_summary(trials)
    errors = [line for line in lines if " failed: " in line]
    assert errors and lines[-1].startswith("(each failed trial's traceback")
    # each line: the count, the error with the task file's line, the trial ids
    for line in errors:
        count, rest = line.split(" failed: ", 1)
        listed = rest.rsplit("(trial", 1)[1].split(";")[0]  # "; the numbers ... differ": widths grouped as one
        ids = {int(i) for i in listed.strip("s )").split(", ")}
        assert "ValueError: no layer of width" in rest and "(broken_task.py:" in rest, line
        assert len(ids) == int(count) and ids <= set(failed), line
    assert sum(int(line.split()[0]) for line in errors) == len(failed)  # one error, whichever width: every one shown
    caviar = [sys.executable, "-m", "orchestrator.app.cli"]
    status = subprocess.run([*caviar, "status", result.path], capture_output=True, text=True, check=True)
    assert all(line in status.stdout for line in lines)


def test_workers_that_cannot_start_end_the_sweep_naming_the_users_exception(ray_session, tmp_path, monkeypatch):
    import pytest

    from orchestrator.errors import CaviarError

    task = tmp_path / "workers_cannot_import.py"
    task.write_text(WORKERS_CANNOT_IMPORT_TASK)
    monkeypatch.setenv("CAVIAR_TEST_MASTER_PID", str(__import__("os").getpid()))  # Ray's workers started earlier
    with pytest.raises(CaviarError) as error:
        run_sweep(str(task), trials=2, epochs=1, stages=1, slots=2, storage=str(tmp_path / "runs"), name="w",
                  ensemble=False)
    message = str(error.value)
    assert message.startswith("no trial actor could start (4 tries per slot): "), message
    assert "OSError: a module it needs lives on the master's disk only" in message, message
    assert "\n" not in message and "ActorDiedError" not in message
    assert not (tmp_path / "runs" / "w").exists()  # nothing ran: the name is free again


def test_data_only_the_master_can_read_still_sweeps(ray_session, tmp_path, monkeypatch):
    """The actors train on the data the master loaded and checked (Ray's object store): they never read it."""
    task = tmp_path / "workers_cannot_load.py"
    task.write_text(WORKERS_CANNOT_LOAD_TASK)
    monkeypatch.setenv("CAVIAR_TEST_MASTER_PID", str(__import__("os").getpid()))
    result = run_sweep(str(task), trials=2, epochs=1, stages=1, slots=2, storage=str(tmp_path / "runs"), name="w",
                       ensemble=False)
    assert {t["status"] for t in load(result.path).trials.to_pylist()} == {"completed"}


# build_model reads a module global that load_data sets: the input width and the class names, as tasks often do.
GLOBALS_FROM_DATA_TASK = f"""
import sys
from torch import nn
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
import tiny_task
from tiny_task import space  # noqa: F401

WIDTH = None
CLASSES = []


def load_data():
    global WIDTH
    splits = tiny_task.load_data()
    WIDTH = splits[0][0].shape[1]
    CLASSES.extend(["a", "b", "c"])  # changed in place
    return splits


def build_model(config):
    return nn.Sequential(nn.Linear(WIDTH, 8), nn.ReLU(), nn.Linear(8, len(CLASSES)))
"""


def test_globals_that_load_data_sets_reach_actors_that_never_call_it(ray_session, tmp_path):
    """Ray actors take the master's data and skip load_data: the globals it set come with the data."""
    task = tmp_path / "globals_from_data.py"
    task.write_text(GLOBALS_FROM_DATA_TASK)
    result = run_sweep(str(task), trials=2, epochs=1, stages=1, slots=2, storage=str(tmp_path / "runs"), name="g",
                       executor="ray", ensemble=False)
    assert {t["status"] for t in load(result.path).trials.to_pylist()} == {"completed"}


def test_the_master_records_what_load_data_set_in_the_task_and_nothing_else(tmp_path):
    from orchestrator.spec.task import load_task
    from worker.data.splits import prepare_task_data

    task = tmp_path / "globals_from_data.py"
    task.write_text(GLOBALS_FROM_DATA_TASK)
    loaded = load_task(str(task))
    # Not the functions, the imported modules, or `space`, which load_data left as it was.
    assert prepare_task_data(loaded).task_globals == {"WIDTH": 4, "CLASSES": ["a", "b", "c"]}


# In a fresh process (load_task caches a task's import per path, and this one ran load_data): the globals
# load_data set come from the sweep's dataset table; a global JSON cannot hold makes load_ensemble run load_data.
LOAD_IN_A_FRESH_PROCESS = """
import sys, numpy as np, torch
from orchestrator import load_ensemble
sweep, task = sys.argv[1], sys.argv[2]
model = load_ensemble(sweep, name="best", task=task)
sys.path.insert(0, sys.argv[3])
import tiny_task
x, y = tiny_task.load_data()[2]
accuracy = float((model.predict(torch.from_numpy(x)).numpy() == y).mean())
print("LOADED", accuracy, model.record.test_accuracy)
"""

UNSTORABLE_GLOBAL_TASK = GLOBALS_FROM_DATA_TASK.replace("WIDTH = None", '''
class Shape:  # an object of the task's own: JSON cannot hold it
    def __init__(self, width):
        self.width = width


SHAPE = None
WIDTH = None''').replace("    return splits", "    global SHAPE\n    SHAPE = Shape(WIDTH)\n    return splits").replace(
    "nn.Linear(WIDTH, 8)", "nn.Linear(SHAPE.width, 8)")


@pytest.mark.parametrize("source", [GLOBALS_FROM_DATA_TASK, UNSTORABLE_GLOBAL_TASK], ids=["json", "object"])
def test_a_loaded_ensemble_gets_the_globals_load_data_set_in_a_process_that_never_ran_it(tmp_path, source):
    import subprocess
    import sys

    task = tmp_path / "globals_from_data.py"
    task.write_text(source)
    result = run_sweep(str(task), trials=3, epochs=2, stages=1, slots=2, storage=str(tmp_path / "runs"), name="g",
                       executor="processes")
    done = subprocess.run([sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS, result.path, str(task),
                           ROOT + "/tests/tasks"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, stored = map(float, done.stdout.split("LOADED")[1].split())
    assert loaded == pytest.approx(stored, abs=1e-9)


# Labels drawn at random: no model can beat always predicting the most frequent class.
NOISE_TASK = f"""
import sys
import numpy as np
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, space  # noqa: F401


def load_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=300)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])
"""


def test_a_sweep_where_nothing_learned_ends_with_a_warning_and_an_event(tmp_path):
    path = tmp_path / "noise_task.py"
    path.write_text(NOISE_TASK)
    result = run_sweep(str(path), trials=4, epochs=2, stages=1, slots=2, storage=str(tmp_path), name="noise",
                       executor="processes", ensemble=False)
    said = [w for w in result.warnings if w.startswith("no trial did clearly better than always predicting class")]
    assert len(said) == 1 and "of 60 val examples" in said[0], result.warnings
    events = [e for e in load(result.path).events.to_pylist() if e["kind"] == "no_trial_learned"]
    assert [e["reason"] for e in events] == said


FIXED_TASK = f"""
import sys
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, load_data  # noqa: F401

space = {{"lr": 0.05, "optimizer": "adam", "hidden": 8, "batch_size": 32}}
"""


def test_a_space_with_nothing_to_search_says_its_trials_differ_only_in_seeds(tmp_path, caplog):
    from orchestrator.app.progress import Progress

    path = tmp_path / "fixed_task.py"
    path.write_text(FIXED_TASK)
    with caplog.at_level("WARNING", logger="caviar"):
        result = run_sweep(str(path), trials=3, epochs=1, stages=1, slots=2, storage=str(tmp_path), name="fixed",
                           executor="processes", ensemble=False, array_size=4)  # and a size for arrays never made
    assert [r.getMessage() for r in caplog.records if "array_size" in r.getMessage()] == [
        "setting 'array_size' (4) does nothing while fuse is off: set fuse to on or auto to train same-shape trials "
        "as fused arrays"]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("space: every value is fixed")]
    assert said == ["space: every value is fixed, so the 3 trials train one config and differ only in their seeds "
                    "(pruning and ensembles then choose among seeds); give ranges (loguniform, choice, ...) to search"]
    assert result.counts.get("completed") == 3
    assert Progress._best_text(SimpleNamespace(best=(0.9, 2, 1, ""), objective=None)) == (
        "best score 0.9000 (trial 2, stage 1)")
    assert Progress._counts_text(SimpleNamespace(counts={"completed": 2, "interrupted": 2})) == (
        "0 running, 2 completed, 0 pruned, 0 failed, 0 pending, 2 interrupted")  # every trial counted
    assert Progress._best_text(SimpleNamespace(best=(-0.25, 2, 1, ""), objective=("val_mse", "min"))) == (
        "best val_mse 0.2500 (trial 2, stage 1)")


NUMPY_SPACE_TASK = f"""
import sys
import numpy as np
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, load_data  # noqa: F401
from orchestrator.search.space import choice, loguniform

space = {{"lr": loguniform(1e-2, 1e-1), "hidden": choice(np.array([8, 16])), "wd": choice(np.logspace(-5, -3, 3)),
          "batch_size": np.int64(32)}}
"""


def test_a_choice_over_numpy_values_sweeps_and_its_table_holds_plain_numbers(tmp_path):
    """np.int64 options once typed the config column as text: the first write of the trials table failed."""
    path = tmp_path / "numpy_space_task.py"
    path.write_text(NUMPY_SPACE_TASK)
    result = run_sweep(str(path), plan="2x1,1x2", slots=2, storage=str(tmp_path), name="np",
                       executor="processes", ensemble=False)
    trials = load(result.path).trials
    assert result.counts == {"completed": 3}
    assert str(trials.schema.field("config").type) == (
        "struct<lr: double, hidden: int64, wd: double, batch_size: int64>")
    assert {t["config"]["hidden"] for t in trials.to_pylist()} <= {8, 16}


# tiny_task whose objective is a metric that is NaN on every evaluation while training is healthy.
NAN_METRIC_TASK = f"""
import sys
sys.path.insert(0, {ROOT + "/tests/tasks"!r})
from tiny_task import build_model, load_data, space  # noqa: F401

objective = "val_precision"
mode = "max"


def metrics(outputs, targets):
    return {{"precision": float("nan")}}  # as a precision over a class the model never predicts
"""


def test_a_nan_objective_with_finite_losses_fails_trials_by_name_and_never_calls_it_divergence(tmp_path, caplog):
    path = tmp_path / "nan_metric_task.py"
    path.write_text(NAN_METRIC_TASK)
    result = run_sweep(str(path), trials=3, epochs=2, stages=1, slots=2, storage=str(tmp_path), name="nan",
                       executor="processes", fail_fast=5)
    said = ("objective val_precision was NaN while the losses were finite: the task's metrics returns NaN "
            "(a precision or F1 over a class never predicted?); make it return a number every epoch")
    assert result.aborted == f"all 3 trials failed; most common error (3x): {said}"
    tables = load(result.path)
    for t in tables.trials.to_pylist():
        assert (t["status"], t["reason"]) == ("failed", "objective_nan")
        assert t["error"].startswith("epoch 1: val_precision NaN while train_loss ") and t["error"].endswith(said)
    ended = [(e["kind"], e["reason"]) for e in tables.events.to_pylist() if e["kind"].startswith("trial_")
             and e["kind"] != "trial_started"]
    assert ended == [("trial_failed", "objective_nan")] * 3
    assert all(math.isfinite(loss) for loss in tables.metrics["val_loss"].to_pylist())
    # no trial has a score: nothing to average, and no line about a missing dataset table to send the user after
    assert "ensembles" not in caplog.text and result.ensemble is None
