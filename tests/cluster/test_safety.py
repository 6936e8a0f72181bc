"""What caviar starts listens on 127.0.0.1 unless asked otherwise, and the CLI says when it reaches further."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.cluster.raycluster import VENV_BIN, cluster_env
from tests.conftest import ROOT, TINY_TASK

pytestmark = pytest.mark.slow  # own Ray or processes end to end: the second CI tier (.ci/test-slow)

LISTENING = r"""
import json, sys
from cluster.runner import connect
import ray

connect(None, dashboard=True, num_cpus=1)
port = int(ray._private.worker.global_worker.node.address_info["webui_url"].rsplit(":", 1)[1])
hosts = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
            hosts.append(address)
ray.shutdown()
print(json.dumps({"port": port, "hosts": hosts}))
"""


def test_the_dashboard_of_a_ray_caviar_starts_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", LISTENING],
        cwd=ROOT,
        env={**env, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # /proc/net/tcp writes 127.0.0.1 as 0100007F; 0.0.0.0 (every interface) would be 00000000.
    assert found["hosts"] == ["0100007F"], found


def own_network_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_the_cli_warns_before_it_joins_a_cluster_over_the_network(tmp_path):
    host = own_network_address()
    if host is None:
        pytest.skip("this machine has no network address besides loopback")
    with socket.socket() as s:  # a port on that address that nobody listens on
        s.bind((host, 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [
            os.path.join(VENV_BIN, "caviar"),
            "run",
            TINY_TASK,
            "--address",
            f"ray://{host}:{port}",
            "--storage",
            str(tmp_path),
            "--name",
            "remote",
            "--shared-storage",
            "--plain",
        ],
        cwd=ROOT,
        env=cluster_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[0] == (
        f"warning: setting 'address': the Ray cluster at {host} is reached over the network: anyone who "
        "reaches its ports can run code on it; keep them behind a firewall or an SSH tunnel"
    )
    assert lines[1].startswith(f"caviar: error: Ray cluster 'ray://{host}:{port}': cannot connect")
    assert len(lines) == 2
    assert not os.path.exists(tmp_path / "remote" / "sweep" / "sweep.parquet")  # refused: nothing left to --overwrite
