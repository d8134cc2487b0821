"""Emulated Liqo clusters with real gateway replicas: the reusable end-to-end harness.

Everything runs as real processes in emulated hosts (`sandbox.testkit.hosts.Node`); nothing is created in the
root network namespace. Topology (cluster index `i`, 1-based)::

    wan node: bridge, 172.31.0.0/24 ("the internet")
      |
    <c>-lb node  172.31.0.(10+i) on the WAN = the gateway Service's VIP; bridge for the cluster LAN
      |          172.31.i.254 = the LAN's default gateway.  ServiceVIP: DNAT VIP:5871/udp -> active
      |          replica, SNAT active:5871 -> VIP:5871, conntrack flushed when the active one changes
    LAN 172.31.i.0/24
      |-- <c>-cp   172.31.i.253  the API server (`python -m sandbox.gateway apiserver`, in-process
      |                          KubeAPIServer so that its pause hook works on the node's address)
      |-- <c>-gwK  172.31.i.K    gateway replica K: liqo-netagent, liqo-tunnel-controller,
      |                          liqo-natmap-controller, liqo-labeler (pod gateway-K in namespace liqo)
      '-- <c>-wK   172.31.i.100+K  worker node K with pods (`EmulatedCluster.add_pod`)

What stands in for Kubernetes pieces that do not exist here (kept deliberately small):
- the Service/LoadBalancer: `ServiceVIP` on the lb node, driven by `ActiveGatewayFollower`, which
  watches the gateway pods' `net.liqo.io/gateway` label through the API server (design.md section 7);
- liqo-route: the same follower sets `ip route replace <remote CIDR> via <active replica>` on every
  worker node (`EmulatedCluster.route_remote`), and every replica node gets a /32 route to each local
  pod via its worker (the "symmetric routing" /32s, kept in the main table, which the netagent's
  table-18952 rules fall through to);
- the kubelet: gateway Pods are created with `spec.nodeName` and `status.podIP` = the node's LAN IP.

The test process reaches each API server through a local TCP forwarder (`EmulatedCluster.client`,
`EmulatedCluster.kubeconfig_path`) whose upstream sockets are born in the control-plane node's
network namespace; the replicas use `<workdir>/kubeconfig` pointing at `http://172.31.i.253:6443`.

Public API (stable; other tests build on it)::

    with Wan() as wan, EmulatedCluster("a", 1, wan, replicas=2) as a, EmulatedCluster("b", 2, wan) as b:
        a.start(); b.start()                       # nodes, API server, CRDs, namespace, pods, Service
        pod_a = a.add_pod("web", "10.0.1.5")       # on worker node 1 (created on demand)
        teps = peer(a, b, a_sees_b=Remap("10.60.0.0/16", "10.70.0.0/16"),
                    b_sees_a=Remap("10.80.0.0/16", "10.90.0.0/16"))   # TunnelEndpoints on both sides
        a.wait_connected(teps.in_a)                # -> the TEP's status.connection
        r = a.active_replica()                     # by the pod label; a.replicas[k]: GatewayReplica
        r.kill("labeler"); r.stop("netagent"); r.start_process("labeler"); r.restart("tunnel")
        r.crash(); r.boot(); r.start()             # node crash, then a rebooted node
        r.wg_peers(); r.uapi_peers(); r.role(); r.log("labeler"); r.log_events("netagent", "role changed")
        a.pause_api(30)                             # API outage, state kept, same port
        a.client                                    # services.common.kube.KubeClient (test side)

`GatewayReplica` process names are `PROCESSES` ("netagent", "tunnel", "natmap", "labeler"); logs,
the netagent socket and its state file live in `<cluster workdir>/<replica>/`. `ClusterOptions` holds
extra flags per process (for instance faster probes, or labeler timings).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import yaml

from sandbox.testkit.hosts import Node, NodeError, Pod
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.kube import LEASES, PODS, SECRETS, SERVICES, KubeClient, KubeError, ResourceRef

__all__ = [
    "GATEWAY_LABEL",
    "GATEWAY_SELECTOR",
    "NAMESPACES",
    "NAT_MAPPINGS",
    "PROCESSES",
    "TUNNEL_ENDPOINTS",
    "ActiveGatewayFollower",
    "ClusterOptions",
    "EmulatedCluster",
    "GatewayReplica",
    "Peering",
    "Remap",
    "ServiceVIP",
    "Wan",
    "nat_mapping",
    "peer",
    "tunnel_endpoint",
    "wait_until",
]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "charts/liqo-gateway/crds"
WG_PORT = 5871
API_PORT = 6443
NAMESPACE = "liqo"
SERVICE_NAME = "liqo-gateway"
LEASE_NAME = "1d5hml1.gateway.net.liqo.io"
KEY_SECRET = "wireguard-pubkey"
WG_DEVICE = "liqo.tunnel"
GATEWAY_NETNS = "liqo-netns"
GATEWAY_LABEL = "net.liqo.io/gateway"
NODE_IP_ANNOTATION = "net.liqo.io/gatewayNodeIP"
GATEWAY_SELECTOR = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/component": "networking"}
PROCESSES = ("netagent", "tunnel", "natmap", "labeler")
_CONSOLE_SCRIPTS = {
    "netagent": "liqo-netagent",
    "tunnel": "liqo-tunnel-controller",
    "natmap": "liqo-natmap-controller",
    "labeler": "liqo-labeler",
}
NAMESPACES = ResourceRef("", "v1", "namespaces", "Namespace", namespaced=False)
TUNNEL_ENDPOINTS = ResourceRef("net.liqo.io", "v1alpha1", "tunnelendpoints", "TunnelEndpoint")
NAT_MAPPINGS = ResourceRef("net.liqo.io", "v1alpha1", "natmappings", "NatMapping", namespaced=False)
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def wait_until(what: str, cond: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Polls `cond` until it returns something truthy (returned); exceptions count as "not yet".
    Raises AssertionError naming `what` (and the last exception) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            out = cond()
            if out:
                return out
        except Exception as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        time.sleep(interval)


def _kubeconfig(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulated", "cluster": {"server": url}}],
        "users": [{"name": "emulated", "user": {}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "emulated"}}],
        "current-context": "emulated",
    }


def _dies_with_us(argv: list[str]) -> list[str]:
    """SIGKILL the process when the thread that started it dies, so that a killed test run leaves no
    controller behind (start processes from a long-lived thread, e.g. the test's main thread)."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *argv]


def _cluster_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.clusters.liqo-gateway.test"))


# ---- wiring: bridges and the WAN ---------------------------------------------------------------------


def _plug(bridge_node: Node, bridge: str, other: Node, ip_cidr: str) -> str:
    """A veth from `bridge_node`'s bridge into `other`, addressed `ip_cidr` there; returns its name
    in `other`. Created inside `bridge_node` with the peer placed straight into `other`."""
    tag = uuid.uuid4().hex[:6]
    here, there = f"b{tag}", f"e{tag}"
    bridge_node.run("ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", str(other.pid))
    bridge_node.run("ip", "link", "set", here, "master", bridge, "up")
    other.run("ip", "addr", "add", ip_cidr, "dev", there)
    other.run("ip", "link", "set", there, "up")
    return there


def _make_bridge(node: Node, name: str, ip_cidr: str | None = None) -> None:
    node.run("ip", "link", "add", name, "type", "bridge")
    node.run("ip", "link", "set", name, "up")
    if ip_cidr:
        node.run("ip", "addr", "add", ip_cidr, "dev", name)


class Wan:
    """The "internet" between clusters: a node holding one bridge, 172.31.0.0/24."""

    PREFIX = "172.31.0"

    def __init__(self, name: str = "wan") -> None:
        self.node = Node(name)

    def __enter__(self) -> Wan:
        self.node.start()
        try:
            _make_bridge(self.node, "wan")
        except BaseException:
            self.node.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.node.stop()

    def attach(self, node: Node, host: int) -> tuple[str, str]:
        """Plugs `node` into the WAN as 172.31.0.`host`; returns (ip, device in node)."""
        ip = f"{self.PREFIX}.{host}"
        return ip, _plug(self.node, "wan", node, f"{ip}/24")


# ---- the Service VIP -------------------------------------------------------------------------------


class ServiceVIP:
    """The gateway Service's LoadBalancer, on the lb node: UDP `port` to the VIP is DNATed to the
    active replica, and what the active replica sends from that port leaves SNATed to the VIP (so the
    remote WireGuard sees one stable endpoint). Changing the backend swaps the nat table atomically
    (iptables-legacy-restore, the lb node is ours alone) and then deletes the conntrack entries of
    the port, which would otherwise keep steering the flow to the old replica."""

    def __init__(self, node: Node, vip: str, wan_dev: str, port: int = WG_PORT) -> None:
        self.node, self.vip, self.wan_dev, self.port = node, vip, wan_dev, port
        self.backend: str | None = None
        self.history: list[tuple[float, str | None]] = []  # (time.time(), backend) per change
        self._lock = threading.Lock()

    def rules(self, backend: str | None) -> str:
        lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                 ":POSTROUTING ACCEPT [0:0]"]
        if backend is not None:
            p = self.port
            lines += [
                f"-A PREROUTING -d {self.vip}/32 -p udp -m udp --dport {p}"
                f" -j DNAT --to-destination {backend}:{p}",
                f"-A POSTROUTING -s {backend}/32 -o {self.wan_dev} -p udp -m udp --sport {p}"
                f" -j SNAT --to-source {self.vip}:{p}",
            ]
        return "\n".join([*lines, "COMMIT", ""])

    def point_to(self, backend: str | None) -> bool:
        """Sends the VIP's traffic to `backend` (None: no endpoint, packets are refused). Returns
        whether anything changed."""
        with self._lock:
            if backend == self.backend:
                return False
            self.node.run("iptables-legacy-restore", input=self.rules(backend))
            cp = self.node.run("conntrack", "-D", "-p", "udp", "--dport", str(self.port), check=False)
            if cp.returncode != 0 and "0 flow entries" not in cp.stderr:
                raise NodeError(f"conntrack -D failed: {cp.stderr.strip()}")
            log.info("VIP %s -> %s", self.vip, backend)
            self.backend = backend
            self.history.append((time.time(), backend))
            return True


# ---- following the active replica --------------------------------------------------------------------


def _gateway_label(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(GATEWAY_LABEL)


def _active_pod_ip(pods: Iterable[dict[str, Any]], service_hint: str | None) -> str | None:
    """The podIP of the pod labelled active; with several (a hand-over in progress) the one the
    Service annotation names, else the lowest IP (deterministic)."""
    ips = sorted(
        str(p.get("status", {}).get("podIP"))
        for p in pods
        if _gateway_label(p) == "active" and p.get("status", {}).get("podIP")
    )
    if not ips:
        return None
    if service_hint in ips:
        return service_hint
    return ips[0]


class ActiveGatewayFollower:
    """Watches the gateway pods of a cluster and calls `on_change(active_ip)` whenever the pod
    labelled `net.liqo.io/gateway=active` changes (None when no pod is). Lists, then watches from the
    list's resourceVersion; any error (an API outage) re-lists after a short pause. While the API
    server is unreachable the last decision stays, as a real load balancer keeps its endpoints."""

    def __init__(self, client: KubeClient, on_change: Callable[[str | None], None],
                 namespace: str = NAMESPACE) -> None:
        self.client, self.on_change, self.namespace = client, on_change, namespace
        self.active: str | None = None
        self.errors = 0
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name="gateway-follower", daemon=True)
        self._selector = ",".join(f"{k}={v}" for k, v in GATEWAY_SELECTOR.items())

    def start(self) -> ActiveGatewayFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._response is not None:
                self._response.close()
        self._thread.join(timeout=10)

    def _hint(self) -> str | None:
        svc = self.client.get(SERVICES, SERVICE_NAME, self.namespace)
        return (svc["metadata"].get("annotations") or {}).get(NODE_IP_ANNOTATION)

    def _decide(self, pods: dict[str, dict[str, Any]]) -> None:
        actives = [p for p in pods.values() if _gateway_label(p) == "active"]
        hint = self._hint() if len(actives) > 1 else None
        ip = _active_pod_ip(pods.values(), hint)
        if ip != self.active:
            self.on_change(ip)
            self.active = ip

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                lst = self.client.list(PODS, self.namespace, label_selector=self._selector, timeout=3)
                pods = {p["metadata"]["name"]: p for p in lst["items"]}
                self._decide(pods)
                rv = lst["metadata"]["resourceVersion"]
                resp, lines = self.client.stream_lines(
                    PODS.path(self.namespace),
                    query={"watch": "true", "resourceVersion": rv, "labelSelector": self._selector,
                           "allowWatchBookmarks": "true", "timeoutSeconds": "60"},
                    connect_timeout=3, read_timeout=15,
                )
                self._response = resp
                for line in lines:
                    if self._stop.is_set():
                        return
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        break
                    if ev.get("type") == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    if ev["type"] == "DELETED":
                        pods.pop(name, None)
                    else:
                        pods[name] = obj
                    self._decide(pods)
            except Exception as e:
                if self._stop.is_set():
                    return
                self.errors += 1
                log.debug("follower: %s", e)
                self._stop.wait(0.2)


# ---- reaching an API server inside a node ------------------------------------------------------------


def _socket_in_netns(pid: int) -> socket.socket:
    """A TCP socket born in the network namespace of process `pid` (setns is per thread, and a
    socket stays in the namespace it was created in)."""
    out: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=make, name="netns-socket")
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class _Forwarder:
    """127.0.0.1:port in the test process -> (host, port) inside a node's network namespace."""

    def __init__(self, node: Node, target: tuple[str, int]) -> None:
        self.node, self.target = node, target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="api-forwarder", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            up = _socket_in_netns(self.node.pid)
            up.settimeout(3)
            up.connect(self.target)
            up.settimeout(None)
        except (OSError, NodeError):
            conn.close()
            return
        with self._lock:
            self._socks |= {conn, up}
        t = threading.Thread(target=self._pump, args=(up, conn), daemon=True)
        t.start()
        self._pump(conn, up)
        t.join()
        with self._lock:
            self._socks -= {conn, up}
        conn.close()
        up.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


# ---- a gateway replica --------------------------------------------------------------------------------


class GatewayReplica:
    """One gateway pod: a Node running the four processes, as `gateway-<index>` in the API.

    `boot()` creates the node and plugs it into the LAN; `start()` starts the processes that are not
    running; `kill(name)`/`stop(name)` send SIGKILL/SIGTERM to one process (or all with no name) and
    wait for it; `crash()` kills every process of the node with SIGKILL at once and then removes the
    node (its namespaces, wireguard-go and kernel state vanish: a node crash). `boot()` + `start()`
    bring a crashed replica back (a rebooted node: fresh kernel state, the state file kept)."""

    def __init__(self, cluster: EmulatedCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"gateway-{index}"
        self.ip = f"{cluster.lan_prefix}.{index}"
        self.workdir = cluster.workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "netagent.sock"
        self.state = self.workdir / "netagent-state.json"
        self.node: Node | None = None
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    # -- lifecycle --

    def boot(self) -> None:
        if self.node is not None:
            return
        node = Node(f"{self.cluster.name}-gw{self.index}")
        node.start()
        self.node = node
        try:
            _plug(self.cluster.lb, "lan", node, f"{self.ip}/24")
            node.run("ip", "route", "add", "default", "via", self.cluster.lan_gateway)
            for pod in self.cluster.pods:
                self.cluster.route_to_pod(node, pod)
        except BaseException:
            self.node = None
            node.stop()
            raise

    def argv(self, name: str) -> list[str]:
        opts = self.cluster.options
        script = Path(sys.executable).parent / _CONSOLE_SCRIPTS[name]
        base = [str(script)] if script.exists() else [sys.executable, "-m", f"services.{name}.main"]
        if name == "netagent":
            return [*base, "serve", "--socket", str(self.socket), "--state-path", str(self.state),
                    *opts.netagent_args]
        common = ["--kubeconfig", str(self.cluster.replica_kubeconfig), "--netagent-socket", str(self.socket)]
        extra = {"tunnel": opts.tunnel_args, "natmap": opts.natmap_args, "labeler": opts.labeler_args}[name]
        return [*base, *common, *extra]

    def start_process(self, name: str) -> subprocess.Popen[Any]:
        if self.node is None:
            raise NodeError(f"{self.name}: node is down")
        if (p := self.procs.get(name)) is not None and p.poll() is None:
            return p
        env = {**os.environ, "POD_NAME": self.name, "POD_NAMESPACE": self.cluster.namespace,
               "POD_IP": self.ip, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path(name), "ab") as logf:
            proc = self.node.popen(_dies_with_us(self.argv(name)), stdin=subprocess.DEVNULL, stdout=logf,
                                   stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.procs[name] = proc
        if name == "netagent":
            wait_until(f"{self.name}: netagent serving", lambda: self._agent_up(proc), 30)
        return proc

    def _agent_up(self, proc: subprocess.Popen[Any]) -> bool:
        if proc.poll() is not None:
            tail = self.log("netagent")[-3000:]
            raise NodeError(f"{self.name}: netagent exited {proc.returncode}:\n{tail}")
        self.role()
        return True

    def start(self) -> None:
        """Starts every process not running (the netagent first: the others need its socket)."""
        for name in PROCESSES:
            self.start_process(name)

    def _signal(self, name: str | None, sig: int, timeout: float) -> None:
        for n in ([name] if name else reversed(PROCESSES)):
            proc = self.procs.get(n)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def kill(self, name: str | None = None) -> None:
        """SIGKILL one process (or all four); kernel state and wireguard-go survive."""
        self._signal(name, signal.SIGKILL, 5)

    def stop(self, name: str | None = None, timeout: float = 15) -> None:
        """SIGTERM one process (or all four, labeler first) and wait for it to exit."""
        self._signal(name, signal.SIGTERM, timeout)

    def restart(self, name: str | None = None) -> None:
        """SIGTERM one process (or all four) and start it again (an agent restart keeps kernel state)."""
        self.stop(name)
        if name is None:
            self.start()
        else:
            self.start_process(name)

    def crash(self) -> None:
        """A node crash: every process of the node SIGKILLed at once, then the node removed."""
        if self.node is None:
            return
        for pid in self.node.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.shutdown()

    def shutdown(self) -> None:
        node, self.node = self.node, None
        if node is not None:
            node.stop()
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)

    def alive(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def exit_codes(self) -> dict[str, int | None]:
        return {n: p.poll() for n, p in self.procs.items()}

    # -- observing --

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log(self, name: str) -> str:
        p = self.log_path(name)
        return p.read_text(errors="replace") if p.exists() else ""

    def log_events(self, name: str, msg: str | None = None) -> list[dict[str, Any]]:
        """The process's JSON log lines (optionally only those with this `msg`), each with `t`, the
        line's timestamp as a POSIX time (comparable with time.time())."""
        out = []
        for line in self.log(name).splitlines():
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if msg is not None and ev.get("msg") != msg:
                continue
            with contextlib.suppress(KeyError, ValueError):
                ev["t"] = datetime.fromisoformat(ev["ts"].replace("Z", "+00:00")).timestamp()
            out.append(ev)
        return out

    def role(self, timeout: float = 2) -> pb.GetInfoResponse:
        """The netagent's GetInfo (role, epoch...), over its socket."""
        with grpc.insecure_channel(f"unix:{self.socket}") as ch:
            return pb_grpc.NetAgentServiceStub(ch).GetInfo(pb.GetInfoRequest(), timeout=timeout)

    def is_active(self) -> bool:
        try:
            return self.role().role == pb.ROLE_ACTIVE
        except grpc.RpcError:
            return False

    def wg_peers(self) -> list[str]:
        """`wg show liqo.tunnel peers` in the replica's liqo-netns ([] when the node or device is gone)."""
        if self.node is None:
            return []
        argv = ["wg", "show", WG_DEVICE, "peers"]
        cp = self.node.exec_in_netns(GATEWAY_NETNS, argv, check=False, timeout=10)
        return cp.stdout.split() if cp.returncode == 0 else []

    def uapi_peers(self) -> list[str] | None:
        """The device's peers (hex public keys) read straight from wireguard-go's UAPI socket, the
        same source `wg show` reads, without forking: cheap enough to sample every 50 ms. [] when the
        node is gone (nothing can send), None when the socket could not be read."""
        node = self.node
        if node is None:
            return []
        try:
            path = str(node.path(f"/run/wireguard/{WG_DEVICE}.sock"))
        except NodeError:
            return []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(path)
                s.sendall(b"get=1\n\n")
                buf = b""
                while not buf.endswith(b"\n\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except FileNotFoundError:
            return [] if self.node is None else None
        except OSError:
            return None
        return [line.split("=", 1)[1] for line in buf.decode().splitlines() if line.startswith("public_key=")]


# ---- a cluster ---------------------------------------------------------------------------------------


@dataclass
class ClusterOptions:
    """Extra command-line flags per process (appended after the harness's own)."""

    netagent_args: list[str] = field(default_factory=lambda: ["--probe-interval", "0.5"])
    tunnel_args: list[str] = field(default_factory=lambda: ["--status-min-interval", "0.5"])
    natmap_args: list[str] = field(default_factory=list)
    labeler_args: list[str] = field(default_factory=list)
    pod_cidr: str = "10.0.0.0/16"
    external_cidr: str = "10.201.0.0/16"
    namespace: str = NAMESPACE


class EmulatedCluster:
    """A cluster: lb node (router + Service VIP), control-plane node (API server), `replicas` gateway
    replicas and worker nodes with pods. `start()` brings it all up; `close()` (or the context
    manager) removes everything, also after a failure half-way."""

    def __init__(self, name: str, index: int, wan: Wan, *, replicas: int = 1,
                 options: ClusterOptions | None = None, workdir: Path | None = None) -> None:
        if not 1 <= index <= 200:
            raise ValueError("cluster index must be in 1..200")
        self.name, self.index, self.wan = name, index, wan
        self.options = options or ClusterOptions()
        self.namespace = self.options.namespace
        self.cluster_id = _cluster_id(name)
        self.pod_cidr, self.external_cidr = self.options.pod_cidr, self.options.external_cidr
        self.lan_prefix = f"172.31.{index}"
        self.lan_gateway = f"{self.lan_prefix}.254"
        self.api_ip = f"{self.lan_prefix}.253"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"lgw-{name}-"))
        self.replica_kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig_path = self.workdir / "kubeconfig-local"
        self.lb = Node(f"{name}-lb")
        self.cp = Node(f"{name}-cp")
        self.replicas = [GatewayReplica(self, k + 1) for k in range(replicas)]
        self.workers: list[Node] = []
        self.pods: list[Pod] = []
        self.remote_cidrs: list[str] = []
        self.vip: ServiceVIP | None = None
        self.vip_ip = ""
        self._api_proc: subprocess.Popen[Any] | None = None
        self._control = self.workdir / "kubeapi-control.sock"
        self._forwarder: _Forwarder | None = None
        self._client: KubeClient | None = None
        self.follower: ActiveGatewayFollower | None = None
        self._route_lock = threading.Lock()

    def __enter__(self) -> EmulatedCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- bringing it up --

    def start(self) -> EmulatedCluster:
        self.start_infrastructure()
        for r in self.replicas:
            r.boot()
            r.start()
        return self

    def start_infrastructure(self) -> None:
        """Everything but the gateway processes: nodes, network, API server and its objects."""
        self.lb.start()
        _make_bridge(self.lb, "lan", f"{self.lan_gateway}/24")
        self.vip_ip, wan_dev = self.wan.attach(self.lb, 10 + self.index)
        self.vip = ServiceVIP(self.lb, self.vip_ip, wan_dev)
        self.cp.start()
        _plug(self.lb, "lan", self.cp, f"{self.api_ip}/24")
        self.cp.run("ip", "route", "add", "default", "via", self.lan_gateway)
        self._start_api()
        self._register()
        self.follower = ActiveGatewayFollower(self.client, self._on_active_change, self.namespace).start()

    def _start_api(self) -> None:
        argv = [sys.executable, "-m", "sandbox.gateway", "apiserver", "--host", self.api_ip,
                "--port", str(API_PORT), "--crds", str(CRD_DIR), "--control", str(self._control)]
        with open(self.workdir / "kubeapi.log", "ab") as logf:
            self._api_proc = self.cp.popen(_dies_with_us(argv), stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=logf, cwd=ROOT)
        assert self._api_proc.stdout is not None
        ready, _, _ = select.select([self._api_proc.stdout], [], [], 60)
        line = self._api_proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            raise NodeError(f"{self.name}: API server did not start: "
                            f"{(self.workdir / 'kubeapi.log').read_text(errors='replace')[-2000:]}")
        url = f"http://{self.api_ip}:{API_PORT}"
        self.replica_kubeconfig.write_text(yaml.safe_dump(_kubeconfig(url)))
        self._forwarder = _Forwarder(self.cp, (self.api_ip, API_PORT))
        self.kubeconfig_path.write_text(yaml.safe_dump(_kubeconfig(f"http://127.0.0.1:{self._forwarder.port}")))
        self._client = KubeClient.from_kubeconfig(str(self.kubeconfig_path), timeout=5)

    def _register(self) -> None:
        """What an installation (Helm chart + kubelet) would have put in the API."""
        c, ns = self.client, self.namespace
        c.create(NAMESPACES, {"metadata": {"name": ns}})
        for r in self.replicas:
            c.create(PODS, {
                "metadata": {"name": r.name, "namespace": ns, "labels": dict(GATEWAY_SELECTOR)},
                "spec": {"nodeName": f"{self.name}-gw{r.index}", "hostNetwork": True,
                         "containers": [{"name": n, "image": "liqo-gateway"} for n in PROCESSES]},
            }, ns)
            c.patch(PODS, r.name, {"status": {"phase": "Running", "podIP": r.ip, "hostIP": r.ip,
                                              "podIPs": [{"ip": r.ip}]}}, ns, subresource="status")
        c.create(SERVICES, {
            "metadata": {"name": SERVICE_NAME, "namespace": ns, "labels": dict(GATEWAY_SELECTOR)},
            "spec": {"type": "LoadBalancer", "selector": {**GATEWAY_SELECTOR, GATEWAY_LABEL: "active"},
                     "ports": [{"name": "wireguard", "port": WG_PORT, "targetPort": WG_PORT,
                                "protocol": "UDP"}]},
        }, ns)
        c.patch(SERVICES, SERVICE_NAME, {"status": {"loadBalancer": {"ingress": [{"ip": self.vip_ip}]}}},
                ns, subresource="status")

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            raise RuntimeError(f"cluster {self.name} is not started")
        return self._client

    # -- pods and routing --

    def add_pod(self, name: str, ip: str, worker: int = 1) -> Pod:
        """A pod with `ip` (in the pod CIDR) on worker node `worker` (created on demand)."""
        while len(self.workers) < worker:
            k = len(self.workers) + 1
            node = Node(f"{self.name}-w{k}")
            node.start()
            self.workers.append(node)
            _plug(self.lb, "lan", node, f"{self.lan_prefix}.{100 + k}/24")
            node.run("ip", "route", "add", "default", "via", self.lan_gateway)
            self._route_remote_on(node, self.follower.active if self.follower else None)
        net = ipaddress.ip_network(self.pod_cidr)
        gw = str(net.broadcast_address - 1)  # what the pods use as their (CNI-style) default gateway
        pod = self.workers[worker - 1].add_pod(name, f"{ip}/{net.prefixlen}", gw)
        self.pods.append(pod)
        for r in self.replicas:
            if r.node is not None:
                self.route_to_pod(r.node, pod)
        return pod

    def route_to_pod(self, node: Node, pod: Pod) -> None:
        worker_ip = f"{self.lan_prefix}.{100 + self.workers.index(pod.node) + 1}"
        node.run("ip", "route", "replace", f"{pod.ip}/32", "via", worker_ip)

    def route_remote(self, cidrs: Iterable[str]) -> None:
        """Worker nodes send these (remote, effective) CIDRs to the active replica, now and on failover."""
        with self._route_lock:
            for c in cidrs:
                if c not in self.remote_cidrs:
                    self.remote_cidrs.append(c)
            active = self.follower.active if self.follower else None
            for node in self.workers:
                self._route_remote_on(node, active)

    def _route_remote_on(self, node: Node, active: str | None) -> None:
        if active is None:
            return  # no active gateway: keep the last routes (as liqo-route would)
        for c in self.remote_cidrs:
            node.run("ip", "route", "replace", c, "via", active)

    def _on_active_change(self, ip: str | None) -> None:
        if self.vip is not None:
            self.vip.point_to(ip)
        with self._route_lock:
            for node in self.workers:
                self._route_remote_on(node, ip)

    # -- observing --

    def replica(self, name: str) -> GatewayReplica:
        return next(r for r in self.replicas if r.name == name)

    def labels(self) -> dict[str, str | None]:
        items = self.client.list(PODS, self.namespace)["items"]
        return {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(GATEWAY_LABEL) for p in items}

    def active_replica(self) -> GatewayReplica | None:
        """The replica whose pod is labelled active (None when none or several are)."""
        active = [n for n, v in self.labels().items() if v == "active"]
        return self.replica(active[0]) if len(active) == 1 else None

    def lease(self) -> dict[str, Any]:
        return self.client.get(LEASES, LEASE_NAME, self.namespace)

    def service_annotation(self) -> str | None:
        svc = self.client.get(SERVICES, SERVICE_NAME, self.namespace)
        return (svc["metadata"].get("annotations") or {}).get(NODE_IP_ANNOTATION)

    def public_key(self, timeout: float = 30) -> str:
        """The shared WireGuard public key, once the tunnel controller created the Secret."""
        sec = wait_until(f"{self.name}: key Secret",
                         lambda: self.client.get(SECRETS, KEY_SECRET, self.namespace), timeout)
        return base64.b64decode(sec["data"]["publicKey"]).decode()

    def tunnel_status(self, name: str, namespace: str) -> dict[str, Any]:
        return self.client.get(TUNNEL_ENDPOINTS, name, namespace).get("status") or {}

    def wait_connected(self, ref: tuple[str, str], timeout: float = 30) -> dict[str, Any]:
        """Waits for status.connection.status == Connected; returns the connection."""
        def connected() -> dict[str, Any] | None:
            conn = self.tunnel_status(*ref).get("connection") or {}
            return conn if conn.get("status") == "Connected" else None
        result: dict[str, Any] = wait_until(f"{self.name}: {ref} Connected", connected, timeout)
        return result

    # -- the API server --

    def pause_api(self, seconds: float) -> None:
        """An API server outage: every connection cut, connections refused for `seconds`, then the
        same server (same state, same port) listens again. Returns at once."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self._control))
            s.sendall(f"pause {seconds}\n".encode())
            answer = s.recv(100).decode().strip()
        if answer != "ok":
            raise NodeError(f"{self.name}: pause refused: {answer}")

    def processes_alive(self) -> dict[str, bool]:
        return {f"{r.name}/{n}": r.alive(n) for r in self.replicas for n in r.procs}

    # -- teardown --

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        for r in self.replicas:
            with contextlib.suppress(Exception):
                r.stop(timeout=5)
            with contextlib.suppress(Exception):
                r.shutdown()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        if self._forwarder is not None:
            self._forwarder.close()
        for node in [*self.workers, self.cp, self.lb]:
            with contextlib.suppress(Exception):
                node.stop()
        if self._api_proc is not None and self._api_proc.stdout is not None:
            self._api_proc.stdout.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---- peering: the TunnelEndpoints a network manager would create ---------------------------------------


@dataclass(frozen=True)
class Remap:
    """How one cluster addresses the other's pod and external CIDRs ("None": no remapping)."""

    pod: str = "None"
    external: str = "None"


@dataclass(frozen=True)
class Peering:
    in_a: tuple[str, str]  # (name, namespace) of A's TunnelEndpoint towards B
    in_b: tuple[str, str]
    a_reaches_b: tuple[str, str]  # effective (pod, external) CIDRs A uses for B
    b_reaches_a: tuple[str, str]


def tunnel_endpoint(local: EmulatedCluster, remote: EmulatedCluster, *, local_sees_remote: Remap,
                    remote_sees_local: Remap, endpoint: str | None = None, public_key: str | None = None,
                    name: str | None = None) -> dict[str, Any]:
    """The TunnelEndpoint `local` holds for `remote` (Liqo's field names; endpoint: the remote VIP)."""
    return {
        "metadata": {"name": name or f"{remote.name}-tep", "namespace": f"liqo-tenant-{remote.name}",
                     "labels": {"clusterID": remote.cluster_id}},
        "spec": {
            "clusterIdentity": {"clusterID": remote.cluster_id, "clusterName": remote.name},
            "localPodCIDR": local.pod_cidr, "localNATPodCIDR": remote_sees_local.pod,
            "localExternalCIDR": local.external_cidr, "localNATExternalCIDR": remote_sees_local.external,
            "remotePodCIDR": remote.pod_cidr, "remoteNATPodCIDR": local_sees_remote.pod,
            "remoteExternalCIDR": remote.external_cidr, "remoteNATExternalCIDR": local_sees_remote.external,
            "endpointIP": endpoint or remote.vip_ip, "backendType": "wireguard",
            "backend_config": {"publicKey": public_key or remote.public_key(), "port": str(WG_PORT)},
        },
    }


def nat_mapping(local: EmulatedCluster, remote: EmulatedCluster, mappings: dict[str, str], *,
                pod_cidr: str, external_cidr: str, name: str | None = None) -> dict[str, Any]:
    """A NatMapping in `local` exporting local IPs (keys) as addresses of `external_cidr` (values),
    the CIDR `remote` uses for our external CIDR; `pod_cidr` is how we see the remote's pods."""
    return {
        "metadata": {"name": name or f"natmapping-{remote.name}",
                     "labels": {"net.liqo.io/natmapping": "true", "clusterID": remote.cluster_id}},
        "spec": {"clusterID": remote.cluster_id, "podCIDR": pod_cidr, "externalCIDR": external_cidr,
                 "clusterMappings": mappings},
    }


def _effective(remap: Remap, remote: EmulatedCluster) -> tuple[str, str]:
    return (remap.pod if remap.pod != "None" else remote.pod_cidr,
            remap.external if remap.external != "None" else remote.external_cidr)


def peer(a: EmulatedCluster, b: EmulatedCluster, *, a_sees_b: Remap, b_sees_a: Remap) -> Peering:
    """Creates the tenant namespaces and a TunnelEndpoint on each side (endpoint = the other's VIP),
    and routes each side's workers to the other's effective CIDRs through their active replica."""
    teps = []
    for local, remote, mine, theirs in ((a, b, a_sees_b, b_sees_a), (b, a, b_sees_a, a_sees_b)):
        tep = tunnel_endpoint(local, remote, local_sees_remote=mine, remote_sees_local=theirs)
        ns = tep["metadata"]["namespace"]
        with contextlib.suppress(KubeError):
            local.client.create(NAMESPACES, {"metadata": {"name": ns}})
        local.route_remote(_effective(mine, remote))
        local.client.create(TUNNEL_ENDPOINTS, tep, ns)
        teps.append((tep["metadata"]["name"], ns))
    return Peering(teps[0], teps[1], _effective(a_sees_b, b), _effective(b_sees_a, a))


# ---- the API server process of a control-plane node ---------------------------------------------------


def _serve_api(args: argparse.Namespace) -> int:
    """Runs KubeAPIServer in this process (inside the control-plane node) plus a control socket
    taking `pause SECONDS` lines, so that an outage can be staged on the node's own address."""
    from sandbox.kubeapi import KubeAPIServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    api = KubeAPIServer(args.host, args.port, crd_dirs=args.crds, bookmark_interval=args.bookmark_interval)
    api.start()

    class Control(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            words = self.rfile.readline().decode().split()
            try:
                if len(words) == 2 and words[0] == "pause":
                    api.hooks.pause(float(words[1]))
                    logging.info("paused for %s s", words[1])
                    self.wfile.write(b"ok\n")
                else:
                    self.wfile.write(b"error: expected 'pause SECONDS'\n")
            except Exception as e:
                self.wfile.write(f"error: {e}\n".encode())

    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    control = socketserver.ThreadingUnixStreamServer(args.control, Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    control.shutdown()
    control.server_close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    api.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.gateway", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("apiserver", help="in-memory API server with a pause control socket")
    s.add_argument("--host", required=True, help="address to listen on")
    s.add_argument("--port", type=int, default=API_PORT, help=f"port (default {API_PORT})")
    s.add_argument("--crds", action="append", default=[], help="CRD/manifest file or directory; repeatable")
    s.add_argument("--control", required=True, help="Unix socket taking 'pause SECONDS' lines")
    s.add_argument("--bookmark-interval", type=float, default=5.0, help="seconds between watch bookmarks")
    args = p.parse_args(argv)
    return _serve_api(args)


if __name__ == "__main__":
    sys.exit(main())
