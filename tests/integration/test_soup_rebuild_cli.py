"""`caviar ensemble` on a sweep that built a soup: a rebuild without task code never silently deletes it.
A real tiny sweep in child processes (no Ray); the CLI in this process."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from orchestrator.app.api import run_sweep
from orchestrator.app.cli import app
from orchestrator.ensemble.ensemble_run import read_ensembles
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import TINY_TASK
from worker.load.ensemble_model import load_ensemble

SOUP_WEIGHTS = schema.ensemble_weights_path("soup")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return run_sweep(TINY_TASK, trials=3, epochs=2, stages=1, pruner="none", seed=3, slots=1, keep_best=2,
                     storage=str(tmp_path_factory.mktemp("runs")), name="soup", executor="processes")


@pytest.fixture
def copy(sweep, tmp_path) -> Storage:
    storage = Storage.from_uri(str(shutil.copytree(sweep.path, tmp_path / "copy")))
    assert "soup" in {r.method for r in read_ensembles(storage)} and storage.exists(SOUP_WEIGHTS)
    return storage


def test_a_default_rebuild_without_task_code_refuses_before_touching_the_soup(copy):
    before = copy.read_bytes(schema.ENSEMBLES_PATH)
    result = CliRunner().invoke(app, ["ensemble", copy.root])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"caviar: error: {copy.root} has a soup that only --task FILE or --trust-task-code can rebuild; pass one, "
        "or name the other methods with --method to rebuild those and drop the soup"]
    assert copy.read_bytes(schema.ENSEMBLES_PATH) == before and copy.exists(SOUP_WEIGHTS)
    assert load_ensemble(copy.root, "soup", task=TINY_TASK).record.method == "soup"


def test_naming_other_methods_drops_the_soup_with_its_weights_and_says_so(copy):
    result = CliRunner().invoke(app, ["ensemble", copy.root, "-m", "top_k,greedy"])
    assert result.exit_code == 0, result.output
    assert "caviar: soup dropped: --method did not name it; its row and weights file are deleted" in result.stderr
    assert [r.method for r in read_ensembles(copy)] == ["single", "top_k", "greedy"]
    assert not copy.exists(SOUP_WEIGHTS)  # no orphan left behind
    again = CliRunner().invoke(app, ["ensemble", copy.root])  # no soup left to lose: the rest rebuild
    assert again.exit_code == 0, again.output
    assert "soup left out" in again.stderr and "soup dropped" not in again.stderr


def test_with_the_stored_task_the_default_rebuild_keeps_a_soup(copy):
    result = CliRunner().invoke(app, ["ensemble", copy.root, "--trust-task-code", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "soup" in {r.method for r in read_ensembles(copy)} and copy.exists(SOUP_WEIGHTS)


def test_a_sweep_still_being_written_is_refused_by_ensemble_and_by_overwrite_before_anything_is_touched(copy):
    import socket
    import subprocess

    from orchestrator.store.lease import LEASE_PATH, LeaseRecord

    master = subprocess.Popen(["sleep", "60"])  # a live process on this host stands for the sweep's master
    try:
        copy.write_bytes(LEASE_PATH, LeaseRecord("x", socket.gethostname(), master.pid, 0, 0).encode())
        before = copy.read_bytes(schema.ENSEMBLES_PATH)
        result = CliRunner().invoke(app, ["ensemble", copy.root, "--trust-task-code"])
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines() == [
            f"caviar: error: sweep {copy.root!r} is still being written by process {master.pid} on "
            f"{socket.gethostname()}, and its end builds the ensembles; run caviar ensemble once it has finished"]
        assert copy.read_bytes(schema.ENSEMBLES_PATH) == before
        from orchestrator.app.api import claim_sweep
        from orchestrator.errors import StorageError

        with pytest.raises(StorageError, match=rf"is being written by process {master.pid} on .*; stop it first "
                                               r"\(--overwrite then replaces it\)$"):
            claim_sweep(copy, overwrite=True)
        assert copy.read_bytes(schema.ENSEMBLES_PATH) == before
    finally:
        master.kill()
        master.wait()


@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_a_soup_device_this_machine_lacks_is_named_before_anything_is_built(copy, device):
    """It was torch's 'Cannot access accelerator device when none is available' once the models were built."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = copy.read_bytes(schema.ENSEMBLES_PATH)
    result = CliRunner().invoke(app, ["ensemble", copy.root, "--trust-task-code", "--device", device])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"caviar: error: option '--device': device {device!r}: ")
    assert copy.read_bytes(schema.ENSEMBLES_PATH) == before


def test_a_sweep_without_stored_predictions_is_one_line_with_no_word_about_soups(copy):
    """As a sweep whose every trial diverged: it said 'soup left out: ...' first, then the real error."""
    shutil.rmtree(copy.path("dataset"))  # no trial wrote the sweep's labels: none stored predictions
    result = CliRunner().invoke(app, ["ensemble", copy.root])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("caviar: error: ") and "no trial of this sweep stored predictions" in line
