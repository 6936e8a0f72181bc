"""A finished sweep used from Python: a CNN with batch norm, dropout and EMA weights, loaded and predicting."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess

import pytest

from orchestrator.app.api import run_sweep
from orchestrator.errors import StorageError
from orchestrator.store import schema
from orchestrator.store.lease import LEASE_PATH, LeaseRecord
from orchestrator.store.storage import Storage
from tests.conftest import ROOT

CNN_TASK = os.path.join(ROOT, "tests", "tasks", "results43_cnn_task.py")
REGRESSION_TASK = os.path.join(ROOT, "tests", "tasks", "results43_regression_task.py")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs"))
    return run_sweep(CNN_TASK, trials=3, epochs=2, slots=2, executor="processes", storage=storage, name="cnn",
                     seed=3)


@pytest.fixture(scope="module")
def regression_sweep(tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs"))
    return run_sweep(REGRESSION_TASK, trials=2, epochs=2, slots=2, executor="processes", storage=storage,
                     name="regression", seed=3)


@pytest.fixture
def inputs():
    from tests.tasks.results43_cnn_task import load_data

    return load_data()[1][0]  # validation images, float32 (N, 1, 8, 8)


def test_predict_on_an_empty_batch_gives_an_empty_answer(sweep, inputs):
    """It was torch.cat's 'expected a non-empty list of Tensors' (a filtered batch that kept no rows)."""
    from orchestrator import load_ensemble

    model = load_ensemble(sweep.path, task=CNN_TASK)
    assert tuple(model.predict(inputs[:0]).shape) == (0,)
    assert tuple(model(inputs[:0]).shape) == (0, 3)
    assert model.predict(inputs[:5]).tolist() == model(inputs[:5]).argmax(1).tolist()


def test_loading_with_an_edited_task_file_that_still_fits_the_weights_says_so(sweep, inputs, tmp_path, caplog):
    """A build_model edited after the sweep (ReLU to GELU) took the stored weights and answered otherwise, silently."""
    from orchestrator import load_ensemble

    with open(CNN_TASK) as f:
        source = f.read()
    same, edited = tmp_path / "same.py", tmp_path / "edited.py"
    same.write_text(source)  # moved, not edited: nothing to say
    edited.write_text(source.replace("nn.ReLU()", "nn.GELU()"))
    with caplog.at_level(logging.WARNING, logger="caviar"):
        load_ensemble(sweep.path, task=str(same))
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="caviar"):
        load_ensemble(sweep.path, task=str(edited))
    assert [r.getMessage().split(" (sha256")[0].split(" has sha256")[0] for r in caplog.records] == \
        [f"your task {edited}"]
    assert "trust_task_code=True" in caplog.records[0].getMessage()

def _refused_while_a_master_runs(copy: str) -> None:
    """A live process on this host holds the sweep's lease, standing for its master: load_ensemble says it runs."""
    from orchestrator import load_ensemble

    master = subprocess.Popen(["sleep", "60"])
    try:
        Storage.from_uri(copy).write_bytes(LEASE_PATH,
                                           LeaseRecord("x", socket.gethostname(), master.pid, 0, 0).encode())
        with pytest.raises(StorageError, match=rf"still running \(process {master.pid} on .*\), and its end builds "
                                               r"the ensembles; load them once it has finished \(caviar status "):
            load_ensemble(copy, task=CNN_TASK)
    finally:
        master.kill()
        master.wait()


def test_loading_a_sweep_still_running_says_its_end_builds_the_ensembles(sweep, tmp_path):
    """It said 'build them: caviar ensemble SWEEP_DIR', which refuses a sweep whose master still writes it."""
    from orchestrator import load_ensemble

    copy = str(tmp_path / "cnn")
    shutil.copytree(sweep.path, copy)
    os.remove(os.path.join(copy, schema.ENSEMBLES_PATH))  # as before its end
    _refused_while_a_master_runs(copy)
    with pytest.raises(StorageError, match=rf"no such file \(build them: caviar ensemble {re.escape(copy)}\)$"):
        load_ensemble(copy, task=CNN_TASK)  # its master gone: caviar ensemble builds them


def test_loading_a_sweep_whose_first_trials_still_train_says_it_is_running(sweep, tmp_path):
    """Before any trial stored predictions it said 'none can be built: no trial stored predictions (the task's kind is
    "custom", prediction_dtype is "none", or no trial finished)', sending the user after settings the sweep lacks."""
    from orchestrator import load_ensemble

    copy = str(tmp_path / "cnn")
    shutil.copytree(sweep.path, copy)
    for folder in ("ensembles", "predictions", "dataset"):  # as while the first trials train
        shutil.rmtree(os.path.join(copy, folder))
    _refused_while_a_master_runs(copy)
    with pytest.raises(StorageError, match="none can be built: no trial stored predictions"):
        load_ensemble(copy, task=CNN_TASK)  # its master gone: nothing will build them


def test_an_ensemble_loads_by_the_id_its_table_row_holds(sweep):
    """load_ensemble(SWEEP, name=3), the table's int ensemble_id, said 'ensemble 3: no such ensemble'."""
    import pyarrow.parquet as pq

    from orchestrator import load_ensemble

    rows = pq.read_table(os.path.join(sweep.path, schema.ENSEMBLES_PATH)).to_pylist()
    last = rows[-1]
    assert load_ensemble(sweep.path, name=last["ensemble_id"], task=CNN_TASK).record.name == last["name"]
    assert load_ensemble(sweep.path, name=str(last["ensemble_id"]), task=CNN_TASK).record.name == last["name"]


def test_a_sweep_that_stored_no_predictions_loads_its_best_checkpoint(tmp_path, inputs):
    """prediction_dtype = "none" builds no ensembles, and load_ensemble(name="best") raised 'no such file, and none
    can be built ... the sweep's answer is its best trial (caviar top SWEEP_DIR)': no way to load that answer."""
    import numpy as np

    from orchestrator import load_ensemble
    from orchestrator.app.answer import ensemble_lines
    from orchestrator.ensemble.ensemble_run import best_checkpoint
    from tests.tasks.results43_cnn_task import load_data

    result = run_sweep(CNN_TASK, trials=2, epochs=2, slots=2, executor="processes", storage=str(tmp_path), name="np",
                       seed=3, prediction_dtype="none")
    storage = Storage.from_uri(result.path)
    assert not storage.exists(schema.ENSEMBLES_PATH)
    index = schema.read_dir(storage, "checkpoints", schema.CHECKPOINTS)
    best = best_checkpoint(index.to_pylist())
    model = load_ensemble(result.path, task=CNN_TASK)
    assert model.record is None and len(model.members) == 1
    labels = load_data()[1][1]
    probs = model(inputs).double().numpy()  # class probabilities, as the best checkpoint's val_log_loss measured
    assert np.allclose(probs.sum(1), 1.0)
    assert abs(-np.log(probs[np.arange(len(labels)), labels]).mean() - dict(best["metrics"])["val_log_loss"]) < 1e-4
    lines = ensemble_lines(result.path, CNN_TASK)
    assert lines[0].startswith(f"Best checkpoint: trial {best['trial_id']} epoch {best['epoch']}")
    assert lines[0].endswith('no ensembles for prediction_dtype = "none" (no trial stored predictions)')
    assert lines[1].startswith("Load it: from orchestrator import load_ensemble; model = load_ensemble(")
    with pytest.raises(StorageError, match=r'ran with prediction_dtype = "none", so no trial stored the predictions '
                                           r'ensembles average; its answer is its best checkpoint \(load_ensemble\('
                                           r'SWEEP, name="best"\) loads it\)$'):
        load_ensemble(result.path, name="top_k", task=CNN_TASK)


def test_a_regression_ensemble_takes_a_dataframe_of_the_sweeps_dtype(regression_sweep):
    """A pandas DataFrame of tabular inputs raised KeyError: 5 (torch read it as a sequence of columns)."""
    import numpy as np
    import pandas as pd

    from orchestrator import load_ensemble
    from orchestrator.errors import ConfigError
    from tests.tasks.results43_regression_task import load_data

    x = load_data()[1][0]  # float32 (N, 5)
    model = load_ensemble(regression_sweep.path, task=REGRESSION_TASK)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])
    with pytest.warns(UserWarning, match="^the sweep trained on arrays, so the DataFrame's columns are taken in the "
                                         "order given, by position, not by name"):
        assert np.array_equal(model(frame).numpy(), model(x).numpy())
    assert np.array_equal(model.predict(frame).numpy(), model.predict(x).numpy())
    with pytest.raises(ConfigError, match="^inputs are float64 but the sweep's models trained on float32 inputs"):
        model(frame.astype("float64"))  # refused as the array would be, never cast
    with pytest.raises(ConfigError, match=r"^inputs hold Python objects \(a DataFrame whose columns differ in "
                                          r"dtype\?\); pass float32 values \(caviar never casts inputs\)$"):
        model(frame.assign(f0="a"))  # a text column
    polars = pytest.importorskip("polars")  # a test dependency
    assert np.array_equal(model(polars.DataFrame(x)).numpy(), model(x).numpy())


def test_mirrored_images_of_a_numpy_view_predict_as_their_copy(sweep, inputs):
    """np.flip(x, -1) (test-time augmentation) raised torch's 'At least one stride in the given numpy array is
    negative'."""
    import numpy as np

    from orchestrator import load_ensemble

    model = load_ensemble(sweep.path, task=CNN_TASK)
    mirrored = np.flip(inputs, axis=-1)
    assert np.array_equal(model(mirrored).numpy(), model(mirrored.copy()).numpy())
    assert np.array_equal(model.predict(mirrored).numpy(), model.predict(mirrored.copy()).numpy())


def test_a_sweep_and_its_task_load_from_pathlib_paths(sweep, inputs):
    """load(Path(...)) and load_ensemble(Path(...)) raised "TypeError: argument of type 'PosixPath' is not iterable"."""
    from pathlib import Path

    import numpy as np

    from orchestrator import load_ensemble
    from orchestrator.app.api import load

    tables = load(Path(sweep.path))
    assert tables.path == sweep.path
    assert tables.top(3).to_pylist() == load(sweep.path).top(3).to_pylist()
    model = load_ensemble(Path(sweep.path), task=Path(CNN_TASK))
    assert np.array_equal(model(inputs).numpy(), load_ensemble(sweep.path, task=CNN_TASK)(inputs).numpy())


def test_a_sweep_runs_from_pathlib_paths_and_writes_text_settings(tmp_path):
    """run_sweep(Path(task), storage=tmp_path) raised AttributeError ('PosixPath' object has no attribute 'settings'),
    or (a string task) TypeError in the sweep row after the sweep's folder was claimed, leaving a lease behind."""
    import json
    from pathlib import Path

    result = run_sweep(Path(REGRESSION_TASK), storage=tmp_path, name="paths", trials=2, epochs=1, slots=1,
                       executor="processes", ensemble=False)
    assert result.path == str(tmp_path / "paths")
    row = Storage.from_uri(result.path).read_table(schema.SWEEP_PATH).to_pylist()[0]
    assert json.loads(row["settings"])["storage"] == str(tmp_path)


def test_a_finished_sweep_resumes_from_pathlib_paths(regression_sweep):
    """resume_sweep(Path(sweep), task=Path(task)) raised AttributeError ("'PosixPath' object has no attribute
    'partition'")."""
    from pathlib import Path

    from orchestrator.app.api import resume_sweep

    result = resume_sweep(Path(regression_sweep.path), task=Path(REGRESSION_TASK))
    assert result.note == f"sweep {regression_sweep.path} has finished: nothing to resume, nothing written"
    # its chosen ensemble, as the run's own result holds it (it was None: "not built")
    assert result.ensemble is not None and regression_sweep.ensemble is not None
    assert (result.ensemble.name, result.ensemble.members) == (regression_sweep.ensemble.name,
                                                               regression_sweep.ensemble.members)


def test_an_ensemble_loads_reading_only_its_members_checkpoint_index_files(sweep, inputs):
    """load_ensemble read the checkpoint index of every trial (one file each) to find its members' weights: 0.70 s
    of its 0.86 s on a 1,240-trial sweep, and a GET per trial on an object store. It reads its members' trials'
    index files only, and loads the same models."""
    import torch

    from orchestrator import load_ensemble

    class Reads(Storage):
        listed, read = [], []

        def list_versions(self, rel_dir, suffix=".parquet"):
            self.listed.append(rel_dir)
            return super().list_versions(rel_dir, suffix)

        def read_bytes(self, rel):
            self.read.append(rel)
            return super().read_bytes(rel)

    rows = schema.read_dir(Storage.from_uri(sweep.path), "ensembles").to_pylist()
    plain = [row for row in rows if not row["weights_path"]]  # a soup's candidates are every trial's: it reads all
    assert plain
    for row in plain:
        Reads.listed.clear()
        Reads.read.clear()
        model = load_ensemble(Reads.from_uri(sweep.path), name=row["ensemble_id"], task=CNN_TASK)
        members = {m["trial_id"] for m in row["members"]}
        assert "checkpoints" not in Reads.listed
        assert {r for r in Reads.read if r.startswith("checkpoints/")} == {
            schema.checkpoint_index_path(t) for t in members}
        same = load_ensemble(sweep.path, name=row["ensemble_id"], task=CNN_TASK)
        assert torch.equal(model(inputs[:16]), same(inputs[:16]))


def test_top_reads_the_trials_table_only(sweep, tmp_path):
    """`caviar top` loaded every table, a metrics and a checkpoint file per trial, to print the trials table's best
    rows: 1.6 s of its 2.4 s on a 1,240-trial sweep. It reads the trials table only: a metrics file it has no use for
    (here damaged) no longer even matters."""
    from typer.testing import CliRunner

    from orchestrator.app.cli import app

    copy = str(tmp_path / "cnn")
    shutil.copytree(sweep.path, copy)
    with open(os.path.join(copy, schema.metrics_path(0)), "r+b") as f:
        f.write(b"not parquet")
    shown = CliRunner().invoke(app, ["top", copy, "-k", "2"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    expected = CliRunner().invoke(app, ["top", sweep.path, "-k", "2"], env={"COLUMNS": "250"})
    assert [line for line in shown.output.splitlines() if "│" in line] == [
        line for line in expected.output.splitlines() if "│" in line]


def test_a_dataset_a_loader_or_a_list_of_images_is_refused_saying_how_to_predict_on_it(sweep, inputs):
    """A streamed sweep's user passed the test Dataset or its DataLoader: torch's 'only one element tensors can be
    converted to Python scalars' and 'Could not infer dtype of DataLoader', naming neither the input nor a way on."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from orchestrator import load_ensemble
    from orchestrator.errors import ConfigError

    model = load_ensemble(sweep.path, task=CNN_TASK)
    x = torch.from_numpy(inputs[:6])
    dataset = TensorDataset(x, torch.zeros(6, dtype=torch.long))
    for given, named in [(dataset, "TensorDataset"), (DataLoader(dataset, batch_size=4), "DataLoader"),
                         (list(x), "list")]:
        for call in (model, model.predict):
            with pytest.raises(ConfigError, match=rf"^inputs are a {named}\b.*shape \(N, 1, 8, 8\): stack a "
                                                  r"Dataset's inputs .*predict batch by batch"):
                call(given)
    assert torch.equal(torch.cat([model.predict(b) for b, _ in DataLoader(dataset, batch_size=4)]), model.predict(x))


def test_a_model_with_random_features_drawn_in_build_model_loads_with_its_trials_features(tmp_path):
    """load_ensemble built each member from the generators' state of the moment: a non-persistent buffer of random
    features drawn from np.random in build_model was another draw than the trial's, and the loaded best model scored
    another val accuracy than the sweep recorded (0.108 against 0.175 on digits), without a word."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from orchestrator import load_ensemble
    from orchestrator.spec.task import load_task

    task = os.path.join(ROOT, "tests", "tasks", "random_features_task.py")
    result = run_sweep(task, trials=2, epochs=2, slots=1, executor="processes", storage=str(tmp_path), name="rff",
                       seed=5)
    x_val, y_val = load_task(task).get("load_data")()["val"]
    rows = pq.read_table(os.path.join(result.path, "ensembles")).to_pylist()
    recorded = {"single": next(r for r in rows if r["name"] == "single"), "best": next(r for r in rows if r["chosen"])}
    np.random.seed(123)  # the caller's own state: not a trial's, and left as it was
    before = np.random.get_state()[1].copy()
    for name, row in recorded.items():
        model = load_ensemble(result.path, name=name, task=task)
        with torch.no_grad():
            accuracy = float((np.asarray(model.predict(x_val)) == y_val).mean())
        assert accuracy == pytest.approx(row["val_accuracy"], abs=1e-6), name
    assert np.array_equal(np.random.get_state()[1], before)
