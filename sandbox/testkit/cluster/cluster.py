"""An emulated cluster: lb node, control-plane node with the API server, gateway replicas, workers."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import yaml

from sandbox.testkit.cluster.follower import SERVICE_NAME, ActiveGatewayFollower
from sandbox.testkit.cluster.forwarder import Forwarder
from sandbox.testkit.cluster.podruntime import PodRuntime, readable_copy
from sandbox.testkit.cluster.replica import PROCESSES, GatewayReplica
from sandbox.testkit.cluster.service_vip import ServiceVIP
from sandbox.testkit.cluster.wan import Wan, make_bridge, plug
from sandbox.testkit.hosts import Node, NodeError, Pod, dies_with_us
from sandbox.testkit.netagent import ROOT
from sandbox.testkit.resources import namespace as namespace_body
from sandbox.testkit.wait import wait_for
from services.common.kube import KubeClient, KubeError
from services.common.leaderelection import Profile
from services.common.vocabulary import (
    ACTIVE,
    GATEWAY_LABEL,
    GATEWAY_SELECTOR,
    KEY_SECRET,
    LEASE_NAME,
    LEASES,
    NAMESPACES,
    NODE_IP_ANNOTATION,
    PODS,
    SECRETS,
    SERVICES,
    TUNNEL_ENDPOINTS,
    WIREGUARD_PORT,
)

__all__ = ["API_PORT", "CRD_DIR", "ApiRequest", "ClusterOptions", "EmulatedCluster"]

CRD_DIR = ROOT / "charts/liqo-gateway/crds"
API_PORT = 6443
NAMESPACE = "liqo"
BOOKMARK_INTERVAL = 5.0  # seconds between the API server's watch bookmarks


def cluster_id(name: str) -> str:
    """A stable cluster id for the cluster called `name`."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.clusters.liqo-gateway.test"))


class ApiRequest(NamedTuple):
    """One request in the API server's log (`EmulatedCluster.api_requests`)."""

    time: float  # POSIX
    verb: str  # get, list, watch, create, update, patch, delete...
    resource: str
    subresource: str
    namespace: str | None
    name: str | None
    code: int | None

    @property
    def write(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete", "deletecollection")


@dataclass
class ClusterOptions:
    """Extra command-line flags per process (appended after the harness's own)."""

    netagent_args: list[str] = field(default_factory=lambda: ["--probe-interval", "0.5"])
    tunnel_args: list[str] = field(default_factory=lambda: ["--status-min-interval", "0.5"])
    natmap_args: list[str] = field(default_factory=list)
    labeler_args: list[str] = field(default_factory=list)
    # The labeler's election timings (e.g. leaderelection.PROFILES["fast"]); None: its defaults.
    # Rendered before `labeler_args`, which therefore still win.
    election: Profile | None = None
    pod_cidr: str = "10.0.0.0/16"
    external_cidr: str = "10.201.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    namespace: str = NAMESPACE
    # Each replica as the Helm chart's pod played by podman in its node (`PodRuntime`; needs `make
    # image`); `pod_values` are chart values deep-merged over the sandbox's.
    pods: bool = False
    pod_values: dict[str, Any] = field(default_factory=dict)

    def labeler_flags(self) -> list[str]:
        return [*(self.election.flags() if self.election else []), *self.labeler_args]


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
        self.cluster_id = cluster_id(name)
        self.pod_cidr, self.external_cidr = self.options.pod_cidr, self.options.external_cidr
        self.lan_prefix = f"172.31.{index}"
        self.lan_gateway = f"{self.lan_prefix}.254"
        self.api_ip = f"{self.lan_prefix}.253"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"lgw-{name}-"))
        self.replica_kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig_path = self.workdir / "kubeconfig-local"
        self.pods_kubeconfig = self.workdir / "kubeconfig-pods"  # readable by the controllers' uids
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
        self._forwarder: Forwarder | None = None
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
        make_bridge(self.lb, "lan", f"{self.lan_gateway}/24")
        self.vip_ip, wan_dev = self.wan.attach(self.lb, 10 + self.index)
        self.vip = ServiceVIP(self.lb, self.vip_ip, wan_dev)
        self.cp.start()
        plug(self.lb, "lan", self.cp, f"{self.api_ip}/24")
        self.cp.run("ip", "route", "add", "default", "via", self.lan_gateway)
        self._start_api()
        self._register()
        self.follower = ActiveGatewayFollower(self.client, self._on_active_change, self.namespace).start()

    def _start_api(self) -> None:
        """liqo-kubeapi on the control-plane node's LAN address, with a control socket for outages
        and the replicas' kubeconfig; the test side reaches it through a forwarder."""
        script = Path(sys.executable).parent / "liqo-kubeapi"
        base = [str(script)] if script.exists() else [sys.executable, "-m", "sandbox.kubeapi.main"]
        argv = [*base, "--host", self.api_ip, "--port", str(API_PORT), "--crds", str(CRD_DIR),
                "--control", str(self._control), "--bookmark-interval", str(BOOKMARK_INTERVAL),
                "--kubeconfig", str(self.replica_kubeconfig)]
        with open(self.workdir / "kubeapi.log", "ab") as logf:
            self._api_proc = self.cp.popen(dies_with_us(argv), stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=logf, cwd=ROOT)
        out = self._api_proc.stdout
        assert out is not None
        line = b"-"
        watchdog = threading.Timer(60, self._api_proc.kill)  # a server that hangs: EOF below
        watchdog.start()
        try:
            while line not in (b"", b"ready"):  # the URL, then "ready"; EOF when it died
                line = out.readline().strip()
        finally:
            watchdog.cancel()
        if line != b"ready":
            raise NodeError(f"{self.name}: API server did not start: "
                            f"{(self.workdir / 'kubeapi.log').read_text(errors='replace')[-2000:]}")
        self._forwarder = Forwarder(self.cp, (self.api_ip, API_PORT))
        local = yaml.safe_load(self.replica_kubeconfig.read_text())
        for c in local["clusters"]:
            c["cluster"]["server"] = f"http://127.0.0.1:{self._forwarder.port}"
        self.kubeconfig_path.write_text(yaml.safe_dump(local))
        if self.options.pods:
            readable_copy(self.replica_kubeconfig, self.pods_kubeconfig)
        self.kubeconfig_path.chmod(0o600)
        self._client = KubeClient.from_kubeconfig(str(self.kubeconfig_path), timeout=5)

    def _register(self) -> None:
        """What an installation (Helm chart + kubelet) would have put in the API."""
        c, ns = self.client, self.namespace
        c.create(NAMESPACES, namespace_body(ns))
        for r in self.replicas:
            if isinstance(r.runtime, PodRuntime):  # the chart's pod: its labels and containers
                labels = dict(r.runtime.manifest["metadata"]["labels"])
                containers = [{"name": n, "image": r.runtime.engine.image} for n in r.runtime.names]
            else:
                labels = dict(GATEWAY_SELECTOR)
                containers = [{"name": n, "image": "liqo-gateway"} for n in PROCESSES]
            c.create(PODS, {
                "metadata": {"name": r.name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": f"{self.name}-gw{r.index}", "hostNetwork": True,
                         "containers": containers},
            }, ns)
            c.patch(PODS, r.name, {"status": {"phase": "Running", "podIP": r.ip, "hostIP": r.ip,
                                              "podIPs": [{"ip": r.ip}]}}, ns, subresource="status")
        c.create(SERVICES, {
            "metadata": {"name": SERVICE_NAME, "namespace": ns, "labels": dict(GATEWAY_SELECTOR)},
            "spec": {"type": "LoadBalancer", "selector": {**GATEWAY_SELECTOR, GATEWAY_LABEL: ACTIVE},
                     "ports": [{"name": "wireguard", "port": WIREGUARD_PORT, "targetPort": WIREGUARD_PORT,
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
            plug(self.lb, "lan", node, f"{self.lan_prefix}.{100 + k}/24")
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
        active = [n for n, v in self.labels().items() if v == ACTIVE]
        return self.replica(active[0]) if len(active) == 1 else None

    def leader(self) -> GatewayReplica:
        """The one replica whose netagent is ACTIVE (by the agent's role, not the label; asserts
        there is exactly one)."""
        active = [r for r in self.replicas if r.node is not None and r.is_active()]
        assert len(active) == 1, f"{self.name}: active replicas {[r.name for r in active]}"
        return active[0]

    def lease(self) -> dict[str, Any]:
        return self.client.get(LEASES, LEASE_NAME, self.namespace)

    def service_annotation(self) -> str | None:
        svc = self.client.get(SERVICES, SERVICE_NAME, self.namespace)
        return (svc["metadata"].get("annotations") or {}).get(NODE_IP_ANNOTATION)

    def public_key(self, timeout: float = 30) -> str:
        """The shared WireGuard public key, once the tunnel controller created the Secret."""
        sec = wait_for(f"{self.name}: key Secret",
                       lambda: self.client.get(SECRETS, KEY_SECRET, self.namespace), timeout, 0.1,
                       retry_on=(KubeError,))
        return base64.b64decode(sec["data"]["publicKey"]).decode()

    def tunnel_status(self, name: str, namespace: str) -> dict[str, Any]:
        return self.client.get(TUNNEL_ENDPOINTS, name, namespace).get("status") or {}

    def wait_connected(self, ref: tuple[str, str], timeout: float = 30) -> dict[str, Any]:
        """Waits for status.connection.status == Connected; returns the connection."""
        def connected() -> dict[str, Any] | None:
            conn = self.tunnel_status(*ref).get("connection") or {}
            return conn if conn.get("status") == "Connected" else None
        conn = wait_for(f"{self.name}: {ref} Connected", connected, timeout, 0.1, retry_on=(KubeError,))
        assert conn is not None  # wait_for returns only a truthy value
        return conn

    # -- the API server --

    def pause_api(self, seconds: float) -> None:
        """An API server outage: every connection cut, connections refused for `seconds`, then the
        same server (same state, same port) listens again. Returns at once."""
        answer = self._control_call(f"pause {seconds}").strip()
        if answer != "ok":
            raise NodeError(f"{self.name}: pause refused: {answer}")

    def api_requests(self, since: float) -> list[ApiRequest]:
        """The API server's request log from POSIX time `since` on (every client's, the test's too)."""
        answer = self._control_call(f"requests {since!r}")
        if answer.startswith("error"):
            raise NodeError(f"{self.name}: request log refused: {answer.strip()}")
        return [ApiRequest(*row) for row in json.loads(answer)]

    def _control_call(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self._control))
            s.sendall(f"{line}\n".encode())
            chunks = []
            while chunk := s.recv(65536):  # the server closes the connection after its answer
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def processes_alive(self) -> dict[str, bool]:
        return {f"{r.name}/{n}": r.alive(n) for r in self.replicas for n in r.processes()}

    # -- teardown --

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.vip is not None:
            self.vip.close()
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
