"""Who may write a sweep: a lease whose process id now belongs to another program does not hold the sweep."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from orchestrator.errors import StorageError
from orchestrator.store import schema
from orchestrator.store.lease import LEASE_PATH, Lease, LeaseRecord, master_alive, process_start_ticks, read_lease
from orchestrator.store.storage import Storage


@pytest.fixture
def other_process():
    """A live process of this host that is not a caviar master (it sleeps)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    time.sleep(0.5)  # its start is on record before the leases below are written
    yield proc
    proc.kill()
    proc.wait()


def lease_of(pid: int, started_ms: int, pid_start: int | None) -> bytes:
    return LeaseRecord("someone", socket.gethostname(), pid, started_ms, started_ms, pid_start=pid_start).encode()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process start times come from Linux's /proc")
def test_a_lease_whose_process_id_was_reused_after_a_restart_lets_resume_take_the_sweep(tmp_path, other_process):
    """A container restarted with its host name hands the dead master's id to another process: before, resume
    refused for ever ("is being written by process N on HOST; stop it first"), and so did --overwrite."""
    storage = Storage.from_uri(str(tmp_path / "sweep"))
    an_hour_ago = schema.now_ms() - 3_600_000  # the master took its lease, then died; the id was handed out again
    dead_master_start = process_start_ticks(other_process.pid) - 1  # it began before the program now holding its id
    storage.write_bytes(LEASE_PATH, lease_of(other_process.pid, an_hour_ago, dead_master_start))
    assert not master_alive(storage)
    Lease.take_over(storage)


def test_a_lease_held_by_its_live_process_still_refuses_a_second_writer(tmp_path, other_process):
    storage = Storage.from_uri(str(tmp_path / "sweep"))
    # the wall clock says nothing: an NTP step or a resumed VM moves it, and the master must still hold its sweep
    an_hour_ago = schema.now_ms() - 3_600_000
    storage.write_bytes(LEASE_PATH, lease_of(other_process.pid, an_hour_ago, process_start_ticks(other_process.pid)))
    assert master_alive(storage)
    with pytest.raises(StorageError, match=f"is being written by process {other_process.pid}"):
        Lease.take_over(storage)


def test_a_lease_records_its_masters_start_and_one_from_before_that_holds_by_its_process_id(tmp_path, other_process):
    storage = Storage.from_uri(str(tmp_path / "sweep"))
    Lease.create(storage)
    record = read_lease(storage)
    assert record is not None and record.pid_start == process_start_ticks(record.pid)
    storage.write_bytes(LEASE_PATH, lease_of(other_process.pid, schema.now_ms(), None))  # an older caviar's lease
    assert master_alive(storage)
    newer = b'{"owner": "x", "host": "h", "pid": 1, "started": 0, "heartbeat": 0, "fencing": 3}'
    storage.write_bytes(LEASE_PATH, newer)  # a field a later caviar added: read, not refused
    assert read_lease(storage).owner == "x"
