"""Slots and waiting on an autoscaling cluster: the pure sizing rules on plain dicts, the wait on a real Ray."""

from __future__ import annotations

import logging

import pytest

from cluster.capacity import Autoscaler, NodeType, any_fits, per_trial, plan_slots, shortfall, slot_count
from orchestrator.errors import ConfigError
from orchestrator.spec.settings import RunSettings


def test_per_trial_lists_only_what_a_trial_holds():
    assert per_trial(RunSettings()) == {"CPU": 1.0}
    assert per_trial(RunSettings(cpus_per_trial=2, gpus_per_trial=0.25, resources={"accelerator_type:A10G": 0.01})) \
        == {"CPU": 2.0, "GPU": 0.25, "accelerator_type:A10G": 0.01}


def test_slots_come_from_the_autoscalers_maximum_not_the_first_second():
    gpu = RunSettings(gpus_per_trial=0.25)
    head_only = [{"CPU": 0.0}]  # right after `ray up`: the head trains nothing and no worker exists yet
    four_g5 = Autoscaler([NodeType({"CPU": 4.0, "GPU": 1.0}, 4)])  # aws.yaml: up to four g5.xlarge workers
    assert plan_slots(gpu, head_only, four_g5) == 16
    assert plan_slots(gpu, head_only, None) == 0  # no autoscaler: only what exists counts
    assert plan_slots(gpu, [{"CPU": 32.0, "GPU": 8.0}], four_g5) == 32  # more now than the config says: use it
    assert plan_slots(RunSettings(slots=3, gpus_per_trial=1), head_only, None) == 3  # --slots decides
    assert slot_count({"CPU": 2.0, "GPU": 0.5}, {"CPU": 7.0, "GPU": 4.0}) == 3  # the scarcest resource
    assert slot_count({"CPU": 0.1}, {"CPU": 0.3}) == 3  # no float shortfall (0.3 / 0.1 = 2.9999...)


def test_the_autoscalers_maximum_is_counted_per_node_type():
    """4-CPU trials on an autoscaler of 2-CPU node types (8 CPUs in all) were counted as 2 slots from the totals,
    and the sweep then waited for nodes that could never hold them; each node type is now counted on its own."""
    small = Autoscaler([NodeType({"CPU": 2.0}, 4)])
    assert plan_slots(RunSettings(cpus_per_trial=4), [{"CPU": 0.0}], small) == 0
    mixed = Autoscaler([NodeType({"CPU": 2.0}, 4), NodeType({"CPU": 8.0, "GPU": 1.0}, 2)])
    assert plan_slots(RunSettings(cpus_per_trial=4), [], mixed) == 4  # two per 8-CPU node, none on the small ones
    assert plan_slots(RunSettings(cpus_per_trial=1), [], mixed) == 24
    assert plan_slots(RunSettings(cpus_per_trial=1), [], Autoscaler(mixed.node_types, {"CPU": 10.0})) == 10  # caps
    assert plan_slots(RunSettings(cpus_per_trial=1), [], Autoscaler([NodeType({"CPU": 2.0}, None)])) >= 10**6
    assert shortfall({"CPU": 4.0}, small.offers()) == "CPU=4, but the most any has is CPU=2"
    assert shortfall({"CPU": 2.0, "GPU": 1.0}, [{"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}]) == \
        "CPU=2, GPU=1, which no single node has all of"


def test_slots_count_each_node_on_its_own_as_an_actor_lives_on_one():
    """Two 1-CPU nodes hold two 0.6-CPU trials: their 2 CPUs together (3 trials) left a third slot whose actor never
    found room, and the trial queued on it stayed 'running' until the master was killed."""
    two_nodes = [{"CPU": 1.0}, {"CPU": 1.0}]
    assert plan_slots(RunSettings(cpus_per_trial=0.6), two_nodes, None) == 2
    assert plan_slots(RunSettings(cpus_per_trial=2), [{"CPU": 3.0}, {"CPU": 3.0}], None) == 2
    special = [{"CPU": 2.0, "special": 1.0}, {"CPU": 0.0, "special": 1.0}]  # one node has the CPUs, both the resource
    assert plan_slots(RunSettings(resources={"special": 1}), special, None) == 1


def test_a_trial_fits_only_a_node_that_has_all_it_holds():
    wanted = per_trial(RunSettings(gpus_per_trial=1, cpus_per_trial=2))
    assert not any_fits([{"CPU": 0.0}, {"CPU": 8.0}], wanted)
    assert any_fits([{"CPU": 0.0}, {"CPU": 4.0, "GPU": 1.0}], wanted)


def test_a_cluster_that_never_fits_a_trial_is_waited_for_with_a_line_then_refused(ray_session, caplog):
    from cluster.runner import wait_for_room

    settings = RunSettings(resources={"caviar_test_never_there": 1}, wait_for_cluster_seconds=1.5)
    with caplog.at_level(logging.WARNING, logger="caviar"):
        with pytest.raises(ConfigError, match=r"setting 'wait_for_cluster_seconds': no node fit one trial "
                                              r"\(CPU=1, caviar_test_never_there=1\) in 1.5 s"):
            wait_for_room(settings, can_grow=True, poll_seconds=0.2)
    assert [r.getMessage() for r in caplog.records if "waiting for the cluster" in r.getMessage()]
    with pytest.raises(ConfigError, match="'slots': no node of the cluster can fit one trial"):
        wait_for_room(settings, can_grow=False)  # a Ray started here never grows: refused at once
    wait_for_room(RunSettings(), can_grow=True)  # the session's Ray fits a one-CPU trial: no wait


def publish_autoscaler_config(node_types: dict[str, tuple[dict[str, float], int]]) -> None:
    """Write the ClusterConfig an autoscaler publishes into the Ray's GCS, where Ray's own state API reads it."""
    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    namespace, key = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE, ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY
    if not node_types:
        _internal_kv_del(key, namespace=namespace)
        return
    config = autoscaler_pb2.ClusterConfig()
    for name, (resources, max_count) in node_types.items():
        group = config.node_group_configs.add()
        group.name, group.max_count = name, max_count
        for resource, amount in resources.items():
            group.resources[resource] = int(amount)
    _internal_kv_put(key, config.SerializeToString(), overwrite=True, namespace=namespace)


def test_an_autoscaler_whose_node_types_never_fit_a_trial_is_refused_at_once(ray_session):
    """A trial needing 4 CPUs on a cluster whose autoscaler adds 2-CPU nodes waited the whole
    wait_for_cluster_seconds (600 s by default) for a node that could never come; now one line names the resource."""
    import time

    from cluster.runner import slots_for, wait_for_room

    publish_autoscaler_config({"head": ({"CPU": 0}, 0), "small": ({"CPU": 2}, 4)})
    try:
        began = time.monotonic()
        with pytest.raises(ConfigError, match=r"^setting 'slots': no node of the cluster, nor any node type its "
                                              r"autoscaler may add, can fit one trial \(CPU=4, but the most any has "
                                              r"is CPU=2\)"):
            wait_for_room(RunSettings(cpus_per_trial=4, wait_for_cluster_seconds=60), can_grow=True, poll_seconds=0.2)
        assert time.monotonic() - began < 10
        assert slots_for(RunSettings(cpus_per_trial=2)) == 4  # one per 2-CPU node, four nodes at most
        publish_autoscaler_config({"small": ({"CPU": 2}, 4), "big": ({"CPU": 8}, 1)})
        assert slots_for(RunSettings(cpus_per_trial=4)) == 2  # the big type holds two; the session's 2 CPUs none
    finally:
        publish_autoscaler_config({})


def test_a_start_refused_for_room_leaves_nothing_behind(ray_session, tmp_path):
    """No node fits a trial on a Ray that cannot grow: one line, and the same command can run again later."""
    from orchestrator.app.api import run_sweep
    from tests.conftest import TINY_TASK

    for _ in range(2):  # the second time is not refused as "already exists"
        with pytest.raises(ConfigError, match="no node of the cluster can fit one trial"):
            run_sweep(TINY_TASK, storage=str(tmp_path), name="no-room", resources={"caviar_test_never_there": 1},
                      shared_storage=True)
    left = sorted(p.name for p in (tmp_path / "no-room").iterdir()) if (tmp_path / "no-room").exists() else []
    assert left == [], left


def test_a_ray_client_refusal_keeps_the_heads_own_reason_on_one_line():
    from cluster.runner import CLIENT_SERVER_FAILED, connect_failure

    traceback_text = ("Initialization failure from server:\nTraceback (most recent call last):\n  File \"proxier.py\", "
                      "line 765, in Datapath\n    raise RuntimeError(\nRuntimeError: Starting Ray client server "
                      "failed. See ray_client_server_23001.err for detailed logs.\n")
    line = connect_failure(ConnectionAbortedError(traceback_text))
    assert line.startswith(CLIENT_SERVER_FAILED) and "\n" not in line
    assert line.endswith("RuntimeError: Starting Ray client server failed. See ray_client_server_23001.err for "
                         "detailed logs.")
    assert connect_failure(ConnectionError("Failed to connect\nmore")) == "Failed to connect"
    assert connect_failure(TimeoutError()) == "TimeoutError"


@pytest.mark.timeout(240)
def test_more_slots_than_the_ray_holds_train_on_the_actors_that_start_and_say_so(ray_session, storage_dir, caplog):
    """--slots 4 on a 2-CPU Ray: two actors never find room. Trials queued on them waited forever (the sweep
    printed '2 running' until killed); now the sweep takes the 2 slots the Ray fits, and one line says so."""
    from orchestrator.app.api import run_sweep
    from tests.conftest import TINY_TASK

    assert ray_session.cluster_resources()["CPU"] == 2
    with caplog.at_level(logging.WARNING, logger="caviar"):
        result = run_sweep(TINY_TASK, trials=4, epochs=1, stages=1, slots=4, executor="ray", storage=storage_dir,
                           name="too-many-slots", ensemble=False)
    statuses = [t["status"] for t in result.tables().trials.to_pylist()]
    assert len(statuses) == 4 and not {"running", "pending", "interrupted"} & set(statuses), statuses
    assert any("setting 'slots': 4, but the cluster fits 2 trials at once" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(300)
def test_fused_arrays_with_more_slots_than_the_ray_holds_take_the_slots_it_fits(ray_session, storage_dir):
    """Fused arrays start every slot's actor before the first trial: --fuse on --slots 3 on a 2-CPU Ray waited for
    the third actor for ever (killed after 170 s); now they take the 2 slots the Ray fits, as plain trials do."""
    from orchestrator.app.api import run_sweep
    from tests.conftest import TINY_TASK

    assert ray_session.cluster_resources()["CPU"] == 2
    result = run_sweep(TINY_TASK, trials=4, epochs=2, stages=1, slots=3, executor="ray", fuse="on",
                       storage=storage_dir, name="fused-too-many-slots", ensemble=False)
    statuses = [t["status"] for t in result.tables().trials.to_pylist()]
    assert len(statuses) == 4 and set(statuses) <= {"completed", "pruned"}, statuses


def test_cpu_or_gpu_given_as_a_custom_resource_is_one_line_before_ray_starts(tmp_path):
    """--resource CPU=2 started a private Ray and the sweep, then ended in a 40-line traceback of Ray's
    'Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU''; now one line names the option to use."""
    from tests.cluster.conftest import caviar, one_error_line
    from tests.conftest import TINY_TASK

    line = one_error_line(caviar("run", TINY_TASK, "--storage", str(tmp_path), "--executor", "ray", "--resource",
                                 "CPU=2", "--plain", timeout=120))
    assert line == ("caviar: error: setting 'resources.CPU': CPU is not a custom resource; use cpus_per_trial "
                    "(--cpus-per-trial) instead")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match=r"^setting .resources.GPU.: GPU is not a custom resource; use gpus_per"):
        RunSettings(resources={"GPU": 1}).validate()


def test_no_more_actors_than_the_largest_stage_trains(ray_session, storage_dir):
    """A 1-trial sweep on a 2-CPU Ray started 2 actors (each importing torch and loading the data; on an autoscaling
    cluster each asks for a node): the second never trained. Now the actors are capped at the largest stage."""
    from cluster import warm_pool
    from orchestrator.app.api import run_sweep
    from tests.conftest import TINY_TASK

    assert ray_session.cluster_resources()["CPU"] == 2
    result = run_sweep(TINY_TASK, trials=1, epochs=1, stages=1, executor="ray", storage=storage_dir, name="one",
                       ensemble=False)
    assert [t["status"] for t in result.tables().trials.to_pylist()] == ["completed"]
    assert warm_pool.kept_count() == 1  # the sweep's actors, kept warm for the next sweep
