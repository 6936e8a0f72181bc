"""`caviar ls` names each sweep by its folder, the name `--storage` finds it by, also once copied or renamed."""

from __future__ import annotations

import shutil

import pytest

from orchestrator.errors import StorageError
from orchestrator.store import schema
from orchestrator.store.storage import Storage, redact_uri
from orchestrator.store.sweeps import list_sweeps, resolve_sweep


def write_sweep(folder, name: str) -> None:
    row = {"name": name, "task": "task.py", "seed": 0, "settings": "{}", "space": "{}", "created": schema.now_ms()}
    Storage.from_uri(str(folder)).write_table(schema.SWEEP_PATH, schema.to_table([row], schema.SWEEP))


def test_a_copied_and_a_renamed_sweep_are_listed_by_their_folders(tmp_path):
    storage = tmp_path / "runs ü"
    write_sweep(storage / "digits", "digits")
    shutil.copytree(storage / "digits", storage / "digits-backup")  # a copy kept before an experiment
    write_sweep(storage / "renamed", "old-name")  # run as old-name, its folder renamed since
    names = [row["name"] for row in list_sweeps(str(storage))]
    # before: digits, digits, old-name: two rows of one name, and a name no command finds
    assert sorted(names) == ["digits", "digits-backup", "renamed"]
    for name in names:
        assert resolve_sweep(name, str(storage)) == str(storage / name)  # each listed name finds its own folder


def test_ls_of_a_sweep_folder_says_it_is_a_sweep(tmp_path):
    """Before: "storage '.../digits': no sweeps in it", as if the sweep were missing."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    write_sweep(tmp_path / "digits", "digits")
    caviar = os.path.join(os.path.dirname(sys.executable), "caviar")
    done = subprocess.run([caviar, "ls", str(tmp_path / "digits")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 2
    assert done.stderr.strip() == (f"caviar: error: '{tmp_path / 'digits'}' is a sweep, not a storage folder of "
                                   f"sweeps: caviar status {tmp_path / 'digits'} shows it, caviar ls of the folder "
                                   "above lists it with the others")


def test_ls_takes_the_storage_as_status_and_top_do_and_defaults_to_caviar_runs(tmp_path, monkeypatch):
    # `caviar ls --storage runs` said "No such option: --storage", and a bare `caviar ls` wanted an argument, while
    # `caviar run` writes to caviar-runs when given no --storage
    from typer.testing import CliRunner

    from orchestrator.app.cli import app

    write_sweep(tmp_path / "caviar-runs" / "digits", "digits")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (["ls"], ["ls", "--storage", "caviar-runs"], ["ls", "caviar-runs"]):
        listed = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert listed.exit_code == 0 and "1 sweeps in caviar-runs" in listed.output and "digits" in listed.output
    twice = runner.invoke(app, ["ls", "caviar-runs", "--storage", "elsewhere"])
    assert twice.exit_code == 2
    assert twice.stderr.strip() == ("caviar: error: storage: given twice, 'caviar-runs' and --storage 'elsewhere'; "
                                    "give one")


def test_a_sweep_name_without_storage_is_found_where_caviar_run_put_it(tmp_path, monkeypatch):
    """`caviar run task.py --name digits` writes caviar-runs/digits; `caviar status digits` then said "'digits' is not
    a caviar sweep directory", as did top, report, ensemble and resume. A sweep folder of that name here still wins."""
    from typer.testing import CliRunner

    from orchestrator.app.cli import app

    write_sweep(tmp_path / "caviar-runs" / "digits", "digits")
    monkeypatch.chdir(tmp_path)
    assert resolve_sweep("digits", None, "caviar-runs") == "caviar-runs/digits"
    assert resolve_sweep("digits", None) == "digits"  # Python's load() takes paths only, as before
    assert resolve_sweep("nothing", None, "caviar-runs") == "nothing"  # the caller's error names what was typed
    assert resolve_sweep("../digits", None, "caviar-runs") == "../digits"  # a path, not a name
    status = CliRunner().invoke(app, ["status", "digits"], env={"COLUMNS": "200"})
    assert status.exit_code == 0 and status.output.startswith("sweep digits (task task.py, seed 0)")
    write_sweep(tmp_path / "digits", "here")
    assert resolve_sweep("digits", None, "caviar-runs") == "digits"


@pytest.mark.parametrize("folder", ["what?", "runs #2", "100% done", "my runs"])
def test_a_storage_folder_with_url_special_characters_names_its_sweeps_where_they_are(tmp_path, folder):
    """A `?` in a local folder's name was taken for a URI's query: `runs?/digits` became `runs/digits?`, and status,
    load and the report's path all looked in a folder that does not exist."""
    from orchestrator.app.report_helper import report_location
    from orchestrator.app.tables import open_sweep

    storage = tmp_path / folder
    write_sweep(storage / "digits", "digits")
    sweep = Storage.from_uri(str(storage)).child("digits")
    assert sweep.uri == str(storage / "digits") and sweep.root == str(storage / "digits")
    assert resolve_sweep("digits", str(storage)) == str(storage / "digits")
    assert open_sweep(sweep.uri).root == str(storage / "digits")
    assert report_location(sweep.uri) == str(storage / "digits" / "report.html")


def test_a_hash_in_an_object_store_uri_is_refused_before_it_cuts_off_the_query():
    """`s3://b/runs#2/x?endpoint_override=...`: pyarrow reads `#2/x?...` as a fragment, so the sweep would have gone
    to prefix `runs` on the default endpoint (AWS itself), not to the server the query names."""
    with pytest.raises(StorageError, match="'#' in a URI starts a fragment.*%23"):
        Storage.from_uri("s3://KEY:SECRET@bucket/runs#2/x?endpoint_override=127.0.0.1:9&scheme=http")


def test_a_uri_as_caviar_prints_it_is_refused_naming_the_masked_secret():
    """The resume and load lines caviar prints mask the secret as '***'; pasted back, the store was asked with the
    secret '***' and answered with its own access error (a server that checks none took it)."""
    printed = "s3://KEY:***@bucket/runs/x?endpoint_override=127.0.0.1:9&scheme=http"
    with pytest.raises(StorageError, match=r"'\*\*\*' stands where the URI's secret goes.*put the secret back"):
        Storage.from_uri(printed)
    assert Storage.from_uri(printed.replace("***", "SECRET")).uri  # the real secret opens it
    assert redact_uri(printed.replace("***", "SECRET")) == printed


def test_a_question_mark_in_a_file_uri_is_refused_and_its_percent_encoding_names_the_folder(tmp_path):
    """pyarrow drops a file:// URI's query: `file:///data/what?/runs` wrote to `/data/what`."""
    with pytest.raises(StorageError, match="file:// URI takes no query.*%3F"):
        Storage.from_uri(f"file://{tmp_path}/what?/runs")
    assert Storage.from_uri(f"file://{tmp_path}/what%3F/runs").child("digits").root == f"{tmp_path}/what?/runs/digits"


def test_a_real_run_into_a_folder_named_with_a_question_mark_reads_back_and_names_its_report(tmp_path):
    """Before: the run trained and wrote `what?/tiny`, then failed reading it back ('what/tiny?' is not a caviar sweep
    directory), and `caviar status tiny --storage 'what?'` said the same."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, TINY_TASK

    caviar = os.path.join(os.path.dirname(sys.executable), "caviar")
    env = {**os.environ, "PYTHONPATH": ROOT}
    storage = str(tmp_path / "what?")
    run = subprocess.run([caviar, "run", TINY_TASK, "--trials", "2", "--epochs", "1", "--stages", "1", "--slots", "1",
                          "--storage", storage, "--name", "tiny", "--executor", "processes", "--plain"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Report: {storage}/tiny/report.html" in run.stdout and os.path.exists(f"{storage}/tiny/report.html")
    status = subprocess.run([caviar, "status", "tiny", "--storage", storage], capture_output=True, text=True,
                            timeout=120, env=env)
    assert status.returncode == 0 and "sweep tiny" in status.stdout, status.stderr


def test_a_sweep_whose_master_died_with_every_written_trial_ended_is_stopped_not_finished(tmp_path):
    """A master killed after writing stage 1's ended trials but before stage 2's row (or while it built the
    ensembles) left tables whose every trial ended and whose stage rows add up: `caviar ls` called the sweep
    finished, so nothing said to resume it. Its lease, never released, says the master did not reach the end."""
    import dataclasses
    import subprocess
    import sys

    import pyarrow as pa

    from orchestrator.store.lease import LEASE_PATH, LeaseRecord

    folder = tmp_path / "runs" / "cut"
    write_sweep(folder, "cut")
    storage = Storage.from_uri(str(folder))
    storage.write_table(schema.TRIALS_PATH, pa.table({"trial_id": [0, 1], "status": ["completed", "pruned"],
                                                      "best_score": [0.9, 0.5]}))
    stage = {"stage": 1, "trials": 2, "epochs": 1, "space": "{}", "first_trial_id": 0, "time": schema.now_ms()}
    storage.write_table(schema.stage_path(1), schema.to_table([stage], schema.STAGES))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    record = LeaseRecord("owner", socket.gethostname(), int(gone.stdout), schema.now_ms(), schema.now_ms())
    storage.write_bytes(LEASE_PATH, record.encode())
    [row] = list_sweeps(str(tmp_path / "runs"))
    assert row["state"] == "stopped (caviar resume continues it)"
    storage.write_bytes(LEASE_PATH, dataclasses.replace(record, released=True).encode())
    [row] = list_sweeps(str(tmp_path / "runs"))
    assert row["state"] == "finished"
