"""A loaded sweep builds each member with its choice options' own types, not the float its trials table holds."""

from __future__ import annotations

from orchestrator.search.space import SearchSpace, choice
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from worker.load.ensemble_model import SweepModels

TASK = '''
import numpy as np
from torch import nn
from orchestrator.search.space import choice
space = {"width_mult": choice([0.5, 1, 2])}
def load_data():
    x = np.zeros((8, 2), dtype="float32"); y = np.zeros(8, dtype="int64")
    return {"train": (x, y), "val": (x, y)}
def build_model(config):
    return nn.Sequential(*[nn.Linear(2, 2) for _ in range(config["width_mult"] if config["width_mult"] >= 1 else 1)])
'''


def test_a_loaded_sweep_builds_each_member_with_its_own_option_type(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(TASK)
    storage = Storage.from_uri(str(tmp_path / "s"))
    space = SearchSpace({"width_mult": choice([0.5, 1, 2])})
    row = {"name": "s", "task": str(task), "seed": 0, "settings": "{}", "caviar_version": "test",
           "space": schema.json_dumps(space.to_dict(), sort_keys=False)}
    storage.write_table(schema.SWEEP_PATH, schema.to_table([row], schema.SWEEP))
    storage.write_table(schema.DATASET_PATH, schema.to_table([{"num_classes": 2, "input_shape": [2]}], schema.DATASET))
    config = schema.trials_schema(schema.config_type({"width_mult": [0.5, 1, 2]}))
    rows = [{"trial_id": 0, "stage": 0, "status": "completed", "config": {"width_mult": 2}}]
    storage.write_table(schema.TRIALS_PATH, schema.to_table(rows, config))
    models = SweepModels(storage, str(task))
    assert models.configs[0] == {"width_mult": 2} and type(models.configs[0]["width_mult"]) is int
    assert len(models.build(0)) == 2  # range(2.0) raised TypeError in build_model
