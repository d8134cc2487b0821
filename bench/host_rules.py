#!/usr/bin/env python3
"""What the default caps cost the node (root needed).

- The node's own UDP send rate with no tunnel and with `--tunnels` (default: the agent's
  --max-tunnels default, 256) tunnels installed. Unconnected `sendto`: every datagram takes a route
  lookup, so every host policy rule the tunnels add is evaluated per packet, as for traffic the node
  forwards for its pods.
- The agent's RSS and state file size with `--nat-entries` (default: the --max-nat-entries default,
  65 536) NAT mapping entries.

The node is the security proof's (`sandbox/testkit/uplink.py`): 192.168.77.10/24, default route via
.1. Datagrams go to a same-subnet address with a permanent neighbour entry, out of eth0. Human lines
go to stderr; the last line on stdout is JSON.

    bench/host_rules.py [--tunnels 256] [--nat-entries 65536] [--seconds 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import fields
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.testkit.hosts import Node  # noqa: E402
from sandbox.testkit.nodes import NodeFactory  # noqa: E402
from sandbox.testkit.uplink import LEGIT_OWNER, Secure, agent_pid, start_secure, tunnel  # noqa: E402
from sandbox.testkit.wait import wait_for  # noqa: E402
from services.api.netagent.v1 import netagent_pb2 as pb  # noqa: E402
from services.netagent.config import AgentConfig  # noqa: E402

DEFAULTS = {f.name: f.default for f in fields(AgentConfig)}
TARGET = "192.168.77.20"
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
payload, dst, end, n = b"x" * 64, (sys.argv[1], 9), time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(payload, dst)
            n += 1
        except BlockingIOError:
            pass
print(n / float(sys.argv[2]))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def send_rate(node: Node, seconds: float, repeat: int) -> float:
    """Median datagrams per second the node's own unconnected socket sends."""
    rates = [float(node.run(sys.executable, "-c", SENDER, TARGET, str(seconds), timeout=seconds + 30).stdout)
             for _ in range(repeat)]
    return statistics.median(rates)


def host_rule_count(node: Node) -> int:
    return len(node.run("ip", "-4", "rule", "show").stdout.splitlines())


def add_tunnels(sec: Secure, n: int) -> None:
    """n - 1 more tunnels besides the legitimate one, each with its own /24s (4 host rules each)."""
    stub = sec.stub("tunnel")
    for i in range(1, n):
        second, third = 128 + i // 128, (i % 128) * 2
        pod, ext = f"10.{second}.{third}.0/24", f"10.{second}.{third + 1}.0/24"
        t = tunnel(cluster_id=f"c{i:04d}", cluster_name=f"c{i}",
                   endpoint=str(IPv4Address("172.31.0.2") + i),
                   remote_pod_cidr=pod, remote_nat_pod_cidr="", remote_external_cidr=ext,
                   remote_nat_external_cidr="")
        stub.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=t, owner=f"liqo-tenant-c{i}/tep"), timeout=60)


def nat_map(n: int) -> dict[str, str]:
    """n mappings of local pod addresses (10.0.0.0/16) into the external CIDR (10.201.0.0/16); at most
    65 533, what a /16 holds besides its network, broadcast and probe (.1) addresses."""
    n = min(n, 2**16 - 3)
    base_old, base_new = int(IPv4Address("10.0.0.2")), int(IPv4Address("10.201.0.2"))  # .1: the probe
    return {str(IPv4Address(base_old + i)): str(IPv4Address(base_new + i)) for i in range(n)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tunnels", type=int, default=DEFAULTS["max_tunnels"])
    p.add_argument("--nat-entries", type=int, default=DEFAULTS["max_nat_entries"])
    p.add_argument("--seconds", type=float, default=2.0, help="per send-rate sample")
    p.add_argument("--repeat", type=int, default=3, help="samples per measurement (median)")
    args = p.parse_args()
    out: dict[str, float] = {}
    with NodeFactory() as nodes, tempfile.TemporaryDirectory(prefix="liqo-bench-rules-") as tmp:
        sec = start_secure(nodes, Path(tmp), "rules")
        try:
            sec.node.run("ip", "neigh", "replace", TARGET, "lladdr", "02:00:00:00:00:20", "dev", "eth0",
                         "nud", "permanent")
            sec.agent.api.DeleteTunnel(pb.DeleteTunnelRequest(cluster_id=sec.legit.cluster_id,
                                                              owner=LEGIT_OWNER), timeout=30)
            out["rules_without_tunnels"] = host_rule_count(sec.node)
            out["send_rate_without_tunnels"] = send_rate(sec.node, args.seconds, args.repeat)
            log(f"no tunnel: {out['rules_without_tunnels']:.0f} rules, "
                f"{out['send_rate_without_tunnels'] / 1e3:.0f} k datagrams/s")
            sec.ensure_legit()
            started = time.monotonic()
            add_tunnels(sec, args.tunnels)
            out["tunnels"] = len(sec.listed())
            out["install_seconds"] = time.monotonic() - started
            out["rules_with_tunnels"] = host_rule_count(sec.node)
            out["send_rate_with_tunnels"] = send_rate(sec.node, args.seconds, args.repeat)
            out["send_rate_ratio"] = out["send_rate_with_tunnels"] / out["send_rate_without_tunnels"]
            log(f"{out['tunnels']:.0f} tunnels: {out['rules_with_tunnels']:.0f} rules, "
                f"{out['send_rate_with_tunnels'] / 1e3:.0f} k datagrams/s "
                f"({out['send_rate_ratio']:.2f} of the rate without)")
            pid = agent_pid(sec.agent)
            out["agent_rss_mb_with_tunnels"] = rss_mb(pid)
            mappings = nat_map(args.nat_entries)
            started = time.monotonic()
            sec.stub("natmap").SetNatMappings(
                pb.SetNatMappingsRequest(cluster_id=sec.legit.cluster_id, mappings=mappings), timeout=300)
            out["nat_entries"] = len(mappings)
            out["nat_apply_seconds"] = time.monotonic() - started
            out["agent_rss_mb_with_nat"] = rss_mb(pid)
            last = list(mappings)[-1]  # persisted behind the reply: wait for the file to hold the map
            wait_for("the NAT map persisted", lambda: last.encode() in sec.agent.state.read_bytes(), 60)
            out["state_bytes_with_nat"] = len(sec.agent.state.read_bytes())
            log(f"{out['nat_entries']:.0f} NAT entries: applied in {out['nat_apply_seconds']:.2f} s, "
                f"agent RSS "
                f"{out['agent_rss_mb_with_nat']:.0f} MB (before: {out['agent_rss_mb_with_tunnels']:.0f} MB), "
                f"state {out['state_bytes_with_nat'] / 1e6:.1f} MB")
        finally:
            sec.close()
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
