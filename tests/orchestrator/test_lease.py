"""Who may write a sweep: a lease whose process id now belongs to another program does not hold the sweep."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.errors import StorageError
from orchestrator.store import schema
from orchestrator.store.lease import LEASE_PATH, Lease, LeaseRecord, master_alive, process_start_ticks, read_lease
from orchestrator.store.storage import Storage
from tests.conftest import ROOT


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
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [LEASE_PATH]  # a refusal writes nothing


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


RACER = """
import sys, time
from orchestrator.errors import StorageError
from orchestrator.store.lease import Lease
from orchestrator.store.storage import Storage
from tests.conftest import ROOT

storage = Storage.from_uri(sys.argv[1])
while time.time() < float(sys.argv[2]):  # both racers leave this loop in the same instant
    pass
try:
    print("took", Lease.take_over(storage).record.owner, flush=True)
except StorageError as refused:
    print("refused", refused, flush=True)
sys.stdin.read()  # a master that took the sweep stays alive until the test has seen both answers
"""


@pytest.mark.parametrize("old_lease", ["released", "none"])
def test_two_resumes_started_in_the_same_instant_exactly_one_takes_the_lease(tmp_path, old_lease):
    """Two `caviar resume` of one sweep at once: before, both read the dead master's lease, both wrote their own,
    and two masters wrote one sweep. Now the check and the write are one step on a local disk."""
    rounds = 6
    for round_ in range(rounds):
        storage = Storage.from_uri(str(tmp_path / f"sweep-{round_}"))
        if old_lease == "released":
            storage.write_bytes(LEASE_PATH, LeaseRecord("gone", socket.gethostname(), 1, 0, 0, released=True).encode())
        start = time.time() + 0.8  # past both interpreters' start
        racers = [subprocess.Popen([sys.executable, "-c", RACER, storage.root, str(start)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": ROOT, "CAVIAR_FAULT_DELAY_TAKE_OVER": "0.2"})
                  for _ in range(2)]
        answers = [racer.stdout.readline() for racer in racers]
        for racer in racers:
            racer.communicate("", timeout=30)
        took = [answer.split()[1] for answer in answers if answer.startswith("took ")]
        assert len(took) == 1, f"round {round_}: {answers}"
        assert read_lease(storage).owner == took[0]
        refused = next(answer for answer in answers if not answer.startswith("took "))
        assert "is being written by process" in refused or "is taken by another caviar run" in refused, refused


def test_a_mount_without_locks_takes_the_lease_over_unlocked_as_before(tmp_path, monkeypatch):
    """A FUSE bucket or an NFS without lockd answers the lock with ENOLCK: resume goes on (as on an object store)
    rather than stopping on a traceback."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    storage = Storage.from_uri(str(tmp_path / "sweep"))
    storage.write_bytes(LEASE_PATH, LeaseRecord("gone", socket.gethostname(), 1, 0, 0, released=True).encode())
    lease = Lease.take_over(storage)
    assert read_lease(storage).owner == lease.record.owner


FULL_DISK_CLAIM = """
import resource, signal, sys
from orchestrator.errors import StorageError
from orchestrator.store.lease import Lease
from orchestrator.store.storage import Storage

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit a write fails (EFBIG), as a full disk fails it
storage = Storage.from_uri(sys.argv[1])
storage.fs.create_dir(storage.root, recursive=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))  # the lease's first 16 bytes fit, the rest does not
try:
    Lease.create(storage)
except StorageError as refused:
    print("refused:", refused)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE stands in for a full disk")
def test_a_lease_whose_write_fails_leaves_no_half_file_that_blocks_the_name(tmp_path):
    """Before: the lease was created, then its write failed (a full disk), and the half-written `_lease.json` stayed:
    `caviar run` said the sweep already exists, and `--overwrite` and `resume` stopped on 'not a readable lease'
    until the user deleted the file by hand. Now the lease appears whole or not at all."""
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-c", FULL_DISK_CLAIM, str(sweep)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.stdout.startswith("refused: writing ") and "_lease.json" in done.stdout, done.stdout + done.stderr
    assert not (sweep / LEASE_PATH).exists() and not [p.name for p in sweep.iterdir()]  # no temp file either
    lease = Lease.create(Storage.from_uri(str(sweep)))  # the disk has room again: the name is free
    assert read_lease(lease.storage).owner == lease.record.owner


def test_a_sweep_another_thread_of_this_process_writes_is_not_taken_over(tmp_path):
    # A notebook's sweep in a background thread shares the process id with the notebook: its lease read as a dead
    # master's, so run_sweep(..., overwrite=True) or resume_sweep in the main thread deleted and rewrote its tables
    # while it still wrote them.
    import threading

    storage = Storage.from_uri(str(tmp_path / "sweep"))
    held, done = threading.Event(), threading.Event()
    leases: list[Lease] = []

    def background_run() -> None:
        leases.append(Lease.create(storage))
        held.set()
        done.wait(30)

    thread = threading.Thread(target=background_run)
    thread.start()
    try:
        assert held.wait(30)
        with pytest.raises(StorageError, match="being written by another thread of this process"):
            Lease.take_over(storage)
        assert master_alive(storage)
        leases[0].release()  # the run ended: the sweep is free at once
        Lease.take_over(storage).release()
    finally:
        done.set()
        thread.join()
    leases.clear()
    thread = threading.Thread(target=lambda: leases.append(Lease.create(Storage.from_uri(str(tmp_path / "b")))))
    thread.start()
    thread.join()  # a thread whose run ended without releasing (an error) holds nothing
    assert not master_alive(Storage.from_uri(str(tmp_path / "b")))
    Lease.create(storage.child("c"))  # this thread's own unreleased lease is a run of it that is over
    assert not master_alive(storage.child("c"))
