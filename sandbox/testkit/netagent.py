"""THE netagent process of tests, benchmarks and the sandbox: a real `liqo-netagent serve` in a Node.

`NetAgent(node, workdir)` runs `python -m services.netagent.main serve` inside the node with its
Unix sockets and state file (by default in `workdir`, which the node sees at the same path, since a
node's private mount namespace only covers /run). Paths under /run are the node's own: the process
gets them as given and this side reaches them through /proc/<holder>/root. Errors carry the tail
of the agent's log.

Sockets, as in production: `socket` is the operator's (every method; `api` and `client()` use it, so
tests may call any RPC), and one per controller role (`ROLES`: labeler, tunnel, natmap), by default
`<role>.sock` next to it; `client(role)` / `role_socket(role)` give a controller only its own.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from sandbox.testkit.hosts import Node, dies_with_us
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.netagent_client import NetAgentClient

__all__ = ["LIQO_NETNS", "ROLES", "ROOT", "NetAgent", "NetAgentError", "activate", "kernel_snapshot",
           "snapshot_diff", "wg_dump"]

ROOT = Path(__file__).resolve().parents[2]
LIQO_NETNS = "liqo-netns"
LOG_TAIL = 4000
ROLES = ("labeler", "tunnel", "natmap")  # the controllers' sockets (--<role>-socket)


class NetAgentError(RuntimeError):
    """The agent exited or did not serve; the message ends with its log's tail."""


class NetAgent:
    """One liqo-netagent in `node`. `start()` waits until it answers GetInfo; `stop()` ends it."""

    def __init__(self, node: Node, workdir: Path, *, socket: str | Path | None = None,
                 state: str | Path | None = None, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, probe_interval: float | None = 0.5,
                 role_sockets: Mapping[str, str | Path] | None = None,
                 shutdown_grace: float | None = 0.0) -> None:
        self.node = node
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(socket or self.workdir / "netagent.sock")  # as the node sees it
        # Each controller role's socket, as the node sees it; by default next to the operator's.
        given = dict(role_sockets or {})
        self.role_socket_paths = {
            r: str(given.get(r) or Path(self.socket_path).parent / f"{r}.sock") for r in ROLES}
        self.state_path = str(state or self.workdir / "state.json")
        self.log = self.workdir / "netagent.log"
        self.args = tuple(args)
        self.env = dict(env) if env is not None else None
        self.probe_interval = probe_interval
        # A test stops ACTIVE agents all the time, with no labeler to withdraw the role: no drain by
        # default (None: the product's, as a gateway replica runs it).
        self.shutdown_grace = shutdown_grace
        self.proc: subprocess.Popen[Any] | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.NetAgentServiceStub | None = None

    # ---- paths -----------------------------------------------------------------------------------

    def _here(self, path: str) -> Path:
        """`path` as this process reaches it: the node's own /run through its holder's root."""
        return self.node.path(path) if path == "/run" or path.startswith("/run/") else Path(path)

    @property
    def socket(self) -> Path:
        """The agent's socket as this process reaches it."""
        return self._here(self.socket_path)

    def role_socket(self, role: str) -> Path:
        """The socket of controller `role` ("labeler", "tunnel", "natmap") as this process reaches it."""
        return self._here(self.role_socket_paths[role])

    @property
    def state(self) -> Path:
        return self._here(self.state_path)

    def log_tail(self, n: int = LOG_TAIL) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError as e:
            return f"<no log: {e}>"

    # ---- lifecycle -------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "services.netagent.main", "serve", "--socket", self.socket_path,
                "--state-path", self.state_path]
        for role, path in self.role_socket_paths.items():
            argv += [f"--{role}-socket", path]
        if self.probe_interval is not None:
            argv += ["--probe-interval", str(self.probe_interval)]
        if self.shutdown_grace is not None:
            argv += ["--shutdown-grace", str(self.shutdown_grace)]
        return dies_with_us([*argv, *self.args])

    def start(self, timeout: float = 30.0) -> NetAgent:
        if self.running:
            raise NetAgentError(f"{self.node.name}: netagent already running")
        with self.log.open("a") as logf:
            self.proc = self.node.popen(self.argv(), stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env=self.env)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.close()  # a half-started agent is not left behind
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until GetInfo answers; NetAgentError (with the log's tail) if the agent exits or
        does not serve within `timeout`."""
        def serving() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise NetAgentError(f"{self.node.name}: netagent exited {self.proc.returncode}:\n"
                                    f"{self.log_tail()}")
            self.api.GetInfo(pb.GetInfoRequest(), timeout=1)
            return True

        try:
            wait_for(f"{self.node.name}: netagent serving", serving, timeout, 0.1, retry_on=(grpc.RpcError,))
        except AssertionError:
            raise NetAgentError(f"{self.node.name}: netagent did not serve within {timeout:g}s:\n"
                                f"{self.log_tail()}") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def api(self) -> pb_grpc.NetAgentServiceStub:
        """A raw gRPC stub on the agent's socket (opened on first use)."""
        if self._stub is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket}")
            self._stub = pb_grpc.NetAgentServiceStub(self._channel)
        return self._stub

    def client(self, role: str | None = None, timeout: float = 30.0, **kw: Any) -> NetAgentClient:
        """A new NetAgentClient on the socket of controller `role`, or on the operator's (every
        method) when None; the caller closes it."""
        path = self.socket if role is None else self.role_socket(role)
        return NetAgentClient(str(path), timeout=timeout, **kw)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Sends `sig` and waits for the exit; returns the exit status. SIGKILL after `timeout`."""
        self._close_channel()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise NetAgentError(f"{self.node.name}: netagent ignored signal {sig} for {timeout:g}s:\n"
                                    f"{self.log_tail()}") from None
        return self.proc.returncode

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freezes the agent (SIGSTOP) for the block, so a test can plant kernel state and look at it
        before the agent's resync repairs it; SIGCONT on the way out, even on error."""
        assert self.proc is not None and self.proc.poll() is None, "the agent is not running"
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is cleaned up."""
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        """Ends the agent whatever its state (for teardown); never raises for an already-ended one."""
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)

    def __enter__(self) -> NetAgent:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.close()


def activate(agent: NetAgent, private_key: str, epoch: int = 1, ttl: float = 600) -> None:
    """ConfigureDevice with `private_key`, then SetRole ACTIVE (what the controllers do once leading)."""
    agent.api.ConfigureDevice(pb.ConfigureDeviceRequest(private_key=private_key))
    d = Duration()
    d.FromNanoseconds(int(ttl * 1e9))
    agent.api.SetRole(pb.SetRoleRequest(role=pb.ROLE_ACTIVE, epoch=epoch, ttl=d, reason="test"))


def kernel_snapshot(node: Node, netns: str = LIQO_NETNS) -> dict[str, str]:
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


def snapshot_diff(before: dict[str, str], after: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """Per part of two kernel snapshots, the lines that went and came."""
    out = {}
    for part in before.keys() | after.keys():
        b, a = before.get(part, "").splitlines(), after.get(part, "").splitlines()
        if b != a:
            out[part] = {"gone": [x for x in b if x not in a], "new": [x for x in a if x not in b]}
    return out


def wg_dump(dump: str) -> str:
    """`wg show all dump` without the private key and without the columns that move on their own;
    peers sorted, since WireGuard lists them in the order they were (re)added."""
    interfaces, peers = [], []
    for line in dump.splitlines():
        f = line.split("\t")
        if len(f) == 5:  # interface: name, private key, public key, port, fwmark
            interfaces.append("\t".join([f[0], *f[2:]]))
        else:  # peer: name, key, psk, endpoint, allowed ips, handshake, rx, tx, keepalive
            peers.append("\t".join([*f[:5], f[8]]))
    return "\n".join([*sorted(interfaces), *sorted(peers)])
