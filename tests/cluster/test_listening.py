"""Every socket a local Ray started by caviar listens on, from the OS socket table: loopback, or documented.

docs/RELIABILITY.md lists the services Ray gives no way to bind to 127.0.0.1. This test starts
Ray as ``caviar run`` does (``cluster.runner.connect`` without an address), starts one actor,
and reads ``/proc/net/tcp`` and ``/proc/net/tcp6`` for the listening sockets of that process
tree. A socket beyond loopback whose process is not in the documented list fails the test, so
a new exposure (a Ray upgrade, a new option) is seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # own Ray or processes end to end: the second CI tier (.ci/test-slow)

# Process names (/proc/PID/comm, 15 characters at most) of the services documented as unbindable.
DOCUMENTED = ("gcs_server", "raylet", "python", "ray::TrialActor", "ray::DashboardA", "ray::RuntimeEnv", "ray::IDLE")

LISTENING = r"""
import json, os, socket, struct
from cluster.runner import connect
from cluster.actor import TrialActor
import ray

def tree(root):
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(p))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out

def listening(pids):
    owner = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
        except OSError:
            pass
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in owner:  # 0A: LISTEN
                continue
            hexaddr = f[1].split(":")[0]
            raw = b"".join(struct.pack("<I", int(hexaddr[i:i + 8], 16)) for i in range(0, len(hexaddr), 8))
            name = open(f"/proc/{owner[f[9]]}/comm").read().strip()
            found.append([name, socket.inet_ntop(family, raw)])
    return found

connect(None, num_cpus=1)
actor = TrialActor.options(num_cpus=1).remote("tests/tasks/tiny_task.py", "/tmp", "x", {})
ray.get(actor.ready.remote())
print(json.dumps(listening(tree(os.getpid()))))
ray.shutdown()
"""


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads the Linux socket table")
def test_a_local_ray_listens_beyond_loopback_only_where_documented():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", LISTENING], cwd=ROOT, env={**env, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sockets = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sockets, "no listening socket found: the socket table was not read"
    exposed = [(name, host) for name, host in sockets if host not in ("127.0.0.1", "::1")]
    undocumented = [(name, host) for name, host in exposed if not name.startswith(DOCUMENTED)]
    print(json.dumps(sorted(exposed)))
    assert not undocumented, undocumented
