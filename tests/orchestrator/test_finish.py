"""The end of a sweep: a stop signal while ensembles are built leaves whole tables, a released lease and
one line saying how to build them (the trials are not resumed: they are complete)."""

from __future__ import annotations

import pytest

from orchestrator.app import lifecycle
from orchestrator.decide.interrupt import print_ensembles_hint
from orchestrator.errors import SweepInterrupted
from orchestrator.store.lease import Lease, read_lease
from tests.orchestrator.test_resume import settings_for, uninterrupted


def test_a_stop_while_ensembles_build_releases_the_sweep_and_names_the_command(tmp_path, monkeypatch, capsys):
    settings = settings_for(ensemble=True)
    controller, storage = uninterrupted(tmp_path, settings)
    log = lifecycle.SweepLog(storage, controller.space, lease=Lease.create(storage), flush_seconds=0.0)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of a soup or a greedy search

    monkeypatch.setattr(lifecycle, "build_ensembles", stopped)
    with pytest.raises(SweepInterrupted) as caught:
        lifecycle.finish_sweep(None, settings, storage, "s", controller, log)  # type: ignore[arg-type]
    assert (caught.value.during, caught.value.path) == ("ensembles", storage.uri)
    assert read_lease(storage).released  # a later `caviar ensemble` or resume may take the sweep at once
    assert {t.status for t in controller.trials.values()} <= {"completed", "pruned"}
    print_ensembles_hint(caught.value.path, "/work/task.py")
    assert capsys.readouterr().err == (f"interrupted while building ensembles (the trials are complete): "
                                       f"caviar ensemble {storage.uri} --task /work/task.py\n")


def test_a_stop_before_the_last_flush_is_a_stopped_sweep_said_so(tmp_path, monkeypatch):
    """Between the last trial and the ensembles (the final flush, the events' fold) Ctrl-C came out of run_sweep as a
    bare KeyboardInterrupt, no command to go on and the lease held; now it is a stopped sweep, its tables written."""
    settings = settings_for(ensemble=True)
    controller, storage = uninterrupted(tmp_path, settings)
    log = lifecycle.SweepLog(storage, controller.space, lease=Lease.create(storage), flush_seconds=0.0)
    fold = log.compact_events

    def stopped_in_the_fold():
        fold()
        raise KeyboardInterrupt

    monkeypatch.setattr(log, "compact_events", stopped_in_the_fold)
    with pytest.raises(SweepInterrupted) as caught:
        lifecycle.finish_sweep(None, settings, storage, "s", controller, log)  # type: ignore[arg-type]
    assert (caught.value.during, caught.value.path) == ("ensembles", storage.uri)  # after the flush: trials whole
    assert read_lease(storage).released

    controller, storage = uninterrupted(tmp_path / "again", settings)
    log = lifecycle.SweepLog(storage, controller.space, lease=Lease.create(storage), flush_seconds=0.0)

    def stopped_in_the_flush(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "nothing_learned", stopped_in_the_flush)  # the step before the last flush
    with pytest.raises(SweepInterrupted) as caught:
        lifecycle.finish_sweep(None, settings, storage, "s", controller, log)  # type: ignore[arg-type]
    assert (caught.value.during, caught.value.path) == ("sweep", storage.uri)  # resume it
    assert read_lease(storage).released
