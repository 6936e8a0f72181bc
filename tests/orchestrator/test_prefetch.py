"""The soup's data load during the sweep: starts after the first epoch, hands over once, keeps errors for the soup."""

from __future__ import annotations

import threading
import types

import pytest

from orchestrator.app.prefetch import DataPrefetch, chain_ticks
from orchestrator.decide.backend import Report
from orchestrator.decide.controller import Controller
from orchestrator.decide.pruning import make_pruner
from orchestrator.search.space import SearchSpace, loguniform
from orchestrator.search.stages import parse_plan
from orchestrator.spec.task import Task


def make_task(load_data) -> Task:
    return Task("inline", types.SimpleNamespace(load_data=load_data), SearchSpace({"lr": loguniform(1e-3, 1.0)}))


def make_controller() -> Controller:
    return Controller(SearchSpace({"lr": loguniform(1e-3, 1.0)}), parse_plan("2x2"),
                      lambda stage: make_pruner("none", max_epochs=stage.epochs))


def test_load_starts_once_a_trial_has_trained_an_epoch_and_is_handed_over_once():
    calls = []
    started = threading.Event()

    def load_data():
        calls.append(threading.current_thread().name)
        started.set()
        return {"train": "data"}

    prefetch, controller = DataPrefetch(make_task(load_data)), make_controller()
    assignment = controller.next_assignment()
    prefetch.on_tick(controller)
    assert not started.wait(0.2) and calls == []  # workers still starting: nothing competes with them
    controller.on_report(Report(assignment.trial_id, [{"epoch": 1, "score": 0.5, "train_loss": 1.0, "val_loss": 1.0}]))
    prefetch.on_tick(controller)
    prefetch.on_tick(controller)
    assert prefetch.result() == {"train": "data"}
    assert calls == ["caviar-data-prefetch"]  # one load, on the background thread
    assert prefetch.result() == {"train": "data"} and len(calls) == 2  # handed over once, then loaded afresh


def test_result_loads_even_if_no_trial_ever_reported():
    prefetch = DataPrefetch(make_task(lambda: 42))
    assert prefetch.result() == 42


def test_a_failing_load_raises_where_the_data_is_asked_for():
    def load_data():
        raise FileNotFoundError("data.npz")

    prefetch = DataPrefetch(make_task(load_data))
    prefetch.start()
    with pytest.raises(FileNotFoundError, match="data.npz"):
        prefetch.result()


def test_chain_ticks_calls_each_hook_and_skips_none():
    seen = []
    assert chain_ticks(None, None) is None
    tick = chain_ticks(lambda c: seen.append(("a", c)), None, lambda c: seen.append(("b", c)))
    tick("controller")
    assert seen == [("a", "controller"), ("b", "controller")]
