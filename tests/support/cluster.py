"""A real Redis Cluster on loopback for tests: three primaries, each with a
replica, on free ports chosen at run time, created with `redis-cli --cluster
create`, and stopped by the PIDs of the processes this module started."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NODES = 6
START_TIMEOUT_SECONDS = 30.0


def _free_ports(count: int) -> list[int]:
    # Cluster nodes also listen on port + 10000 (the bus): both must be free.
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=10).stdout


@dataclass
class RedisCluster:
    directory: Path
    ports: list[int] = field(default_factory=lambda: _free_ports(NODES))
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Any live node will do: the client discovers the others."""
        live = [p for p in self.ports if p in self.processes] or self.ports
        return f"redis://127.0.0.1:{live[0]}/0"

    def start(self) -> RedisCluster:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_healthy()
        return self

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
             # Replicas sync at once rather than after the default 5 s delay.
             "--repl-diskless-sync-delay", "0",
             "--dir", str(node_dir), "--logfile", str(node_dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while "PONG" not in _cli(port, "PING"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {port} did not start")
            time.sleep(0.05)

    def wait_healthy(self) -> None:
        """Every node sees the cluster ok, and every replica has synced (a replica
        that never synced will not take over from a failed primary)."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        live = [p for p in self.ports if p in self.processes]
        while not all(self._healthy(p) for p in live):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become healthy")
            time.sleep(0.1)

    def _healthy(self, port: int) -> bool:
        if "cluster_state:ok" not in _cli(port, "CLUSTER", "INFO"):
            return False
        replication = _cli(port, "INFO", "replication")
        return "role:master" in replication or "master_link_status:up" in replication

    def primaries(self) -> list[int]:
        return [p for p in self.ports if p in self.processes
                and "role:master" in _cli(p, "INFO", "replication")]

    def kill(self, port: int) -> None:
        self._stop(port, signal.SIGKILL)

    def _stop(self, port: int, sig: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        for port in list(self.processes):
            self._stop(port, signal.SIGTERM)
