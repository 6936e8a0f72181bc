"""One sweep, one writer: the master holds a lease file in the sweep folder while it writes.

``run`` creates the lease exclusively (:meth:`Storage.create_exclusive`), before anything
else of the sweep is written, so of two runs given one name exactly one goes on; the other
gets one line. The lease names its owner (host, pid, a random id) and a heartbeat the
master renews as it flushes; the master marks it released when the sweep ends.

``resume`` takes the lease over only when its owner is gone: released, a process on this
host that no longer runs, or (another host) a heartbeat older than :data:`STALE_SECONDS`.
On a local disk the check and the write happen under a lock (:meth:`Storage.locked`), so of
two resumes started at once the second finds the first's live lease and refuses.

On object stores there is no conditional PUT (nor lock) through pyarrow, so the lease is written,
then read back after a pause: a writer that finds another's id there gives way. The pause
is at least :data:`READ_BACK_PAUSE` and at least twice what this writer's own check and PUT
took, so a racer as slow as this one has landed its PUT before the read-back. Only a racer
more than twice as slow to write could still proceed alongside (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.errors import StorageError
from orchestrator.store import schema
from orchestrator.store.storage import Storage, redact_uri

LEASE_PATH = "_lease.json"  # readers skip names starting with '_'
LOCK_PATH = "_lease.lock"  # local disks: taking the lease over is one step under this lock
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 90.0
READ_BACK_PAUSE = 0.5  # object stores: time for a racing writer's PUT to land before the read-back
# Leases this process holds, by owner id, with the thread whose run holds each: a second thread of one interpreter
# (a notebook's background sweep) shares the process id, which alone cannot tell its live run from a dead one.
_HELD_HERE: dict[str, threading.Thread] = {}


@dataclass
class LeaseRecord:
    owner: str
    host: str
    pid: int
    started: int  # epoch ms
    heartbeat: int  # epoch ms
    released: bool = False
    pid_start: int | None = None  # the master's start, in clock ticks since boot: tells a reused process id apart

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def _fault_delay(name: str) -> None:
    """Tests widen race windows with ``CAVIAR_FAULT_DELAY_<NAME>=seconds`` (unset: no delay)."""
    value = os.environ.get(f"CAVIAR_FAULT_DELAY_{name}")
    if value:
        time.sleep(float(value))


def _new_record() -> LeaseRecord:
    now = schema.now_ms()
    return LeaseRecord(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now,
                       pid_start=process_start_ticks(os.getpid()))


_LEASE_FIELDS = {"owner": (str,), "host": (str,), "pid": (int,), "started": (int,), "heartbeat": (int,),
                 "released": (bool,), "pid_start": (int, type(None))}
_OPTIONAL_FIELDS = ("released", "pid_start")


def read_lease(storage: Storage) -> LeaseRecord | None:
    """The sweep's lease; None when there is none. A damaged one (edited by hand, cut short by a copy) is one line
    naming the file and what to do: no one can tell from it whether a master still writes the sweep."""
    if not storage.exists(LEASE_PATH):
        return None
    try:
        data: Any = json.loads(storage.read_bytes(LEASE_PATH))
        problem = _lease_problem(data)
    except ValueError as exc:  # not JSON, or not UTF-8
        problem = str(exc)
    if problem:
        raise StorageError(
            f"{storage.path(LEASE_PATH)}: not a readable lease ({problem}); caviar always writes it whole, so it was "
            "edited or damaged: once no caviar process is writing this sweep, delete that file and run the command "
            "again"
        )
    # Fields a later caviar adds are left out, not refused.
    return LeaseRecord(**{name: data[name] for name in _LEASE_FIELDS if name in data})


def _lease_problem(data: Any) -> str | None:
    """What makes decoded JSON no lease (a list, a field missing or of another type); None when it is one."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for name, types in _LEASE_FIELDS.items():
        if name not in data:
            if name in _OPTIONAL_FIELDS:
                continue
            return f"no {name!r}"
        value = data[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            return f"{name!r} is {value!r}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` began, in clock ticks since boot (Linux's /proc, field 22 of its stat); None where that
    cannot be read. Ticks since boot, not wall-clock time: an NTP or VM clock step cannot make a live master look
    like another process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after_name = f.read().rpartition(")")[2].split()  # the name in parentheses may hold spaces
        return int(after_name[19])
    except (OSError, ValueError, IndexError):
        return None


def holder_alive(record: LeaseRecord, now_ms: int | None = None) -> bool:
    """Whether the lease's owner may still be writing."""
    if record.released:
        return False
    if record.host == socket.gethostname():
        if record.pid == os.getpid():  # alive while another thread's run here holds it; a run of this thread ended
            holder = _HELD_HERE.get(record.owner)
            return holder is not None and holder.is_alive() and holder is not threading.current_thread()
        if not _pid_alive(record.pid):
            return False
        # A restarted container keeps its host name and hands out the same small process ids again: a process with
        # the id that began at another tick than the master is another program, and the master is gone.
        if record.pid_start is None:  # a lease from before pid_start was recorded, or no /proc: the id decides
            return True
        began = process_start_ticks(record.pid)
        return began is None or began == record.pid_start
    now_ms = schema.now_ms() if now_ms is None else now_ms
    return now_ms - record.heartbeat < STALE_SECONDS * 1000


def master_alive(storage: Storage) -> bool:
    """Whether a caviar process may still be writing the sweep (a lease held by a live owner)."""
    record = read_lease(storage)
    return record is not None and holder_alive(record)


class Lease:
    """The lease this master holds on one sweep."""

    def __init__(self, storage: Storage, record: LeaseRecord):
        self.storage = storage
        self.record = record
        self._last_beat = time.monotonic()

    @classmethod
    def create(cls, storage: Storage) -> Lease:
        """Claim a new sweep; one line naming the other owner when it is taken."""
        _fault_delay("CLAIM")
        record = _new_record()
        began = time.monotonic()
        if not storage.create_exclusive(LEASE_PATH, record.encode()):
            raise StorageError(f"sweep {redact_uri(storage.uri)!r} {_taken_by(storage)}; pick another --name")
        lease = cls(storage, record)
        lease._confirm(wrote_in=time.monotonic() - began)
        lease._hold_here()
        _fault_delay("HOLD")  # a test keeps the winner's lease held while the loser arrives
        return lease

    @classmethod
    def take_over(cls, storage: Storage, then: str = "caviar resume continues a sweep whose master is gone") -> Lease:
        """Resume (or --overwrite): the lease passes to this process, unless its owner still writes the sweep.
        ``then``: what the refusal says happens once that owner is stopped."""
        _refuse_a_live_holder(storage, then)  # before the lock: a refused resume leaves the folder as it was
        with storage.locked(LOCK_PATH):  # two resumes started together: the second reads the first's live lease
            current = _refuse_a_live_holder(storage, then)
            lease = cls(storage, _new_record())
            began = time.monotonic()
            if current is None:  # no lease to replace: a `run` claiming the name at this moment must win or lose whole
                if not storage.create_exclusive(LEASE_PATH, lease.record.encode()):
                    raise StorageError(f"sweep {redact_uri(storage.uri)!r} {_taken_by(storage)}")
            else:
                _fault_delay("TAKE_OVER")  # a test widens the window between the check and the write
                storage.write_bytes(LEASE_PATH, lease.record.encode())
        lease._confirm(wrote_in=time.monotonic() - began)
        lease._hold_here()
        storage.remove_stale_temp_files(STALE_SECONDS)  # the gone master's writes that a kill cut short
        return lease

    def _confirm(self, wrote_in: float = 0.0) -> None:
        """Object stores: read the lease back; another writer's id there means it won the race."""
        if self.storage.atomic_rename:
            return
        time.sleep(max(READ_BACK_PAUSE, 2 * wrote_in))  # a loaded store is slow for every racer alike
        found = read_lease(self.storage)
        if found is None or found.owner != self.record.owner:
            raise StorageError(f"sweep {redact_uri(self.storage.uri)!r} {_taken_by(self.storage)}")

    def _hold_here(self) -> None:
        _HELD_HERE[self.record.owner] = threading.current_thread()

    def let_go_here(self) -> None:
        """This process's run is over, released or not: the lease no longer stands for a live writer here."""
        _HELD_HERE.pop(self.record.owner, None)

    def beat(self, force: bool = False) -> None:
        """Renew the heartbeat (throttled): a resume on another host sees this master is alive."""
        if not force and time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        self.record.heartbeat = schema.now_ms()
        self.storage.write_bytes(LEASE_PATH, self.record.encode())
        self._last_beat = time.monotonic()

    def release(self) -> None:
        self.record.released = True
        try:
            self.beat(force=True)
        finally:
            self.let_go_here()
        # A resume started right after a kill found the dead master's temp files too young to judge; by now most are.
        self.storage.remove_stale_temp_files(STALE_SECONDS)


def _refuse_a_live_holder(storage: Storage, then: str) -> LeaseRecord | None:
    """The sweep's lease, unless its owner may still be writing: then one line naming it."""
    current = read_lease(storage)
    if current is not None and holder_alive(current):
        here = current.pid == os.getpid() and current.host == socket.gethostname()
        writer = "another thread of this process" if here else f"process {current.pid} on {current.host}"
        raise StorageError(f"sweep {redact_uri(storage.uri)!r} is being written by {writer}; stop it first ({then})")
    return current


def _taken_by(storage: Storage) -> str:
    try:
        other = read_lease(storage)
    except StorageError:
        other = None
    if other is None:
        return "was just claimed by another caviar run"
    return f"is taken by another caviar run (process {other.pid} on {other.host})"
