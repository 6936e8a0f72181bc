"""SweepTables.top on plain pyarrow tables: which trials a stopped sweep calls its best."""

from __future__ import annotations

import pyarrow as pa

from orchestrator.app.tables import SweepTables


def tables_of(rows: list[dict]) -> SweepTables:
    empty = pa.table({})
    return SweepTables("sweep", empty, pa.Table.from_pylist(rows), empty, empty, empty, empty)


def test_a_stage_stopped_before_any_trial_completed_ranks_after_the_stage_before():
    """Killed one epoch into stage 2: its pruned and running trials (0.5) were called the best over stage 1's 0.9."""
    rows = [{"trial_id": 0, "stage": 1, "status": "completed", "max_epochs": 5, "best_score": 0.90},
            {"trial_id": 1, "stage": 1, "status": "completed", "max_epochs": 5, "best_score": 0.80},
            {"trial_id": 2, "stage": 2, "status": "pruned", "max_epochs": 20, "best_score": 0.50},
            {"trial_id": 3, "stage": 2, "status": "running", "max_epochs": 20, "best_score": 0.55},
            {"trial_id": 4, "stage": 2, "status": "pending", "max_epochs": 20, "best_score": None}]
    assert tables_of(rows).top(10).column("trial_id").to_pylist() == [0, 1, 3, 2]


def test_a_stage_with_a_completed_trial_still_ranks_first_as_it_trained_longest():
    rows = [{"trial_id": 0, "stage": 1, "status": "completed", "max_epochs": 5, "best_score": 0.90},
            {"trial_id": 1, "stage": 2, "status": "completed", "max_epochs": 20, "best_score": 0.85},
            {"trial_id": 2, "stage": 2, "status": "pruned", "max_epochs": 20, "best_score": 0.88}]
    top = tables_of(rows).top(2)
    assert top.column("trial_id").to_pylist() == [2, 1] and top.column_names == ["trial_id", "stage", "status",
                                                                                  "max_epochs", "best_score"]


def test_top_ranks_as_the_sweeps_best_in_a_plan_whose_stages_train_equally_long():
    """8x5,8x5: `caviar top` and `status` put stage 2's 0.33 first while the run's summary and the report named
    stage 1's 0.9 (Controller.best); both rules are now one. Ties keep trial order; NaN goes last."""

    rows = [{"trial_id": 0, "stage": 0, "status": "completed", "max_epochs": 5, "best_score": 0.90},
            {"trial_id": 1, "stage": 0, "status": "completed", "max_epochs": 5, "best_score": float("nan")},
            {"trial_id": 2, "stage": 1, "status": "completed", "max_epochs": 5, "best_score": 0.33},
            {"trial_id": 3, "stage": 1, "status": "completed", "max_epochs": 5, "best_score": 0.90},
            {"trial_id": 4, "stage": 0, "status": "completed", "max_epochs": 5, "best_score": 0.90}]
    assert tables_of(rows).top(10).column("trial_id").to_pylist() == [3, 0, 4, 2, 1]


def test_a_sweep_whose_live_master_has_not_written_trials_yet_says_to_wait_not_to_resume(tmp_path):
    import socket
    import subprocess
    import sys

    import pytest

    from orchestrator.app.tables import load
    from orchestrator.errors import StorageError
    from orchestrator.store import schema
    from orchestrator.store.lease import LEASE_PATH, LeaseRecord, process_start_ticks
    from orchestrator.store.storage import Storage

    sweep = Storage.from_uri(str(tmp_path / "starting"))
    sweep.write_table(schema.SWEEP_PATH, schema.to_table([{"name": "starting", "task": "t.py", "seed": 0}],
                                                         schema.SWEEP))
    master = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a master still loading data
    try:
        now = schema.now_ms()
        sweep.write_bytes(LEASE_PATH, LeaseRecord("m", socket.gethostname(), master.pid, now, now,
                                                  pid_start=process_start_ticks(master.pid)).encode())
        with pytest.raises(StorageError, match=f"has no trials yet: its master \\(process {master.pid} on .*still "
                                               "starting; ask again"):
            load(sweep.root)
    finally:
        master.kill()
        master.wait()
    with pytest.raises(StorageError, match="stopped before it wrote its first trials .*--trust-task-code"):
        load(sweep.root)  # its master gone, no task manifest: the stored copy is the way


def test_the_resume_commands_printed_paste_into_a_shell_as_one_argument_each(tmp_path, capsys):
    """`caviar resume s3://b/p/cut?endpoint_override=h:9&scheme=http` pasted into bash ran `caviar resume
    s3://b/p/cut?endpoint_override=h:9` in the background and `scheme=http` as a second command."""
    import shlex

    from orchestrator.app.tables import resume_command
    from orchestrator.decide.interrupt import print_hint
    from orchestrator.store.storage import Storage

    uri = "s3://bucket/team/cut?endpoint_override=127.0.0.1:9&scheme=http"
    task = str(tmp_path / "my task.py")
    print_hint(uri, task)
    line = capsys.readouterr().err.strip().removeprefix("interrupted: ")
    assert shlex.split(line) == ["caviar", "resume", uri, "--task", task]
    command = resume_command(Storage.from_uri(str(tmp_path / "no manifest")), uri)
    assert shlex.split(command) == ["caviar", "resume", uri, "--trust-task-code"]


def test_top_refuses_a_count_that_is_no_count():
    # top(-1) sliced the ranking as Python does: every trial but the worst, said nowhere
    import pytest

    from orchestrator.errors import ConfigError

    rows = [{"trial_id": i, "stage": 1, "status": "completed", "max_epochs": 5, "best_score": i} for i in range(3)]
    for k in (-1, 2.0, True, "2"):
        with pytest.raises(ConfigError, match=r"^top: k is how many trials, an integer >= 0, got "):
            tables_of(rows).top(k)  # type: ignore[arg-type]
    assert tables_of(rows).top(0).num_rows == 0 and tables_of(rows).top(5).column("trial_id").to_pylist() == [2, 1, 0]


def test_a_run_shows_its_folder_as_typed_below_the_working_directory_and_absolute_elsewhere(tmp_path, monkeypatch):
    import os

    from orchestrator.app.cli_common import as_typed

    inside, gone = tmp_path / "here", tmp_path / "gone"
    inside.mkdir()
    gone.mkdir()
    monkeypatch.chdir(inside)
    assert as_typed(str(inside / "runs" / "s")) == os.path.join("runs", "s")
    assert as_typed(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")
    assert as_typed("s3://bucket/runs/s") == "s3://bucket/runs/s"
    monkeypatch.chdir(gone)
    gone.rmdir()  # a working directory removed during the run: relpath would raise FileNotFoundError
    assert as_typed(str(tmp_path / "x")) == str(tmp_path / "x")
