"""A choice of ints and floats keeps its options' types when a sweep's configs are read back from the trials table."""

from __future__ import annotations

import math
from dataclasses import asdict

from orchestrator.app.api import controller_for
from orchestrator.app.resume import read_record, rebuild_controller
from orchestrator.decide.driver import drive
from orchestrator.decide.simulate import SimulatedBackend
from orchestrator.decide.sweeplog import SweepLog
from orchestrator.search.space import SearchSpace, choice, loguniform
from orchestrator.spec.settings import RunSettings
from orchestrator.store import schema
from orchestrator.store.storage import Storage

SPACE = SearchSpace({"lr": loguniform(1e-4, 1.0), "width_mult": choice([0.5, 1, 2]), "layers": choice([1, 2])})


def quality(config):
    return 0.5 + 0.1 * math.tanh(math.log10(config["lr"]) + 2)


def test_a_resumed_sweep_hands_each_choice_its_own_option_type(tmp_path):
    storage = Storage.from_uri(str(tmp_path / "s"))
    settings = RunSettings().merged(dict(plan="8x1,4x2", pruner="none", seed=3, slots=1)).validate()
    log = SweepLog(storage, SPACE, flush_seconds=0.0)
    log.write_sweep_row({"name": "s", "task": "sim", "seed": 3, "settings": schema.json_dumps(asdict(settings)),
                         "space": schema.json_dumps(SPACE.to_dict(), sort_keys=False), "created": schema.now_ms()})
    live = drive(controller_for(SPACE, settings), SimulatedBackend(quality, 1), log)
    rows = storage.read_table(schema.TRIALS_PATH).to_pylist()
    stored = {row["trial_id"]: row["config"]["width_mult"] for row in rows}
    assert {type(v) for v in stored.values()} == {float}  # one float column holds 0.5, 1 and 2

    resumed = rebuild_controller(read_record(storage)).controller
    for tid, trial in live.trials.items():
        assert resumed.trials[tid].config == trial.config
        # 1, not 1.0: a build_model that does range(width_mult) or nn.Linear(8, 8 * width_mult) works as it did live
        assert [type(v) for v in resumed.trials[tid].config.values()] == [type(v) for v in trial.config.values()]
    assert any(type(t.config["width_mult"]) is int for t in resumed.trials.values())


def test_typed_config_maps_a_stored_float_to_the_option_it_equals():
    options = schema.stored_choice_options(schema.json_dumps(SPACE.to_dict(), sort_keys=False))
    assert options == {"width_mult": [0.5, 1, 2], "layers": [1, 2]}
    got = schema.typed_config({"lr": 0.01, "width_mult": 2.0, "layers": 1}, options)
    assert got == {"lr": 0.01, "width_mult": 2, "layers": 1} and type(got["width_mult"]) is int
    assert type(schema.typed_config({"width_mult": 0.5}, options)["width_mult"]) is float
    assert schema.typed_config({"width_mult": None}, options) == {"width_mult": None}  # inactive stays None

