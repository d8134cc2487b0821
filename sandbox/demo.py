"""`make demo`: two emulated clusters with overlapping pod CIDRs, peered through real WireGuard.

Built on the e2e harness (`sandbox.testkit.cluster`): cluster A (two gateway replicas) and cluster B (one),
both with pods in 10.0.0.0/16, each with its API server, gateway nodes running the four real
processes, a worker with a pod, and a load-balancer node holding the gateway Service's VIP. A sees
B's pods as 10.60.0.0/16 and B's external CIDR as 10.70.0.0/16; B sees A's as 10.80.0.0/16 and
10.90.0.0/16. The demo applies the TunnelEndpoints and a NatMapping, proves traffic step by step
(each proof prints PASS or FAIL), shows the status the controllers wrote and the active replica's
WireGuard device, then stops A's active replica and measures the hand-over.

Everything lives in network namespaces behind a few holder processes; on exit (also on Ctrl-C,
SIGTERM or a failure) the demo removes them and then checks that no process is left in any of the
namespaces it created. Exit code: 0 when every proof passed, 1 when one failed, 130 when interrupted.

    python -m sandbox.demo [--no-failover] [--keep] [--quiet]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from sandbox.testkit.cluster import (
    GATEWAY_NETNS,
    WG_DEVICE,
    ClusterOptions,
    EmulatedCluster,
    GatewayReplica,
    Peering,
    Wan,
    cluster_nat_mapping,
    peer,
)
from sandbox.testkit.cluster.standard import A_SEES_B, B_SEES_A, EXPORTED_B, POD_A, POD_B, POD_CIDR
from sandbox.testkit.hosts import Node, NodeError, Pod, namespace_inodes, processes_in
from sandbox.testkit.traffic import Pinger, PingSummary, parse_ping
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.kube import KubeClient
from services.common.vocabulary import GATEWAY_LABEL, NAT_MAPPINGS, TUNNEL_ENDPOINTS, WIREGUARD_PORT

TCP_PORT = 7000


# ---- pure helpers: addresses, ping output, tables ------------------------------------------------------


def netmap(ip: str, from_cidr: str, to_cidr: str) -> str:
    """Where iptables NETMAP sends `ip`: the host part kept, the network part of `to_cidr`."""
    src, dst = ipaddress.ip_network(from_cidr), ipaddress.ip_network(to_cidr)
    addr = ipaddress.ip_address(ip)
    if addr not in src or src.prefixlen != dst.prefixlen:
        raise ValueError(f"{ip} is not in {from_cidr}, or {from_cidr} and {to_cidr} differ in size")
    return str(dst.network_address + (int(addr) - int(src.network_address)))


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded as kubectl pads them (three spaces apart)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def printer_table(columns: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]], now: float,
                  *, namespaced: bool = True, wide: bool = True) -> tuple[list[str], list[list[str]]]:
    """`kubectl get -o wide` without kubectl: NAMESPACE, NAME and the CRD's printer columns."""
    from sandbox.kubeapi.tables import evaluate, human_age

    cols = [c for c in columns if wide or not c.get("priority")]
    header = [*(["NAMESPACE"] if namespaced else []), "NAME", *(c["name"].upper() for c in cols)]
    rows = []
    for obj in items:
        meta = obj["metadata"]
        cells = [*([meta.get("namespace", "")] if namespaced else []), meta["name"]]
        for c in cols:
            v = evaluate(obj, c["jsonPath"])
            if c.get("type") == "date" and isinstance(v, str):
                v = human_age(v, now)
            cells.append("<none>" if v is None else str(v))
        rows.append(cells)
    return header, rows


# ---- reporting -----------------------------------------------------------------------------------------


class Report:
    """Step headers, details and PASS/FAIL proof lines; counts the failures."""

    def __init__(self, quiet: bool = False, out: Any = None) -> None:
        self.quiet = quiet
        self.out = out or sys.stdout
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.step_no = 0
        self.t0 = time.monotonic()

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str) -> None:
        self.step_no += 1
        self._print(f"\n[{self.step_no}] {title}  (t+{time.monotonic() - self.t0:.1f}s)")

    def info(self, text: str) -> None:
        if not self.quiet:
            self._print(textwrap.indent(text, "    "))

    def note(self, text: str) -> None:
        """Printed even with --quiet (what a user must see: how to reach things, the summary)."""
        self._print(text)

    def proof(self, ok: bool, text: str, why: str = "") -> bool:
        (self.passed if ok else self.failed).append(text)
        self._print(f"  {'PASS' if ok else 'FAIL'}  {text}" + (f"\n        {why}" if why and not ok else ""))
        return ok

    @contextlib.contextmanager
    def proving(self, text: str) -> Iterator[None]:
        """A proof that fails when its block raises (the error is printed, the demo goes on)."""
        try:
            yield
        except Exception as e:  # any error is this proof's failure; the demo goes on
            self.proof(False, text, f"{type(e).__name__}: {e}"[:2000])


# ---- things done in pods -------------------------------------------------------------------------------

# One connection: read a line, answer with what the server saw, print it as JSON, exit.
_TCP_SERVER = """
import json, socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
srv.settimeout(20)
print("listening", flush=True)
conn, peer = srv.accept()
with conn:
    line = conn.makefile().readline().strip()
    seen = {"peer": peer[0], "local": conn.getsockname()[0], "got": line}
    conn.sendall((json.dumps(seen) + "\\n").encode())
print(json.dumps(seen), flush=True)
"""

_TCP_CLIENT = """
import json, socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    local = s.getsockname()[0]
    s.sendall(f"hello from {local}\\n".encode())
    reply = s.makefile().readline().strip()
print(json.dumps({"local": local, "reply": json.loads(reply)}))
"""


@dataclass(frozen=True)
class Exchange:
    client_local: str  # the client's own address
    server_peer: str  # the source address the server saw
    server_local: str  # the address the connection arrived at, on the server
    got: str  # the line the server read


def tcp_exchange(server: Pod, client: Pod, target: str, port: int = TCP_PORT) -> Exchange:
    """A real TCP connection from `client` to `target`:`port`, served by a listener in `server`."""
    proc = server.popen([sys.executable, "-c", _TCP_SERVER, str(port)], stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "listening":
            raise RuntimeError(f"TCP server did not start: {proc.communicate(timeout=5)[1][-500:]}")
        cp = client.run(sys.executable, "-c", _TCP_CLIENT, target, str(port), check=False, timeout=15)
        if cp.returncode != 0:
            raise RuntimeError(f"client failed: {cp.stderr.strip()[-500:]}")
        out, _ = proc.communicate(timeout=10)
        seen = json.loads(out.strip().splitlines()[-1])
        got = json.loads(cp.stdout)
        if got["reply"] != seen:
            raise RuntimeError(f"client got {got['reply']}, server said {seen}")
        return Exchange(got["local"], seen["peer"], seen["local"], seen["got"])
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.communicate(timeout=5)


def ping(pod: Pod, target: str, count: int = 3) -> PingSummary:
    cp = pod.run("ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", target, check=False, timeout=15)
    return parse_ping(cp.stdout)


def answers(pod: Pod, target: str) -> bool:
    return ping(pod, target, 1).received == 1


def wait_answers(pod: Pod, target: str, timeout: float) -> None:
    """Waits until `target` answers a ping from `pod` (a ping that fails without a summary, for
    instance on an unreachable network, counts as "not yet")."""
    wait_for(f"{target} answers", functools.partial(answers, pod, target), timeout, 0.1,
             retry_on=(ValueError,))


# ---- the demo ------------------------------------------------------------------------------------------


class SetupError(RuntimeError):
    """The environment could not be brought up: no proof can run."""


@dataclass
class Topology:
    wan: Wan
    a: EmulatedCluster
    b: EmulatedCluster
    pod_a: Pod
    pod_b: Pod
    peering: Peering | None = None

    @property
    def clusters(self) -> tuple[EmulatedCluster, EmulatedCluster]:
        return (self.a, self.b)


def nodes_of(wan: Wan | None, clusters: Sequence[EmulatedCluster]) -> list[Node]:
    """Every node that exists (also half-way through bringing things up)."""
    nodes = [wan.node] if wan is not None else []
    for c in clusters:
        nodes += [c.lb, c.cp, *c.workers, *(r.node for r in c.replicas if r.node is not None)]
    return [n for n in nodes if _started(n)]


def _started(node: Node) -> bool:
    try:
        return node.pid > 0
    except NodeError:
        return False


def logs_of(clusters: Sequence[EmulatedCluster], tail: int = 1500) -> str:
    out = []
    for c in clusters:
        for r in c.replicas:
            for n in r.processes():
                out.append(f"--- {c.name}/{r.name}/{n}.log (tail)\n{r.log(n)[-tail:]}")
    return "\n".join(out)


def stop_gateways(clusters: Sequence[EmulatedCluster], timeout: float = 8) -> None:
    """SIGTERM every gateway process of every replica at once (one by one, the tunnel controllers'
    shutdown would add up), SIGKILL what is left after `timeout`."""
    running = [(r, n) for c in clusters for r in c.replicas for n in r.processes() if r.alive(n)]
    if not running:
        return
    with concurrent.futures.ThreadPoolExecutor(len(running)) as pool:
        for r, n in running:
            pool.submit(r.runtime.stop, n, signal.SIGTERM, timeout)


def active_agent(c: EmulatedCluster) -> GatewayReplica | None:
    """The one replica whose netagent is ACTIVE (None when none or several are)."""
    active = [r for r in c.replicas if r.node is not None and r.is_active()]
    return active[0] if len(active) == 1 else None


def vip_backend(c: EmulatedCluster) -> str | None:
    return c.vip.backend if c.vip else None


def tunnel_endpoints_table(client: KubeClient) -> str:
    """`kubectl get tunnelendpoints -A -o wide` from the API: the CRD's printer columns."""
    crd = client.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                "tunnelendpoints.net.liqo.io")
    cols = crd["spec"]["versions"][0].get("additionalPrinterColumns", [])
    items = client.list(TUNNEL_ENDPOINTS)["items"]
    return format_table(*printer_table(cols, items, time.time()))


def run_kubectl(c: EmulatedCluster, *args: str) -> str:
    cp = subprocess.run(["kubectl", "--kubeconfig", str(c.kubeconfig_path), *args], capture_output=True,
                        text=True, timeout=20, check=False)
    if cp.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {cp.stderr.strip()}")
    return cp.stdout.rstrip()


class Demo:
    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args, self.r = args, report
        self.wan: Wan | None = None
        self.clusters: list[EmulatedCluster] = []

    def nodes(self) -> list[Node]:
        return nodes_of(self.wan, self.clusters)

    # -- bringing it up --

    def up(self, stack: contextlib.ExitStack) -> Topology:
        r = self.r
        r.step("Two emulated clusters, both with pods in 10.0.0.0/16")
        self.wan = wan = stack.enter_context(Wan())
        # --pods: each replica is the Helm chart's pod, played by podman in its node (`make image`).
        options = ClusterOptions(pods=True) if self.args.pods else None
        a = stack.enter_context(EmulatedCluster("a", 1, wan, replicas=2, options=options))
        b = stack.enter_context(EmulatedCluster("b", 2, wan, replicas=1, options=options))
        self.clusters = [a, b]
        what = ("the chart's pod under podman: netagent, wireguard, tunnel, natmap and labeler containers"
                if self.args.pods else
                "liqo-netagent, liqo-tunnel-controller, liqo-natmap-controller, liqo-labeler")
        for c in (a, b):
            t0 = time.monotonic()
            c.start()
            r.info(f"cluster {c.name} (up in {time.monotonic() - t0:.1f}s):\n"
                   f"  API server {c.api_ip}:6443 serving the CRDs of charts/liqo-gateway/crds\n"
                   f"  gateway Service VIP {c.vip_ip}:5871/udp on its load-balancer node, forwarding to the "
                   f"pod labelled active\n"
                   + "\n".join(f"  {g.name} on node {c.name}-gw{g.index} ({g.ip}): {what}"
                               for g in c.replicas))
        pod_a, pod_b = a.add_pod("web", POD_A), b.add_pod("web", POD_B)
        t = Topology(wan, a, b, pod_a, pod_b)
        r.info(f"pods: {pod_a.name} {POD_A} in cluster a, {pod_b.name} {POD_B} in cluster b; the same "
               f"CIDR, so each cluster reaches the other's pods through a remapped one")
        for c in (a, b):
            wait_for(f"{c.name}: a leader", functools.partial(active_agent, c), 30, 0.1)
            wait_for(f"{c.name}: VIP follows the active pod", functools.partial(vip_backend, c), 15, 0.1)
            c.public_key()
        for c in (a, b):
            lead = active_agent(c)
            assert lead is not None
            r.info(f"cluster {c.name}: {lead.name} won the Lease; the VIP forwards to {lead.ip}")

        r.step("Peering: a TunnelEndpoint on each side")
        r.info(f"A reaches B's pods as {A_SEES_B.pod} and B's external CIDR as {A_SEES_B.external}\n"
               f"B reaches A's pods as {B_SEES_A.pod} and A's external CIDR as {B_SEES_A.external}")
        t0 = time.monotonic()
        t.peering = peer(a, b, a_sees_b=A_SEES_B, b_sees_a=B_SEES_A)
        r.info(f"created TunnelEndpoint {t.peering.in_a[1]}/{t.peering.in_a[0]} in A and "
               f"{t.peering.in_b[1]}/{t.peering.in_b[0]} in B (endpoint: the other cluster's VIP; "
               f"workers route the remote CIDRs to their active replica)")
        for c, ref in ((a, t.peering.in_a), (b, t.peering.in_b)):
            conn = c.wait_connected(ref, 60)
            r.info(f"cluster {c.name}: TunnelEndpoint {ref[1]}/{ref[0]} Connected after "
                   f"{time.monotonic() - t0:.1f}s (latency {conn.get('latency', {}).get('value', '?')})")
        return t

    # -- the proofs --

    def traffic(self, t: Topology) -> None:
        r = self.r
        r.step("Pod-to-pod traffic through the remapped CIDRs")
        b_from_a = netmap(POD_B, POD_CIDR, A_SEES_B.pod)
        a_from_b = netmap(POD_A, POD_CIDR, B_SEES_A.pod)
        for src, dst, peer_pod in ((t.pod_a, b_from_a, t.pod_b), (t.pod_b, a_from_b, t.pod_a)):
            with r.proving(f"ping {src.name} -> {dst}"):
                with contextlib.suppress(AssertionError):  # the first packets may meet a cold path
                    wait_answers(src, dst, 15)
                res = ping(src, dst)
                r.proof(res.received == res.sent,
                        f"ping {src.name} ({src.ip}) -> {dst} ({peer_pod.name}): {res.received}/{res.sent} "
                        f"replies, rtt avg {res.rtt_avg_ms} ms", f"lost {res.lost}")
        for server, client, target, seen_as in ((t.pod_b, t.pod_a, b_from_a, a_from_b),
                                                (t.pod_a, t.pod_b, a_from_b, b_from_a)):
            text = f"TCP {client.name} -> {target}:{TCP_PORT}"
            with r.proving(text):
                ex = tcp_exchange(server, client, target)
                r.info(f"{client.name} connected from {ex.client_local} to {target}:{TCP_PORT}; "
                       f"{server.name} accepted it on {ex.server_local} from {ex.server_peer}, "
                       f"read {ex.got!r} and answered")
                r.proof(ex.server_peer == seen_as and ex.server_local == server.ip,
                        f"{text}: {server.name} saw the source as {ex.server_peer} "
                        f"({client.ip} NETMAPped by the sender), the connection arrived at {ex.server_local}",
                        f"expected source {seen_as} and local address {server.ip}")

    def natmapping(self, t: Topology) -> None:
        r = self.r
        a, b = t.clusters
        r.step(f"NatMapping: B exports {t.pod_b.name} ({POD_B}) as {EXPORTED_B} to A")
        before = ping(t.pod_a, EXPORTED_B, 1)
        r.info(f"before: ping {EXPORTED_B} from {t.pod_a.name}: {before.received}/{before.sent} replies "
               f"(no mapping yet)")
        nm = cluster_nat_mapping(b, a, {POD_B: EXPORTED_B}, pod_cidr=B_SEES_A.pod,
                                 external_cidr=A_SEES_B.external)
        t0 = time.monotonic()
        b.client.create(NAT_MAPPINGS, nm)
        r.info(f"created NatMapping {nm['metadata']['name']} in B: clusterMappings {{{POD_B}: {EXPORTED_B}}}")
        with r.proving(f"NatMapping address {EXPORTED_B} reachable"):
            wait_answers(t.pod_a, EXPORTED_B, 20)
            took = time.monotonic() - t0
            res = ping(t.pod_a, EXPORTED_B)
            r.proof(res.received == res.sent and before.received == 0,
                    f"ping {t.pod_a.name} -> {EXPORTED_B}: {res.received}/{res.sent} replies "
                    f"(reachable {took:.1f}s after the NatMapping was created, unreachable before)",
                    f"before {before.received}/{before.sent}")
            ex = tcp_exchange(t.pod_b, t.pod_a, EXPORTED_B)
            r.proof(ex.server_local == POD_B,
                    f"TCP {t.pod_a.name} -> {EXPORTED_B}:{TCP_PORT}: reached {t.pod_b.name}, which saw it "
                    f"arrive at {ex.server_local} (DNAT by B's gateway) from {ex.server_peer}",
                    f"arrived at {ex.server_local}")

    def status(self, t: Topology) -> None:
        r = self.r
        assert t.peering is not None
        r.step("Status written by the controllers")
        kubectl = shutil.which("kubectl")
        for c in t.clusters:
            if kubectl:
                r.info(f"$ kubectl get tunnelendpoints -A -o wide    # cluster {c.name}\n"
                       + run_kubectl(c, "get", TUNNEL_ENDPOINTS.plural, "-A", "-o", "wide"))
                r.info(f"$ kubectl get pods -n {c.namespace} -L {GATEWAY_LABEL}    # cluster {c.name}\n"
                       + run_kubectl(c, "get", "pods", "-n", c.namespace, "-L", GATEWAY_LABEL))
            else:
                r.info(f"TunnelEndpoints in cluster {c.name} (no kubectl: the same columns from the API)\n"
                       + tunnel_endpoints_table(c.client))
        b_nms = "\n" + run_kubectl(t.b, "get", NAT_MAPPINGS.plural) if kubectl else ""
        r.info(f"$ kubectl get natmappings    # cluster b{b_nms}")
        for c, ref, vip in ((t.a, t.peering.in_a, t.b.vip_ip), (t.b, t.peering.in_b, t.a.vip_ip)):
            with r.proving(f"cluster {c.name}: TunnelEndpoint status"):
                st = c.tunnel_status(*ref)
                conn = st.get("connection") or {}
                lead = active_agent(c)
                ok = (conn.get("status") == "Connected" and lead is not None
                      and st.get("gatewayIP") == lead.ip
                      and (conn.get("peerConfiguration") or {}).get("endpointIP") == vip)
                r.proof(ok, f"cluster {c.name}: TunnelEndpoint Connected, gatewayIP {st.get('gatewayIP')} "
                            f"= the active replica, peer endpoint {vip} = the other cluster's VIP",
                        json.dumps(st)[:600])

    def wireguard(self, t: Topology) -> None:
        r = self.r
        a, b = t.clusters
        r.step("WireGuard on cluster A's active replica")
        lead = active_agent(a)
        if not r.proof(lead is not None, "cluster a has exactly one ACTIVE netagent"):
            return
        assert lead is not None and lead.node is not None
        info = lead.role()
        impl = pb.WireguardImplementation.Name(info.wireguard_implementation)
        r.info(f"{lead.name}: netagent GetInfo: role {pb.Role.Name(info.role)}, epoch {info.epoch}, "
               f"WireGuard implementation {impl}, listen port {info.listen_port}, MTU {info.mtu}, "
               f"tunnels {info.tunnel_count}")
        shown = lead.node.exec_in_netns(GATEWAY_NETNS, ["wg", "show", WG_DEVICE], check=False)
        r.info(f"$ wg show {WG_DEVICE}    # in {lead.name}'s {GATEWAY_NETNS}\n{shown.stdout.rstrip()}")
        with r.proving("WireGuard peers"):
            endpoints = lead.node.exec_in_netns(GATEWAY_NETNS, ["wg", "show", WG_DEVICE, "endpoints"]).stdout
            peers = dict(line.split("\t", 1) for line in endpoints.strip().splitlines())
            handshakes = lead.node.exec_in_netns(
                GATEWAY_NETNS, ["wg", "show", WG_DEVICE, "latest-handshakes"]).stdout.split()
            b_key = b.public_key()
            b_endpoint = f"{b.vip_ip}:{WIREGUARD_PORT}"
            r.proof(peers == {b_key: b_endpoint} and len(handshakes) == 2 and int(handshakes[1]) > 0,
                    f"{lead.name}'s one peer is cluster b's key {b_key[:12]}... at b's VIP {b_endpoint}, "
                    f"with a handshake", f"peers {peers}, handshakes {handshakes}")
            r.proof(impl in ("WIREGUARD_IMPLEMENTATION_USERSPACE", "WIREGUARD_IMPLEMENTATION_KERNEL"),
                    f"WireGuard implementation reported: {impl}")
        for other in a.replicas:
            if other is not lead:
                n = other.wg_peers()
                r.proof(n == [] and other.role().role == pb.ROLE_STANDBY,
                        f"{other.name} is STANDBY with no WireGuard peer (fenced)", f"peers {n}")

    def failover(self, t: Topology) -> None:
        r = self.r
        a, b = t.clusters
        assert t.peering is not None
        old = active_agent(a)
        r.step(f"Failover: graceful stop of cluster a's active replica {old.name if old else '?'}")
        if not r.proof(old is not None, "cluster a has exactly one ACTIVE netagent before the stop"):
            return
        assert old is not None
        new = next(g for g in a.replicas if g is not old)
        target = netmap(POD_B, POD_CIDR, A_SEES_B.pod)
        r.info(f"{t.pod_a.name} pings {target} every 50 ms; SIGTERM to {old.name}'s labeler (it sets its "
               f"agent STANDBY and releases the Lease), then to its other processes")
        with Pinger(t.pod_a, target) as pinger:
            time.sleep(1)
            t_term = time.time()
            old.stop("labeler")
            old.stop()
            t_stopped = time.time()
            with r.proving(f"{new.name} takes over"):
                t_active = wait_for(f"{new.name} ACTIVE", lambda: new.turned_active_after(t_term), 15, 0.1)
                assert t_active is not None  # wait_for returns only a truthy value
                r.proof(t_active - t_term < 10,
                        f"new leader {new.name}: ACTIVE {t_active - t_term:.2f}s after the SIGTERM "
                        f"({old.name} had exited after {t_stopped - t_term:.2f}s)")
            with r.proving("traffic resumes"):
                wait_answers(t.pod_a, target, 20)  # traffic again
            time.sleep(1)
        res = pinger.result
        assert res is not None
        gap_start, gap_end = res.longest_gap_after(t_term)
        gap = gap_end - gap_start
        late = res.delayed(500)
        held = f", {len(late)} answered late (held up to {max(late) / 1000:.1f}s)" if late else ""
        missing, expected = res.missing()
        r.proof(res.received > 0 and res.replies[-1][0] > t_term,
                f"ping during the hand-over: {missing} of {expected} lost{held}; longest time without "
                f"a reply {gap:.2f}s", f"{res.received} replies")
        with r.proving("state after the failover"):
            history = a.vip.history if a.vip else []
            vip_moved = next((ts for ts, ip in history if ip == new.ip and ts > t_term), None)
            lease = a.lease()["spec"]
            conn = b.wait_connected(t.peering.in_b, 20)
            r.info(f"Lease holder {lease.get('holderIdentity')} "
                   f"(transitions {lease.get('leaseTransitions')}), "
                   f"pod labels {a.labels()}, VIP -> {a.vip.backend if a.vip else None}"
                   + (f" (moved {vip_moved - t_term:.2f}s after the SIGTERM)" if vip_moved else ""))
            r.proof(lease.get("holderIdentity") == new.name and a.labels().get(new.name) == "active"
                    and a.vip is not None and a.vip.backend == new.ip and conn.get("status") == "Connected"
                    and all(code == 0 for code in old.exit_codes().values()),
                    f"Lease, label and VIP follow {new.name}; cluster b's TunnelEndpoint Connected; "
                    f"{old.name}'s processes exited 0", f"exit codes {old.exit_codes()}")
            shown = new.node.exec_in_netns(GATEWAY_NETNS, ["wg", "show", WG_DEVICE, "peers"]).stdout.split() \
                if new.node else []
            r.proof(shown == [b.public_key()], f"{new.name} now holds cluster b's WireGuard peer", str(shown))
        if self.args.keep:
            old.start()  # back as a standby, for poking around
            wait_for(f"{old.name} serving", lambda: old.alive("labeler"), 10, 0.1)

    # -- poking around --

    def keep(self, t: Topology) -> None:
        grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
        lines = ["", "The clusters keep running. From this machine's root namespace (another terminal):"]
        for c in t.clusters:
            lines.append(f"  cluster {c.name}:  kubectl --kubeconfig {c.kubeconfig_path} "
                         "get tunnelendpoints -A -o wide")
            for g in c.replicas:
                if g.node is None:
                    continue
                lines += [
                    f"    {g.name} ({g.ip}), node pid {g.node.pid}:",
                    f"      {grpcurl} -plaintext -unix {g.socket} "
                    "liqo.netagent.v1.NetAgentService/GetInfo   # the operator's socket: every method",
                    f"      nsenter -t {g.node.pid} -n -m {grpcurl} -plaintext -unix {g.socket} list",
                    f"      {grpcurl} -plaintext -unix {g.role_sockets['natmap']} "
                    "liqo.netagent.v1.NetAgentService/SetRole   # a controller's socket: PermissionDenied",
                    f"      nsenter -t {g.node.pid} -n -m ip netns exec {GATEWAY_NETNS} wg show",
                    f"      logs: {g.workdir}/{{netagent,tunnel,natmap,labeler}}.log",
                ]
        for p, target in ((t.pod_a, netmap(POD_B, POD_CIDR, A_SEES_B.pod)),
                          (t.pod_b, netmap(POD_A, POD_CIDR, B_SEES_A.pod))):
            lines.append(f"  pod {p.name} ({p.ip}):  nsenter -t {p.pid} -n ping {target}")
        lines.append("Press Ctrl-C to stop and remove everything.")
        self.r.note("\n".join(lines))
        # Short sleeps: Python runs a signal handler only when the main thread runs again, and a
        # signal delivered to another thread does not end a long sleep of the main one.
        while True:
            time.sleep(0.2)


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, report: Report) -> int:
    demo = Demo(args, report)
    stack = contextlib.ExitStack()
    interrupted = completed = False
    namespaces: tuple[set[int], set[int]] = (set(), set())  # (net, mnt) inodes
    try:
        try:
            t = demo.up(stack)
        except Exception as e:
            report.proof(False, "bringing up the clusters and the tunnel", f"{type(e).__name__}: {e}")
            report.note(logs_of(demo.clusters))
            return 1
        namespaces = namespace_inodes(demo.nodes())
        try:
            for proof in (demo.traffic, demo.natmapping, demo.status, demo.wireguard):
                proof(t)
            if not args.no_failover:
                demo.failover(t)
        except Exception as e:  # a bug here must still end in a clean-up and a non-zero exit
            report.proof(False, "the demo ran to its end", f"{type(e).__name__}: {e}")
        report.note(f"\n{len(report.passed)} proofs passed, {len(report.failed)} failed "
                    f"(t+{time.monotonic() - report.t0:.1f}s)")
        if report.failed:
            report.note("failed: " + "; ".join(report.failed))
        completed = True
        if args.keep:
            demo.keep(t)
    except KeyboardInterrupt:
        interrupted = True
        report.note("\ninterrupted")
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        report.note("cleaning up ...")
        t0 = time.monotonic()
        nets, mnts = namespace_inodes(demo.nodes())
        namespaces = (namespaces[0] | nets, namespaces[1] | mnts)
        with contextlib.suppress(Exception):
            stop_gateways(demo.clusters)
        stack.close()
        # A SIGKILLed process on a loaded machine may take a moment to finish exiting.
        deadline = time.monotonic() + 5
        while (left := processes_in(*namespaces)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            report.proof(False, "nothing left behind",
                         f"processes still in the demo's namespaces: {describe_processes(left)}")
        else:
            report.note(f"left behind: nothing ({len(namespaces[0]) + len(namespaces[1])} namespaces gone, "
                        f"{time.monotonic() - t0:.1f}s)")
    if report.failed:
        return 1
    if interrupted and not completed:
        return 130
    return 0


def describe_processes(pids: list[int]) -> str:
    """PID, state and command line of each, for a report that says what was left."""
    out = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        out.append(f"{pid} [{stat}] {cmd.strip()[:120]}")
    return "; ".join(out) or "(gone meanwhile)"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.splitlines()[0])
    p.add_argument("--no-failover", action="store_true", help="skip stopping cluster a's active replica")
    p.add_argument("--keep", action="store_true",
                   help="keep everything running until Ctrl-C, and print how to reach it")
    p.add_argument("--quiet", action="store_true", help="print only the steps and PASS/FAIL lines")
    p.add_argument("--pods", action="store_true",
                   help="run each gateway replica as the Helm chart's pod with podman (needs `make image`)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces, iptables, WireGuard)", file=sys.stderr)
        return 2
    missing = [t for t in ("wireguard-go", "wg", "iptables-legacy", "conntrack", "ip", "nsenter", "setpriv")
               if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (run `make install`)", file=sys.stderr)
        return 2
    # SIGINT too: a process started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler of its own (a Ctrl-C to such a
    # demo did nothing, and the clean-up never ran).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    return run(args, Report(quiet=args.quiet))


if __name__ == "__main__":
    sys.exit(main())
