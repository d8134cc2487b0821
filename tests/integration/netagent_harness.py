"""Runs real netagents on emulated nodes and talks to them over their Unix sockets."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from sandbox.testkit.hosts import Node
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def keypair() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    pub = subprocess.run(
        ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
    ).stdout.strip()
    return priv, pub


class AgentProcess:
    """One liqo-netagent on a node; socket and state live in `workdir` (visible from the test)."""

    def __init__(self, node: Node, workdir: Path, *extra: str) -> None:
        self.node = node
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "netagent.sock"
        self.state = workdir / "state.json"
        self.log = workdir / "netagent.log"
        self.extra = extra
        self.proc: subprocess.Popen[Any] | None = None
        self._channel: grpc.Channel | None = None
        self.stub: pb_grpc.NetAgentServiceStub | None = None

    def start(self, timeout: float = 30) -> None:
        logf = self.log.open("a")
        self.proc = self.node.popen(
            [
                sys.executable,
                "-m",
                "services.netagent.main",
                "--socket",
                str(self.socket),
                "--state-path",
                str(self.state),
                "--probe-interval",
                "0.5",
                *self.extra,
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        logf.close()
        self._channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.stub = pb_grpc.NetAgentServiceStub(self._channel)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"netagent exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                self.stub.GetInfo(pb.GetInfoRequest(), timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"netagent did not serve:\n{self.log.read_text()[-4000:]}") from None
                time.sleep(0.1)

    @property
    def api(self) -> pb_grpc.NetAgentServiceStub:
        assert self.stub is not None, "agent not started"
        return self.stub

    def signal_stop(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=15)
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


def activate(agent: AgentProcess, private_key: str, epoch: int = 1, ttl: float = 600) -> None:
    agent.api.ConfigureDevice(pb.ConfigureDeviceRequest(private_key=private_key))
    d = Duration()
    d.FromNanoseconds(int(ttl * 1e9))
    agent.api.SetRole(pb.SetRoleRequest(role=pb.ROLE_ACTIVE, epoch=epoch, ttl=d, reason="test"))


def kernel_snapshot(node: Node, netns: str = "liqo-netns") -> dict[str, str]:
    """Everything the agent may touch, as the kernel's own tools print it (counters stripped)."""

    def out(*argv: str) -> str:
        return node.run(*argv).stdout

    def ns(*argv: str) -> str:
        return node.exec_in_netns(netns, argv).stdout

    def no_counters(save: str) -> str:
        return "\n".join(
            line.split(" [", 1)[0] if line.startswith(":") else line
            for line in save.splitlines()
            if not line.startswith("#")
        )

    return {
        "host rules": out("ip", "rule", "show"),
        "host routes": out("ip", "route", "show", "table", "all"),
        "host links": "\n".join(
            sorted(line.split(": ", 2)[1] for line in out("ip", "-o", "link").splitlines())
        ),
        "netns routes": ns("ip", "route", "show", "table", "all"),
        "netns links": ns("ip", "-d", "-o", "link").replace("\\", ""),
        "netns neigh": ns("ip", "neigh", "show", "nud", "permanent"),
        "host neigh": out("ip", "neigh", "show", "nud", "permanent"),
        "iptables": no_counters(ns("iptables-legacy-save")),
        "wg": wg_dump(ns("wg", "show", "all", "dump")),
    }


def wg_dump(dump: str) -> str:
    """`wg show all dump` without the private key and without the columns that move on their own."""
    lines = []
    for line in dump.splitlines():
        f = line.split("\t")
        if len(f) == 5:  # interface: name, private key, public key, port, fwmark
            lines.append("\t".join([f[0], *f[2:]]))
        else:  # peer: name, key, psk, endpoint, allowed ips, handshake, rx, tx, keepalive
            lines.append("\t".join([*f[:5], f[8]]))
    return "\n".join(lines)


@contextlib.contextmanager
def background_ping(pod: Any, target: str, interval: float = 0.05) -> Iterator[subprocess.Popen[str]]:
    """A ping running while the body executes; the caller reads its summary after the block."""
    proc: subprocess.Popen[str] = pod.popen(
        ["ping", "-n", "-i", str(interval), "-W", "1", target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.send_signal(2)  # SIGINT: ping prints its summary


def ping_loss(proc: subprocess.Popen[str]) -> tuple[int, int]:
    """(transmitted, received) from a finished ping's summary."""
    out, _ = proc.communicate(timeout=10)
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(f"no ping summary in:\n{out}")
