"""Warm actors across sweeps in one process: reused only for the same task source, always with fresh data."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from cluster import warm_pool
from orchestrator.app.api import run_sweep
from orchestrator.store import schema
from orchestrator.store.storage import Storage

TASK = textwrap.dedent('''
    import os
    import numpy as np
    from torch import nn
    from orchestrator.search.space import loguniform

    space = {"lr": loguniform(1e-2, 1e-1), "batch_size": 32}
    HERE = os.path.dirname(os.path.abspath(__file__))

    def load_data():
        d = np.load(os.path.join(HERE, "data.npz"))
        x, y = d["x"], d["y"]
        return (x[:60], y[:60]), (x[60:90], y[60:90]), (x[90:], y[90:])

    def build_model(config):
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
''')


def write_data(folder, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=120)
    x = (rng.normal(size=(120, 4)) + y[:, None]).astype(np.float32)
    np.savez(folder / "data.npz", x=x, y=y)
    return y


def stored_val_labels(path: str) -> list[int]:
    return Storage.from_uri(path).read_table(schema.DATASET_PATH)["y_val"][0].as_py()


def actor_ids() -> list[str]:
    return sorted(a._actor_id.hex() for actors in warm_pool._kept.values() for a in actors)


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "warm_task.py"
    path.write_text(TASK)
    return path


def test_a_second_sweep_of_the_task_reuses_the_actors_and_reads_its_own_data(ray_session, task_file, storage_dir):
    first_labels = write_data(task_file.parent, seed=1)
    one = run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="one", ensemble=False)
    assert warm_pool.kept_count() == 2  # held for the next sweep, not ended
    warm = actor_ids()
    second_labels = write_data(task_file.parent, seed=2)  # the data changed between the sweeps
    two = run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="two", ensemble=False)
    assert actor_ids() == warm  # the same two actors served the second sweep
    assert stored_val_labels(one.path) == first_labels[60:90].tolist()
    assert stored_val_labels(two.path) == second_labels[60:90].tolist()  # never the last sweep's data
    assert not np.array_equal(first_labels[60:90], second_labels[60:90])


def test_actors_that_must_load_the_data_themselves_reload_it_when_rebound(ray_session, task_file, storage_dir,
                                                                        monkeypatch):
    from cluster import runner

    monkeypatch.setattr(runner, "SHARE_LIMIT_BYTES", 0)  # as for data too large to share: each actor loads it
    write_data(task_file.parent, seed=3)
    run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="one", ensemble=False)
    warm = actor_ids()
    labels = write_data(task_file.parent, seed=4)
    two = run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="two", ensemble=False)
    assert actor_ids() == warm
    assert stored_val_labels(two.path) == labels[60:90].tolist()


def test_an_edited_task_or_helper_file_or_keep_workers_0_starts_new_actors(ray_session, task_file, storage_dir):
    from orchestrator.app.api import release_workers

    write_data(task_file.parent, seed=5)
    run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="one", ensemble=False)
    warm = actor_ids()
    task_file.write_text(TASK.replace("nn.Linear(4, 8)", "nn.Linear(4, 9)").replace("Linear(8, 3)", "Linear(9, 3)"))
    run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="two", ensemble=False)
    edited = actor_ids()
    assert len(edited) == 2 and not set(edited) & set(warm)  # the old code's actors were ended, new ones kept
    (task_file.parent / "helpers.py").write_text("WIDTH = 9\n")  # a module beside the task, which it may import
    run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="helper", ensemble=False)
    assert not set(actor_ids()) & set(edited)
    release_workers()  # before other Ray work in the process needs their CPUs
    assert warm_pool.kept_count() == 0
    run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="three", ensemble=False,
              keep_workers=0)
    assert warm_pool.kept_count() == 0


def test_the_kept_actors_end_after_keep_workers_seconds(ray_session, task_file, storage_dir):
    import time

    write_data(task_file.parent, seed=6)
    run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="one", ensemble=False,
              keep_workers=0.5)
    assert warm_pool.kept_count() == 2
    time.sleep(1.5)
    assert warm_pool.kept_count() == 0


EDITED = textwrap.dedent('''
    import numpy as np
    from torch import nn
    import relabel_helper

    space = {"lr": LR, "batch_size": 32}

    def load_data():
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, size=120)
        x = (rng.normal(size=(120, 4)) + y[:, None]).astype(np.float32)
        y = relabel_helper.relabel(y)
        return (x[:60], y[:60]), (x[60:90], y[60:90]), (x[90:], y[90:])

    def build_model(config):
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
''')


def test_a_task_or_helper_edited_between_two_sweeps_of_one_process_runs_as_edited(ray_session, tmp_path,
                                                                                storage_dir):
    """The master kept the first import of the task (and its helpers) for the process: the second sweep sampled
    the old space and sent the old data to its new actors, while its stored task copy held the edited file."""
    task = tmp_path / "edited_task.py"
    helper = tmp_path / "relabel_helper.py"
    task.write_text(EDITED.replace("LR", "0.01"))
    helper.write_text("def relabel(y):\n    return y\n")
    one = run_sweep(str(task), trials=1, epochs=1, stages=1, slots=1, storage=storage_dir, name="one",
                    ensemble=False, executor="ray")
    y = np.random.default_rng(0).integers(0, 3, size=120)
    assert stored_val_labels(one.path) == y[60:90].tolist()
    task.write_text(EDITED.replace("LR", "0.05"))
    two = run_sweep(str(task), trials=1, epochs=1, stages=1, slots=1, storage=storage_dir, name="two",
                    ensemble=False, executor="ray")
    assert [t["config"]["lr"] for t in two.tables().trials.to_pylist()] == [0.05]  # was 0.01, the first import's
    helper.write_text("def relabel(y):\n    return 2 - y\n")
    three = run_sweep(str(task), trials=1, epochs=1, stages=1, slots=1, storage=storage_dir, name="three",
                      ensemble=False, executor="ray")
    assert stored_val_labels(three.path) == (2 - y)[60:90].tolist()  # the edited helper's labels, not the old


def test_an_edited_module_in_a_sub_folder_of_the_task_starts_new_actors(ray_session, tmp_path, storage_dir):
    """Only the files directly beside the task were hashed: kept actors trained the second sweep with the models/
    package they imported for the first, not the edited one."""
    task = tmp_path / "sub_task.py"
    write_data(tmp_path, seed=7)
    task.write_text(TASK.replace("import os\n", "import os\nfrom models.net import make\n")
                    .replace("return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))", "return make()"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    net = "from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))\n"
    (tmp_path / "models" / "net.py").write_text(net)
    run_sweep(str(task), trials=2, epochs=1, slots=2, storage=storage_dir, name="one", ensemble=False)
    warm = actor_ids()
    assert len(warm) == 2
    (tmp_path / "models" / "net.py").write_text(net.replace("8", "9"))
    run_sweep(str(task), trials=2, epochs=1, slots=2, storage=storage_dir, name="two", ensemble=False)
    assert not set(actor_ids()) & set(warm)  # the old code's actors were ended


def test_a_kept_actor_that_died_while_idle_costs_its_first_trial_no_attempt(ray_session, task_file, storage_dir):
    # A kept actor killed while it waited (the OOM killer, a kill) failed the next sweep's first trial on it as
    # a lost attempt: with max_retries=0 that trial ended 'failed' though it never ran.
    import ray

    write_data(task_file.parent, seed=1)
    run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="one", ensemble=False)
    [killed, *_] = [a for actors in warm_pool._kept.values() for a in actors]
    ray.kill(killed)
    two = run_sweep(str(task_file), trials=2, epochs=1, slots=2, storage=storage_dir, name="two", ensemble=False,
                    max_retries=0)
    trials = Storage.from_uri(f"{storage_dir}/two").read_table(schema.TRIALS_PATH).to_pylist()
    assert two.counts == {"completed": 2}, [(t["trial_id"], t["status"], t["error"]) for t in trials]
    assert [t["attempt"] for t in trials] == [0, 0]
