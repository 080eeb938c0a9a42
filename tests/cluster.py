"""A real multi-node Ray cluster on this machine: a head and worker raylets (ray.cluster_utils.Cluster),
reached the way users reach one: the CLI with RAY_ADDRESS, or `ray job submit` to the head's dashboard.

Killing a node (`kill_worker`) SIGKILLs every process of it: its raylet, object store, agents and the
workers running our actors, as a preempted or OOM-killed machine loses them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A dead node is declared dead after 3 missed one-second health checks (Ray's default: 5 missed checks
# 3 s apart after a 5 s delay, about 20 s), so a job's work moves to the other nodes within seconds.
FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_ports() -> dict[str, int]:
    """Ports of one node's agents, each free: the defaults are taken by the first Ray on the machine
    (the suite's local one), and a node whose dashboard agent cannot bind accepts no jobs."""
    names = ("dashboard_agent_listen_port", "metrics_agent_port", "metrics_export_port")
    return {name: free_port() for name in (*names, "runtime_env_agent_port")}


class LocalCluster:
    """Head (1 CPU, dashboard on) plus `workers` one-CPU worker nodes."""

    def __init__(self, workers: int = 3, dashboard: bool = False) -> None:
        from ray.cluster_utils import Cluster

        self.dashboard_port = free_port() if dashboard else None
        head = {
            "num_cpus": 1,
            **agent_ports(),
            "_system_config": FAILURE_DETECTION,
            "include_dashboard": dashboard,
            "dashboard_host": "127.0.0.1",
            **({"dashboard_port": self.dashboard_port} if dashboard else {}),
        }
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.workers = [self.cluster.add_node(num_cpus=1, **agent_ports()) for _ in range(workers)]
        self.cluster.wait_for_nodes()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def address(self) -> str:
        return self.cluster.address

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "RAY_ADDRESS": self.address, **extra}

    def taskray(self, *args: str, **popen) -> subprocess.Popen:
        """`taskray ARGS` as a user runs it against this cluster: a driver process with RAY_ADDRESS."""
        return subprocess.Popen(
            [sys.executable, "-m", "taskray", *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **popen,
        )

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = self.taskray(*args)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def actors_on(self, index: int) -> list[str]:
        """The process titles of the actors a worker node runs now (Ray titles them `ray::Class...`)."""
        import psutil
        from ray._private import ray_constants

        raylet = self.workers[index].all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        titles = []
        for child in psutil.Process(raylet.pid).children(recursive=True):
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::") and not title.startswith(
                ("ray::IDLE", "ray::Dashboard", "ray::Runtime")
            ):
                titles.append(title.strip())
        return titles

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL every process of one worker node; it does not come back."""
        self.cluster.remove_node(self.workers.pop(index), allow_graceful=False)

    def add_worker(self) -> None:
        self.workers.append(self.cluster.add_node(num_cpus=1, **agent_ports()))
        self.cluster.wait_for_nodes()

    def shutdown(self) -> None:
        import ray

        self.cluster.shutdown()
        # Cluster.shutdown also forgets the key-value store of this process's own Ray (the suite's
        # local one), which Ray's autoscaler requests go through: hand it back.
        if ray.is_initialized():
            ray.experimental.internal_kv._initialize_internal_kv(ray._private.worker.global_worker.gcs_client)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll until `predicate()`; fail saying `what` if the time runs out or `proc` ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the job ended before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class AutoscalingCluster:
    """A head with one CPU whose autoscaler adds up to `max_workers` one-CPU nodes on demand and removes
    them after `idle_s` idle: Ray's `fake_multinode` provider, the cloud-free stand-in for a cloud's.

    Ray's own helper for this (`ray.cluster_utils.AutoscalingCluster`) runs `ray stop --force`, which
    would end every Ray on the machine, so the head is started here with ports of its own."""

    def __init__(self, max_workers: int = 3, idle_s: float = 15) -> None:
        import json
        import tempfile

        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="tr-auto-", dir="/tmp")  # Ray's socket paths are short
        config = {
            "cluster_name": "taskray-fake",
            "max_workers": max_workers,
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_s / 60,
            "provider": {
                "type": "fake_multinode",
                "gcs_address": f"127.0.0.1:{self.port}",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "auth": {"ssh_user": "ubuntu"},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
                "cpu_node": {
                    "resources": {"CPU": 1},
                    "node_config": {},
                    "min_workers": 0,
                    "max_workers": max_workers,
                },
            },
            "head_node_type": "ray.head.default",
            "file_mounts": {},
            # the launcher's schema wants these; a fake provider runs none of them
            "cluster_synced_files": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        config_path = Path(self.temp_dir, "autoscaler.json")
        config_path.write_text(json.dumps(config))
        # `ray start` turns on token authentication; a test cluster on 127.0.0.1 goes without, as the
        # README tells users of a private network to do
        env = {**self.env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        env.pop("RAY_ADDRESS")
        ports = {f"--{k.replace('_', '-')}": v for k, v in agent_ports().items() if k != "metrics_agent_port"}
        self.head = subprocess.Popen(
            [
                "ray",
                "start",
                "--head",
                "--block",
                "--num-cpus=1",
                f"--port={self.port}",
                f"--dashboard-port={free_port()}",
                *(f"{k}={v}" for k, v in ports.items()),
                f"--autoscaling-config={config_path}",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
                f"--system-config={json.dumps(FAILURE_DETECTION)}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: self.nodes() == 1, 120, "the autoscaling head to come up")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled"}

    def _ours(self) -> list:
        """The raylets of this cluster: head and added nodes name its GCS address on their command line."""
        import psutil

        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if proc.info["name"] == "raylet" and f":{self.port}" in cmdline:
                found.append(proc)
        return found

    def nodes(self) -> int:
        """Nodes alive now, counted by their raylets."""
        return len(self._ours())

    def busy_actors(self) -> int:
        """Job actors (the runner's ItemActor) running on this cluster's nodes now."""
        import psutil

        count = 0
        for raylet in self._ours():
            try:
                children = raylet.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    count += " ".join(child.cmdline()).startswith("ray::ItemActor")
                except psutil.Error:
                    pass
        return count

    def shutdown(self) -> None:
        import shutil
        import signal

        import psutil

        os.killpg(self.head.pid, signal.SIGTERM)
        try:
            self.head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.head.pid, signal.SIGKILL)
        for raylet in self._ours():  # nodes the autoscaler started live outside the head's group
            for proc in [*raylet.children(recursive=True), raylet]:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
