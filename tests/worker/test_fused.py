"""Fused trial arrays against trials trained alone: same seeds, same rows, same checkpoints."""

from __future__ import annotations

import io
import math
import os

import pytest
import safetensors.torch
import torch

from orchestrator.errors import NotFusable
from orchestrator.spec.task import load_task
from orchestrator.store import schema
from tests.conftest import DIGITS_TASK, ROOT, TINY_TASK
from worker.arrays.fused import FusedArray, FusedMember, _dropout
from worker.data.splits import prepare
from worker.train.trainer import TrialRun, TrialSpec

CPU = torch.device("cpu")
TIED_TASK = os.path.join(ROOT, "tests", "tasks", "tied_weights_task.py")
SHAPE = {"layers": 2, "hidden": 16, "activation": "tanh", "batch_norm": False, "dropout": 0.0, "init": "he",
         "batch_size": 64}
# Per-member hyperparameters: one array holds every schedule and different lr, betas, eps, decay, EMA.
MEMBERS = [
    {"lr": 0.01, "schedule": "constant", "weight_decay": 1e-4, "beta1": 0.9, "beta2": 0.999, "momentum": 0.9,
     "eps": 1e-8, "rho": 0.99, "ema_decay": 0.99},
    {"lr": 0.003, "schedule": "step", "decay_rate": 0.5, "step_epochs": 1, "weight_decay": 0.0, "beta1": 0.8,
     "beta2": 0.99, "momentum": 0.5, "eps": 1e-6, "rho": 0.9},
    {"lr": 0.02, "schedule": "exponential", "decay_rate": 0.7, "weight_decay": 1e-3, "beta1": 0.95, "beta2": 0.995,
     "momentum": 0.99, "eps": 1e-7, "rho": 0.95, "ema_decay": 0.9, "init": "xavier"},
    {"lr": 0.005, "schedule": "inverse_time", "decay_rate": 0.3, "weight_decay": 1e-5, "beta1": 0.9, "beta2": 0.9999,
     "momentum": 0.8, "eps": 1e-8, "rho": 0.999, "ema_decay": 0.95},
    {"lr": 0.008, "schedule": "plateau", "decay_rate": 0.5, "patience": 0, "weight_decay": 0.0, "beta1": 0.9,
     "beta2": 0.999, "momentum": 0.9, "eps": 1e-8, "rho": 0.99},
    {"lr": 0.01, "schedule": "cosine", "weight_decay": 1e-4, "beta1": 0.85, "beta2": 0.999, "momentum": 0.7,
     "eps": 1e-8, "rho": 0.99, "ema_decay": 0.99, "grad_clip": 0.5},
]
COMPARED = ("train_loss", "train_loss_original", "train_accuracy", "val_loss", "val_accuracy", "score", "lr",
            "grad_norm", "update_ratio", "ema_val_loss", "ema_val_accuracy")


@pytest.fixture(scope="module")
def digits():
    # One thread: on a busy 2-core machine every multi-threaded tiny op can wait a time slice for its partner.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    task = load_task(DIGITS_TASK)
    yield task, prepare(task.get("load_data")(), normalize=task.normalize)
    torch.set_num_threads(threads)


def specs_for(optimizer: str, epochs: int = 3, **shape) -> list[TrialSpec]:
    return [TrialSpec(i, 0, {**SHAPE, **shape, **m, "optimizer": optimizer}, 1000 + 7 * i, epochs)
            for i, m in enumerate(MEMBERS)]


def alone(task, splits, spec: TrialSpec, epochs: int) -> tuple[TrialRun, list[dict]]:
    run = TrialRun(task, splits, spec, CPU)
    return run, [run.train_epoch() for _ in range(epochs)]


def assert_same_rows(expected: list[dict], got: list[dict], rel: float = 1e-4, accuracy_slack: float = 0.0) -> None:
    """``accuracy_slack``: how far accuracies may differ (one example's share: a float32 near-tie flips its class)."""
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert set(a) == set(b)
        ids = ("trial_id", "epoch", "stage", "attempt")
        assert [a[k] for k in ids] == [b[k] for k in ids]
        for key in COMPARED:
            if key not in a:
                continue
            x, y = a[key], b[key]
            abs_tol = max(1e-6, accuracy_slack if "accuracy" in key or key == "score" else 0.0)
            assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rel, abs_tol=abs_tol), (key, a, b)


def assert_fused_trains_as_alone(task, splits, specs: list[TrialSpec], epochs: int = 2, rel: float = 1e-4) -> None:
    """Train ``specs`` as one array for ``epochs`` and each alone: the same rows, member by member."""
    array = FusedArray(task, splits, specs, CPU)
    rows: dict[int, list[dict]] = {s.trial_id: [] for s in specs}
    for _ in range(epochs):
        for row in array.train_epoch():
            rows[row["trial_id"]].append(row)
    for spec in specs:
        assert_same_rows(alone(task, splits, spec, epochs)[1], rows[spec.trial_id], rel=rel)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"])
def test_a_member_trains_exactly_as_it_would_alone_even_when_a_neighbour_is_pruned(digits, optimizer):
    task, splits = digits
    specs = specs_for(optimizer)
    array = FusedArray(task, splits, specs, CPU)
    rows: dict[int, list[dict]] = {s.trial_id: [] for s in specs}
    for epoch in range(3):
        for row in array.train_epoch():
            rows[row["trial_id"]].append(row)
        if epoch == 0:
            array.drop([1])  # pruned after its first epoch: the others carry on unchanged
    assert array.trial_ids == [0, 2, 3, 4, 5] and len(rows[1]) == 1
    for spec in specs:
        run, expected = alone(task, splits, spec, len(rows[spec.trial_id]))
        assert_same_rows(expected, rows[spec.trial_id])
        if spec.trial_id != 1:
            plain = array.state_dict(spec.trial_id)  # rounding drifts a little faster in weights than in metrics
            for key, value in run.weights_state().items():
                assert torch.allclose(plain[key], value, rtol=1e-3, atol=1e-5), key


def test_a_checkpoint_loads_into_the_plain_model_and_predicts_the_same(digits):
    task, splits = digits
    specs = specs_for("adam", batch_norm=True, dropout=0.2)
    array = FusedArray(task, splits, specs, CPU)
    array.train_epoch()
    array.train_epoch()
    fused = {w: array.logits(t, b, splits.x_test) for w, t, b in
             (("raw", array.stack.flat, array.stack.buffers), ("ema", array.stack.ema, array.stack.ema_buffers))}
    for i, spec in enumerate(specs):
        for weights in ("raw", "ema") if spec.config.get("ema_decay") else ("raw",):
            model = task.get("build_model")(dict(spec.config))
            model.load_state_dict(array.state_dict(spec.trial_id, weights))  # strict: every key, every shape
            model.eval()
            with torch.no_grad():
                assert torch.allclose(model(splits.x_test), fused[weights][i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ["bmm", "vmap"])
def test_many_checkpoints_run_stacked_give_what_each_gives_alone(digits, engine):
    task, splits = digits
    specs = specs_for("adam", batch_norm=True, dropout=0.2)[:3]
    array = FusedArray(task, splits, specs, CPU, engine=engine)
    array.train_epoch()
    states = [array.state_dict(s.trial_id, w) for s in specs for w in ("raw", "ema")]
    array.train_epoch()  # the stored states are no longer the array's weights
    states.append(array.state_dict(specs[0].trial_id))
    wide = array.checkpoint_results_many(states)  # 7 states, 3 members: stacked 3, 3 and 1
    array.drop([specs[1].trial_id, specs[2].trial_id])
    narrow = array.checkpoint_results_many(states)  # one member: one at a time
    for state, got in [*zip(states, wide, strict=True), *zip(states, narrow, strict=True)]:
        expected = array.checkpoint_results(state)
        assert set(got) == set(expected) == {"val", "test"}
        for split, (outputs, values) in expected.items():
            assert torch.allclose(got[split][0], outputs, rtol=1e-4, atol=1e-6)
            assert set(got[split][1]) == set(values)
            assert all(math.isclose(got[split][1][k], v, rel_tol=1e-5, abs_tol=1e-7) for k, v in values.items())


@pytest.mark.parametrize("engine", ["bmm", "vmap"])
def test_batch_norm_statistics_are_kept_per_member(digits, engine):
    task, splits = digits
    specs = specs_for("momentum", batch_norm=True)[:3]
    array = FusedArray(task, splits, specs, CPU, engine=engine)
    assert array.engine.name == engine
    rows = [array.train_epoch(), array.train_epoch()]
    for i, spec in enumerate(specs):
        run, expected = alone(task, splits, spec, 2)
        assert_same_rows(expected, [r[i] for r in rows])
        state = array.state_dict(spec.trial_id)
        for key, value in run.weights_state().items():  # running mean/var and num_batches_tracked included
            assert torch.allclose(state[key].double(), value.double(), rtol=1e-4, atol=1e-6), key


def test_a_batch_norm_member_leaves_out_a_last_batch_of_one_as_it_would_alone(digits):
    task, splits = digits
    assert splits.n_train % 359 == 1  # 1078 examples: three batches of 359 and one of a single example
    specs = specs_for("adam", 2, batch_norm=True, batch_size=359)[:2]
    array = FusedArray(task, splits, specs, CPU)
    rows = [array.train_epoch(), array.train_epoch()]
    for i, spec in enumerate(specs):
        # float32 sums over batches of 359 in another order: the update ratio agrees to about 1e-4, and on some
        # CPUs (an AMD EPYC VM) one validation example's near-tie falls the other way after the second epoch
        assert_same_rows(alone(task, splits, spec, 2)[1], [r[i] for r in rows], rel=1e-3,
                         accuracy_slack=1.5 / len(splits.y_val))


def test_resume_states_cross_between_fused_and_plain(digits):
    task, splits = digits
    specs = specs_for("adam", epochs=4)[:2]
    array = FusedArray(task, splits, specs, CPU)
    array.train_epoch()
    array.train_epoch()
    buffer = io.BytesIO()
    torch.save(FusedMember(array, 0).resume_state(), buffer)  # as the recorder stores it
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    plain = TrialRun(task, splits, specs[0], CPU)
    plain.load_resume_state(state)  # a fused trial resumes unfused (e.g. retried on another worker)
    from_fused = [plain.train_epoch() for _ in range(2)]
    continued = [array.train_epoch()[0] for _ in range(2)]
    assert_same_rows(from_fused, continued)

    run, _ = alone(task, splits, specs[1], 2)
    resumed = FusedArray(task, splits, [specs[1]], CPU, resume_states={1: run.resume_state()})
    assert resumed.member(1).epoch == 2
    assert_same_rows([run.train_epoch() for _ in range(2)], [resumed.train_epoch()[0] for _ in range(2)])


def test_a_diverging_member_ends_its_epoch_as_trialrun_does_and_spares_its_neighbours(digits):
    task, splits = digits
    specs = specs_for("sgd", activation="relu")[:3]
    specs[1] = TrialSpec(1, 0, {**specs[1].config, "lr": 1e3, "schedule": "constant"}, specs[1].seed, 3)
    array = FusedArray(task, splits, specs, CPU)
    rows = [array.train_epoch(), array.train_epoch()]
    assert math.isnan(rows[0][1]["train_loss"]) and math.isnan(rows[0][1]["update_ratio"])  # stopped mid-epoch
    for i, spec in enumerate(specs):
        _, expected = alone(task, splits, spec, 2)
        assert_same_rows(expected, [r[i] for r in rows])


def test_members_can_wait_while_others_train_and_new_trials_can_join(digits):
    task, splits = digits
    specs = specs_for("nesterov")
    array = FusedArray(task, splits, specs[:3], CPU)
    array.train_epoch()
    waiting = array.state_dict(0)
    array.train_epoch([1, 2])  # trial 0 waits for a decision: it costs nothing and does not move
    assert array.member(0).epoch == 1 and array.member(1).epoch == 2
    assert all(torch.equal(waiting[k], v) for k, v in array.state_dict(0).items())
    array.add(specs[3:5])  # refill freed slots with new trials at epoch 0
    late = {s.trial_id: [] for s in specs[:5]}
    for _ in range(2):
        for row in array.train_epoch():
            late[row["trial_id"]].append(row)
    for spec in specs[3:5]:
        _, expected = alone(task, splits, spec, 2)
        assert_same_rows(expected, late[spec.trial_id])
    _, expected = alone(task, splits, specs[0], 3)
    assert_same_rows(expected[1:], late[0])


def test_trials_that_cannot_share_an_array_are_refused_by_name(digits):
    task, splits = digits
    base = specs_for("adam")[0]

    def spec(**change):
        return TrialSpec(9, 0, {**base.config, **change}, 5, 3)

    for change, field in (({"batch_size": 32}, "batch_size"), ({"optimizer": "sgd"}, "optimizer"),
                          ({"hidden": 17}, "model"), ({"activation": "relu"}, "model")):
        array = FusedArray(task, splits, [base], CPU)
        with pytest.raises(NotFusable, match=f"^{field}"):
            array.add([spec(**change)])
        assert array.trial_ids == [0]  # a refused trial leaves the array as it was
    tiny = load_task(TINY_TASK)
    tiny.namespace = type("WithHook", (), {**vars(tiny.namespace), "train_epoch": lambda *a: {"train_loss": 0.0}})
    with pytest.raises(NotFusable, match="train_epoch"):
        FusedArray(tiny, prepare(tiny.get("load_data")()), [TrialSpec(0, 0, {"hidden": 4, "lr": 0.1}, 0, 1)], CPU)


def test_a_model_with_tied_weights_is_refused_naming_the_tie():
    # Stacked, the second name became a frozen copy of the initial weights: members trained another model than alone.
    task = load_task(TIED_TASK)
    splits = prepare(task.get("load_data")(), normalize=task.normalize)
    with pytest.raises(NotFusable, match=r"^model: b\.weight is a\.weight: tied"):
        FusedArray(task, splits, [TrialSpec(i, 0, {"lr": 0.02, "batch_size": 32, "optimizer": "adam"}, i, 2)
                                  for i in range(2)], CPU)


def test_members_never_train_an_embeddings_padding_row_as_alone():
    # torch's vmap rule for the embedding backward zeroed the padding row's gradient of the first member only: the
    # others trained it, and their losses left their plain twins' in the first epoch (1.0963 against 1.1014).
    task = load_task(os.path.join(ROOT, "tests", "tasks", "padded_bag_task.py"))
    splits = prepare(task.get("load_data")(), normalize=task.normalize)
    specs = [TrialSpec(i, 0, {"lr": lr, "batch_size": 32, "optimizer": "adam"}, 100 + i, 2)
             for i, lr in enumerate((0.02, 0.01, 0.03))]
    array = FusedArray(task, splits, specs, CPU)
    assert array.engine.name == "vmap"
    rows = [array.train_epoch() for _ in range(2)]
    for i, spec in enumerate(specs):
        assert_same_rows(alone(task, splits, spec, 2)[1], [r[i] for r in rows])
        assert not array.state_dict(spec.trial_id)["embed.weight"][0].any()


def test_a_non_persistent_buffer_is_shared_by_the_members_and_they_train_as_alone():
    # A causal mask registered with persistent=False is in no state dict: the weightless copy held it on the meta
    # device, and --fuse on stopped with "RuntimeError: Tensor on device meta is not on the expected device cpu!".
    task = load_task(os.path.join(ROOT, "tests", "tasks", "causal_mask_task.py"))
    splits = prepare(task.get("load_data")(), normalize=task.normalize)
    specs = [TrialSpec(i, 0, {"lr": lr, "batch_size": 32, "optimizer": "adam", "ema_decay": 0.9,
                              "persistent_mask": False}, 100 + i, 2) for i, lr in enumerate((0.02, 0.01))]
    array = FusedArray(task, splits, specs, CPU)
    assert array.engine.name == "vmap"
    rows = [array.train_epoch() for _ in range(2)]
    for i, spec in enumerate(specs):
        assert_same_rows(alone(task, splits, spec, 2)[1], [r[i] for r in rows])
        assert "mask" not in array.state_dict(spec.trial_id)  # loads strictly into the plain model, as before
    other = TrialSpec(7, 0, {**specs[0].config}, 7, 2)
    task.namespace.LENGTH = 6  # a member whose mask is another: refused, not trained with the array's
    try:
        with pytest.raises(NotFusable, match="^model: trial 7's non-persistent buffer 'mask' differs"):
            array.add([other])
    finally:
        task.namespace.LENGTH = 8


def test_a_rate_held_as_a_number_on_a_module_is_not_taken_from_the_first_member():
    # The vmap engine runs every member through the first member's module: a member drawn with attention dropout
    # 0.1 beside one with 0.4 trained with 0.4, in silence. Now it is another structure, as an nn.Dropout's rate is.
    task = load_task(os.path.join(ROOT, "tests", "tasks", "attention_dropout_task.py"))
    splits = prepare(task.get("load_data")(), normalize=task.normalize)
    spec = [TrialSpec(i, 0, {"lr": 0.01, "dropout": p, "batch_size": 32, "optimizer": "adam"}, 100 + i, 2)
            for i, p in enumerate((0.4, 0.1, 0.4))]
    array = FusedArray(task, splits, [spec[0]], CPU)
    with pytest.raises(NotFusable, match="^model: trial 1 builds a model of another structure"):
        array.add([spec[1]])
    array.add([spec[2]])  # the same rate fits
    assert array.trial_ids == [0, 2]


def test_each_member_drops_out_at_its_own_rate(digits):
    torch.manual_seed(0)
    h = torch.ones(2, 500, 40)
    out = _dropout(h, torch.tensor([0.0, 0.5]))
    assert torch.equal(out[0], h[0])
    dropped = float((out[1] == 0).float().mean())
    assert 0.45 < dropped < 0.55 and set(out[1].unique().tolist()) == {0.0, 2.0}
    task, splits = digits
    specs = [TrialSpec(i, 0, {**s.config, "dropout": rate}, s.seed, 2)
             for i, (s, rate) in enumerate(zip(specs_for("adam"), (0.1, 0.3, 0.5)))]
    array = FusedArray(task, splits, specs, CPU)  # Dropout layers in every model, a different rate in each
    assert array.stack.rates and all(r.tolist() == pytest.approx([0.1, 0.3, 0.5]) for r in array.stack.rates.values())
    assert all(math.isfinite(r["val_loss"]) for r in array.train_epoch())
    with pytest.raises(NotFusable, match="^model"):
        FusedArray(task, splits, specs, CPU, engine="vmap")  # one module per array: one rate


def test_a_fused_session_reports_each_trial_and_leaves_plain_checkpoints(digits, tmp_path):
    from orchestrator.decide.backend import Assignment
    from orchestrator.store.storage import Storage
    from worker.arrays.fused_session import FusedSession

    task, splits = digits
    session = FusedSession(DIGITS_TASK, str(tmp_path), "s", {"checkpoint_seconds": 3600, "array_size": 3,
                                                             "threads": 1})
    specs = specs_for("adam")[:4] + [TrialSpec(4, 0, {**specs_for("adam")[4].config, "hidden": 8}, 77, 3)]
    starts = [Assignment(s.trial_id, 0, s.config, s.seed, s.max_epochs, 1) for s in specs]
    first = session.run(starts=starts)
    assert sorted(r.trial_id for r in first) == [0, 1, 2, 3, 4] and not any(r.ended for r in first)
    assert sorted(len(a) for a in session.arrays) == [1, 1, 3]  # full array, its overflow, another shape
    assert all([row["epoch"] for row in r.rows] == [1] for r in first)

    second = session.run(stops=[(1, "pruned", "rung")], targets={0: 2, 2: 3, 3: 3, 4: 3})
    assert {r.trial_id: (r.ended, r.status) for r in second} == {1: (True, "pruned"), 0: (False, None)}
    assert sorted(session.waiting) == [2, 3, 4]  # due later: the caller calls again
    third = session.run()
    assert {r.trial_id: r.status for r in third} == {2: "completed", 3: "completed", 4: "completed"}
    assert [len(a) for a in session.arrays] == [1]  # compacted: only trial 0 is left
    last = session.run(targets={0: 3})
    assert [(r.trial_id, r.status, [row["epoch"] for row in r.rows]) for r in last] == [(0, "completed", [3])]
    assert not session.arrays

    _, expected = alone(task, splits, specs[2], 3)
    got = [r for r in first + second + third if r.trial_id == 2]
    not_stored = ("num_classes", "baseline_val_loss")  # sent for the pruner, not stored
    assert_same_rows(expected, [{k: v for k, v in row.items() if k not in not_stored} for r in got for row in r.rows])
    storage = Storage.from_uri(str(tmp_path)).child("s")
    for spec in specs:
        metrics = storage.read_table(schema.metrics_path(spec.trial_id))
        assert metrics.num_rows == (1 if spec.trial_id == 1 else 3)
        # class indices: the training loss is already in val_loss's units, and the table says so as a plain trial's
        assert metrics["train_loss_original"].to_pylist() == metrics["train_loss"].to_pylist()
        index = storage.read_table(schema.checkpoint_index_path(spec.trial_id)).to_pylist()
        assert {r["weights"] for r in index} == ({"raw", "ema"} if spec.config.get("ema_decay") else {"raw"})
        for row in index:  # every kept checkpoint is a plain state dict
            model = task.get("build_model")(dict(spec.config))
            model.load_state_dict(safetensors.torch.load(storage.read_bytes(row["path"])))
        assert storage.exists(schema.predictions_path(spec.trial_id))  # for ensembles, as plain trials leave


def test_members_ending_together_write_the_same_index_whether_stacked_or_one_by_one(digits, tmp_path, monkeypatch):
    from orchestrator.decide.backend import Assignment
    from orchestrator.store.storage import Storage
    from worker.arrays.fused_session import FusedSession

    specs = specs_for("adam", epochs=2)[:4]
    starts = [Assignment(s.trial_id, 0, s.config, s.seed, s.max_epochs, 2) for s in specs]

    def indexes(sweep: str) -> list[list[dict]]:
        session = FusedSession(DIGITS_TASK, str(tmp_path), sweep, {"checkpoint_seconds": 3600, "threads": 1})
        reports = session.run(starts=starts)
        assert sorted((r.trial_id, r.status) for r in reports) == [(s.trial_id, "completed") for s in specs]
        storage = Storage.from_uri(str(tmp_path)).child(sweep)
        assert all(storage.exists(schema.predictions_path(s.trial_id)) for s in specs)
        return [storage.read_table(schema.checkpoint_index_path(s.trial_id)).to_pylist() for s in specs]

    stacked = indexes("stacked")
    calls = []

    def refuse(self, states):
        calls.append(len(states))
        raise RuntimeError("stacked pass unavailable")

    monkeypatch.setattr(FusedArray, "checkpoint_results_many", refuse)
    alone_ = indexes("alone")  # the fallback: each member runs its own checkpoints, as before
    assert calls == [sum(len(rows) for rows in stacked)]  # one stacked call for the array's four ending members
    for a, b in zip(stacked, alone_, strict=True):
        assert [(r["epoch"], r["weights"]) for r in a] == [(r["epoch"], r["weights"]) for r in b]
        for ra, rb in zip(a, b, strict=True):
            ma, mb = dict(ra["metrics"]), dict(rb["metrics"])
            assert ma.keys() == mb.keys() and all(math.isclose(ma[k], mb[k], rel_tol=1e-5, abs_tol=1e-7) for k in ma)


def test_the_probe_measures_each_array_size_and_picks_one(digits, tmp_path):
    from worker.arrays.fused_session import FusedSession

    session = FusedSession(DIGITS_TASK, str(tmp_path), "s", {"threads": 1})
    result = session.probe(specs_for("adam")[0].config, sizes=(1, 4), steps=2)
    assert set(result["trials_per_second"]) == {1, 4} and result["array_size"] in (1, 4)
    assert all(rate > 0 for rate in result["trials_per_second"].values())


def test_a_member_writes_the_diagnostic_rows_its_plain_twin_writes(digits):
    """Per-layer diagnostics: same rows, same keys, same numbers (histograms included) as the trial alone."""
    task, splits = digits
    specs = specs_for("adam", epochs=2)
    array = FusedArray(task, splits, specs, CPU)
    fused = []
    for _ in range(2):
        array.train_epoch()
        fused += FusedMember(array, 2).diagnostics.take()
    run, _ = alone(task, splits, specs[2], 2)
    plain = run.diagnostics.take()
    assert [(r["kind"], r["layer"], r["module"], r["epoch"]) for r in fused] == \
        [(r["kind"], r["layer"], r["module"], r["epoch"]) for r in plain]
    for a, b in zip(fused, plain):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float):
                assert math.isclose(a[key], value, rel_tol=1e-4, abs_tol=1e-7), (b["layer"], key, a[key], value)
            elif key == "hist_counts":
                assert sum(abs(x - y) for x, y in zip(a[key], value)) <= 2, (b["layer"], a[key], value)
            elif key != "hist_edges":
                assert a[key] == value, (b["layer"], key)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_members_with_inactive_hyperparameters_train_as_they_would_alone(digits, optimizer):
    """Conditional hyperparameters arrive as None where inactive (adam's betas in a momentum trial, and so on)."""
    task, splits = digits
    unused = ("beta1", "beta2", "eps", "rho") if optimizer == "momentum" else ("momentum", "rho")
    specs = [TrialSpec(i, 0, {**SHAPE, **m, **dict.fromkeys(unused), "grad_clip": None, "optimizer": optimizer},
                       1000 + 7 * i, 2) for i, m in enumerate(MEMBERS[:3])]
    assert_fused_trains_as_alone(task, splits, specs)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_a_float64_model_trains_fused_as_it_would_alone(optimizer):
    """Inputs and weights in float64 (inputs keep their dtype): the optimizer's hyperparameter columns were float32,
    so Adam raised "expected dtype double for `weight`" and the sweep fell back to plain trials naming only that."""
    from types import SimpleNamespace

    from orchestrator.spec.task import Task

    tiny = load_task(TINY_TASK)
    data = [(x.astype("float64"), y) for x, y in tiny.get("load_data")()]
    task = Task("inline", SimpleNamespace(load_data=lambda: data,
                                          build_model=lambda config: tiny.get("build_model")(config).double()),
                tiny.space)
    splits = prepare(data)
    specs = [TrialSpec(i, 0, {"lr": lr, "optimizer": optimizer, "hidden": 8, "batch_size": 32, "momentum": 0.9},
                       100 + i, 2) for i, lr in enumerate((0.01, 0.03))]
    assert_fused_trains_as_alone(task, splits, specs, rel=1e-9)  # float64 both ways: no float32 rounding


def _tiny_with_first_layer(edit):
    """The tiny task's nn.Sequential MLP with ``edit`` applied to its first Linear, and two trials of it."""
    from types import SimpleNamespace

    from orchestrator.spec.task import Task

    tiny = load_task(TINY_TASK)
    data = tiny.get("load_data")()

    def build_model(config):
        model = tiny.get("build_model")(config)
        edit(model[0])
        return model

    task = Task("inline", SimpleNamespace(load_data=lambda: data, build_model=build_model), tiny.space)
    specs = [TrialSpec(i, 0, {"lr": lr, "optimizer": "adam", "hidden": 8, "batch_size": 32}, 100 + i, 2)
             for i, lr in enumerate((0.01, 0.03))]
    assert isinstance(build_model(specs[0].config), torch.nn.Sequential)
    return task, prepare(data), specs


def test_a_sequential_with_a_frozen_layer_trains_fused_as_it_would_alone():
    """An nn.Sequential MLP whose first Linear is frozen (requires_grad=False): the bmm engine read its weight from the
    trained parameters and --fuse on stopped with "cannot be fused: KeyError: '0.weight'". Frozen weights now take the
    vmap engine, which reads them with the buffers; the frozen layer stays as built."""
    task, splits, specs = _tiny_with_first_layer(lambda linear: linear.weight.requires_grad_(False))
    assert_fused_trains_as_alone(task, splits, specs)
    array = FusedArray(task, splits, specs, CPU)
    array.train_epoch()
    assert torch.equal(array.state_dict(0)["0.weight"], alone(task, splits, specs[0], 1)[0].model[0].weight)


def test_a_sequential_with_weight_norm_trains_fused_as_it_would_alone():
    """An nn.Sequential MLP whose first Linear is parametrized (torch.nn.utils.parametrizations.weight_norm): the bmm
    engine took it for a plain Linear and --fuse on stopped with "cannot be fused: KeyError: '0.weight'" (a spectral
    norm too). Parametrized layers now take the vmap engine, which reads the weight's parametrization."""
    from torch.nn.utils import parametrizations

    task, splits, specs = _tiny_with_first_layer(parametrizations.weight_norm)
    assert_fused_trains_as_alone(task, splits, specs)


def test_a_loss_fn_torch_cannot_vmap_trains_fused_member_by_member_as_alone():
    """A class-weighted cross-entropy with label smoothing (torch masks its targets: no vmap rule) made the array
    raise, and the sweep trained plain with torch's vmap error as its fusing_off reason."""
    from types import SimpleNamespace

    from torch import nn

    from orchestrator.spec.task import Task

    tiny = load_task(TINY_TASK)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 4.0]), label_smoothing=0.1)
    task = Task("inline", SimpleNamespace(load_data=tiny.get("load_data"), build_model=tiny.get("build_model"),
                                          loss_fn=loss_fn), tiny.space)
    splits = prepare(tiny.get("load_data")())
    specs = [TrialSpec(i, 0, {"lr": lr, "optimizer": "adam", "hidden": 8, "batch_size": 32}, 200 + i, 2)
             for i, lr in enumerate((0.01, 0.03))]
    assert_fused_trains_as_alone(task, splits, specs)


def test_a_resumed_fused_trial_keeps_the_checkpoints_its_lost_attempt_kept(digits, tmp_path):
    """keep_best = 4, a fused trial persisted after epoch 2, then its worker died: before, the resumed attempt's index
    held epochs 3 and 4 only, the lost attempt's best checkpoints gone from it (and from the ensembles, whose
    predictions follow the index) while their files stayed on disk, named by nothing; a plain trial keeps them."""
    from orchestrator.decide.backend import Assignment
    from orchestrator.store.storage import Storage
    from worker.arrays.fused_session import FusedSession

    spec = specs_for("adam", epochs=4)[0]
    options = {"checkpoint_seconds": 0, "threads": 1, "keep_best": 4}
    lost = FusedSession(DIGITS_TASK, str(tmp_path), "s", options)
    lost.run(starts=[Assignment(spec.trial_id, 1, spec.config, spec.seed, 4, 2)])  # persisted at epochs 1, 2
    again = FusedSession(DIGITS_TASK, str(tmp_path), "s", options)
    reports = again.run(starts=[Assignment(spec.trial_id, 1, spec.config, spec.seed, 4, 4, attempt=1, resume=True)])
    assert [(r.status, [row["epoch"] for row in r.rows]) for r in reports] == [("completed", [3, 4])]

    storage = Storage.from_uri(str(tmp_path)).child("s")
    index = storage.read_table(schema.checkpoint_index_path(0)).to_pylist()
    assert sorted((r["epoch"], r["attempt"]) for r in index if r["weights"] == "raw") == [(1, 0), (2, 0), (3, 1),
                                                                                          (4, 1)]
    on_disk = set(storage.list_files("weights/trial-000000", suffix=".safetensors"))
    assert on_disk == {r["path"] for r in index}
    predicted = storage.read_table(schema.predictions_path(0))
    assert set(predicted["epoch"].to_pylist()) == {1, 2, 3, 4}


def test_a_model_with_a_sparse_embedding_is_refused_naming_it():
    # Before: fuse = "on" was refused with torch's "RuntimeError: reshape is not implemented for sparse tensors".
    from tests.worker.test_trainer import sparse_task

    task = sparse_task()
    splits = prepare(task.get("load_data")())
    with pytest.raises(NotFusable, match=r"^model: embedding 'bag' has sparse=True, .*set sparse=False"):
        FusedArray(task, splits, [TrialSpec(i, 0, {"lr": 0.1, "batch_size": 32, "optimizer": "adagrad"}, i, 2)
                                  for i in range(2)], CPU)
