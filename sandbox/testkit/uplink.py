"""A node as a cloud VM has it, and a netagent guarding it: what the security proof (tests/security)
runs against. A throwaway node with a realistic uplink, a netagent started with the cluster's CIDRs,
a legitimate tenant's tunnel in place, and the observations every attack is judged by
(docs/security.md, "What stays out of reach").

The node: 192.168.77.10/24 on eth0, default route via 192.168.77.1, a CNI route 10.0.1.0/24 via
192.168.77.3; the agent: --pod-cidr 10.0.0.0/16 --external-cidr 10.201.0.0/16 --service-cidr
10.96.0.0/12. `PROTECTED` are the destinations whose `ip route get` no call may change.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import LIQO_NETNS, NetAgent, activate, kernel_snapshot
from sandbox.testkit.resources import SAMPLE_TUNNEL
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.keys import generate
from services.netagent.agent import PERSIST_DELAY

NODE_ADDRESS = "192.168.77.10"
NODE_SUBNET = "192.168.77.0/24"  # eth0's
PROTECTED_ARGS = ("--pod-cidr", "10.0.0.0/16", "--external-cidr", "10.201.0.0/16",
                  "--service-cidr", "10.96.0.0/12")
# The default gateway, a same-subnet host, a public address, the metadata service, a service IP, a
# pod behind the CNI route.
PROTECTED = ("192.168.77.1", "192.168.77.20", "8.8.8.8", "169.254.169.254", "10.96.0.10", "10.0.1.7")
LIQO_TABLE = "18952"
DRIFT = "repaired drift"
RESYNC_FAILED = "resync failed"
CLEANUP = (sys.executable, "-m", "services.netagent.main", "cleanup")
TICKS = os.sysconf("SC_CLK_TCK")

__all__ = ["CLEANUP", "DRIFT", "LEGIT_OWNER", "LIQO_TABLE", "NODE_ADDRESS", "NODE_SUBNET", "PROTECTED",
           "PROTECTED_ARGS", "RESYNC_FAILED", "Secure", "agent_pid", "cpu_seconds", "node_baseline",
           "non_liqo_state", "peers", "route_gets", "run_cleanup", "snapshot", "start_secure",
           "tunnel", "uplink"]

LEGIT_OWNER = "liqo-tenant-rome/tep-rome"


def uplink(node: Node) -> None:
    """The node's own network, as a cloud VM has it."""
    for scope in ("all", "default"):  # no IPv6 link-local routes appearing while we compare snapshots
        node.sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", "1")
    node.run("ip", "link", "set", "lo", "up")
    node.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    for dev in ("eth0", "eth0-peer"):
        node.run("ip", "link", "set", dev, "up")
    node.run("ip", "addr", "add", f"{NODE_ADDRESS}/24", "dev", "eth0")
    node.run("ip", "route", "add", "default", "via", "192.168.77.1")
    node.run("ip", "route", "add", "10.0.1.0/24", "via", "192.168.77.3")


def tunnel(**over: Any) -> pb.Tunnel:
    """`SAMPLE_TUNNEL` as cluster "rome" behind 172.31.0.2 (pods and external CIDR overlapping ours,
    remapped), fields overridden by `over`; a fresh public key unless given."""
    args = {**SAMPLE_TUNNEL, "cluster_id": "rome", "endpoint": "172.31.0.2",
            "public_key": generate().public_key, **over}
    return pb.Tunnel(**args)


def route_gets(node: Node) -> dict[str, str]:
    """`ip route get` of every protected destination, in the node."""
    return {dst: node.run("ip", "route", "get", dst, check=False).stdout.strip() for dst in PROTECTED}


def non_liqo_state(node: Node) -> dict[str, list[str]]:
    """The node's own links, policy rules and main-table routes: Liqo's links and table left out."""
    links = [m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", node.run("ip", "-o", "link").stdout, re.M)]
    return {
        "links": sorted(n for n in links if not n.startswith("liqo.")),
        "rules": [r for r in node.run("ip", "rule", "show").stdout.splitlines() if LIQO_TABLE not in r],
        "main routes": node.run("ip", "route", "show", "table", "main").stdout.splitlines(),
        "addresses": node.run("ip", "-o", "addr", "show", "dev", "eth0").stdout.splitlines(),
    }


def snapshot(node: Node) -> dict[str, list[str]]:
    """The kernel snapshot (everything the agent may touch), order-insensitive (WireGuard lists peers
    in no stable order), without the IPv6 link-local routes the kernel adds on its own."""
    def ipv6_auto(part: str, line: str) -> bool:
        return "routes" in part and ("fe80::" in line or "ff00::" in line)

    return {
        part: sorted(line for line in text.splitlines() if not ipv6_auto(part, line))
        for part, text in kernel_snapshot(node).items()
    }


def node_baseline(node: Node) -> dict[str, list[str]]:
    """The whole node before any agent ran: what `cleanup` must give back."""
    def out(*argv: str) -> list[str]:
        return sorted(node.run(*argv).stdout.splitlines())

    saved = [line for line in node.run("iptables-legacy-save").stdout.splitlines()
             if not line.startswith("#")]
    return {
        **non_liqo_state(node),
        "all rules": out("ip", "rule", "show"),
        "all routes": out("ip", "route", "show", "table", "all"),
        "all links": sorted(m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)",
                                                            node.run("ip", "-o", "link").stdout, re.M)),
        "netns": out("ip", "netns", "list"),
        "neigh": out("ip", "neigh", "show", "nud", "permanent"),
        "iptables": [re.sub(r"\[\d+:\d+\]", "", line) for line in saved],
    }


def peers(node: Node) -> list[str]:
    out = node.exec_in_netns(LIQO_NETNS, ["wg", "show", "all", "peers"]).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def agent_pid(agent: NetAgent) -> int:
    assert agent.proc is not None
    pid = agent.proc.pid  # nsenter and setpriv exec: the agent itself
    assert b"services.netagent.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def run_cleanup(agent: NetAgent) -> None:
    """`liqo-netagent cleanup` in the agent's node, with the agent's paths."""
    agent.node.run(*CLEANUP, "--socket", agent.socket_path, "--state-path", agent.state_path)


@dataclass
class Secure:
    """A node with a realistic uplink, its netagent (ACTIVE, epoch 1) and the legitimate tenant's
    tunnel (`legit`, owned by LEGIT_OWNER); `stub(role)` is a controller's view (its own socket),
    `stub()` the operator's."""

    node: Node
    agent: NetAgent
    legit: pb.Tunnel
    baseline: dict[str, list[str]]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    stubs: dict[str, pb_grpc.NetAgentServiceStub] = field(default_factory=dict)

    def stub(self, role: str | None = None) -> pb_grpc.NetAgentServiceStub:
        if role is None:
            return self.agent.api
        if role not in self.stubs:
            self.channels[role] = grpc.insecure_channel(f"unix:{self.agent.role_socket(role)}")
            self.stubs[role] = pb_grpc.NetAgentServiceStub(self.channels[role])
        return self.stubs[role]

    def close_stubs(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()
        self.stubs.clear()

    def listed(self) -> list[pb.TunnelEntry]:
        return list(self.agent.api.ListTunnels(pb.ListTunnelsRequest(), timeout=10).tunnels)

    def state_bytes(self) -> bytes:
        """The state file once every write scheduled so far landed (the agent persists behind the
        reply, coalesced over PERSIST_DELAY)."""
        time.sleep(PERSIST_DELAY * 2 + 0.05)
        return self.agent.state.read_bytes() if self.agent.state.exists() else b""

    def ensure_legit(self, **over: Any) -> pb.Tunnel:
        """EnsureTunnel of the legitimate tunnel with `over` changed, from its owner's controller."""
        t = pb.Tunnel()
        t.CopyFrom(self.legit)
        for k, v in over.items():
            if k == "persistent_keepalive":
                t.persistent_keepalive.FromSeconds(v)
            else:
                setattr(t, k, v)
        self.stub("tunnel").EnsureTunnel(pb.EnsureTunnelRequest(tunnel=t, owner=LEGIT_OWNER), timeout=30)
        self.legit = t
        return t

    def close(self) -> None:
        self.close_stubs()
        self.agent.close()


def start_secure(make: Callable[[str], Node], workdir: Path, name: str, args: Sequence[str] = ()) -> Secure:
    """A node with the uplink, a netagent with PROTECTED_ARGS + `args`, ACTIVE (epoch 1, 600 s), and
    the legitimate tenant's tunnel in place. The caller closes it (`Secure.close`)."""
    node = make(name)
    uplink(node)
    baseline = node_baseline(node)
    agent = NetAgent(node, workdir, args=(*PROTECTED_ARGS, *args))
    try:
        agent.start()
        activate(agent, generate().private_key, epoch=1, ttl=600)
        legit = tunnel()
        agent.api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=legit, owner=LEGIT_OWNER), timeout=30)
    except BaseException:
        agent.close()
        raise
    return Secure(node, agent, legit, baseline)
