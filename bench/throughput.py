#!/usr/bin/env python3
"""Pod-to-pod throughput: plain wireguard-go against the sandbox's gateway paths (root needed).

Paths, measured in one run:

  plain       two emulated nodes, wireguard-go point to point over a veth (no Liqo), node to node,
              at the sandbox's tunnel MTU so that only the path differs;
  plain_pods  the same pair, from a pod on one node to a pod on the other (a veth more each side);
  plain1420   (--plain-default-mtu) the plain pair at wireguard-go's usual MTU, 1420;
  gateways    (--gateways) two nodes with real netagents (liqo-netns, its veth, rules, NAT both
              ways), a pod on each node, over a veth: the product's hops without the clusters;
  direct      the sandbox, two clusters with non-overlapping pod CIDRs: pod -> worker -> LAN
              bridge -> active replica -> liqo-netns -> WireGuard -> WAN -> the other cluster's
              Service VIP (lb node, DNAT) -> its replica -> its pod, no NAT;
  nat         the sandbox, two other clusters, both with pods in 10.0.0.0/16: NETMAP of the source
              by the sender, of the destination by the receiver;
  natmap      the nat pair, to a NatMapping address (B's pod exported in the external CIDR A uses
              for B: DNAT by B's gateway).

Each is measured with iperf3 TCP (bits/s received) and iperf3 UDP at full speed with small
datagrams (datagrams received per second), and the CPU each run took per MB or per datagram
received (bench/cpu_account.py), split into wireguard-go's user and system time, softirq, iperf3
and the emulation's own processes. Every pair stays up for the whole run and each repetition
measures every path within a minute; ratios are medians of same-repetition ratios, because the
machine is shared and noisy. Human-readable lines go to stderr; the last line on stdout is one
JSON object.

    bench/throughput.py [--reps 5] [--seconds 4] [--udp-size 64] [--gateways] [--plain-default-mtu]
                        [--bridge-netfilter]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cpu_account import CHILDREN, CpuUse, measure_cpu, namespaces  # noqa: E402
from sandbox.testkit.cluster import ClusterOptions, EmulatedCluster, Remap, Wan, cluster_nat_mapping, peer  # noqa: E402
from sandbox.testkit.cluster.standard import (  # noqa: E402
    A_SEES_B,
    B_SEES_A,
    EXPORTED_B,
    POD_A,
    POD_B,
    POD_B_FROM_A,
)
from sandbox.testkit.cluster.wan import bridge_netfilter  # noqa: E402
from sandbox.testkit.hosts import Node, Pod, link_nodes  # noqa: E402
from sandbox.testkit.netagent import NetAgent, activate  # noqa: E402
from sandbox.testkit.nodes import NodeFactory  # noqa: E402
from sandbox.testkit.resources import SAMPLE_OWNER, overlapping_tunnel  # noqa: E402
from sandbox.testkit.traffic import ping_ok  # noqa: E402
from sandbox.testkit.wait import wait_for  # noqa: E402
from services.api.netagent.v1 import netagent_pb2 as pb  # noqa: E402
from services.common.keys import generate  # noqa: E402
from services.common.vocabulary import NAT_MAPPINGS  # noqa: E402
from services.netagent.config import AgentConfig  # noqa: E402

MTU = AgentConfig().mtu  # the sandbox's tunnel MTU: the plain pair uses it too
IPERF_PORT = 5201
PLAIN_UNDERLAY = ("192.0.2.1", "192.0.2.2")
PLAIN_TUNNEL = ("10.99.0.1", "10.99.0.2")
PLAIN_PORT = 51820
PLAIN_PODS = ("10.98.1.5", "10.98.2.7")  # a pod on each plain node, routed into wg0
PLAIN_POD_GATEWAY = "10.98.255.254"
WG_DEFAULT_MTU = 1420  # what wg-quick and most guides give a WireGuard device
B_DIRECT_CIDR = "10.1.0.0/16"  # cluster b's pods (and external CIDR) in the non-overlapping pair
B_DIRECT_EXTERNAL = "10.202.0.0/16"
POD_B_DIRECT = "10.1.2.7"
POD_GATEWAY = "10.0.255.254"  # the pods' default gateway in the gateway pair
GW_ID_A, GW_ID_B = "aaaaaaaa-1111-4111-8111-0000000000a1", "bbbbbbbb-2222-4222-8222-0000000000b2"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- measuring one path --------------------------------------------------------------------------


@dataclass
class Endpoints:
    """A client and a server host and the address the client reaches the server at."""

    client: Node | Pod
    server: Node | Pod
    target: str


@contextlib.contextmanager
def iperf_server(host: Node | Pod) -> Iterator[None]:
    """An iperf3 server in `host` for the duration of the block (the host kills it on stop too)."""
    proc = host.popen(["iperf3", "-s", "-p", str(IPERF_PORT)], stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("iperf3 server listening",
                 lambda: host.run("ss", "-Hltn", f"sport = :{IPERF_PORT}").stdout.strip(), 10)
        yield
    finally:
        proc.kill()
        proc.wait(10)


def iperf(ends: Endpoints, seconds: int, *extra: str) -> dict[str, Any]:
    cp = ends.client.run("iperf3", "-c", ends.target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                         *extra, check=False, timeout=seconds + 30)
    try:
        data: dict[str, Any] = json.loads(cp.stdout)
    except ValueError:
        raise RuntimeError(f"iperf3 to {ends.target} exited {cp.returncode}: {cp.stderr.strip()}") from None
    if "error" in data:
        raise RuntimeError(f"iperf3 to {ends.target}: {data['error']}")
    return data


def tcp_bps(ends: Endpoints, seconds: int) -> float:
    return float(iperf(ends, seconds)["end"]["sum_received"]["bits_per_second"])


def udp_pps(ends: Endpoints, seconds: int, size: int) -> tuple[float, float]:
    """Datagrams of `size` bytes sent as fast as iperf3 can: (received, sent) per second."""
    s = iperf(ends, seconds, "-u", "-b", "0", "-l", str(size))["end"]["sum"]
    sent, lost, secs = float(s["packets"]), float(s["lost_packets"]), float(s["seconds"])
    return (sent - lost) / secs, sent / secs


def has_link(host: Node, name: str) -> bool:
    return host.run("ip", "link", "show", name, check=False).returncode == 0


# ---- the paths -----------------------------------------------------------------------------------


def plain_pair(nodes: NodeFactory, mtu: int, tag: str) -> tuple[Endpoints, Endpoints]:
    """Two nodes, each with wireguard-go `wg0` (foreground, so the node's stop ends it) peered with
    the other over a veth underlay, and a pod routed through it: (node to node, at the other's
    tunnel address; pod to pod)."""
    na, nb = nodes.make(f"{tag}-a"), nodes.make(f"{tag}-b")
    link_nodes(na, PLAIN_UNDERLAY[0], nb, PLAIN_UNDERLAY[1])
    pods = [n.add_pod("web", f"{ip}/16", PLAIN_POD_GATEWAY)
            for n, ip in zip((na, nb), PLAIN_PODS, strict=True)]
    keys = [generate(), generate()]
    for i, node in enumerate((na, nb)):
        node.popen(["wireguard-go", "-f", "wg0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
        wait_for("wg0", functools.partial(has_link, node, "wg0"), 10)
        other = 1 - i
        # The private key goes through stdin, never a file or an argument.
        node.run("wg", "set", "wg0", "listen-port", str(PLAIN_PORT), "private-key", "/dev/stdin",
                 "peer", keys[other].public_key, "endpoint", f"{PLAIN_UNDERLAY[other]}:{PLAIN_PORT}",
                 "allowed-ips", f"{PLAIN_TUNNEL[other]}/32,{PLAIN_PODS[other]}/32", input=keys[i].private_key)
        node.run("ip", "addr", "add", f"{PLAIN_TUNNEL[i]}/24", "dev", "wg0")
        node.run("ip", "link", "set", "wg0", "mtu", str(mtu), "up")
        node.run("ip", "route", "add", f"{PLAIN_PODS[other]}/32", "dev", "wg0")
    wait_for(f"{tag} tunnel", lambda: ping_ok(na, PLAIN_TUNNEL[1]), 20)
    wait_for(f"{tag} pods", lambda: ping_ok(pods[0], PLAIN_PODS[1]), 20)
    return Endpoints(na, nb, PLAIN_TUNNEL[1]), Endpoints(pods[0], pods[1], PLAIN_PODS[1])


def gateway_pair(nodes: NodeFactory, stack: contextlib.ExitStack, workdir: Path) -> Endpoints:
    """Two nodes, each with a real netagent (wireguard-go, its liqo-netns, veth, rules, NAT) and
    a pod on the node itself, peered with overlapping pod CIDRs over a veth underlay: the product's
    own hops on top of the plain pair, without the emulated cluster around it (workers, LAN
    bridges, load balancer, WAN)."""
    na, nb = nodes.make("gw-a"), nodes.make("gw-b")
    link_nodes(na, PLAIN_UNDERLAY[0], nb, PLAIN_UNDERLAY[1])
    pod_a = na.add_pod("web", f"{POD_A}/16", POD_GATEWAY)
    pod_b = nb.add_pod("web", f"{POD_B}/16", POD_GATEWAY)
    pubs = {}
    for name, node in (("a", na), ("b", nb)):
        agent = NetAgent(node, workdir / name, probe_interval=None).start()
        stack.callback(agent.close)
        keys = generate()
        activate(agent, keys.private_key)
        pubs[name] = (agent, keys.public_key)
    (a, pub_a), (b, pub_b) = pubs["a"], pubs["b"]
    a.api.EnsureTunnel(pb.EnsureTunnelRequest(owner=SAMPLE_OWNER, tunnel=overlapping_tunnel(
        cluster_id=GW_ID_B, endpoint=PLAIN_UNDERLAY[1], public_key=pub_b, seen_as=80, sees=60)))
    b.api.EnsureTunnel(pb.EnsureTunnelRequest(owner=SAMPLE_OWNER, tunnel=overlapping_tunnel(
        cluster_id=GW_ID_A, endpoint=PLAIN_UNDERLAY[0], public_key=pub_a, seen_as=60, sees=80)))
    wait_for("gateway pair: pods reach each other", functools.partial(ping_ok, pod_a, POD_B_FROM_A), 30, 0.1)
    return Endpoints(pod_a, pod_b, POD_B_FROM_A)


def pair_hosts(ends: Endpoints) -> set[int]:
    """The namespaces of a two-node pair: its nodes' and their pods'."""
    pair = [h if isinstance(h, Node) else h.node for h in (ends.client, ends.server)]
    return namespaces([n.pid for n in pair] + [p.pid for n in pair for p in n.pods])


def cluster_nodes(*clusters: EmulatedCluster) -> list[Node]:
    out = []
    for c in clusters:
        out += [c.lb, c.cp, *c.workers, *(r.node for r in c.replicas if r.node is not None)]
    return out


def peered_pair(stack: contextlib.ExitStack, wan: Wan, names: tuple[str, str], first_index: int,
                overlapping: bool) -> tuple[dict[str, Endpoints], list[EmulatedCluster]]:
    """Two clusters on `wan` peered as the demo peers them (overlapping: both in 10.0.0.0/16,
    remapped both ways; else the second's pods and external CIDR elsewhere and nothing remapped),
    one pod each: the paths from the first's pod to the second's. `stack` closes them."""
    b_opts = ClusterOptions() if overlapping else ClusterOptions(pod_cidr=B_DIRECT_CIDR,
                                                                 external_cidr=B_DIRECT_EXTERNAL)
    pod_b_ip = POD_B if overlapping else POD_B_DIRECT
    a = stack.enter_context(EmulatedCluster(names[0], first_index, wan))
    b = stack.enter_context(EmulatedCluster(names[1], first_index + 1, wan, options=b_opts))
    a.start()
    b.start()
    pod_a, pod_b = a.add_pod("web", POD_A), b.add_pod("web", pod_b_ip)
    for c in (a, b):
        vip = c.vip
        assert vip is not None
        wait_for(f"{c.name}: VIP follows the active pod", functools.partial(getattr, vip, "backend"), 30, 0.1)
    if overlapping:
        peering = peer(a, b, a_sees_b=A_SEES_B, b_sees_a=B_SEES_A)
    else:
        peering = peer(a, b, a_sees_b=Remap(), b_sees_a=Remap())
    a.wait_connected(peering.in_a, 60)
    b.wait_connected(peering.in_b, 60)
    paths = {}
    if overlapping:
        b.client.create(NAT_MAPPINGS, cluster_nat_mapping(
            b, a, {POD_B: EXPORTED_B}, pod_cidr=B_SEES_A.pod, external_cidr=A_SEES_B.external))
        paths["nat"] = Endpoints(pod_a, pod_b, POD_B_FROM_A)
        paths["natmap"] = Endpoints(pod_a, pod_b, EXPORTED_B)
    else:
        paths["direct"] = Endpoints(pod_a, pod_b, POD_B_DIRECT)
    for name, ends in paths.items():
        wait_for(f"{name}: {pod_a.name} reaches {ends.target}",
                 functools.partial(ping_ok, ends.client, ends.target), 30, 0.1)
    return paths, [a, b]


# ---- the run -------------------------------------------------------------------------------------

WG = "wireguard-go"
COST_PARTS = ("wg_user", "wg_sys", "softirq", "iperf3", "emulation")


def costs(use: CpuUse, units: float) -> dict[str, float]:
    """CPU time per unit (µs per MB received, or per datagram received), split by where it went:
    wireguard-go's user and system time, the machine's softirq time, iperf3 (the server, and the
    client with the other commands this benchmark and the kit ran meanwhile), and the emulation's
    own processes (every other process of the path's hosts, such as the API servers, controllers
    and netagents, and this process's threads, such as the Service VIPs' and the followers')."""
    iperf3 = use.total(("iperf3", CHILDREN))
    parts = (use.user(WG), use.system(WG), use.softirq, iperf3, use.total() - iperf3 - use.total((WG,)))
    return {k: v * 1e6 / units for k, v in zip(COST_PARTS, parts, strict=True)}


Samples = dict[str, dict[str, list[float]]]


def measure(name: str, ends: Endpoints, hosts: set[int], args: argparse.Namespace, out: Samples) -> None:
    tcp, tcp_use = measure_cpu(hosts, lambda: tcp_bps(ends, args.seconds))
    (pps, sent), udp_use = measure_cpu(hosts, lambda: udp_pps(ends, args.seconds, args.udp_size))
    row = out.setdefault(name, {})
    row.setdefault("tcp_bps", []).append(tcp)
    row.setdefault("udp_pps", []).append(pps)
    row.setdefault("udp_sent_pps", []).append(sent)
    tcp_cost, udp_cost = costs(tcp_use, tcp * args.seconds / 8e6), costs(udp_use, pps * args.seconds)
    for k in COST_PARTS:
        row.setdefault(f"tcp_us_per_mb.{k}", []).append(tcp_cost[k])
        row.setdefault(f"udp_us_per_pkt.{k}", []).append(udp_cost[k])
    log(f"  {name:9s} TCP {tcp / 1e6:4.0f} Mbit/s, {sum(tcp_cost.values()) / 1e3:3.0f} ms CPU/MB"
        f" (wireguard-go {tcp_cost['wg_user'] / 1e3:.0f} user {tcp_cost['wg_sys'] / 1e3:.0f} sys,"
        f" softirq {tcp_cost['softirq'] / 1e3:.0f})   UDP {pps / 1e3:5.1f} kpps of {sent / 1e3:5.1f} sent,"
        f" {sum(udp_cost.values()):3.0f} µs CPU/datagram")


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples: Samples = {}
    with NodeFactory() as nodes, Wan() as wan, contextlib.ExitStack() as stack:
        plains: dict[str, Endpoints] = {}
        plains["plain"], plains["plain_pods"] = plain_pair(nodes, MTU, "plain")
        if args.plain_default_mtu:
            plains["plain1420"], _ = plain_pair(nodes, WG_DEFAULT_MTU, "plain1420")
        if args.gateways:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            plains["gateways"] = gateway_pair(nodes, stack, workdir)
        # Both pairs up at once, so that every repetition measures every path within seconds.
        direct, direct_clusters = peered_pair(stack, wan, ("a", "b"), 1, overlapping=False)
        nat, nat_clusters = peered_pair(stack, wan, ("c", "d"), 3, overlapping=True)
        paths, clusters = {**direct, **nat}, direct_clusters + nat_clusters
        cnodes = [wan.node, *cluster_nodes(*clusters)]
        if args.bridge_netfilter:  # as the kit's bridges were before they opted out
            for node in cnodes:
                bridge_netfilter(node, True)
        hosts = namespaces([n.pid for n in cnodes] + [p.pid for c in clusters for p in c.pods])
        for server in {id(e.server): e.server for e in [*plains.values(), *paths.values()]}.values():
            stack.enter_context(iperf_server(server))
        for rep in range(args.reps):
            log(f"repetition {rep + 1} of {args.reps}")
            for name, ends in [*plains.items(), *paths.items()]:
                measure(name, ends, pair_hosts(ends) if name in plains else hosts, args, samples)
    return summarize(samples)


# (numerator, denominator) paths compared: NAT against none, the sandbox against plain wireguard-go,
# and the hops one at a time (pods' veths, then the product's netns and NAT, then the clusters).
COMPARISONS = (("nat", "direct"), ("natmap", "direct"), ("direct", "plain"), ("nat", "plain"),
               ("natmap", "plain"), ("plain1420", "plain"), ("plain_pods", "plain"),
               ("gateways", "plain_pods"), ("direct", "gateways"))


def per_rep_ratio(num: list[float], den: list[float]) -> float:
    """The median of the ratios of samples taken in the same repetition (seconds apart), which
    cancels most of what the other tenants of the machine do to both."""
    return round(statistics.median(n / d for n, d in zip(num, den, strict=True)), 3)


def summarize(samples: Samples) -> dict[str, Any]:
    ratios = {}
    for metric in ("tcp_bps", "udp_pps"):
        short = metric.split("_")[0]
        for num, den in COMPARISONS:
            if num in samples and den in samples:
                ratios[f"{short}_{num}_over_{den}"] = per_rep_ratio(samples[num][metric],
                                                                    samples[den][metric])
    # The same comparisons in CPU per unit (the other's cost over this one's): the rate ratio a
    # path would show if the CPU were the only limit and all of it ours.
    efficiency = {}
    for unit in ("tcp_us_per_mb", "udp_us_per_pkt"):
        short = unit.split("_")[0]
        totals = {p: [sum(r[f"{unit}.{k}"][i] for k in COST_PARTS) for i in range(len(r["tcp_bps"]))]
                  for p, r in samples.items()}
        for num, den in COMPARISONS:
            if num in totals and den in totals:
                efficiency[f"{short}_{num}_over_{den}"] = per_rep_ratio(totals[den], totals[num])
    cost: dict[str, dict[str, float]] = {}
    for path, row in samples.items():
        for unit, digits in (("tcp_us_per_mb", 0), ("udp_us_per_pkt", 1)):
            parts = {k: statistics.median(row[f"{unit}.{k}"]) for k in COST_PARTS}
            cost.setdefault(path, {})[f"{unit}"] = round(
                statistics.median(sum(row[f"{unit}.{k}"][i] for k in COST_PARTS)
                                  for i in range(len(row["tcp_bps"]))), digits)
            cost[path].update({f"{unit}.{k}": round(v, digits) for k, v in parts.items()})
    return {
        "median": {p: {"tcp_mbps": round(statistics.median(r["tcp_bps"]) / 1e6, 1),
                       "udp_kpps": round(statistics.median(r["udp_pps"]) / 1e3, 2),
                       "udp_sent_kpps": round(statistics.median(r["udp_sent_pps"]) / 1e3, 2)}
                   for p, r in samples.items()},
        "range": {p: {"tcp_mbps": [round(min(r["tcp_bps"]) / 1e6), round(max(r["tcp_bps"]) / 1e6)],
                      "udp_kpps": [round(min(r["udp_pps"]) / 1e3, 1), round(max(r["udp_pps"]) / 1e3, 1)]}
                  for p, r in samples.items()},
        "ratios": ratios,
        "cpu_efficiency": efficiency,
        # Median CPU per MB (TCP) and per datagram received (UDP), µs, and its parts (COST_PARTS;
        # softirq is the whole machine's): on a shared machine they vary less than the rates.
        "cpu_cost": cost,
        "reps": len(samples["plain"]["tcp_bps"]),
        "mtu": MTU,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="repetitions per path (medians are reported)")
    p.add_argument("--seconds", type=int, default=4, help="length of each iperf3 run")
    p.add_argument("--udp-size", type=int, default=64, help="UDP datagram payload in bytes")
    p.add_argument("--plain-default-mtu", action="store_true",
                   help=f"also measure plain wireguard-go at its default MTU ({WG_DEFAULT_MTU})")
    p.add_argument("--gateways", action="store_true",
                   help="also measure two netagents peered over a veth, pods on their nodes (no clusters)")
    p.add_argument("--bridge-netfilter", action="store_true",
                   help="let the emulated bridges run the nodes' iptables (as they did before)")
    args = p.parse_args()
    # SIGTERM unwinds like ^C does: every pair, cluster and agent is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    for name, m in result["median"].items():
        c = result["cpu_cost"][name]
        log(f"{name:9s} median TCP {m['tcp_mbps']:4.0f} Mbit/s ({c['tcp_us_per_mb'] / 1e3:.0f} ms CPU/MB), "
            f"UDP {m['udp_kpps']:5.1f} kpps ({c['udp_us_per_pkt']:.0f} µs CPU/datagram)")
    log("rate ratios (medians of same-repetition ratios): "
        + ", ".join(f"{k} {v}" for k, v in result["ratios"].items()))
    log("CPU efficiency ratios (the other's CPU per unit over this one's): "
        + ", ".join(f"{k} {v}" for k, v in result["cpu_efficiency"].items()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
