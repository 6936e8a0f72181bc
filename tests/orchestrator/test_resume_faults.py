"""The master killed at every write boundary of its flushes, then resumed: it always finishes, as if never killed.

The master's writer (``SweepLog``) counts its writes; ``fault_after_write = n`` ends the run right
after the n-th (with ``CAVIAR_FAULT_AFTER_WRITE=n`` a real process ``os._exit``s there; here the
hook raises, and nothing after it runs). The sweep is then rebuilt from the tables on disk and
driven to its end on a fresh simulated backend. For every n, from the sweep row to the last
event compaction: the resume finishes (never spins), and the trials, their configs, statuses and
epochs equal an uninterrupted run's. A second resume of the finished sweep changes nothing.
"""

from __future__ import annotations

import pytest

from orchestrator.app.resume import read_record, rebuild_controller
from orchestrator.decide import sweeplog
from orchestrator.decide.driver import drive
from orchestrator.decide.sweeplog import SweepLog
from orchestrator.store.schema import read_events
from orchestrator.store.storage import Storage
from tests.orchestrator.test_resume import SPACE, PersistingBackend, new_controller, settings_for, start_sweep, summary


class Killed(BaseException):
    """The master dies right after a write."""


class TooLong(BaseException):
    """A resume that does not finish."""


def run_until_write(storage: Storage, settings, n: int) -> int:
    """Run the sweep, dying after master write ``n`` (0: never); returns the writes made."""
    log = start_sweep(storage, settings)  # the sweep row is write 1
    log.fault_after_write = n

    def die() -> None:
        raise Killed

    log.on_fault = die
    if n == 1:
        raise AssertionError("write 1 is the sweep row, written before the hook is set")
    try:
        drive(new_controller(settings, 0), PersistingBackend(storage, settings.slots), log)
        log.compact_events()
    except Killed:
        pass
    return log.writes


def resume_to_end(storage: Storage, settings):
    record = read_record(storage)
    rebuilt = rebuild_controller(record)
    log = SweepLog(storage, SPACE, flush_seconds=0.0)
    log.continue_after(record.stages, record.events, record.event_parts)
    ticks = {"n": 0}

    def guard(controller) -> None:
        ticks["n"] += 1
        if ticks["n"] > 2000:  # the whole sweep takes a few dozen ticks
            raise TooLong

    drive(rebuilt.controller, PersistingBackend(storage, settings.slots), log, on_tick=guard)
    log.compact_events()
    return rebuilt.controller


def test_a_master_killed_after_any_write_resumes_to_the_uninterrupted_result(tmp_path):
    kill_after_every_write(tmp_path, settings_for(slots=3))


def test_event_parts_are_folded_as_they_pile_up_and_a_kill_during_a_fold_resumes(tmp_path, monkeypatch):
    """A long sweep's master wrote an event part at nearly every 2-s flush and folded them only at its end: a day's
    sweep left ~40,000 files that caviar status, load() and a resume read one by one (5,000 parts: 4.8 s for one
    read_events here). Now the parts are folded once more than ``EVENT_PARTS`` pile up; killed after any write, folds
    included, the sweep resumes to the uninterrupted result with each event once, and the folder stays small."""
    monkeypatch.setattr(sweeplog, "EVENT_PARTS", 2)
    kill_after_every_write(tmp_path, settings_for(slots=3), most_event_files=3)


def kill_after_every_write(tmp_path, settings, most_event_files=None):
    whole_storage = Storage.from_uri(str(tmp_path / "whole"))
    writes = run_until_write(whole_storage, settings, 0)
    whole = rebuild_controller(read_record(whole_storage)).controller
    assert whole.finished and writes > 10  # many write boundaries to cut at
    for n in range(2, writes + 1):
        storage = Storage.from_uri(str(tmp_path / f"killed-{n}"))
        run_until_write(storage, settings, n)
        if most_event_files is not None:
            assert len(storage.list_files("events")) <= most_event_files, f"killed after write {n}"
        try:
            resumed = resume_to_end(storage, settings)
        except TooLong:
            pytest.fail(f"killed after write {n}: the resume never finishes")
        assert resumed.finished, n
        assert summary(resumed) == summary(whole), f"killed after write {n}"
        seqs = read_events(storage)["seq"].to_pylist()
        assert seqs == sorted(set(seqs)), n
        assert not twice_decided(storage), f"killed after write {n}"
    # On the finished sweep, a rebuild has nothing to do.
    again = rebuild_controller(read_record(storage))
    assert again.controller.finished and not again.resumed and not again.closed


def twice_decided(storage: Storage) -> list[tuple]:
    """Decisions the events table holds more than once: a trial's end, a stage's start, its ranges. A master killed
    between its events and its trials table (or stage row) had written them, and the resume decided them again."""
    events = read_events(storage).to_pylist()
    keys = [(e["kind"], e["trial_id"], e["stage"]) for e in events
            if e["kind"] in ("trial_completed", "trial_pruned", "trial_failed", "stage_started", "range_narrowed")]
    return sorted({k for k in keys if keys.count(k) > 1})
