"""Space entries nothing reads, found on the master (worker/check/unread.py): real torch builds on the meta device."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import torch

from orchestrator.search.sampler import sample_configs
from orchestrator.search.space import SearchSpace, choice
from orchestrator.spec.task import load_task
from tests.conftest import ROOT
from worker.check.unread import KeyReads, unread_entries
from worker.data.splits import prepare

TASKS = f"{ROOT}/tests/tasks"


def entries(task, configs=None, seed=0):
    space = SearchSpace(task.get("space"))
    configs = configs or sample_configs(space, 4, seed=seed)
    return unread_entries(task, prepare(task.get("load_data")()), space, configs)


def test_a_typo_in_a_searched_or_fixed_name_is_named_with_the_name_that_is_read():
    lines = entries(load_task(f"{TASKS}/unread_typo_task.py"))
    assert lines == [
        "space: searched 'dropuot' is read by neither build_model nor caviar's training loop, so every trial trains "
        "as if it were not there; build_model asks for 'dropout', which the space does not give: did you mean it?",
        "space: 'batchsize' = 32 is read by neither build_model nor caviar's training loop, so every trial trains "
        "as if it were not there; did you mean 'batch_size'?",
    ]


def test_keys_read_on_one_branch_in_forward_or_by_the_tasks_own_optimizer_are_read():
    task = load_task(f"{TASKS}/unread_branches_task.py")
    space = SearchSpace(task.get("space"))
    only_mlp = [dict(c, arch="mlp") for c in sample_configs(space, 4, seed=1)]  # 'kernel' is read for conv only
    assert entries(task, only_mlp) == []
    assert entries(task) == []


def test_a_task_with_its_own_loop_or_a_build_that_cannot_run_on_meta_gives_no_claim():
    typo = load_task(f"{TASKS}/unread_typo_task.py")
    pieces = {k: getattr(typo.namespace, k) for k in ("load_data", "build_model", "space")}
    own_loop = dataclasses.replace(typo, namespace=SimpleNamespace(**pieces, train_epoch=lambda *a: {"train_loss": 0}))
    assert entries(own_loop) == []  # its loop may read any key

    def reads_values(config):  # .item() on a meta tensor raises: nothing is known of what else it would read
        model = pieces["build_model"](config)
        float(next(model.parameters()).sum().item())
        return model

    assert entries(dataclasses.replace(typo, namespace=SimpleNamespace(**dict(pieces, build_model=reads_values)))) == []


def test_a_config_copied_unpacked_or_serialised_counts_every_key_as_read():
    for use in (dict, lambda c: SimpleNamespace(**c), lambda c: c.copy(), json.dumps, lambda c: list(c.items())):
        asked: set = set()
        use(KeyReads({"a": 1, "b": 2}, asked))
        assert asked == {"a", "b"}, use
    asked = set()
    tracked = KeyReads({"a": 1, "b": 2}, asked)
    assert tracked["a"] == 1 and tracked.get("c", 3) == 3 and "d" not in tracked
    assert asked == {"a", "c", "d"}


def test_the_contract_check_before_a_sweep_warns_one_line_each_and_passes(caplog):
    import logging

    from worker.check.contract import validate_contract

    task = load_task(f"{TASKS}/unread_typo_task.py")
    with caplog.at_level(logging.WARNING, logger="caviar"):
        validate_contract(task, sample_configs(task.space, 4, seed=0), space=task.space)
    said = [r.getMessage() for r in caplog.records if "is read by neither" in r.getMessage()]
    assert [line.split(" is read")[0] for line in said] == ["space: searched 'dropuot'", "space: 'batchsize' = 32"]


def test_caviar_checks_table_has_a_row_for_the_entries_read():
    from worker.check.preflight import run_preflight

    typo = load_task(f"{TASKS}/unread_typo_task.py")
    report = run_preflight(typo)
    row = next(c for c in report.checks if c.name == "space entries read")
    assert (row.status, row.value, row.detail) == ("warn", "2 of 4", "dropuot, batchsize unread (below)")
    assert [line.split(" is read")[0] for line in report.space_notes] == ["space: searched 'dropuot'",
                                                                          "space: 'batchsize' = 32"]
    tiny = run_preflight(load_task(f"{TASKS}/tiny_task.py"))
    assert next(c for c in tiny.checks if c.name == "space entries read").status == "pass"


def test_an_optimizer_or_schedule_key_that_no_trials_optimizer_or_schedule_reads_is_named():
    lines = entries(load_task(f"{TASKS}/unread_optimizer_keys_task.py"))
    assert [line.split(" is read")[0] for line in lines] == [
        "space: searched 'momentum'", "space: searched 'rho'", "space: searched 'decay_rate'"]  # beta2: Adam's
    assert lines[0].endswith("caviar's loop reads it only with optimizer momentum or nesterov, which no trial here "
                             "trains with (Adam's and AdamW's momentum is beta1); leave it out of the space")
    assert "only with schedule step or exponential or inverse_time or plateau" in lines[2]


def test_an_optimizer_key_read_by_one_option_of_a_choice_or_by_the_tasks_own_optimizer_is_read():
    task = load_task(f"{TASKS}/unread_optimizer_keys_task.py")
    space = dict(task.get("space"), optimizer=choice(["adam", "momentum", "rmsprop"]),
                 schedule=choice(["cosine", "step"]))
    assert entries(dataclasses.replace(task, namespace=SimpleNamespace(**{**vars(task.namespace), "space": space}))) \
        == []  # the first configs may all be Adam: the options decide

    def own(config, params):  # reads momentum itself; caviar's loop then reads none of the optimizer's constants
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"])

    lines = entries(dataclasses.replace(task, namespace=SimpleNamespace(**{**vars(task.namespace),
                                                                            "build_optimizer": own})))
    assert [line.split(" is read")[0] for line in lines] == [  # its SGD is no Adam: 'optimizer' is not read either
        "space: 'optimizer' = 'adam'", "space: searched 'rho'", "space: searched 'beta2'",
        "space: searched 'decay_rate'"]
    assert lines[1].endswith("read it in build_model or build_optimizer, or leave it out of the space")
    assert "caviar's loop reads it only with schedule step or exponential" in lines[3]


def test_a_searched_lr_or_weight_decay_the_tasks_own_optimizer_ignores_is_named():
    task = load_task(f"{TASKS}/unread_optimizer_keys_task.py")
    space = {"lr": task.get("space")["lr"], "weight_decay": 1e-4, "batch_size": 32}

    def fixed_rate(config, params):  # the task's optimizer sets its own rate: the searched lr never reaches it
        return torch.optim.Adam(params, lr=1e-3, weight_decay=config["weight_decay"])

    lines = entries(dataclasses.replace(task, namespace=SimpleNamespace(
        **{**vars(task.namespace), "space": space, "build_optimizer": fixed_rate})))
    assert lines == ["space: searched 'lr' is read by neither build_model nor caviar's training loop, so every trial "
                     "trains as if it were not there; read it in build_model or build_optimizer, or leave it out of "
                     "the space"]


def test_builds_cut_short_by_the_time_budget_make_no_claim():
    import time

    task = load_task(f"{TASKS}/unread_branches_task.py")
    plain = task.get("build_model")

    def slow_mlp(config):  # a cold first build (the master's first meta tensors): the conv branch is never reached
        if config["arch"] == "mlp":
            time.sleep(0.6)
        return plain(config)

    space = SearchSpace(task.get("space"))
    mlp_first = [dict(c, arch="mlp") for c in sample_configs(space, 4, seed=1)]  # then each option: conv reads kernel
    slow = dataclasses.replace(task, namespace=SimpleNamespace(**{**vars(task.namespace), "build_model": slow_mlp}))
    assert unread_entries(slow, prepare(task.get("load_data")()), space, mlp_first) == []
