"""`caviar ensemble` on a sweep that built a soup: a rebuild without task code never silently deletes it.
A real tiny sweep in child processes (no Ray); the CLI in this process."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from orchestrator.app.api import run_sweep
from orchestrator.app.cli import app
from orchestrator.ensemble.ensemble_run import read_ensembles
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import TINY_TASK
from worker.load.ensemble_model import load_ensemble


def soup_files(storage: Storage) -> list[str]:
    return storage.list_files(schema.ENSEMBLE_WEIGHTS_DIR, suffix=".safetensors")


def has_its_soup(storage: Storage) -> bool:
    """A soup row, and its weights file the only one there."""
    rows = [r for r in read_ensembles(storage) if r.method == "soup"]
    return len(rows) == 1 and soup_files(storage) == [rows[0].weights_path]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return run_sweep(TINY_TASK, trials=3, epochs=2, stages=1, pruner="none", seed=3, slots=1, keep_best=2,
                     storage=str(tmp_path_factory.mktemp("runs")), name="soup", executor="processes")


@pytest.fixture
def copy(sweep, tmp_path) -> Storage:
    storage = Storage.from_uri(str(shutil.copytree(sweep.path, tmp_path / "copy")))
    assert has_its_soup(storage)
    return storage


def test_a_default_rebuild_without_task_code_refuses_before_touching_the_soup(copy):
    before = copy.read_bytes(schema.ENSEMBLES_PATH)
    result = CliRunner().invoke(app, ["ensemble", copy.root])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"caviar: error: {copy.root} has a soup that only --task FILE or --trust-task-code can rebuild; pass one, "
        "or name the other methods with --method to rebuild those and drop the soup"]
    assert copy.read_bytes(schema.ENSEMBLES_PATH) == before and has_its_soup(copy)
    assert load_ensemble(copy.root, "soup", task=TINY_TASK).record.method == "soup"


def test_naming_other_methods_drops_the_soup_with_its_weights_and_says_so(copy):
    result = CliRunner().invoke(app, ["ensemble", copy.root, "-m", "top_k,greedy"])
    assert result.exit_code == 0, result.output
    assert "caviar: soup dropped: --method did not name it; its row and weights file are deleted" in result.stderr
    assert [r.method for r in read_ensembles(copy)] == ["single", "top_k", "greedy"]
    assert soup_files(copy) == []  # no orphan left behind
    again = CliRunner().invoke(app, ["ensemble", copy.root])  # no soup left to lose: the rest rebuild
    assert again.exit_code == 0, again.output
    assert "soup left out" in again.stderr and "soup dropped" not in again.stderr


def test_with_the_stored_task_the_default_rebuild_keeps_a_soup(copy):
    result = CliRunner().invoke(app, ["ensemble", copy.root, "--trust-task-code", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert has_its_soup(copy)


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


def test_a_rebuild_killed_before_its_table_leaves_the_tables_soup_loadable(copy, monkeypatch):
    # the soup's weights had one name: a rebuild that made another soup (a resumed sweep's new trials) and was killed
    # before it wrote its table left the old row pointing at the new weights, and load_ensemble failed on the sha256
    import safetensors.torch

    import orchestrator.ensemble.ensemble_run as ensemble_run

    before = copy.read_bytes(schema.ENSEMBLES_PATH)
    saved = safetensors.torch.save

    def another_soup(tensors, *args, **kwargs):
        return saved({**tensors, "other": torch.zeros(1)}, *args, **kwargs)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save", another_soup)
    monkeypatch.setattr(ensemble_run, "write_ensembles", killed)
    CliRunner().invoke(app, ["ensemble", copy.root, "--trust-task-code", "--device", "cpu"])
    monkeypatch.undo()
    assert copy.read_bytes(schema.ENSEMBLES_PATH) == before
    assert load_ensemble(copy.root, "soup", task=TINY_TASK).record.method == "soup"
    assert len(soup_files(copy)) == 2  # the table's soup, and the killed build's
    rebuilt = CliRunner().invoke(app, ["ensemble", copy.root, "--trust-task-code", "--device", "cpu"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert has_its_soup(copy)  # the killed build's file is gone with the next build
