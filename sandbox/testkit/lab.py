"""The in-process lab: emulated clusters with REAL netagents and in-process controllers.

A `Cluster` is one gateway of one Kubernetes cluster: an emulated node (sandbox.testkit.hosts)
running a real `liqo-netagent` (wireguard-go, iptables-legacy, policy routing inside the node), its
own in-memory API server (sandbox.kubeapi, on 127.0.0.1), and the tunnel and NatMapping controllers
running in this process against that API server and the netagent's Unix sockets: exactly the
production split (each controller on its own role socket), minus the labeler (the role is granted with
SetRole directly on the labeler's socket; the election is tested on its own). `Cluster.netagent` is
the operator's client (every method), for tests.

`Lab` owns everything (nodes, API servers, agents, controllers) and tears it down in reverse order
even when a test fails half-way, so nothing is left on the machine.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit.hosts import Node, Pod
from sandbox.testkit.netagent import LIQO_NETNS, ROLES, ROOT, NetAgent, kernel_snapshot
from sandbox.testkit.nodes import NodeFactory
from sandbox.testkit.resources import namespace, tunnel_endpoint
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import KeyPair, generate, secret_body
from services.common.kube import Backoff, KubeClient, KubeError, Manager
from services.common.netagent_client import NetAgentClient
from services.common.vocabulary import (
    EVENTS,
    KEY_SECRET,
    NAMESPACES,
    NAT_MAPPINGS,
    SECRETS,
    TUNNEL_ENDPOINTS,
    WIREGUARD_PORT,
)
from services.natmap.controller import NatMappingController
from services.tunnel.controller import TunnelController, TunnelOptions

__all__ = ["CRDS", "GATEWAY_NS", "ID_A", "ID_B", "NS_A", "NS_B", "ROLE_TTL", "WG_PORT", "Cluster", "Lab",
           "lab", "liqo_chains", "tep_for_a", "tep_for_b", "why_unavailable"]

CRDS = ROOT / "charts/liqo-gateway/crds"
GATEWAY_NS = "liqo"
WG_PORT = WIREGUARD_PORT
ROLE_TTL = 3600.0  # longer than any test: expiry fencing is the netagent's own test
POLL = 0.2  # the lab's polling interval


def why_unavailable() -> str | None:
    """None when real netagents can run here, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("wireguard-go", "wg", "iptables-legacy-save", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is not installed (make install)"
    return None


# Two clusters with the SAME pod CIDR (10.0.0.0/16), remapped: A sees B's pods as 10.60.0.0/16 and
# B's external CIDR as 10.70.0.0/16; B sees A's pods as 10.80.0.0/16 and A's external CIDR as
# 10.90.0.0/16.
ID_A, ID_B = "aaaaaaaa-1111-4111-8111-0000000000a1", "bbbbbbbb-2222-4222-8222-0000000000b2"
NS_A, NS_B = "liqo-tenant-cluster-a", "liqo-tenant-cluster-b"


def tep_for_b(endpoint: str, b_key: str) -> dict[str, Any]:
    """A's TunnelEndpoint describing cluster B (cluster-b in NS_B)."""
    return tunnel_endpoint(name="cluster-b", namespace=NS_B, cluster_id=ID_B, local_pod="10.0.0.0/16",
                           local_nat_pod="10.80.0.0/16", local_ext="10.201.0.0/16",
                           local_nat_ext="10.90.0.0/16", remote_pod="10.0.0.0/16",
                           remote_nat_pod="10.60.0.0/16", remote_ext="10.201.0.0/16",
                           remote_nat_ext="10.70.0.0/16", endpoint=endpoint, public_key=b_key)


def tep_for_a(endpoint: str, a_key: str) -> dict[str, Any]:
    """B's TunnelEndpoint describing cluster A (cluster-a in NS_A)."""
    return tunnel_endpoint(name="cluster-a", namespace=NS_A, cluster_id=ID_A, local_pod="10.0.0.0/16",
                           local_nat_pod="10.60.0.0/16", local_ext="10.201.0.0/16",
                           local_nat_ext="10.70.0.0/16", remote_pod="10.0.0.0/16",
                           remote_nat_pod="10.80.0.0/16", remote_ext="10.201.0.0/16",
                           remote_nat_ext="10.90.0.0/16", endpoint=endpoint, public_key=a_key)


@dataclass
class Cluster:
    """One cluster's gateway: node + netagent + API server + in-process controllers."""

    name: str
    node: Node
    api: KubeAPIServer
    kube: KubeClient
    netagent_process: NetAgent
    netagent: NetAgentClient
    underlay_ip: str
    # One client per controller role, on that role's socket ("labeler", "tunnel", "natmap").
    role_clients: dict[str, NetAgentClient] = field(default_factory=dict)
    workers: int = 4
    status_min_interval: float = 0.5
    tunnel_mgr: Manager | None = None
    tunnel: TunnelController | None = None
    natmap_mgr: Manager | None = None
    natmap: NatMappingController | None = None
    pods: dict[str, Pod] = field(default_factory=dict)

    # --- controllers ---------------------------------------------------------------------------

    def start_tunnel_controller(self, timeout: float = 30.0) -> TunnelController:
        """Starts the tunnel controller and waits until the netagent's device holds the Secret's key."""
        assert self.tunnel_mgr is None, "already running"
        mgr = Manager(f"tunnel-{self.name}", self.kube, watch_timeout=10, pod_name=f"gw-{self.name}")
        ctl = TunnelController(
            mgr, self.role_clients["tunnel"],
            TunnelOptions(pod_namespace=GATEWAY_NS, pod_ip=self.underlay_ip,
                          status_min_interval=self.status_min_interval, latency_interval=5.0,
                          device_check_interval=1.0),
            workers=self.workers, backoff=Backoff(base=0.1, cap=1.0),
        )
        self.tunnel_mgr, self.tunnel = mgr, ctl
        mgr.start()
        assert ctl.device_ready.wait(timeout), f"{self.name}: the controller never configured the device"
        return ctl

    def stop_tunnel_controller(self) -> None:
        if self.tunnel_mgr is not None:
            self.tunnel_mgr.shutdown()
        self.tunnel_mgr = self.tunnel = None

    def start_natmap_controller(self) -> NatMappingController:
        assert self.natmap_mgr is None, "already running"
        mgr = Manager(f"natmap-{self.name}", self.kube, watch_timeout=10, pod_name=f"gw-{self.name}")
        ctl = NatMappingController(mgr, self.role_clients["natmap"], backoff=Backoff(base=0.2, cap=1.0))
        self.natmap_mgr, self.natmap = mgr, ctl
        mgr.start()
        return ctl

    def stop_natmap_controller(self) -> None:
        if self.natmap_mgr is not None:
            self.natmap_mgr.shutdown()
        self.natmap_mgr = self.natmap = None

    def activate(self, epoch: int = 1) -> None:
        """Makes this gateway the active one (what the labeler does on winning the lease)."""
        self.role_clients["labeler"].set_role(pb.ROLE_ACTIVE, epoch=epoch, ttl=ROLE_TTL, reason="test")

    @property
    def public_key(self) -> str:
        assert self.tunnel is not None and self.tunnel.keys is not None
        return self.tunnel.keys.public_key

    def rotate_key(self) -> KeyPair:
        """Replaces the key pair in the WireGuard Secret (what an operator rotating keys does)."""
        pair = generate()
        current = self.kube.get(SECRETS, KEY_SECRET, GATEWAY_NS)
        current["data"] = secret_body(KEY_SECRET, pair)["data"]
        self.kube.replace(SECRETS, current, GATEWAY_NS)
        return pair

    # --- API helpers ---------------------------------------------------------------------------

    def ensure_namespace(self, ns: str) -> None:
        with contextlib.suppress(KubeError):
            self.kube.create(NAMESPACES, namespace(ns))

    def create_tep(self, body: dict[str, Any]) -> dict[str, Any]:
        ns = body["metadata"]["namespace"]
        self.ensure_namespace(ns)
        return self.kube.create(TUNNEL_ENDPOINTS, copy.deepcopy(body), ns)

    def tep(self, name: str, ns: str) -> dict[str, Any] | None:
        try:
            return self.kube.get(TUNNEL_ENDPOINTS, name, ns)
        except KubeError as e:
            if e.not_found:
                return None
            raise

    def patch_tep_spec(self, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.kube.patch(TUNNEL_ENDPOINTS, name, {"spec": spec}, ns)

    def connection(self, name: str, ns: str) -> dict[str, Any]:
        obj = self.tep(name, ns) or {}
        return dict((obj.get("status") or {}).get("connection") or {})

    def wait_status(self, name: str, ns: str, status: str, timeout: float = 30.0,
                    where: Callable[[dict[str, Any]], bool] = lambda c: True) -> dict[str, Any]:
        def reached() -> dict[str, Any]:
            c = self.connection(name, ns)
            return c if c.get("status") == status and where(c) else {}

        return wait_for(f"{self.name}: TunnelEndpoint {ns}/{name} {status}", reached, timeout, POLL)

    def natmapping(self, name: str) -> dict[str, Any] | None:
        try:
            return self.kube.get(NAT_MAPPINGS, name)
        except KubeError as e:
            if e.not_found:
                return None
            raise

    def events_for(self, name: str, ns: str = "default", type_: str | None = None) -> list[dict[str, Any]]:
        items = self.kube.list(EVENTS, ns).get("items") or []
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name
                and (type_ is None or e.get("type") == type_)]

    # --- kernel helpers ------------------------------------------------------------------------

    def netns(self, *argv: str) -> str:
        return self.node.exec_in_netns(LIQO_NETNS, argv).stdout

    def wg_peers(self) -> dict[str, dict[str, str]]:
        """`wg show liqo.tunnel dump` peers: key -> endpoint and allowed IPs."""
        peers = {}
        for line in self.netns("wg", "show", "liqo.tunnel", "dump").splitlines()[1:]:
            f = line.split("\t")
            peers[f[0]] = {"endpoint": f[2], "allowed_ips": f[3]}
        return peers

    def snapshot(self) -> dict[str, str]:
        return kernel_snapshot(self.node)

    def add_pod(self, name: str, ip_cidr: str, gateway_ip: str = "10.0.255.254") -> Pod:
        pod = self.node.add_pod(name, ip_cidr, gateway_ip)
        self.pods[name] = pod
        return pod


class Lab:
    """Owns nodes, API servers, agents and controllers; `close()` stops all of them, always."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.clusters: dict[str, Cluster] = {}
        self._stack = contextlib.ExitStack()
        self._nodes = NodeFactory()
        self._stack.callback(self._nodes.close)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def node(self, name: str) -> Node:
        node = self._nodes.make(name)
        # The dataplane is IPv4 only; IPv6 link-local routes appearing late (DAD) would only make
        # before/after kernel snapshots noisy.
        for conf in ("all", "default"):
            node.sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", "1")
        return node

    def cluster(self, name: str, node: Node, underlay_ip: str, *, natmap: bool = False,
                workers: int = 4, status_min_interval: float = 0.5, agent_args: tuple[str, ...] = (),
                activate: bool = True) -> Cluster:
        """A started gateway on `node`: netagent serving, controllers running, role ACTIVE."""
        api = KubeAPIServer(crd_dirs=[str(CRDS)], bookmark_interval=2.0)
        api.start()
        self._stack.callback(api.stop)
        kube = KubeClient(api.api_client(), timeout=5)
        self._stack.callback(kube.close)
        proc = NetAgent(node, self.workdir / node.name, args=agent_args)
        self._stack.callback(proc.close)
        proc.start()
        netagent = proc.client(timeout=30)
        self._stack.callback(netagent.close)
        role_clients = {role: proc.client(role, timeout=30) for role in ROLES}
        for client in role_clients.values():
            self._stack.callback(client.close)
        c = Cluster(name, node, api, kube, proc, netagent, underlay_ip, role_clients, workers=workers,
                    status_min_interval=status_min_interval)
        # Controllers stop before their netagent and API server (the stack unwinds in reverse).
        self._stack.callback(c.stop_natmap_controller)
        self._stack.callback(c.stop_tunnel_controller)
        c.ensure_namespace(GATEWAY_NS)
        c.start_tunnel_controller()
        if natmap:
            c.start_natmap_controller()
        if activate:
            c.activate()
        self.clusters[name] = c
        return c


@contextlib.contextmanager
def lab(workdir: Path) -> Iterator[Lab]:
    with Lab(workdir) as lb:
        yield lb


def liqo_chains(save: str) -> set[str]:
    """Per-cluster LIQO chains declared in an iptables-legacy-save dump."""
    return {line[1:].split()[0] for line in save.splitlines()
            if line.startswith(":LIQO-") and "-CLS-" in line}
