"""The training loop, recorder and worker session on a tiny task: real torch, real files."""

from __future__ import annotations

import io
import logging
import math
import os
import re
import warnings

import pytest
import safetensors.torch
import torch
from torch import nn
from torch.utils.data import TensorDataset

from orchestrator.decide.backend import Assignment
from orchestrator.spec.task import load_task
from orchestrator.store.storage import Storage, sha256
from tests.conftest import ROOT, TINY_TASK
from worker.check.contract import validate_contract
from worker.data.splits import prepare, prepare_task_data
from worker.train.recorder import TrialRecorder, load_resume_state
from worker.train.session import WorkerSession
from worker.train.trainer import TrialRun, TrialSpec

CONFIG = {"lr": 0.03, "optimizer": "adam", "hidden": 8, "batch_size": 32, "ema_decay": 0.9}


def make_run(config=CONFIG, epochs=5, seed=3):
    task = load_task(TINY_TASK)
    splits = prepare(task.get("load_data")())
    return TrialRun(task, splits, TrialSpec(0, 0, config, seed, epochs), torch.device("cpu"))


def test_a_tiny_model_learns_and_records_every_number():
    run = make_run()
    rows = [run.train_epoch() for _ in range(5)]
    assert rows[-1]["val_accuracy"] > 0.8 > rows[0]["val_accuracy"] - 0.5
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "grad_norm", "update_ratio",
                "epoch_seconds", "samples_per_second", "ema_val_loss", "ema_val_accuracy"):
        assert rows[-1][key] is not None and math.isfinite(rows[-1][key]), key
    assert 1e-6 < rows[-1]["update_ratio"] < 1.0


def test_training_statistics_come_from_the_training_split_only():
    task = load_task(TINY_TASK)
    splits = prepare(task.get("load_data")())
    assert torch.allclose(splits.x_train.mean(0), torch.zeros(4), atol=1e-5)
    assert not torch.allclose(splits.x_val.mean(0), torch.zeros(4), atol=1e-3)


def test_resume_state_continues_exactly():
    straight = make_run()
    expected = [straight.train_epoch()["val_loss"] for _ in range(4)]
    first = make_run()
    first.train_epoch()
    first.train_epoch()
    buf = io.BytesIO()
    torch.save(first.resume_state(), buf)
    second = make_run()
    second.load_resume_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    resumed = [second.train_epoch()["val_loss"] for _ in range(2)]
    assert resumed == expected[2:]


def test_recorder_keeps_best_and_last_with_checksums(tmp_path):
    storage = Storage.from_uri(str(tmp_path))
    run = make_run()
    recorder = TrialRecorder(storage, 0, 0, keep_best=1, checkpoint_seconds=0.0)
    for _ in range(3):
        recorder.record(run, run.train_epoch())
    assert load_resume_state(storage, 0)["epoch"] == 3
    index = recorder.finish(run)
    assert load_resume_state(storage, 0) is None  # a finished trial needs no resume state
    kinds = {(r["weights"], r["kept_as"]) for r in index}
    assert ("raw", "last") in kinds or ("raw", "best,last") in kinds
    for row in index:
        data = storage.read_bytes(row["path"])
        assert sha256(data) == row["sha256"] and len(data) == row["bytes"]
        state = safetensors.torch.load(data)
        fresh = load_task(TINY_TASK).get("build_model")(CONFIG)
        fresh.load_state_dict(state)
    metrics = storage.list_files("metrics")
    assert metrics == ["metrics/trial-000000.parquet"]  # parts compacted into one file
    assert storage.read_table(metrics[0]).num_rows == 3


def test_session_reports_user_errors_as_failed_trials(tmp_path):
    session = WorkerSession(TINY_TASK, str(tmp_path), "s")
    bad = Assignment(1, 0, {**CONFIG, "optimizer": "nope"}, 1, 2, 2)
    report = session.start(bad)
    assert report.ended and report.status == "failed" and "optimizer: unknown 'nope'" in report.error
    good = session.start(Assignment(2, 0, CONFIG, 1, 2, 1))
    assert not good.ended and [r["epoch"] for r in good.rows] == [1]
    done = session.advance(2, 2)
    assert done.ended and done.status == "completed"


def test_a_worker_that_cannot_write_the_storage_refuses_before_any_trial_trains(tmp_path):
    """A cluster node without the master's credentials or mount: said at the worker's start, not after its trials
    trained and lost every result at their end writes."""
    from orchestrator.errors import StorageError

    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(StorageError, match=r"^worker on .+: storage '.*a_file/runs/s' is not writable: .*; the master "
                                           r"could write there, so this worker's machine lacks the storage's "
                                           r"credentials or mount"):
        WorkerSession(TINY_TASK, str(tmp_path / "a_file" / "runs"), "s")


def test_session_stops_a_diverging_trial_at_once(tmp_path):
    session = WorkerSession(TINY_TASK, str(tmp_path), "s")
    report = session.start(Assignment(3, 0, {**CONFIG, "lr": 1e6, "optimizer": "sgd"}, 1, 10, 10))
    assert report.ended and report.status == "pruned" and report.reason == "diverged"
    assert len(report.rows) <= 2


def test_inactive_hyperparameters_fall_back_to_the_optimizer_defaults():
    """A conditional hyperparameter inactive in a trial arrives as None: the run equals one without the key."""
    inactive = {"momentum": None, "beta1": None, "beta2": None, "eps": None, "rho": None, "decay_rate": None,
                "grad_clip": None, "step_epochs": None}
    for optimizer in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"):
        base = {**CONFIG, "optimizer": optimizer, "schedule": "step"}
        with_none, without = make_run({**base, **inactive}, epochs=2), make_run(base, epochs=2)
        assert with_none.optimizer.param_groups[0] == without.optimizer.param_groups[0] | {
            "params": with_none.optimizer.param_groups[0]["params"]}
        assert with_none.train_epoch()["train_loss"] == without.train_epoch()["train_loss"]


def test_the_last_checkpoints_reuse_the_epochs_validation_pass_with_the_same_numbers():
    run = make_run(config={**CONFIG, "dropout": 0.3})
    run.train_epoch()
    earlier = {w: run.weights_state(w) for w in ("raw", "ema")}
    run.train_epoch()
    for weights in ("raw", "ema"):
        state = run.weights_state(weights)
        reused = run.checkpoint_results(state, weights, run.epoch)
        fresh = run.checkpoint_results(state, weights)  # no epoch: loads the state and runs both splits
        for split in ("val", "test"):
            assert reused[split][1] == fresh[split][1], (weights, split)
            assert torch.equal(reused[split][0], fresh[split][0]), (weights, split)
        # a state that is not the weights right now is run again, whatever epoch it claims
        stale = run.checkpoint_results(earlier[weights], weights, run.epoch)
        assert stale["val"][1] == run.checkpoint_results(earlier[weights], weights)["val"][1]
        assert stale["val"][1] != fresh["val"][1]
    assert run.last_val["raw"][0] == run.epoch == 2


BATCH_NORM_TASK = os.path.join(ROOT, "tests", "tasks", "batch_norm_task.py")


def test_a_batch_norm_model_leaves_out_a_last_batch_of_one_example():
    """301 examples at batch_size 75 end on a batch of one, which batch norm cannot train on: it is left out."""
    task = load_task(BATCH_NORM_TASK)
    data = task.get("load_data")()
    in_memory = prepare(data)
    streamed = prepare({name: TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
                        for name, (x, y) in zip(("train", "val", "test"), data)})

    def sizes(splits, **config):
        run = TrialRun(task, splits, TrialSpec(0, 0, {"lr": 0.01, "optimizer": "adam", **config}, 1, 2),
                       torch.device("cpu"))
        return [len(y) for _, y in run._batches()], run

    for splits in (in_memory, streamed):
        got, run = sizes(splits, batch_size=75)
        assert got == [75] * 4  # a different example left out each epoch: the order is shuffled
        row = run.train_epoch()
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["update_ratio"])  # the last batch's ratio
        assert sizes(splits, batch_size=64)[0] == [64] * 4 + [45]  # a last batch of 45 trains
        assert sizes(splits, batch_size=75, batch_norm=False)[0] == [75] * 4 + [1]  # no batch norm: nothing left out


def test_the_contract_check_says_which_batch_sizes_leave_one_example_out(caplog):
    task = load_task(BATCH_NORM_TASK)
    configs = [{"lr": 0.01, "optimizer": "adam", "batch_size": b} for b in (64, 100, 75, 64)]
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(task, configs)
    lines = [r.getMessage() for r in caplog.records if "batch norm" in r.getMessage()]
    assert len(lines) == 1 and "301 examples" in lines[0] and "batch_size 75, 100 " in lines[0], lines
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(task, [{**configs[0], "batch_norm": False}, {**configs[2], "batch_norm": False}])
    assert not [r for r in caplog.records if "batch norm" in r.getMessage()]


def test_a_custom_train_epoch_may_return_its_loss_as_a_tensor_but_not_as_a_vector():
    import dataclasses
    from types import SimpleNamespace

    import pytest
    from torch import nn

    from orchestrator.errors import TaskError

    def summed_without_item(model, optimizer, batches, config):  # the classic slip: the tensor, not loss.item()
        total, n = 0.0, 0
        for x, y in batches:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total, n = total + loss, n + 1
        return {"train_loss": total / n, "grad_norm": torch.tensor([0.5])}

    base = load_task(TINY_TASK)
    module = base.namespace
    task = dataclasses.replace(base, namespace=SimpleNamespace(
        load_data=module.load_data, build_model=module.build_model, train_epoch=summed_without_item))
    splits = prepare(module.load_data())
    run = TrialRun(task, splits, TrialSpec(0, 0, CONFIG, 3, 2), torch.device("cpu"))
    start = {k: v.clone() for k, v in run.ema.module.state_dict().items()}
    row = run.train_epoch()
    assert type(row["train_loss"]) is float and 0 < row["train_loss"] < 5 and row["grad_norm"] == 0.5
    # The EMA (CONFIG's ema_decay) follows the task's own optimizer steps, as it follows caviar's loop.
    moved = [k for k, v in run.ema.module.state_dict().items() if not torch.equal(v, start[k])]
    assert moved and run.ema.step == 6  # 180 examples in batches of 32

    def per_example(model, optimizer, batches, config):
        return {"train_loss": torch.ones(4)}

    task = dataclasses.replace(task, namespace=SimpleNamespace(
        load_data=module.load_data, build_model=module.build_model, train_epoch=per_example))
    with pytest.raises(TaskError, match=r"^train_epoch returned 'train_loss' as Tensor of shape \(4,\); give one "
                                        r"number per epoch"):
        TrialRun(task, splits, TrialSpec(0, 0, CONFIG, 3, 2), torch.device("cpu")).train_epoch()


def test_a_worker_kept_for_the_next_sweep_writes_its_dataset_row_even_under_the_same_name(tmp_path):
    """A warm worker (Ray's keep_workers) bound to a new sweep of the same storage and name, as after
    run_sweep(..., overwrite=True) in a notebook: before, it remembered having written dataset.parquet for
    that URI and wrote none for the new sweep, whose ensembles then found "no trial stored predictions"."""
    import shutil

    from orchestrator.store import schema

    session = WorkerSession(TINY_TASK, str(tmp_path), "s")
    assert session.start(Assignment(0, 1, CONFIG, 1, 1, 1)).ended
    sweep = Storage.from_uri(str(tmp_path)).child("s")
    assert sweep.exists(schema.DATASET_PATH)
    shutil.rmtree(tmp_path / "s")  # --overwrite clears the old sweep's folders
    session.bind(str(tmp_path), "s")
    assert session.start(Assignment(0, 1, CONFIG, 1, 1, 1)).ended
    assert sweep.exists(schema.predictions_path(0)) and sweep.exists(schema.DATASET_PATH)


def test_a_warm_up_in_the_tasks_own_epoch_and_caviars_schedule_compose():
    """The task's train_epoch warms the rate up over 1.5 epochs, then leaves it to schedule = exponential (0.5 an
    epoch). The schedule scaled whatever rate the task left: 0.01, 0.0033, 0.005, 0.0025 at the epochs' starts (the
    warm-up's midpoint halved, then the full rate, the decay an epoch late). Now the schedule's own rates, with the
    warm-up's steps as the task set them."""
    from worker.data.splits import prepare_task_data

    task = load_task(os.path.join(ROOT, "tests", "tasks", "warmup_task.py"))
    used = task.get("USED")
    used.clear()
    config = {"lr": 0.01, "batch_size": 16, "optimizer": "sgd", "schedule": "exponential", "decay_rate": 0.5}
    run = TrialRun(task, prepare_task_data(task), TrialSpec(0, 0, config, 0, 4), torch.device("cpu"))
    recorded = [run.train_epoch()["lr"] for _ in range(4)]
    assert recorded == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    assert used[0] == pytest.approx([0.01 * (i + 1) / 30 for i in range(20)])  # the task's warm-up, step by step
    assert used[1][:10] == pytest.approx([0.01 * (i + 21) / 30 for i in range(10)])
    assert used[2] == pytest.approx([0.0025] * 20) and used[3] == pytest.approx([0.00125] * 20)


def test_a_searched_batch_size_of_one_for_a_batch_norm_model_is_named_before_the_sweep(tmp_path, caplog):
    """lograndint(1, 64) for a model with batch norm: every trial drawing 1 failed on torch's 'Expected more than 1
    value per channel when training' after the sweep started, with no word before it. Now one warning line."""
    from orchestrator.app.api import load, run_sweep
    from orchestrator.search.space import SearchSpace, choice, randint
    from worker.check.validate import warn_if_batch_of_one_is_searched

    task_file = os.path.join(ROOT, "tests", "tasks", "batch_norm_from_one_task.py")
    result = run_sweep(task_file, storage=str(tmp_path), name="bn", slots=1, seed=0, executor="processes",
                       ensemble=False)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("space: batch_size")]
    assert said == ["space: batch_size range [1, 64] includes 1, and the model has batch norm, which cannot train on a "
                    "batch of one example (torch raises): the trials that draw 1 will fail (the others train); set the "
                    "range's low to 2 (limits=(2, high) keeps later stages above it too)"]
    trials = load(result.path).trials.to_pylist()
    drew_one = [t["status"] for t in trials if t["config"]["batch_size"] == 1]
    assert drew_one and set(drew_one) == {"failed"}  # the premise
    model = load_task(task_file).get("build_model")({})
    assert "drop the option 1" in warn_if_batch_of_one_is_searched(model, SearchSpace({"batch_size": choice([1, 8])}))
    assert warn_if_batch_of_one_is_searched(model, SearchSpace({"batch_size": randint(2, 64)})) is None
    assert warn_if_batch_of_one_is_searched(torch.nn.Linear(4, 2), SearchSpace({"batch_size": randint(1, 8)})) is None


def test_a_model_with_an_auxiliary_head_in_training_trains_through_the_tasks_own_loop():
    """Inception-style: (logits, aux) in training mode, logits in eval mode; the task's train_epoch adds the two
    losses. caviar evaluates in eval mode only, so the contract check must not demand a tensor in training mode."""
    import dataclasses
    from types import SimpleNamespace

    from torch import nn

    class AuxNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head, self.aux = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 3), nn.Linear(8, 3)

        def forward(self, x):
            h = self.body(x)
            return (self.head(h), self.aux(h)) if self.training else self.head(h)

    def with_aux_loss(model, optimizer, batches, config):
        model.train()
        losses = []
        for x, y in batches:
            logits, aux = model(x)
            loss = nn.functional.cross_entropy(logits, y) + 0.3 * nn.functional.cross_entropy(aux, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return {"train_loss": sum(losses) / len(losses)}

    module = load_task(TINY_TASK).namespace
    task = dataclasses.replace(load_task(TINY_TASK), namespace=SimpleNamespace(
        space=module.space, load_data=module.load_data, build_model=lambda config: AuxNet(),
        train_epoch=with_aux_loss))
    splits = validate_contract(task, [CONFIG])  # refused: "the model must return a tensor, got tuple"
    run = TrialRun(task, splits, TrialSpec(0, 0, CONFIG, 3, 3), torch.device("cpu"))
    rows = [run.train_epoch() for _ in range(3)]
    assert rows[-1]["val_accuracy"] > 0.8 and math.isfinite(rows[-1]["ema_val_loss"])


def test_a_backbone_built_once_and_shared_by_every_model_is_refused_unless_frozen():
    """A module made at import and put in every model: each trial in a worker went on from the weights the trial
    before it trained, and nothing said so."""
    import dataclasses
    from types import SimpleNamespace

    import pytest
    from torch import nn

    from orchestrator.errors import TaskError

    base = load_task(TINY_TASK)
    module = base.namespace
    backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU())

    def sharing(config):
        return nn.Sequential(backbone, nn.Linear(8, 3))

    task = dataclasses.replace(base, namespace=SimpleNamespace(space=module.space, load_data=module.load_data,
                                                              build_model=sharing))
    with pytest.raises(TaskError, match=r"build_model returns models that share the trainable parameter 0\.0\.weight"):
        validate_contract(task, [CONFIG])
    backbone.requires_grad_(False)  # a frozen pretrained backbone never changes: sharing it is fine
    validate_contract(task, [CONFIG])


def test_a_frozen_shared_backbone_whose_batch_norm_statistics_train_is_refused():
    """Frozen weights may be shared, but a BatchNorm's running statistics still move in training mode: each trial in
    a worker changed the statistics the next one started from, and its scores depended on which trials it followed."""
    import dataclasses
    from types import SimpleNamespace

    import pytest
    from torch import nn

    from orchestrator.errors import TaskError

    base = load_task(TINY_TASK)
    module = base.namespace
    backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU()).requires_grad_(False)

    def sharing(config):
        return nn.Sequential(backbone, nn.Linear(8, 3))

    task = dataclasses.replace(base, namespace=SimpleNamespace(space=module.space, load_data=module.load_data,
                                                              build_model=sharing))
    with pytest.raises(TaskError, match=r"share the running statistics 0\.1\.running_mean \(and 1 more\) with the "
                                        r"models it built before .* copy\.deepcopy the backbone in build_model"):
        validate_contract(task, [CONFIG])

    class EvalBackbone(nn.Sequential):  # the other way out: its statistics never train
        def train(self, mode=True):
            return super().train(False)

    kept = EvalBackbone(*backbone)

    def sharing_in_eval(config):
        return nn.Sequential(kept, nn.Linear(8, 3))

    validate_contract(dataclasses.replace(task, namespace=SimpleNamespace(
        space=module.space, load_data=module.load_data, build_model=sharing_in_eval)), [CONFIG])


def test_a_build_optimizer_returning_an_optimizer_and_scheduler_pair_is_refused_naming_build_optimizer():
    """Lightning's configure_optimizers shape: the refusal named the model's forward pass or loss_fn, with torch's
    "'tuple' object has no attribute 'param_groups'" from inside the scheduler."""
    import dataclasses
    from types import SimpleNamespace

    import pytest

    from orchestrator.errors import TaskError

    base = load_task(TINY_TASK)
    module = base.namespace

    def with_scheduler(config, params):
        optimizer = torch.optim.SGD(params, lr=config["lr"])
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1)

    def raising(config, params):
        return torch.optim.SGD(params, lr=config["no_such_key"])

    def task_with(build_optimizer):
        return dataclasses.replace(base, namespace=SimpleNamespace(
            space=module.space, load_data=module.load_data, build_model=module.build_model,
            build_optimizer=build_optimizer))

    with pytest.raises(TaskError, match=r"tiny_task.py': build_optimizer must return a torch.optim.Optimizer, got "
                                        r"tuple \(an \(optimizer, scheduler\) pair\?"):
        validate_contract(task_with(with_scheduler), [CONFIG])
    with pytest.raises(TaskError, match=r"tiny_task.py': build_optimizer raised KeyError: 'no_such_key'"):
        validate_contract(task_with(raising), [CONFIG])


class SparseBag(torch.nn.Module):
    """A recommender's sparse embedding (sparse gradients, trained by SGD) over the tiny task's features as ids."""

    def __init__(self):
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(8, 6, sparse=True)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.bag(x))


def sparse_task():
    import dataclasses
    from types import SimpleNamespace

    import numpy as np

    base = load_task(TINY_TASK)
    module = base.namespace

    def ids():
        return tuple((np.clip((x + 2).astype(np.int64), 0, 7), y) for x, y in module.load_data())

    return dataclasses.replace(base, namespace=SimpleNamespace(space=module.space, load_data=ids,
                                                              build_model=lambda config: SparseBag()))


@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_a_sparse_embedding_trains_and_its_gradient_norm_is_measured_and_clipped(grad_clip):
    """torch's clip_grad_norm_ raised NotImplementedError on sparse gradients: every trial failed at its first step,
    summarised by the last line of torch's dispatcher listing."""
    from worker.train.trainer import clip_grad_norm

    config = {**CONFIG, "optimizer": "sgd", "lr": 0.3, "grad_clip": grad_clip}
    task = sparse_task()
    run = TrialRun(task, validate_contract(task, [config]), TrialSpec(0, 0, config, 3, 3), torch.device("cpu"))
    rows = [run.train_epoch() for _ in range(3)]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] and all(math.isfinite(r["grad_norm"]) for r in rows)
    grads = {r["layer"]: r["grad_norm"] for r in run.diagnostics.take() if r["kind"] == "parameter"}
    assert grads["bag.weight"] > 0
    # The norm and the clipping are torch's on the same gradients made dense.
    model = SparseBag()
    model(torch.tensor([[0, 1, 1], [2, 3, 4]])).sum().backward()
    dense = [p.grad.to_dense().clone() for p in model.parameters()]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in dense]))
    assert clip_grad_norm(list(model.parameters()), 0.05) == pytest.approx(float(expected), rel=1e-6)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.to_dense())
                                                    for p in model.parameters()]))
    assert float(clipped) == pytest.approx(0.05, rel=1e-4)


def test_without_grad_clip_the_norm_is_torchs_and_no_gradient_is_touched():
    """No grad_clip: the norm alone, the gradients left as they are (not multiplied by 1 at every step)."""
    from worker.train.trainer import clip_grad_norm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    model(torch.randn(5, 4)).pow(2).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before]))
    assert clip_grad_norm(list(model.parameters()), math.inf) == pytest.approx(float(expected), rel=1e-6)
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))
    assert clip_grad_norm([torch.nn.Parameter(torch.zeros(2))], math.inf) == 0.0  # no gradient yet


def test_a_model_with_torch_weight_norm_trains_with_ema():
    """torch.nn.utils.weight_norm (the older API, still common) leaves a computed tensor on the module, which
    torch's deepcopy refuses: every sweep with ema_decay was refused before its first trial."""
    import dataclasses
    import warnings
    from types import SimpleNamespace

    from torch import nn

    def weight_normed(config):
        with warnings.catch_warnings():  # torch: deprecated in favour of parametrizations.weight_norm
            warnings.simplefilter("ignore")
            return nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 8)), nn.ReLU(), nn.Linear(8, 3))

    base = load_task(TINY_TASK)
    module = base.namespace
    task = dataclasses.replace(base, namespace=SimpleNamespace(space=module.space, load_data=module.load_data,
                                                              build_model=weight_normed))
    run = TrialRun(task, validate_contract(task, [CONFIG]), TrialSpec(0, 0, CONFIG, 3, 3), torch.device("cpu"))
    rows = [run.train_epoch() for _ in range(3)]
    assert rows[-1]["val_accuracy"] > 0.8 and rows[-1]["ema_val_loss"] < rows[0]["ema_val_loss"]
    ema, raw = run.ema.module.state_dict(), run.model.state_dict()
    assert ema.keys() == raw.keys() and not torch.equal(ema["0.weight_g"], raw["0.weight_g"])  # averaged, not tied


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tasks_train_epoch_may_take_len_of_its_batches(streamed):
    """A OneCycleLR needs the steps per epoch: len(batches) raised "object of type '_CountedBatches' has no len()"
    in every trial."""
    import dataclasses
    from types import SimpleNamespace

    from torch import nn

    seen = []

    def one_cycle(model, optimizer, batches, config):
        steps = len(batches)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["lr"], total_steps=steps)
        count, total = 0, 0.0
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            count, total = count + 1, total + loss.item()
        seen.append((steps, count))
        return {"train_loss": total / count}

    base = load_task(TINY_TASK)
    module = base.namespace

    def data():
        splits = module.load_data()
        if not streamed:
            return splits
        return tuple(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for x, y in splits)

    task = dataclasses.replace(base, namespace=SimpleNamespace(space=module.space, load_data=data,
                                                              build_model=module.build_model, train_epoch=one_cycle))
    config = {**CONFIG, "batch_size": 50}  # 180 examples: 4 batches, the last of 30
    run = TrialRun(task, validate_contract(task, [config]), TrialSpec(0, 0, config, 3, 2), torch.device("cpu"))
    rows = [run.train_epoch() for _ in range(2)]
    assert seen == [(4, 4), (4, 4)] and all(math.isfinite(r["train_loss"]) for r in rows)


def test_lbfgs_is_refused_for_caviars_loop_before_the_sweep_and_trains_in_the_tasks_own():
    """LBFGS's step() needs a closure: with caviar's loop every trial failed with "LBFGS.step() missing 1 required
    positional argument: 'closure'"."""
    import dataclasses
    from types import SimpleNamespace

    import pytest
    from torch import nn

    from orchestrator.errors import TaskError

    def lbfgs(config, params):
        return torch.optim.LBFGS(params, lr=0.5, max_iter=5)

    def with_closure(model, optimizer, batches, config):
        losses = []
        for x, y in batches:
            def closure(x=x, y=y):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            losses.append(float(optimizer.step(closure).detach()))
        return {"train_loss": sum(losses) / len(losses)}

    base = load_task(TINY_TASK)
    module = base.namespace
    pieces = {"space": module.space, "load_data": module.load_data, "build_model": module.build_model,
              "build_optimizer": lbfgs}
    caviars_loop = dataclasses.replace(base, namespace=SimpleNamespace(**pieces))
    with pytest.raises(TaskError, match=r"tiny_task.py': build_optimizer returns LBFGS, whose step\(\) needs a "
                                        r"closure"):
        validate_contract(caviars_loop, [CONFIG])
    own_loop = dataclasses.replace(base, namespace=SimpleNamespace(**pieces, train_epoch=with_closure))
    run = TrialRun(own_loop, validate_contract(own_loop, [CONFIG]), TrialSpec(0, 0, CONFIG, 3, 2), torch.device("cpu"))
    rows = [run.train_epoch() for _ in range(2)]
    assert rows[-1]["val_accuracy"] > 0.8 and math.isfinite(rows[-1]["ema_val_loss"])


@pytest.mark.parametrize("add_group", [False, True])
def test_unfreezing_a_backbone_in_the_tasks_loop_is_refused_not_trained_frozen(add_group):
    """Gradual unfreezing: the backbone, frozen when the optimizer was built over the trainable parameters, got
    gradients after requires_grad_(True) but was never stepped, so the trial trained a frozen model while the task
    believed otherwise; adding it with add_param_group failed the epoch's schedule step with torch's "zip() argument
    2 is shorter than argument 1"."""
    import dataclasses
    from types import SimpleNamespace

    from torch import nn

    from orchestrator.errors import TaskError

    def frozen_backbone(config):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        model[0].requires_grad_(False)
        return model

    def unfreezing(model, optimizer, batches, config):
        if unfreezing.epochs == 1:
            model[0].requires_grad_(True)
            if add_group:
                optimizer.add_param_group({"params": list(model[0].parameters())})
        unfreezing.epochs += 1
        losses = []
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return {"train_loss": sum(losses) / len(losses)}

    unfreezing.epochs = 0
    base = load_task(TINY_TASK)
    module = base.namespace
    task = dataclasses.replace(base, namespace=SimpleNamespace(space=module.space, load_data=module.load_data,
                                                              build_model=frozen_backbone, train_epoch=unfreezing))
    run = TrialRun(task, validate_contract(task, [CONFIG]), TrialSpec(0, 0, CONFIG, 3, 3), torch.device("cpu"))
    run.train_epoch()  # frozen, as built: trains its head
    unfreezing.epochs = 1
    said = "train_epoch added a parameter group" if add_group else r"parameter 0.weight \(and 1 more\) was frozen"
    with pytest.raises(TaskError, match=f"{said}.*train the backbone from the start instead"):
        run.train_epoch()


def test_a_configs_grad_clip_clips_the_tasks_own_loop_before_each_step():
    """A searched grad_clip with the task's own train_epoch was passed in the config and never applied: every trial
    trained unclipped whatever value it drew. Now each optimizer step of the task's loop clips first."""
    import dataclasses
    from types import SimpleNamespace

    from torch import nn

    seen = []

    def own_loop(model, optimizer, batches, config):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        total, n = 0.0, 0
        for x, y in batches:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) * 1000.0  # large gradients, well past the clip
            loss.backward()
            before = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
            optimizer.step()
            after = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
            seen.append((before, after))
            total, n = total + loss.item(), n + 1
        return {"train_loss": total / n}

    base = load_task(TINY_TASK)
    module = base.namespace
    task = dataclasses.replace(base, namespace=SimpleNamespace(
        load_data=module.load_data, build_model=module.build_model, train_epoch=own_loop))
    splits = prepare(module.load_data())
    config = {"lr": 0.01, "optimizer": "sgd", "hidden": 8, "batch_size": 32, "grad_clip": 0.5}
    TrialRun(task, splits, TrialSpec(0, 0, config, 3, 1), torch.device("cpu")).train_epoch()
    assert seen and all(before > 0.5 for before, _ in seen)
    assert all(after == pytest.approx(0.5, rel=1e-3) for _, after in seen)  # the step saw clipped gradients
    seen.clear()
    unclipped = {k: v for k, v in config.items() if k != "grad_clip"}
    TrialRun(task, splits, TrialSpec(0, 0, unclipped, 3, 1), torch.device("cpu")).train_epoch()
    assert all(after == before for before, after in seen)


def test_grad_clip_with_an_optimizer_whose_step_takes_a_closure_is_refused_in_the_tasks_own_loop():
    """LBFGS steps with the gradients its closure computes anew, after the pre-step clip: every trial trained
    unclipped whatever grad_clip it drew. Refused in one line; without grad_clip the loop runs."""
    import dataclasses
    from types import SimpleNamespace

    from torch import nn

    from orchestrator.errors import TaskError

    def own_loop(model, optimizer, batches, config):
        for x, y in batches:
            def closure(x=x, y=y):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            loss = optimizer.step(closure)
        return {"train_loss": loss.item()}

    base = load_task(TINY_TASK)
    module = base.namespace
    task = dataclasses.replace(base, namespace=SimpleNamespace(
        load_data=module.load_data, build_model=module.build_model, train_epoch=own_loop,
        build_optimizer=lambda config, params: torch.optim.LBFGS(params, lr=config["lr"])))
    splits = prepare(module.load_data())
    config = {"lr": 0.1, "hidden": 8, "batch_size": 32, "grad_clip": 0.5}
    with pytest.raises(TaskError, match=r"^grad_clip = 0.5 with LBFGS, whose step\(\) computes its own gradients"):
        TrialRun(task, splits, TrialSpec(0, 0, config, 3, 1), torch.device("cpu"))
    unclipped = {k: v for k, v in config.items() if k != "grad_clip"}
    assert math.isfinite(TrialRun(task, splits, TrialSpec(0, 0, unclipped, 3, 1), torch.device("cpu"))
                         .train_epoch()["train_loss"])


def test_the_recorded_lr_is_the_first_param_groups_with_the_tasks_own_loop_too():
    """build_optimizer gives the head the config's lr (group 0) and the body a tenth, with the task's own
    train_epoch: the metrics' lr was the last group's (0.001 for lr 0.01) where caviar's own loop records group 0's.
    Now both record the first group's rate, as the schedule moves it."""
    import dataclasses
    from types import SimpleNamespace

    from torch import nn

    def two_groups(config, params):
        params = list(params)
        return torch.optim.SGD([{"params": params[2:], "lr": config["lr"]},
                                {"params": params[:2], "lr": config["lr"] * 0.1}], lr=config["lr"])

    def own_loop(model, optimizer, batches, config):
        for x, y in batches:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        return {"train_loss": loss.item()}

    base = load_task(TINY_TASK)
    module = base.namespace
    splits = prepare(module.load_data())
    config = {"lr": 0.01, "hidden": 8, "batch_size": 32, "schedule": "exponential", "decay_rate": 0.5}
    for loop in (own_loop, None):
        task = dataclasses.replace(base, namespace=SimpleNamespace(
            load_data=module.load_data, build_model=module.build_model, build_optimizer=two_groups,
            train_epoch=loop))
        run = TrialRun(task, splits, TrialSpec(0, 0, config, 3, 3), torch.device("cpu"))
        assert [run.train_epoch()["lr"] for _ in range(3)] == pytest.approx([0.01, 0.005, 0.0025]), loop


def test_an_optimizer_wrapper_that_is_no_torch_optimizer_is_refused_naming_build_optimizer():
    """A hand-written Lookahead with param_groups, step and state_dict but no torch.optim.Optimizer base: the
    refusal named the model's forward pass or loss_fn, with torch's "Lookahead is not an Optimizer" from the
    schedule. Now build_optimizer, in one line."""
    import dataclasses
    from types import SimpleNamespace

    from orchestrator.errors import TaskError

    class Lookahead:
        def __init__(self, base):
            self.base = base
            self.param_groups = base.param_groups

        def step(self, closure=None):
            self.base.step()

        def zero_grad(self, set_to_none=True):
            self.base.zero_grad(set_to_none=set_to_none)

        def state_dict(self):
            return self.base.state_dict()

    base = load_task(TINY_TASK)
    module = base.namespace
    task = dataclasses.replace(base, namespace=SimpleNamespace(
        space=module.space, load_data=module.load_data, build_model=module.build_model,
        build_optimizer=lambda config, params: Lookahead(torch.optim.SGD(params, lr=config["lr"]))))
    with pytest.raises(TaskError, match=r"tiny_task.py': build_optimizer must return a torch.optim.Optimizer, got "
                                        r"Lookahead, which does not subclass it"):
        validate_contract(task, [CONFIG])


def test_fp16_steps_the_loss_scaler_skips_count_in_no_gradient_norm_and_no_ema_step():
    """fp16 starts its loss scale at 2**16 and skips each step whose scaled gradients overflow, until the scale fits:
    a regression in hundreds skipped its first 9 steps. The metrics' grad_norm read NaN for the first epoch and inf
    for the second, though every step taken had a finite gradient, and the EMA counted the skipped steps as updates.
    Now grad_norm averages the steps taken (null while none was), and the EMA follows those steps only."""
    from worker.data.splits import prepare_task_data

    task = load_task(os.path.join(ROOT, "tests", "tasks", "large_units_regression_task.py"))
    config = {"lr": 0.05, "batch_size": 32, "optimizer": "adam", "ema_decay": 0.9}
    run = TrialRun(task, prepare_task_data(task), TrialSpec(0, 0, config, 0, 3), torch.device("cpu"), "fp16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        norms = [run.train_epoch()["grad_norm"] for _ in range(3)]
    assert norms[0] is None and all(math.isfinite(n) and n > 0 for n in norms[1:])
    # torch's "lr_scheduler.step() before optimizer.step()" after the skipped first epoch: no mistake of the user's
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    taken = {int(state["step"]) for state in run.optimizer.state.values()}
    assert taken == {run.ema.step} and 0 < run.ema.step < 15  # 5 batches an epoch, the first ones skipped


@pytest.mark.parametrize("schedule", [None, "constant"])
def test_a_tasks_own_loop_owns_the_rate_when_the_config_names_no_schedule(schedule):
    """The task's train_epoch decays the rate by 0.9 after every step, with no schedule in the config: caviar's
    constant schedule put the config's lr back at every epoch's end, so each epoch started again at 0.01 (the lr
    column read 0.01 throughout) and the decay over the trial never happened. Now the loop's rate goes on."""
    import dataclasses
    from types import SimpleNamespace

    from torch import nn

    used = []

    def decaying(model, optimizer, batches, config):
        for x, y in batches:
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            for group in optimizer.param_groups:
                group["lr"] *= 0.9
        return {"train_loss": loss.item()}

    base = load_task(TINY_TASK)
    module = base.namespace
    task = dataclasses.replace(base, namespace=SimpleNamespace(
        load_data=module.load_data, build_model=module.build_model, train_epoch=decaying))
    config = {"lr": 0.01, "optimizer": "sgd", "hidden": 8, "batch_size": 60, "schedule": schedule}  # 3 batches
    run = TrialRun(task, prepare(module.load_data()), TrialSpec(0, 0, config, 3, 3), torch.device("cpu"))
    recorded = [run.train_epoch()["lr"] for _ in range(3)]
    assert used == pytest.approx([0.01 * 0.9**i for i in range(9)])
    assert recorded == pytest.approx([0.01, 0.01 * 0.9**3, 0.01 * 0.9**6])


def test_an_fp16_trial_resumes_with_its_loss_scale():
    """The resume state held no GradScaler state: a resumed fp16 trial started again at a scale of 2**16 and
    skipped its first steps after the resume (a regression in hundreds: val losses 111439, 111336 against 110819,
    109958 run straight). Now it goes on with the scale it had, as the straight run does."""
    from worker.data.splits import prepare_task_data

    task = load_task(os.path.join(ROOT, "tests", "tasks", "large_units_regression_task.py"))
    splits = prepare_task_data(task)
    config = {"lr": 0.05, "batch_size": 32, "optimizer": "adam"}

    def make():
        return TrialRun(task, splits, TrialSpec(0, 0, config, 0, 5), torch.device("cpu"), "fp16")

    straight = make()
    expected = [straight.train_epoch()["val_loss"] for _ in range(5)]
    first = make()
    for _ in range(3):
        first.train_epoch()
    buf = io.BytesIO()
    torch.save(first.resume_state(), buf)
    resumed = make()
    resumed.load_resume_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert [resumed.train_epoch()["val_loss"] for _ in range(2)] == expected[3:]


@pytest.mark.parametrize("values, said", [
    ({"optimizer": "nesterov", "momentum": 0.0},
     "optimizer 'nesterov' with lr 0.05, momentum 0.0: torch refused these config values (Nesterov momentum requires a "
     "momentum and zero dampening); keep them in range in the space"),
    ({"optimizer": "adam", "beta1": 1.0},
     "optimizer 'adam' with lr 0.05, beta1 1.0: torch refused these config values (Invalid beta parameter at index 0: "
     "1.0); keep them in range in the space"),
    ({"optimizer": "adam", "schedule": "plateau", "decay_rate": 1.5},
     "schedule 'plateau' with decay_rate 1.5: torch refused these config values (Factor should be < 1.0.); keep them "
     "in range in the space"),
])
def test_config_values_torchs_optimizer_or_schedule_refuses_are_named_as_config_values_not_as_the_forward_pass(
        values, said):
    from orchestrator.errors import TaskError

    task = load_task(TINY_TASK)
    config = {"lr": 0.05, "hidden": 8, "batch_size": 32, **values}
    with pytest.raises(TaskError) as refused:
        validate_contract(task, [config])
    assert str(refused.value) == f"task {task.ref!r}: {said}"


def test_a_resumed_own_loop_gets_back_the_state_it_kept_on_its_optimizer():
    """A loop keeps a OneCycleLR, an adversary's optimizer and a step counter on its optimizer: a resumed trial got
    a fresh optimizer without them, so its loop started the schedule and the adversary's momentum again and the
    resumed epochs differed from an uninterrupted run's (lr 0.01 at epoch 4 instead of 0.0019)."""
    task = load_task(os.path.join(ROOT, "tests", "tasks", "own_loop_state_task.py"))
    splits = prepare_task_data(task)

    def make():
        return TrialRun(task, splits, TrialSpec(0, 0, task.get("space"), 3, 4), torch.device("cpu"))

    straight = make()
    expected = [straight.train_epoch() for _ in range(4)]
    first = make()
    first.train_epoch()
    first.train_epoch()
    buf = io.BytesIO()
    torch.save(first.resume_state(), buf)  # as the recorder stores it
    second = make()
    second.load_resume_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    resumed = [second.train_epoch() for _ in range(2)]
    for key in ("lr", "train_loss", "val_loss", "ema_val_loss"):
        assert [row[key] for row in resumed] == [row[key] for row in expected[2:]], key
    assert second.optimizer.steps_taken == straight.optimizer.steps_taken == 16
    assert torch.equal(second.optimizer.smoothed, straight.optimizer.smoothed)
    assert type(second.optimizer) is torch.optim.Adam  # back to its own class once every object is restored


@pytest.mark.parametrize("returns", ["tuple", "dict"])
def test_a_model_returning_several_tensors_is_told_to_return_one(returns):
    """A Gaussian NLL model returning (mean, log_var), or a dict of heads, on a kind = "custom" task whose loss_fn
    reads them: the refusal said only "the model must return a tensor, got tuple", not what to do instead."""
    import dataclasses
    from types import SimpleNamespace

    from orchestrator.errors import TaskError

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.mean, self.log_var = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x):
            mean, log_var = self.mean(x), self.log_var(x)
            return (mean, log_var) if returns == "tuple" else {"mean": mean, "log_var": log_var}

    base = load_task(os.path.join(ROOT, "tests", "tasks", "gaussian_nll_task.py"))
    module = base.namespace
    task = dataclasses.replace(base, namespace=SimpleNamespace(
        kind="custom", space=module.space, load_data=module.load_data, build_model=lambda config: TwoHeads(),
        loss_fn=module.loss_fn, metrics=module.metrics))
    said = "(2 tensors)" if returns == "tuple" else "(keys mean, log_var)"
    with pytest.raises(TaskError, match=rf"got {returns} {re.escape(said)}: .*return them as one, "
                                        r"torch\.cat\(\[mean, log_var\], dim=1\), and split it in loss_fn and metrics"):
        validate_contract(task, [{"lr": 0.01, "batch_size": 32, "optimizer": "adam"}])


def test_grad_clip_bounds_the_step_of_the_parameters_build_optimizer_was_given():
    """A head-only fine-tune: build_optimizer steps the head and leaves the trainable backbone out. grad_clip clipped
    the norm of every trainable gradient, the backbone's too, so the head's step was shrunk by gradients no step used
    (0.5 * |g_head| / |g_all| instead of 0.5), and grad_norm reported that larger norm. Now clipping, grad_norm and
    the update ratio are over the parameters the optimizer steps."""
    import dataclasses
    from types import SimpleNamespace

    base = load_task(TINY_TASK)
    module = base.namespace

    def head_only(config, params):
        return torch.optim.SGD(list(params)[-2:], lr=1.0)

    def big_loss(outputs, y):
        return nn.functional.cross_entropy(outputs, y) * 1000.0  # gradients far past the clip

    task = dataclasses.replace(base, namespace=SimpleNamespace(
        load_data=module.load_data, build_model=module.build_model, build_optimizer=head_only, loss_fn=big_loss))
    splits = prepare(module.load_data())
    config = {"hidden": 8, "batch_size": 180, "grad_clip": 0.5}  # one batch: one step
    run = TrialRun(task, splits, TrialSpec(0, 0, config, 3, 1), torch.device("cpu"))
    head, backbone = run.model[2], run.model[0]
    before = [t.detach().clone() for t in (*head.parameters(), *backbone.parameters())]
    row = run.train_epoch()
    after = [t.detach() for t in (*head.parameters(), *backbone.parameters())]
    step = torch.linalg.vector_norm(torch.stack([(a - b).norm() for a, b in zip(after[:2], before[:2])]))
    assert float(step) == pytest.approx(0.5, rel=1e-4)  # lr 1: the head moved by its clipped gradient
    assert all(torch.equal(a, b) for a, b in zip(after[2:], before[2:]))
    head_grad = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in head.parameters()]))
    assert row["grad_norm"] > 0.5 and float(head_grad) == pytest.approx(0.5, rel=1e-4)


def test_a_sparse_embedding_beside_a_built_in_optimizer_that_refuses_its_gradients_is_refused_before_any_trial():
    """Before: Adam, or any optimizer with a weight decay, failed every trial at its first step with torch's
    'Adam does not support sparse gradients', after the sweep had started; now one line before it."""
    from orchestrator.errors import TaskError

    task = sparse_task()
    with pytest.raises(TaskError, match=r"embedding 'bag' has sparse=True.*optimizer 'adam' \(Adam does not support "
                                        r"sparse gradients.*optimizer 'sgd' with weight_decay 0.01 .*SparseAdam"):
        validate_contract(task, [{**CONFIG, "optimizer": "adam"}, {**CONFIG, "optimizer": "sgd", "weight_decay": 0.01},
                                 {**CONFIG, "optimizer": "adagrad"}])
    validate_contract(task, [{**CONFIG, "optimizer": "adagrad"}, {**CONFIG, "optimizer": "momentum"}])
