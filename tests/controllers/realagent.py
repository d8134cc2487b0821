"""Emulated clusters for controller end-to-end tests: REAL netagents, in-process controllers.

A `Cluster` is one gateway of one Kubernetes cluster: an emulated node (sandbox.testkit.hosts) running a real
`liqo-netagent` (wireguard-go, iptables-legacy, policy routing inside the node), its own in-memory
API server (sandbox.kubeapi, on 127.0.0.1), and the tunnel and NatMapping controllers running in this
process against that API server and the agent's Unix socket: exactly the production split, minus the
labeler (the role is granted with SetRole directly; the election is tested on its own).

`Lab` owns everything (nodes, API servers, agents, controllers) and tears it down in reverse order
even when a test fails half-way, so nothing is left on the machine.
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sandbox.kubeapi import KubeAPIServer
from sandbox.testkit.hosts import Node, Pod, link_nodes
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import KeyPair, generate, secret_body
from services.common.kube import EVENTS, SECRETS, Backoff, KubeClient, KubeError, Manager
from services.common.netagent_client import NetAgentClient
from services.common.vocabulary import NAT_MAPPINGS, TUNNEL_ENDPOINTS
from services.natmap.controller import NatMappingController
from services.tunnel.controller import TunnelController, TunnelOptions
from tests.integration.netagent_harness import AgentProcess, kernel_snapshot

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "charts/liqo-gateway/crds"
GATEWAY_NS = "liqo"
WG_PORT = 5871
ROLE_TTL = 3600.0  # longer than any test: expiry fencing is the netagent's own test
T = TypeVar("T")


def why_unavailable() -> str | None:
    """None when real netagents can run here, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("wireguard-go", "wg", "iptables-legacy-save", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is not installed (make install)"
    return None


def wait_until(what: str, check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Polls `check` until it returns something truthy (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = check()
    return last


def ping_ok(pod: Pod, target: str, count: int = 1, wait: float = 1.0) -> bool:
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(wait), target]
    return pod.run(*argv, check=False, timeout=count * (wait + 0.5) + 5).returncode == 0


def tep_body(
    name: str,
    namespace: str,
    cluster_id: str,
    *,
    local_pod: str,
    local_ext: str,
    remote_pod: str,
    remote_ext: str,
    endpoint: str,
    public_key: str,
    local_nat_pod: str = "None",
    local_nat_ext: str = "None",
    remote_nat_pod: str = "None",
    remote_nat_ext: str = "None",
    port: int = WG_PORT,
) -> dict[str, Any]:
    """A TunnelEndpoint as Liqo's network manager writes it."""
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": {"clusterID": cluster_id}},
        "spec": {
            "clusterIdentity": {"clusterID": cluster_id, "clusterName": name},
            "localPodCIDR": local_pod,
            "localNATPodCIDR": local_nat_pod,
            "localExternalCIDR": local_ext,
            "localNATExternalCIDR": local_nat_ext,
            "remotePodCIDR": remote_pod,
            "remoteNATPodCIDR": remote_nat_pod,
            "remoteExternalCIDR": remote_ext,
            "remoteNATExternalCIDR": remote_nat_ext,
            "endpointIP": endpoint,
            "backendType": "wireguard",
            "backend_config": {"publicKey": public_key, "port": str(port)},
        },
    }


# Two clusters with the SAME pod CIDR (10.0.0.0/16), remapped as in test_netagent_two_nodes.py: A sees
# B's pods as 10.60.0.0/16 and B's external CIDR as 10.70.0.0/16; B sees A's pods as 10.80.0.0/16 and
# A's external CIDR as 10.90.0.0/16.
ID_A, ID_B = "aaaaaaaa-1111-4111-8111-0000000000a1", "bbbbbbbb-2222-4222-8222-0000000000b2"
NS_A, NS_B = "liqo-tenant-cluster-a", "liqo-tenant-cluster-b"


def tep_for_b(endpoint: str, b_key: str) -> dict[str, Any]:
    """A's TunnelEndpoint describing cluster B (cluster-b in NS_B)."""
    return tep_body("cluster-b", NS_B, ID_B, local_pod="10.0.0.0/16", local_nat_pod="10.80.0.0/16",
                    local_ext="10.201.0.0/16", local_nat_ext="10.90.0.0/16",
                    remote_pod="10.0.0.0/16", remote_nat_pod="10.60.0.0/16",
                    remote_ext="10.201.0.0/16", remote_nat_ext="10.70.0.0/16",
                    endpoint=endpoint, public_key=b_key)


def tep_for_a(endpoint: str, a_key: str) -> dict[str, Any]:
    """B's TunnelEndpoint describing cluster A (cluster-a in NS_A)."""
    return tep_body("cluster-a", NS_A, ID_A, local_pod="10.0.0.0/16", local_nat_pod="10.60.0.0/16",
                    local_ext="10.201.0.0/16", local_nat_ext="10.70.0.0/16",
                    remote_pod="10.0.0.0/16", remote_nat_pod="10.80.0.0/16",
                    remote_ext="10.201.0.0/16", remote_nat_ext="10.90.0.0/16",
                    endpoint=endpoint, public_key=a_key)


def natmapping_body(name: str, cluster_id: str, pod_cidr: str, external_cidr: str,
                    mappings: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"net.liqo.io/natmapping": "true", "clusterID": cluster_id}},
        "spec": {"clusterID": cluster_id, "podCIDR": pod_cidr, "externalCIDR": external_cidr,
                 "clusterMappings": dict(mappings)},
    }


@dataclass
class Cluster:
    """One cluster's gateway: node + netagent + API server + in-process controllers."""

    name: str
    node: Node
    api: KubeAPIServer
    kube: KubeClient
    agent_proc: AgentProcess
    agent: NetAgentClient
    underlay_ip: str
    workers: int = 4
    status_min_interval: float = 0.5
    tunnel_mgr: Manager | None = None
    tunnel: TunnelController | None = None
    natmap_mgr: Manager | None = None
    natmap: NatMappingController | None = None
    pods: dict[str, Pod] = field(default_factory=dict)

    # --- controllers ---------------------------------------------------------------------------

    def start_tunnel_controller(self, timeout: float = 30.0) -> TunnelController:
        """Starts the tunnel controller and waits until the agent's device holds the Secret's key."""
        assert self.tunnel_mgr is None, "already running"
        mgr = Manager(f"tunnel-{self.name}", self.kube, watch_timeout=10, pod_name=f"gw-{self.name}")
        ctl = TunnelController(
            mgr, self.agent,
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
        ctl = NatMappingController(mgr, self.agent, backoff=Backoff(base=0.2, cap=1.0))
        self.natmap_mgr, self.natmap = mgr, ctl
        mgr.start()
        return ctl

    def stop_natmap_controller(self) -> None:
        if self.natmap_mgr is not None:
            self.natmap_mgr.shutdown()
        self.natmap_mgr = self.natmap = None

    def activate(self, epoch: int = 1) -> None:
        """Makes this gateway the active one (what the labeler does on winning the lease)."""
        self.agent.set_role(pb.ROLE_ACTIVE, epoch=epoch, ttl=ROLE_TTL, reason="test")

    @property
    def public_key(self) -> str:
        assert self.tunnel is not None and self.tunnel.keys is not None
        return self.tunnel.keys.public_key

    def rotate_key(self) -> KeyPair:
        """Replaces the key pair in the WireGuard Secret (what an operator rotating keys does)."""
        pair = generate()
        current = self.kube.get(SECRETS, "wireguard-pubkey", GATEWAY_NS)
        body = secret_body("wireguard-pubkey", pair)
        current["data"] = body["data"]
        self.kube.replace(SECRETS, current, GATEWAY_NS)
        return pair

    # --- API helpers ---------------------------------------------------------------------------

    def ensure_namespace(self, ns: str) -> None:
        with contextlib.suppress(KubeError):
            self.kube.request("POST", "/api/v1/namespaces",
                              body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

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

        return wait_until(f"{self.name}: TunnelEndpoint {ns}/{name} {status}", reached, timeout)

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
        return self.node.exec_in_netns("liqo-netns", argv).stdout

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
        self.tag = secrets.token_hex(2)
        self.clusters: dict[str, Cluster] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def node(self, name: str) -> Node:
        node = Node(f"lgt-{name}-{self.tag}")
        self._stack.callback(node.stop)
        node.start()
        # The dataplane is IPv4 only; IPv6 link-local routes appearing late (DAD) would only make
        # before/after kernel snapshots noisy.
        for conf in ("all", "default"):
            node.sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", "1")
        return node

    def cluster(self, name: str, node: Node, underlay_ip: str, *, natmap: bool = False,
                workers: int = 4, status_min_interval: float = 0.5, agent_args: tuple[str, ...] = (),
                activate: bool = True) -> Cluster:
        """A started gateway on `node`: agent serving, controllers running, role ACTIVE."""
        api = KubeAPIServer(crd_dirs=[str(CRDS)], bookmark_interval=2.0)
        api.start()
        self._stack.callback(api.stop)
        kube = KubeClient(api.api_client(), timeout=5)
        self._stack.callback(kube.close)
        proc = AgentProcess(node, self.workdir / f"{name}-{self.tag}", *agent_args)
        self._stack.callback(proc.close)
        proc.start()
        agent = NetAgentClient(str(proc.socket), timeout=30)
        self._stack.callback(agent.close)
        c = Cluster(name, node, api, kube, proc, agent, underlay_ip, workers=workers,
                    status_min_interval=status_min_interval)
        # Controllers stop before their agent and API server (the stack unwinds in reverse).
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


def snapshot_diff(before: dict[str, str], after: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """Per part of two kernel snapshots, the lines that went and came."""
    out = {}
    for part in before.keys() | after.keys():
        b, a = before.get(part, "").splitlines(), after.get(part, "").splitlines()
        if b != a:
            out[part] = {"gone": [x for x in b if x not in a], "new": [x for x in a if x not in b]}
    return out


# ---- fan-out: one hub cluster, many TunnelEndpoints, a few live remote clusters ------------------------

HUB_ID = "hub"
HUB_TENANT_NS = "liqo-tenant-fanout"
SPOKE_TENANT_NS = "liqo-tenant-hub"


def hub_tep(i: int, endpoint: str, key: str) -> dict[str, Any]:
    """The hub's TunnelEndpoint for remote cluster `i`: pods 10.64.i.0/24, external 10.65.i.0/24."""
    name = f"remote-{i:03d}"
    return tep_body(name, HUB_TENANT_NS, name, local_pod="10.0.0.0/16", local_ext="10.201.0.0/16",
                    remote_pod=f"10.64.{i}.0/24", remote_ext=f"10.65.{i}.0/24",
                    endpoint=endpoint, public_key=key)


def spoke_tep(i: int, hub_endpoint: str, hub_key: str) -> dict[str, Any]:
    """Remote cluster `i`'s TunnelEndpoint for the hub (the mirror image of hub_tep(i))."""
    return tep_body("hub", SPOKE_TENANT_NS, HUB_ID, local_pod=f"10.64.{i}.0/24",
                    local_ext=f"10.65.{i}.0/24", remote_pod="10.0.0.0/16", remote_ext="10.201.0.0/16",
                    endpoint=hub_endpoint, public_key=hub_key)


@dataclass
class FanoutRun:
    """Monotonic timestamps of one burst, per hub TunnelEndpoint name."""

    created: dict[str, float]
    programmed: dict[str, float]  # its peer and both routes first seen in the hub's kernel
    connected: dict[str, float]  # status Connected first seen (live remotes only)
    live: list[str]

    def latencies(self, which: str) -> list[float]:
        done = self.programmed if which == "programmed" else self.connected
        return sorted(done[k] - self.created[k] for k in done)

    @property
    def start(self) -> float:
        return min(self.created.values())

    def all_programmed_after(self) -> float:
        return max(self.programmed.values()) - self.start

    def live_connected_after(self) -> float:
        return max(self.connected[k] for k in self.live) - self.start


class Fanout:
    """A hub cluster and `live` remote clusters (each with agent, tunnel controller and a
    TunnelEndpoint for the hub) on their own underlay links; `burst(n)` creates n hub
    TunnelEndpoints at once, the first `live` of which point at the live remotes, the others at
    addresses nobody answers, and times them into the kernel and to Connected."""

    def __init__(self, lab: Lab, live: int = 2, workers: int = 8) -> None:
        self.lab = lab
        hub_node = lab.node("hub")
        self.spokes: list[Cluster] = []
        spoke_nodes = []
        for i in range(live):
            node = lab.node(f"spk{i}")
            link_nodes(hub_node, f"100.64.{i}.1", node, f"100.64.{i}.2")
            spoke_nodes.append(node)
        self.hub = lab.cluster("hub", hub_node, "100.64.0.1", workers=workers)
        for i, node in enumerate(spoke_nodes):
            spoke = lab.cluster(f"spoke{i}", node, f"100.64.{i}.2")
            spoke.create_tep(spoke_tep(i, f"100.64.{i}.1", self.hub.public_key))
            self.spokes.append(spoke)
        for spoke in self.spokes:
            wait_until(f"{spoke.name}: tunnel to the hub programmed",
                       lambda s=spoke: len(s.agent.list_tunnels()) == 1)  # type: ignore[misc]
        self.hub.ensure_namespace(HUB_TENANT_NS)

    def bodies(self, n: int) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            if i < len(self.spokes):
                out.append(hub_tep(i, self.spokes[i].underlay_ip, self.spokes[i].public_key))
            else:  # nobody there: documentation range, no route from the hub
                out.append(hub_tep(i, f"203.0.113.{1 + i % 250}", generate().public_key))
        return out

    def _kernel(self) -> tuple[set[str], set[str]]:
        out = self.hub.node.exec_in_netns("liqo-netns", [
            "sh", "-c", "wg show liqo.tunnel peers; echo --; ip -4 route show table main dev liqo.tunnel",
        ]).stdout
        peers, _, routes = out.partition("--\n")
        return set(peers.split()), {line.split()[0] for line in routes.splitlines() if line.strip()}

    def burst(self, n: int, timeout: float = 90.0, live_at: str = "spread") -> FanoutRun:
        """`live_at` places the live TunnelEndpoints in the creation order: "first", "last" or
        "spread" (evenly), since the controller's queue serves them in that order."""
        bodies = self.bodies(n)
        live_bodies, dead_bodies = bodies[: len(self.spokes)], bodies[len(self.spokes):]
        if live_at == "first":
            bodies = live_bodies + dead_bodies
        elif live_at == "last":
            bodies = dead_bodies + live_bodies
        elif live_at == "spread":
            slots = {int((k + 0.5) * n / len(live_bodies)): b for k, b in enumerate(live_bodies)}
            rest = iter(dead_bodies)
            bodies = [slots[i] if i in slots else next(rest) for i in range(n)]
        else:
            raise ValueError(f"live_at: {live_at!r} is not first, last or spread")
        names = [b["metadata"]["name"] for b in bodies]
        want = {b["metadata"]["name"]: (b["spec"]["backend_config"]["publicKey"], b["spec"]["remotePodCIDR"],
                                        b["spec"]["remoteExternalCIDR"]) for b in bodies}
        live = [b["metadata"]["name"] for b in live_bodies]
        created: dict[str, float] = {}

        def create(body: dict[str, Any]) -> None:
            t = time.monotonic()
            self.hub.kube.create(TUNNEL_ENDPOINTS, body, HUB_TENANT_NS)
            created[body["metadata"]["name"]] = t

        with ThreadPoolExecutor(8) as pool:  # "at once": as fast as an apply of many objects
            list(pool.map(create, bodies))
        programmed: dict[str, float] = {}
        connected: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(programmed) < n or len(connected) < len(live):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"after {timeout}s: {len(programmed)}/{n} programmed, {len(connected)}/{len(live)} "
                    f"connected; missing {sorted(set(names) - set(programmed))[:5]}")
            peers, routes = self._kernel()
            now = time.monotonic()
            for name, (key, pod, ext) in want.items():
                if name not in programmed and key in peers and pod in routes and ext in routes:
                    programmed[name] = now
            items = self.hub.kube.list(TUNNEL_ENDPOINTS, HUB_TENANT_NS)["items"]
            now = time.monotonic()
            for obj in items:
                name = obj["metadata"]["name"]
                status = ((obj.get("status") or {}).get("connection") or {}).get("status")
                if name in live and name not in connected and status == "Connected":
                    connected[name] = now
            time.sleep(0.05)
        return FanoutRun(created, programmed, connected, live)

    def clear(self, timeout: float = 90.0) -> None:
        """Deletes every hub TunnelEndpoint and waits until the hub's agent holds no tunnel."""
        for obj in self.hub.kube.list(TUNNEL_ENDPOINTS, HUB_TENANT_NS)["items"]:
            self.hub.kube.delete(TUNNEL_ENDPOINTS, obj["metadata"]["name"], HUB_TENANT_NS)
        wait_until("the hub's TunnelEndpoints to go",
                   lambda: not self.hub.kube.list(TUNNEL_ENDPOINTS, HUB_TENANT_NS)["items"], timeout)
        wait_until("the hub's tunnels to go", lambda: not self.hub.agent.list_tunnels(), timeout)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]
