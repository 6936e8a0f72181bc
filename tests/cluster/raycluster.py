"""A real Ray cluster on this machine, made of ``ray start --block`` processes, for tests.

Each node is its own ``ray start`` in a new process group with its own ports and a private
``--temp-dir``, so it never meets the in-process Ray of the ``ray_session`` fixture (nor
other test runs on the machine), and stopping it touches only its own processes: never
``ray stop``, which ends every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

VENV_BIN = os.path.dirname(sys.executable)
RAY = os.path.join(VENV_BIN, "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])  # the field after the state letter
    except (OSError, IndexError, ValueError):
        return None


def ancestors(pid: int) -> list[int]:
    out = []
    while (pid := parent_of(pid)) not in (None, 0):
        out.append(pid)
    return out


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


_TOKEN_FILE: list[str] = []


def auth_token_file() -> str:
    """This test run's own Ray auth token (a private file, made once): never this machine's ~/.ray/auth_token."""
    if not _TOKEN_FILE:
        folder = tempfile.mkdtemp(prefix="cvr-token")
        path = os.path.join(folder, "auth_token")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(secrets.token_hex(32))
        _TOKEN_FILE.append(path)
    return _TOKEN_FILE[0]


def auth_headers() -> dict[str, str]:
    """What a client of the test cluster sends over HTTP: the token as a bearer header."""
    with open(auth_token_file()) as f:
        return {"Authorization": f"Bearer {f.read().strip()}"}


def cluster_env() -> dict[str, str]:
    """The environment for cluster processes and CLI calls: this venv's python first, no inherited Ray address.

    Token authentication is on, as Ray 2.60 defaults once a token exists: every node and every
    client (the CLI, the job's master, Ray Client) reads this run's token from ``RAY_AUTH_TOKEN_PATH``.
    """
    drop = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = auth_token_file()
    return env


@dataclass
class LocalRayCluster:
    nodes: int = 2
    cpus_per_node: int = 1
    head_cpus: int | None = None  # None: as every node; 0: a head that only coordinates (trials go to the others)
    temp_dir: str = ""
    gcs_port: int = 0
    dashboard_port: int = 0
    client_port: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 180.0) -> LocalRayCluster:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # a node that failed to come up must not leave the others running
            raise

    def _start(self, timeout: float) -> LocalRayCluster:
        # Short temp dir: Ray's socket paths live under it and Unix sockets allow ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="cvr", dir="/tmp")
        self.gcs_port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus_per_node}", "--num-gpus=0",
                  f"--temp-dir={self.temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
                  "--object-store-memory=100000000", "--disable-usage-stats"]
        head_cpus = self.cpus_per_node if self.head_cpus is None else self.head_cpus
        self._spawn("head", [RAY, "start", "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                             f"--ray-client-server-port={self.client_port}", f"--num-cpus={head_cpus}",
                             *(a for a in common if not a.startswith("--num-cpus"))])
        self._wait(lambda: self.alive_nodes() >= 1, timeout, "the head node")
        for i in range(1, self.nodes):  # one at a time: a raylet gets 30 s to register, and a busy machine is slow
            worker = [a for a in common if not a.startswith("--dashboard-agent-listen-port")]
            for attempt in range(3):  # Ray gives a joining raylet a fixed 30 s: on a loaded machine, try again
                self._spawn(f"node{i}", [RAY, "start", f"--address={self.gcs_address}",
                                         f"--dashboard-agent-listen-port={free_port()}", *worker])
                try:
                    self._wait(lambda n=i + 1: self.alive_nodes() >= n, timeout, f"{i + 1} nodes")
                    break
                except RuntimeError:
                    failed = self.processes.pop()
                    if attempt == 2 or failed.poll() is None:
                        self.processes.append(failed)
                        raise
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(os.path.join(self.temp_dir, f"{name}.log"), "w")
        self.processes.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=cluster_env(),
                                               start_new_session=True))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"ray start exited with {dead[0].returncode}: {self.log_tail()}")
            if ready():
                return
            time.sleep(1.0)
        raise TimeoutError(f"{what} did not come up in {timeout:.0f} s: {self.log_tail()}")

    def jobs(self):
        """The cluster's Job API, with this run's token: over HTTP, no ray.init in the test process."""
        from cluster.jobs import Jobs

        return Jobs(self.dashboard, headers=auth_headers())

    def alive_nodes(self) -> int:
        try:
            return self.jobs().alive_nodes() or 0
        except Exception:
            return 0

    def node_ids(self) -> set[str]:
        """Ids of the cluster's live nodes, as trials record them in the ``node`` column."""
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(address=self.dashboard, headers=auth_headers())
        nodes = client.list(StateResource.NODES, options=ListApiOptions(), raise_on_missing_output=False)
        return {node.node_id for node in nodes}

    def log_tail(self) -> str:
        tails = []
        for name in sorted(os.listdir(self.temp_dir)):
            if name.endswith(".log"):
                with open(os.path.join(self.temp_dir, name), errors="replace") as f:
                    tails.append(f"[{name}] " + f.read()[-1500:])
        return "\n".join(tails)

    def own_processes(self) -> list[str]:
        """Command lines of processes still running from this cluster (they all name its temp dir)."""
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if self.temp_dir and self.temp_dir in line]

    def node_of(self, pid: int) -> int | None:
        """The index (0 = head) of the node whose ``ray start`` process ``pid`` descends from; None if none."""
        starts = {p.pid: i for i, p in enumerate(self.processes)}
        return next((starts[a] for a in ancestors(pid) if a in starts), None)

    def kill_node(self, index: int) -> None:
        """Pull worker node ``index`` out as a machine failure would: SIGKILL its ``ray start`` and all it started."""
        assert index > 0, "the head holds the cluster together: kill a worker node"
        process = self.processes[index]
        started = [pid for pid in all_pids() if process.pid in ancestors(pid)]
        os.killpg(process.pid, signal.SIGKILL)
        for pid in started:  # by id, only descendants of this node's own `ray start`
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(10)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM each ``ray start --block`` (it drains and stops its node's processes), SIGKILL what is left."""
        for p in reversed(self.processes):  # worker nodes first, the head last
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        deadline = time.monotonic() + 20
        while self.own_processes() and time.monotonic() < deadline:
            time.sleep(0.5)  # workers notice their raylet is gone and exit on their own
        self.processes.clear()
        leftover = self.own_processes()
        for line in leftover:  # only ever our own: the line names our private temp dir
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
