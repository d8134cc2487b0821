"""Emulated hosts for integration tests and the sandbox: "nodes" and "pods" on one machine.

A `Node` is a holder process with its own network namespace and a private mount namespace in which a
tmpfs covers /run (so also /run/netns and /var/run/wireguard, /var/run being a symlink to /run): two
gateways on one machine then each get their own `liqo-netns`, `liqo.tunnel`, wireguard-go UAPI socket
and /run/liqo files, and nothing they create there is visible in (or leaks into) the root namespaces.
Everything "on the node" runs through `nsenter -t <holder> -n -m`. A `Pod` is a holder with its own
network namespace (entered from the node's mount namespace), a veth to its node and a default route.

Nothing is ever created in the root network namespace: veth pairs are created inside a node with their
peer end placed straight into the other namespace. `Node.stop()` kills every process living in the
node's namespaces (its own, the named netns inside it, its pods'), so daemons such as wireguard-go
that detach from their parent die with the node; the namespaces then vanish with their last process.
Holders are started with a parent-death signal, so a crashed test run does not leave them behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import logging
import os
import pickle
import secrets
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Node", "NodeError", "Pod", "dies_with_us", "link_nodes", "namespace_inodes", "processes_in"]

log = logging.getLogger(__name__)

_HOLDER_READY_TIMEOUT = 5.0
_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_NS_FLAGS = {"net": _CLONE_NEWNET, "mnt": _CLONE_NEWNS}
_STOP_GRACE = 2.0
_KILL_ROUNDS = 20


class NodeError(RuntimeError):
    """An emulated host could not be started or a command on it failed."""


def _ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def processes_in(nets: set[int], mnts: set[int]) -> list[int]:
    """Live processes (not zombies, not this one) in any of these net or mnt namespaces (inodes)."""
    me = os.getpid()
    return [pid for pid in _pids() if pid != me and not _is_zombie(pid)
            and (_ns_inode(pid, "net") in nets or _ns_inode(pid, "mnt") in mnts)]


def namespace_inodes(nodes: Iterable[Node]) -> tuple[set[int], set[int]]:
    """(net, mnt) namespace inodes the nodes hold (their own, their named netns, their pods'); a node
    not started holds none."""
    nets: set[int] = set()
    mnts: set[int] = set()
    for node in nodes:
        if node._holder is None:
            continue
        node_nets, node_mnts = node._namespace_inodes()
        nets |= node_nets
        mnts |= node_mnts
    return nets, mnts


def dies_with_us(argv: Sequence[str]) -> list[str]:
    """`argv`, SIGKILLed when the thread that started it dies, so that a killed test run leaves
    nothing behind (start long-lived processes from a long-lived thread, e.g. the test's main one)."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *argv]


def _start_holder(argv: Sequence[str], what: str) -> subprocess.Popen[bytes]:
    """Starts a namespace holder; it prints `ready` once its namespaces are set up."""
    holder = subprocess.Popen(
        dies_with_us(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a ^C in the test runner must reach the test, not the holders
    )
    assert holder.stdout is not None
    # One line from a process we control; a dead holder closes the pipe, so this cannot hang.
    line = holder.stdout.readline()
    if line.strip() != b"ready":
        holder.kill()
        _, err = holder.communicate(timeout=_HOLDER_READY_TIMEOUT)
        raise NodeError(f"{what}: holder failed to start: {err.decode(errors='replace').strip()}")
    return holder


class _Host:
    """What nodes and pods share: a holder process and commands run in its namespaces."""

    name: str
    _holder: subprocess.Popen[bytes] | None
    _enter: tuple[str, ...]  # nsenter flags selecting the namespaces to enter

    @property
    def pid(self) -> int:
        if self._holder is None:
            raise NodeError(f"{self.name}: not started")
        return self._holder.pid

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if not argv:
            raise ValueError("empty command")
        return ["nsenter", "-t", str(self.pid), *self._enter, f"--wd={os.getcwd()}", "--", *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command in this host's namespaces; raises NodeError (with stderr) when `check`."""
        cp = subprocess.run(
            self._argv(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and cp.returncode != 0:
            out = cp.stderr.strip() or cp.stdout.strip()
            raise NodeError(f"{self.name}: {' '.join(argv)!r} exited {cp.returncode}: {out}")
        return cp

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Starts a process (a daemon, an agent) in this host's namespaces. The node kills it on stop.

        In a session of its own, like the holders: a ^C at the terminal reaches only the program that
        started it, which then stops everything in order (its own clean-up), instead of killing the
        API servers and controllers under it at once."""
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(argv), **kw)
        self._children.append(proc)
        return proc

    _children: list[subprocess.Popen[Any]]
    _ns_kinds: tuple[str, ...]

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 60, **kwargs: Any) -> Any:
        """Runs `fn(*args, **kwargs)` in a forked child that entered this host's namespaces and returns
        its (pickled) result; an exception in the child is re-raised here with the child's traceback
        as a note. The child is single-threaded, which entering a mount namespace requires."""
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fds = [os.open(f"/proc/{self.pid}/ns/{kind}", os.O_RDONLY) for kind in self._ns_kinds]
        cwd = os.getcwd()
        r, w = os.pipe()
        try:
            child = os.fork()
            if child == 0:  # pragma: no cover - runs in the child
                os.close(r)
                try:
                    for fd, kind in zip(fds, self._ns_kinds, strict=True):
                        if libc.setns(fd, _NS_FLAGS[kind]) != 0:
                            raise OSError(ctypes.get_errno(), f"setns {kind}")
                    os.chdir(cwd)
                    out: tuple[str, Any, str] = ("ok", fn(*args, **kwargs), "")
                except BaseException as e:
                    out = ("err", e, traceback.format_exc())
                try:
                    data = pickle.dumps(out)
                except Exception:
                    data = pickle.dumps(("err", NodeError(repr(out[1])), out[2]))
                with os.fdopen(w, "wb") as f:
                    f.write(data)
                for stream in (sys.stdout, sys.stderr):  # what `fn` printed reaches the caller's capture
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(0)
        finally:
            for fd in fds:
                os.close(fd)
        os.close(w)
        chunks = []
        deadline = time.monotonic() + timeout
        with os.fdopen(r, "rb") as f:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([f], [], [], left)[0]:
                    os.kill(child, signal.SIGKILL)
                    os.waitpid(child, 0)
                    raise TimeoutError(f"{self.name}: {getattr(fn, '__name__', fn)} took over {timeout}s")
                chunk = os.read(f.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        os.waitpid(child, 0)
        if not chunks:
            raise NodeError(f"{self.name}: {getattr(fn, '__name__', fn)}: child died without a result")
        status, value, tb = pickle.loads(b"".join(chunks))
        if status == "err":
            if isinstance(value, BaseException):
                value.add_note(f"in {self.name}:\n{tb}")
                raise value
            raise NodeError(str(value))
        return value

    def _reap_children(self) -> None:
        for proc in self._children:
            with contextlib.suppress(Exception):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
        self._children.clear()


class Pod(_Host):
    """A workload: its own network namespace, `eth0` with `ip`, default route via its node."""

    def __init__(self, node: Node, name: str, ip_cidr: str, gateway_ip: str) -> None:
        iface = ipaddress.IPv4Interface(ip_cidr if "/" in ip_cidr else f"{ip_cidr}/32")
        self.node = node
        self.name = f"{node.name}/{name}"
        self.interface = iface
        self.ip = str(iface.ip)
        self.gateway_ip = str(ipaddress.IPv4Address(gateway_ip))
        self.node_veth = f"p{len(node.pods)}{secrets.token_hex(3)}"  # on the node; <= 15 chars
        self._enter = ("-n",)
        self._ns_kinds = ("net",)
        self._holder = None
        self._children = []

    def _start(self) -> None:
        # Entered from the node's mount namespace, so the node's stop() finds it there too.
        self._holder = _start_holder(
            ["nsenter", "-t", str(self.node.pid), "-m", "--", "unshare", "--net", "--",
             "sh", "-c", "ip link set lo up && echo ready && exec sleep infinity"],
            self.name,
        )
        node, ip, gw = self.node, self.ip, self.gateway_ip
        node.run("ip", "link", "add", self.node_veth, "type", "veth", "peer", "name", "eth0",
                 "netns", str(self.pid))
        # The gateway address on every pod veth answers the pod's ARP (as CNIs do with a link-local gw).
        node.run("ip", "addr", "add", f"{gw}/32", "dev", self.node_veth)
        node.run("ip", "link", "set", self.node_veth, "up")
        node.run("ip", "route", "add", f"{ip}/32", "dev", self.node_veth, "scope", "link")
        self.run("ip", "addr", "add", str(self.interface), "dev", "eth0", "noprefixroute")
        self.run("ip", "link", "set", "eth0", "up")
        self.run("ip", "route", "add", "default", "via", gw, "dev", "eth0", "onlink")

    def stop(self) -> None:
        self._reap_children()
        if self._holder is not None:
            with contextlib.suppress(ProcessLookupError):
                self._holder.kill()
            with contextlib.suppress(Exception):
                self._holder.communicate(timeout=5)
            self._holder = None


class Node(_Host):
    """An emulated host with private network and mount namespaces. Use as a context manager."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pods: list[Pod] = []
        self._enter = ("-n", "-m")
        self._ns_kinds = ("net", "mnt")
        self._holder = None
        self._children = []

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._holder is not None:
            return
        # `mount -n`: no /run/mount/utab bookkeeping, which would land in the host's /run.
        script = (
            "mount -n -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/netns /run/wireguard"
            " && ip link set lo up && echo ready && exec sleep infinity"
        )
        self._holder = _start_holder(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", script], self.name
        )
        try:
            self.sysctl("net.ipv4.ip_forward", "1")
        except BaseException:
            self.stop()
            raise

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def exec_in_netns(self, netns_name: str, argv: Sequence[str], check: bool = True,
                      timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Runs `argv` inside the named netns `netns_name` that lives in this node."""
        return self.run("ip", "netns", "exec", netns_name, *argv, check=check, timeout=timeout)

    def add_pod(self, name: str, ip_cidr: str, gateway_ip: str) -> Pod:
        pod = Pod(self, name, ip_cidr, gateway_ip)
        self.pods.append(pod)
        try:
            pod._start()
        except BaseException:
            pod.stop()
            raise
        return pod

    def path(self, path: str) -> Path:
        """A file of the node's mount namespace (e.g. its /run), seen from outside."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    # ---- stopping ------------------------------------------------------------------------------------

    def _namespace_inodes(self) -> tuple[set[int], set[int]]:
        """(net, mnt) namespace inodes belonging to this node: its own, its named netns, its pods'."""
        pid = self.pid
        nets = {i for i in (_ns_inode(pid, "net"),) if i is not None}
        mnts = {i for i in (_ns_inode(pid, "mnt"),) if i is not None}
        for pod in self.pods:
            if pod._holder is not None and (i := _ns_inode(pod.pid, "net")) is not None:
                nets.add(i)
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path("/run/netns")):
                with contextlib.suppress(OSError):
                    nets.add(os.stat(entry.path).st_ino)
        return nets, mnts

    def pids(self, comm: str | None = None) -> list[int]:
        """Processes living in this node's namespaces (holders excepted), optionally by command name
        (/proc/PID/comm, e.g. "wireguard-go"). `pgrep` would see the whole machine's processes."""
        holders = {self.pid} | {p.pid for p in self.pods if p._holder is not None}
        found = []
        for pid in processes_in(*self._namespace_inodes()):
            if pid in holders:
                continue
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm is None or name == comm:
                found.append(pid)
        return sorted(found)

    def stop(self) -> None:
        """Kills every process in the node's namespaces, then the holders. Idempotent."""
        if self._holder is None:
            return
        try:
            nets, mnts = self._namespace_inodes()
            holders = {self.pid} | {p.pid for p in self.pods if p._holder is not None}
            # Daemons first, gently (wireguard-go removes its socket on SIGTERM), then by force.
            for sig, rounds in ((signal.SIGTERM, 1), (signal.SIGKILL, _KILL_ROUNDS)):
                for _ in range(rounds):
                    victims = [p for p in processes_in(nets, mnts) if p not in holders]
                    if not victims:
                        break
                    for p in victims:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, sig)
                    self._reap_children_nowait()
                    deadline = time.monotonic() + (_STOP_GRACE if sig == signal.SIGTERM else 0.5)
                    while time.monotonic() < deadline and any(not _is_zombie(p) for p in victims):
                        time.sleep(0.02)
                        self._reap_children_nowait()
            leftover = [p for p in processes_in(nets, mnts) if p not in holders]
            if leftover:
                log.error("node %s: processes survived SIGKILL: %s", self.name, leftover)
        finally:
            for pod in self.pods:
                pod.stop()
            self._reap_children()
            holder, self._holder = self._holder, None
            with contextlib.suppress(ProcessLookupError):
                holder.kill()
            with contextlib.suppress(Exception):
                holder.communicate(timeout=5)

    def _reap_children_nowait(self) -> None:
        for proc in (*self._children, *(c for pod in self.pods for c in pod._children)):
            with contextlib.suppress(Exception):
                proc.poll()


def link_nodes(a: Node, a_ip: str, b: Node, b_ip: str, prefix: int = 24) -> tuple[str, str]:
    """Connects two nodes with a veth "underlay" and addresses both ends; returns the two link names.

    The pair is created inside `a` with its peer placed straight into `b`: nothing in the root ns."""
    tag = secrets.token_hex(3)
    a_dev, b_dev = f"ul{tag}a", f"ul{tag}b"
    a.run("ip", "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", str(b.pid))
    a.run("ip", "addr", "add", f"{a_ip}/{prefix}", "dev", a_dev)
    b.run("ip", "addr", "add", f"{b_ip}/{prefix}", "dev", b_dev)
    a.run("ip", "link", "set", a_dev, "up")
    b.run("ip", "link", "set", b_dev, "up")
    return a_dev, b_dev
