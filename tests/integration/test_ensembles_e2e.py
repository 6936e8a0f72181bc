"""A digits sweep on the real local Ray builds its ensembles at the end; a fresh process loads and checks them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from orchestrator.app.api import run_sweep
from orchestrator.app.cli import app
from orchestrator.ensemble.ensemble_run import METHODS, read_ensembles
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import DIGITS_TASK, ROOT


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs"))
    # float32 predictions: the table's test accuracy and a live forward pass then agree to the example.
    # Two seed copies of the best config: the seed ensemble too.
    return run_sweep(DIGITS_TASK, plan="4x2", seed_copies=2, slots=2, storage=storage, name="digits-ens", seed=11,
                     pruner="none", keep_best=2, prediction_dtype="float32")


def test_run_sweep_builds_every_ensemble_from_stored_predictions(sweep):
    storage = Storage.from_uri(sweep.path)
    records = read_ensembles(storage)
    assert [r.method for r in records] == list(METHODS)  # the digits space has EMA, so single_ema too
    chosen = [r for r in records if r.chosen]
    assert len(chosen) == 1 and sweep.ensemble == chosen[0]
    for r in records:
        assert r.test_accuracy is not None and 0.5 < r.val_accuracy <= 1.0
        assert abs(sum(m.weight for m in r.members) - 1.0) < 1e-9
    single = records[0]
    assert single.val_accuracy == max(r.val_accuracy for r in records if r.size == 1 and r.method != "soup")
    # Every trial left predictions for each checkpoint it kept, on val and test.
    index = schema.read_dir(storage, "checkpoints", schema.CHECKPOINTS)
    dataset = storage.read_table(schema.DATASET_PATH).to_pylist()[0]
    rows_per_checkpoint = len(dataset["y_val"]) + len(dataset["y_test"])
    seeds = next(r for r in records if r.method == "seeds")
    trials = {t["trial_id"]: t for t in storage.read_table(schema.TRIALS_PATH).to_pylist()}
    assert {m.key.trial_id for m in seeds.members} >= {4, 5}  # the copies, with the trial they copy
    assert len({json.dumps(trials[m.key.trial_id]["config"], sort_keys=True) for m in seeds.members}) == 1
    for trial_id in range(6):
        table = storage.read_table(schema.predictions_path(trial_id))
        kept = index.filter(pc.equal(index["trial_id"], trial_id)).num_rows
        assert table.num_rows == kept * rows_per_checkpoint
    soup = records[-1]
    assert soup.weights_path and storage.exists(soup.weights_path) and "note" in soup.detail


def test_load_ensemble_in_a_fresh_process_matches_the_table(sweep):
    records = read_ensembles(Storage.from_uri(sweep.path))
    names = ["best"] + [r.name for r in records]
    code = (
        "import json, sys\n"
        "from orchestrator import load_ensemble\n"
        "from orchestrator.spec.task import load_task\n"
        f"x, y = load_task({DIGITS_TASK!r}).get('load_data')()['test']\n"
        "out = {}\n"
        f"for name in {names!r}:\n"
        f"    model = load_ensemble({sweep.path!r}, name, device='cpu', trust_task_code=True)\n"
        "    out[name] = [float((model.predict(x).numpy() == y).mean()), len(y), model.record.name]\n"
        "out['ray_loaded'] = 'ray' in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("ray_loaded") is False  # loading an ensemble needs no Ray
    by_name = {r.name: r for r in records}
    chosen = next(r for r in records if r.chosen)
    assert out["best"][2] == chosen.name
    for name, (accuracy, n, _) in out.items():
        expected = chosen if name == "best" else by_name[name]
        # Same weights, same inputs: equal up to an argmax flip on an exact near-tie (at most one example).
        assert abs(accuracy - expected.test_accuracy) <= 1 / n + 1e-12, name


def test_cli_ensemble_builds_the_asked_methods_and_prints_the_table(sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep.path, copy)
    result = CliRunner().invoke(app, ["ensemble", str(copy), "-m", "top_k", "--method", "greedy", "-k", "2"])
    assert result.exit_code == 0, result.output
    for word in ("single", "top_k", "greedy", "test acc"):
        assert word in result.output
    records = read_ensembles(Storage.from_uri(str(copy)))
    assert [r.method for r in records] == ["single", "top_k", "greedy"]
    assert records[1].size <= 2
    cli = [os.path.join(os.path.dirname(sys.executable), "caviar")]  # the installed console script
    bad = subprocess.run([*cli, "ensemble", str(copy), "-m", "bogus"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "caviar: error: option 'method': bogus unknown "
        "(known: single, single_ema, top_k, checkpoints, ema, seeds, greedy, soup)"]


def test_cli_ensemble_by_default_builds_what_runs_no_task_code(sweep, tmp_path):
    """Every method by default, but the soup (it builds models with the task's code) only on request."""
    copy = tmp_path / "copy"
    shutil.copytree(sweep.path, copy)
    # The sweep built a soup, which a default rebuild without task code refuses to drop: drop it first.
    assert CliRunner().invoke(app, ["ensemble", str(copy), "-m", "top_k"]).exit_code == 0
    cli = [os.path.join(os.path.dirname(sys.executable), "caviar")]
    done = subprocess.run([*cli, "ensemble", str(copy)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "soup left out" in done.stderr and "--trust-task-code" in done.stderr
    methods = {r.method for r in read_ensembles(Storage.from_uri(str(copy)))}
    assert "soup" not in methods and {"single", "top_k", "greedy"} <= methods
