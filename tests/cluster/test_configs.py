"""The cluster configs in cluster/configs stay in step with caviar and the Ray it is built for.

Every `caviar ...` command line written in a config (entrypoints and the usage comments) must
parse with the real CLI, and every Ray version named must be the one caviar pins.
"""

from __future__ import annotations

import os
import re
import shlex

import pytest
import ray
import typer
import yaml

import orchestrator.app.cli_cluster  # noqa: F401  (registers submit/jobs/logs/stop on the app)
from orchestrator.app.cli import app
from tests.conftest import ROOT

CONFIGS = os.path.join(ROOT, "cluster", "configs")
YAMLS = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml"))


def read(name: str) -> str:
    with open(os.path.join(CONFIGS, name)) as f:
        return f.read()


def caviar_commands(text: str) -> list[list[str]]:
    """Each ``caviar VERB ...`` command in a file, comment continuations (``\\``) and YAML folds joined."""
    joined = re.sub(r"\\\n#?\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("caviar ") and not line.startswith("caviar status"):
            commands.append(shlex.split(line)[1:])
    return commands


def parse(argv: list[str]) -> None:
    """Parse (types, choices, unknown options) with the real click command, without running it."""
    group = typer.main.get_command(app)
    verb, *args = argv
    command = group.get_command(None, verb)
    assert command is not None, f"unknown verb {verb!r}"
    command.make_context(verb, list(args))


def test_there_are_launcher_and_kuberay_configs():
    assert {"aws.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"} <= set(YAMLS)
    assert os.path.isfile(os.path.join(CONFIGS, "Dockerfile"))


@pytest.mark.parametrize("name", YAMLS)
def test_each_config_parses_and_names_the_pinned_ray(name):
    text = read(name)
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    versions = set(re.findall(r"rayVersion: \"([\d.]+)\"", text))
    assert versions <= {ray.__version__}, f"{name} names Ray {versions}, caviar pins {ray.__version__}"


def test_the_image_is_built_on_the_pinned_ray():
    base = re.search(r"^ARG BASE=rayproject/ray:([\d.]+)-", read("Dockerfile"), re.M)
    assert base and base.group(1) == ray.__version__


@pytest.mark.parametrize("name", YAMLS)
def test_every_caviar_command_in_a_config_parses_with_the_real_cli(name):
    text = read(name)
    commands = caviar_commands(text)
    doc = yaml.safe_load(text)
    if doc.get("kind") == "RayJob":
        commands.append(shlex.split(doc["spec"]["entrypoint"])[1:])
    assert commands, f"{name} shows no caviar command"
    for argv in commands:
        parse(argv)


def test_a_wrong_option_in_a_command_is_caught():
    with pytest.raises(Exception, match="no-such"):
        parse(["run", "examples/digits_mlp.py", "--no-such", "1"])


def test_no_config_exposes_the_dashboard_outside_the_head():
    aws = yaml.safe_load(read("aws.yaml"))
    head = " ".join(aws["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert aws["available_node_types"]["head"]["resources"] == {"CPU": 0}  # the master's node trains nothing
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        assert "type: LoadBalancer" not in read(name) and "NodePort" not in read(name)


def test_the_launcher_config_passes_rays_own_schema_and_gives_gpu_workers_the_gpu_image():
    """What `ray up` checks first (ray/autoscaler/ray-schema.json, through Ray's validate_config); no cloud needed."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    aws = yaml.safe_load(read("aws.yaml"))
    validate_config(prepare_config(aws))  # as `ray up` does: the provider's defaults filled in, then the schema
    gpu = aws["available_node_types"]["gpu_worker"]
    assert gpu["docker"]["worker_image"].endswith("-gpu") and not aws["docker"]["image"].endswith("-gpu")
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] >= 1  # what slots are sized from
    assert "BASE=rayproject/ray:" + ray.__version__ + "-py311-gpu" in read("Dockerfile")
    broken = {**aws, "available_node_types": {**aws["available_node_types"],
                                              "gpu_worker": {**gpu, "docker": {"image": "x"}}}}
    with pytest.raises(Exception, match="image"):  # the schema really is checked: a misplaced key fails
        validate_config(prepare_config(broken))
