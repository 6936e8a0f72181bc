"""The worker side of ensembles, without Ray: stored predictions, the greedy soup, ``load_ensemble``.

A small sweep directory is made by a real ``WorkerSession`` (the code a Ray actor runs)
plus the two tables the master would write (sweep row, trials), then read back.
"""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from orchestrator.app.lifecycle import build_ensembles
from orchestrator.decide.backend import Assignment
from orchestrator.ensemble import ensembles
from orchestrator.ensemble.ensemble_run import (
    build_and_write,
    read_dataset,
    read_ensembles,
    read_predictions,
)
from orchestrator.errors import ConfigError, StorageError
from orchestrator.spec.task import Task, load_task
from orchestrator.store import schema
from orchestrator.store.storage import Storage, sha256
from tests.conftest import DIGITS_TASK, ROOT, TINY_TASK
from worker.data.splits import prepare, prepare_task_data
from worker.load.ensemble_model import load_ensemble
from worker.load.soup import Soup, average_states, recompute_bn, soup_builder
from worker.train.recorder import TrialRecorder
from worker.train.session import WorkerSession
from worker.train.trainer import TrialRun, TrialSpec

AUGMENTED_TASK = os.path.join(ROOT, "tests", "tasks", "augmented_task.py")
AUGMENTED = {"lr": 0.02, "optimizer": "adam", "batch_size": 64, "ema_decay": 0.9}
TINY = {"lr": 0.03, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": 0.9}
DIGITS = {"lr": 3e-3, "optimizer": "adam", "layers": 1, "hidden": 32, "activation": "relu", "batch_norm": True,
          "dropout": 0.0, "init": "he", "batch_size": 64, "ema_decay": 0.95}


def write_master_tables(storage: Storage, task_path: str, configs: dict[int, dict]) -> None:
    """The sweep row and trials table, as the master writes them."""
    row = {"name": "s", "task": task_path, "seed": 0, "settings": "{}", "space": "{}", "caviar_version": "test"}
    storage.write_table(schema.SWEEP_PATH, schema.to_table([row], schema.SWEEP))
    first = next(iter(configs.values()))
    trials_schema = schema.trials_schema(schema.config_type({k: [v] for k, v in first.items()}))
    rows = [{"trial_id": t, "stage": 0, "status": "completed", "config": c} for t, c in configs.items()]
    storage.write_table(schema.TRIALS_PATH, schema.to_table(rows, trials_schema))


def make_sweep(tmp_path, task_path: str, configs: dict[int, dict], epochs: int, **options) -> Storage:
    session = WorkerSession(task_path, str(tmp_path), "s", {"device": "cpu", **options})
    for trial_id, config in configs.items():
        report = session.start(Assignment(trial_id, 0, config, 10 + trial_id, epochs, epochs))
        assert report.ended and report.status == "completed", report.error
    storage = Storage.from_uri(str(tmp_path)).child("s")
    write_master_tables(storage, task_path, configs)
    return storage


def test_finish_stores_probabilities_of_every_kept_checkpoint(tmp_path):
    task = load_task(TINY_TASK)
    splits = prepare(task.get("load_data")())
    run = TrialRun(task, splits, TrialSpec(7, 0, TINY, 1, 4), torch.device("cpu"))
    storage = Storage.from_uri(str(tmp_path))
    recorder = TrialRecorder(storage, 7, 0, keep_best=2, prediction_dtype="float32")
    for _ in range(4):
        recorder.record(run, run.train_epoch())
    last_state = run.weights_state("ema")
    index = recorder.finish(run)
    table = storage.read_table(schema.predictions_path(7))
    assert table.schema == schema.predictions_schema(3, "float32")
    kept = {(r["epoch"], r["weights"]) for r in index}
    assert {"raw", "ema"} == {w for _, w in kept} and len(kept) >= 4  # best 2 and last, raw and EMA
    n_val, n_test = len(splits.y_val), len(splits.y_test)
    assert table.num_rows == len(kept) * (n_val + n_test)
    stored = read_predictions(storage)
    assert {(c.key.epoch, c.key.weights) for c in stored.candidates} == kept
    last = next(c for c in stored.candidates if c.key.epoch == 4 and c.key.weights == "ema")
    expected = run.predictions(last_state, "ema")
    assert np.allclose(last.val_probs, expected["val"].numpy(), atol=1e-6)
    assert np.allclose(last.test_probs, expected["test"].numpy(), atol=1e-6)
    dataset = read_dataset(storage)
    assert np.array_equal(dataset.y_val, splits.y_val.numpy()) and dataset.input_shape == (4,)
    assert np.allclose(dataset.mean, splits.mean.numpy()[0]) and np.allclose(dataset.std, splits.std.numpy()[0])


def test_float16_by_default_and_diverged_checkpoints_are_left_out(tmp_path):
    task = load_task(TINY_TASK)
    run = TrialRun(task, prepare(task.get("load_data")()), TrialSpec(1, 0, TINY, 1, 3), torch.device("cpu"))
    storage = Storage.from_uri(str(tmp_path))
    recorder = TrialRecorder(storage, 1, 0, keep_best=1)
    for _ in range(2):
        recorder.record(run, run.train_epoch())
    with torch.no_grad():  # the last epoch blew up: its weights, and so its probabilities, are NaN
        for p in list(run.model.parameters()) + list(run.ema.module.parameters()):
            p.fill_(float("nan"))
    recorder.rows_by_epoch[3] = {**recorder.rows_by_epoch[2], "epoch": 3, "score": float("nan")}
    run.epoch = 3
    recorder.finish(run)
    table = storage.read_table(schema.predictions_path(1))
    assert table.schema.field("log_probs").type.value_type == "halffloat"
    assert set(table["epoch"].to_pylist()) == {recorder.best[0].epoch}  # the NaN last epoch is not there
    with pytest.raises(ConfigError, match="prediction_dtype"):
        TrialRecorder(storage, 2, 0, prediction_dtype="int8")


def test_average_states_and_bn_recomputed_from_training_inputs():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    avg = average_states([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and int(avg["n"]) == 5
    # A float64 model's soup keeps float64 precision (averaged in float32 it was rounded to about 1e-7).
    fine = {"w": torch.tensor([1.0 + 1e-12], dtype=torch.float64)}
    assert average_states([fine, fine])["w"].item() == 1.0 + 1e-12
    # A frozen backbone every member shares keeps its weights bit for bit: the mean of three equal float32 values
    # was off by a rounding (2.9 came back as 2.9000003), and the soup's frozen weights differed from the file's.
    frozen = {"w": torch.tensor([0.1, 0.7, 1.3, 2.9])}
    assert torch.equal(average_states([frozen, frozen, frozen])["w"], frozen["w"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    x = torch.randn(1024, 3) * 3 + 2
    assert recompute_bn(model, x, batch_size=512)
    with torch.no_grad():
        h = model[0](x)
    bn = model[1]
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)  # two equal batches: the mean of batch means
    assert torch.allclose(bn.running_var, h.var(0), rtol=1e-2)  # of batches drawn at random: close to the whole's
    assert model.training  # the mode it had before
    assert not recompute_bn(nn.Linear(3, 2), x)


def test_recomputed_batch_norm_weighs_batches_by_their_examples():
    """The soup's batch-norm pass weighed batches alike (momentum None): of 520 rows in batches of 512, the last 8
    made half the running mean (50 where the rows' mean is 1.54); 513 rows raised on the last batch of one."""
    model = nn.Sequential(nn.BatchNorm1d(2))
    x = torch.cat([torch.zeros(512, 2), torch.full((8, 2), 100.0)])
    assert recompute_bn(model, x, batch_size=512)
    bn = model[0]
    assert torch.allclose(bn.running_mean, x.mean(0), atol=1e-4)
    assert torch.allclose(bn.running_var, x.var(0), rtol=0.05)  # 151.5; weighing batches alike gave 75
    assert bn.momentum == 0.1  # the model's own momentum comes back
    torch.manual_seed(0)
    x = torch.randn(513, 2)
    assert recompute_bn(model, x, batch_size=512)  # the last batch of one is left out, as training leaves it
    assert torch.allclose(bn.running_mean, x.mean(0), atol=0.02)


def test_recomputed_batch_norm_reads_sorted_inputs_in_mixed_batches():
    """Training inputs stored class by class (files listed folder by folder) were read in that order: each batch of
    512 held one class, and the running variance of a feature that tells them apart was the within-class one
    (1 where the rows' is 10), so the soup normalised every input wrongly, scored and stored so without a word."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(512, 1) - 3, torch.randn(512, 1) + 3])  # class 0, then class 1
    model = nn.Sequential(nn.BatchNorm1d(1))
    assert recompute_bn(model, x, batch_size=512)
    assert torch.allclose(model[0].running_var, x.var(0), rtol=0.05)


class FrozenBackbone(nn.Module):
    """Fine-tuning as usually written: the pretrained backbone's batch norm stays in eval mode while the head trains."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x):
        return self.head(self.backbone(x))


def test_recomputing_batch_norm_leaves_the_statistics_of_a_frozen_backbone_alone():
    """A soup's batch-norm pass used to reset every batch norm, then forward in train mode, where the backbone's
    stays in eval: its pretrained statistics became mean 0, variance 1 in the soup."""
    torch.manual_seed(0)
    model = FrozenBackbone()
    frozen = model.backbone[1]
    with torch.no_grad():
        frozen.running_mean.fill_(5.0)
        frozen.running_var.fill_(9.0)
    x = torch.randn(256, 3)
    assert recompute_bn(model, x)
    assert torch.equal(frozen.running_mean, torch.full((4,), 5.0))
    assert torch.equal(frozen.running_var, torch.full((4,), 9.0))
    with torch.no_grad():  # the head's batch norm is recomputed, from the frozen backbone's outputs
        h = model.head[0](model.backbone.eval()(x))
    assert torch.allclose(model.head[1].running_mean, h.mean(0), atol=1e-5)


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory):
    """Three digits trials, two of one architecture (with batch norm), one of another."""
    configs = {0: DIGITS, 1: {**DIGITS, "lr": 1e-2}, 2: {**DIGITS, "hidden": 48}}
    return make_sweep(tmp_path_factory.mktemp("runs"), DIGITS_TASK, configs, epochs=2, keep_best=2)


def test_soup_averages_only_same_architecture_checkpoints_and_is_loadable(digits_sweep):
    task = load_task(DIGITS_TASK)
    records = build_and_write(digits_sweep, soup=soup_builder(digits_sweep, task, device="cpu"))
    soup = next(r for r in records if r.method == "soup")
    detail = soup.detail
    base = detail["base"]
    arch_trials = {0, 1} if base["trial_id"] in (0, 1) else {2}
    assert {t["trial_id"] for t in detail["tried"]} <= arch_trials  # never mixes shapes
    assert len(detail["tried"]) == 1 + detail["peers_with_same_architecture"]
    assert detail["accepted"] == soup.size == sum(t["accepted"] for t in detail["tried"])
    assert detail["helped"] == (soup.size > 1) and detail["bn_recomputed"] == (soup.size > 1)
    assert sum(m.weight for m in soup.members) == pytest.approx(1.0)
    data = digits_sweep.read_bytes(soup.weights_path)
    assert sha256(data) == soup.weights_sha256
    assert set(safetensors.torch.load(data)) >= {"1.running_mean", "1.running_var"}
    x_test, y_test = task.get("load_data")()["test"]
    model = load_ensemble(digits_sweep, "soup", task=DIGITS_TASK)
    assert model.record.method == "soup" and len(model.members) == 1
    assert (model.predict(x_test).numpy() == y_test).mean() == pytest.approx(soup.test_accuracy)


def test_loaded_ensemble_matches_its_row_and_refuses_a_changed_file(digits_sweep, tmp_path):
    records = build_and_write(digits_sweep, methods=["top_k", "greedy"])
    x_test, y_test = load_task(DIGITS_TASK).get("load_data")()["test"]
    for record in records:
        model = load_ensemble(digits_sweep.uri, record.name, task=DIGITS_TASK)
        probs = model(torch.as_tensor(x_test))
        assert torch.allclose(probs.sum(1), torch.ones(len(x_test)), atol=1e-5)
        # float16 storage: an argmax may flip on a near-tie, at most one test example here
        assert abs((probs.argmax(1).numpy() == y_test).mean() - record.test_accuracy) <= 1 / len(y_test) + 1e-12
    best = load_ensemble(digits_sweep.uri, task=DIGITS_TASK)
    assert best.record.chosen
    # Inputs not shaped as in training are refused in one line, not broadcast against the standardisation.
    x = torch.as_tensor(x_test)
    with pytest.raises(ConfigError, match=r"^inputs of shape \(64,\); the sweep's models take a batch of shape "
                                          r"\(N, 64\): for one example pass x\[None\]$"):
        best(x[0])
    with pytest.raises(ConfigError, match=r"^inputs of shape \(5, 63\); .* \(the training split's standardisation"):
        best(x[:5, :63])
    assert torch.equal(best.predict(x[:1]), best.predict(x)[:1])
    with pytest.raises(StorageError, match=r"nosuch' is not a caviar sweep directory"):  # a mistyped name
        load_ensemble(str(tmp_path / "nosuch"), task=DIGITS_TASK)
    assert best(x).numpy().shape == (len(x), 10)  # frozen for inference: outputs are plain tensors, no autograd
    assert best.requires_grad_(True)(x).requires_grad  # unless asked for, to fine-tune or take input gradients
    # Change one member's weights file (in a copy): the sha256 in the checkpoint index no longer matches.
    copy = Storage.from_uri(str(shutil.copytree(digits_sweep.root, tmp_path / "copy")))
    member = best.record.members[0].key
    index = copy.read_table(schema.checkpoint_index_path(member.trial_id)).to_pylist()
    path = next(r["path"] for r in index if (r["epoch"], r["weights"]) == (member.epoch, member.weights))
    state = safetensors.torch.load(copy.read_bytes(path))
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    copy.write_bytes(path, safetensors.torch.save(state))
    with pytest.raises(StorageError, match=f"{path}: sha256 mismatch"):
        load_ensemble(copy.uri, task=DIGITS_TASK)


def test_building_ensembles_survives_a_failing_soup(digits_sweep, caplog):
    digits = load_task(DIGITS_TASK)

    def broken_load_data():
        raise RuntimeError("data moved")

    task = Task(digits.ref, SimpleNamespace(build_model=digits.get("build_model"), load_data=broken_load_data),
                digits.space)
    chosen = build_ensembles(digits_sweep, task, device="cpu")
    assert chosen is not None and chosen.chosen
    assert "soup" not in {r.method for r in read_ensembles(digits_sweep)}
    assert "soup not built: RuntimeError: data moved" in caplog.text


def test_the_soup_uses_the_splits_the_sweep_prepared_instead_of_loading_again(digits_sweep):
    digits = load_task(DIGITS_TASK)
    prepared = prepare_task_data(digits)  # what run_sweep's contract check hands over

    def broken_load_data():
        raise RuntimeError("load_data must not run again")

    task = Task(digits.ref, SimpleNamespace(build_model=digits.get("build_model"), load_data=broken_load_data),
                digits.space)
    build_ensembles(digits_sweep, task, device="cpu", splits=prepared)
    soup = next(r for r in read_ensembles(digits_sweep) if r.method == "soup")
    x_test, y_test = digits.get("load_data")()["test"]
    model = load_ensemble(digits_sweep, "soup", task=DIGITS_TASK)
    assert (model.predict(x_test).numpy() == y_test).mean() == pytest.approx(soup.test_accuracy)


@pytest.fixture(scope="module")
def augmented_sweep(tmp_path_factory):
    """Two trials of one batch-norm model on training data that changes at every read."""
    configs = {0: AUGMENTED, 1: {**AUGMENTED, "lr": 0.04}}
    return make_sweep(tmp_path_factory.mktemp("runs"), AUGMENTED_TASK, configs, epochs=3, keep_best=2)


def raw_split(dataset) -> tuple[np.ndarray, np.ndarray]:
    """A streamed split's inputs and labels as the task gives them: not standardised."""
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs).numpy(), np.asarray(ys)


def soup_row(records):
    return next(r for r in records if r.method == "soup")


def test_an_augmented_sweeps_soup_row_is_what_load_ensemble_returns_and_rebuilds_agree(augmented_sweep):
    task = load_task(AUGMENTED_TASK)
    first = soup_row(build_and_write(augmented_sweep, methods=["soup"],
                                     soup=soup_builder(augmented_sweep, task, device="cpu")))
    _, val, test = task.get("load_data")()
    model = load_ensemble(augmented_sweep, "soup", task=AUGMENTED_TASK)
    for split, dataset in (("val", val), ("test", test)):
        x, y = raw_split(dataset)
        probs = model(torch.as_tensor(x)).detach().numpy()
        assert ensembles.accuracy(probs, y) == pytest.approx(getattr(first, f"{split}_accuracy"), abs=1e-9)
        assert ensembles.log_loss(probs, y) == pytest.approx(getattr(first, f"{split}_log_loss"), abs=1e-6)
    # Rebuilt from a fresh load, or from splits prepared with their own (random) statistics: the same soup.
    again = soup_row(build_and_write(augmented_sweep, methods=["soup"],
                                     soup=soup_builder(augmented_sweep, task, device="cpu")))
    handed = soup_row(build_and_write(augmented_sweep, methods=["soup"], soup=soup_builder(
        augmented_sweep, task, device="cpu", splits=prepare_task_data(task))))
    for other in (again, handed):
        assert (other.val_accuracy, other.test_accuracy) == (first.val_accuracy, first.test_accuracy)
        assert other.val_log_loss == pytest.approx(first.val_log_loss, abs=1e-6)
        assert other.test_log_loss == pytest.approx(first.test_log_loss, abs=1e-6)
    assert again.weights_sha256 == first.weights_sha256


def test_the_soups_batch_norm_pass_over_augmented_data_is_the_same_every_time(augmented_sweep):
    soup = Soup(augmented_sweep, load_task(AUGMENTED_TASK), device="cpu")
    key = next(iter(soup.models.checkpoints))
    model = soup.models.build(key.trial_id)
    state = soup.models.state(key)
    np.random.seed(123)
    (scores, first), (again, second) = (soup.score(model, state, fresh_bn=True) for _ in range(2))
    assert scores == again and all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["1.running_mean"], state["1.running_mean"])  # recomputed, and kept in the state
    assert np.random.randint(10**6) == np.random.RandomState(123).randint(10**6)  # the caller's generator untouched


def test_a_device_this_machine_lacks_is_named_in_one_line_before_any_member_is_built(tmp_path):
    # load_ensemble(device="cuda") on a machine without one built every member, then torch raised
    # "AssertionError: Torch not compiled with CUDA enabled" (or "No CUDA GPUs are available") naming no argument
    from orchestrator.app.api import run_sweep

    done = run_sweep(TINY_TASK, storage=str(tmp_path), name="dev", trials=1, epochs=1, stages=1, slots=1,
                     executor="processes")
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ConfigError, match=rf"^device '{missing}': this machine has"):
        load_ensemble(done.path, device=missing, trust_task_code=True)
    with pytest.raises(ConfigError, match=r"^device 'gpu': not a torch device"):
        load_ensemble(done.path, device="gpu", trust_task_code=True)
    assert load_ensemble(done.path, device="cpu", trust_task_code=True).weights.device.type == "cpu"


def test_predict_of_a_module_put_in_training_mode_runs_its_members_in_eval_mode():
    # .train() on a model holding the ensemble (a notebook fine-tuning a head on top) put its members in training
    # mode: predict drew dropout and its batch norm used, and overwrote with, each batch's statistics, silently.
    from worker.load.ensemble_model import EnsembleModel

    torch.manual_seed(0)
    member = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    member[1].running_mean.fill_(0.3)
    model = EnsembleModel([member], [1.0], input_dtype=torch.float32, input_shape=(3,))
    x = torch.randn(16, 3) * 5 + 2
    expected = model.predict(x)
    stats = member[1].running_mean.clone()
    model.train()
    member[3].eval()  # a mode the caller chose for one part stays as it was
    assert torch.equal(model.predict(x), expected)
    assert torch.equal(member[1].running_mean, stats)
    assert model.training and member[1].training and not member[3].training
