"""The emulated clusters' bridges switch frames without running their node's iptables (with
br_netfilter loaded, the kernel's default would run every bridged frame through the node's
iptables and conntrack: on the lb nodes, a conntrack lookup per frame per bridge, which made the
sandbox's pod-to-pod path about a third slower than it is, bench/throughput.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sandbox.testkit.cluster.wan import BRIDGE_NETFILTER_SYSCTLS, bridge_netfilter, make_bridge, plug
from sandbox.testkit.hosts import Node
from sandbox.testkit.traffic import ping_ok

BR_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def forwarded_packets(node: Node) -> int:
    """The packet counter of the one rule in `node`'s FORWARD chain."""
    out = node.run("iptables-legacy", "-L", "FORWARD", "-v", "-x", "-n").stdout.splitlines()
    return int(out[2].split()[0])  # after the chain's header and the column titles


def test_bridged_frames_skip_the_nodes_iptables(node_factory: Callable[[str], Node]) -> None:
    switch, x, y = node_factory("switch"), node_factory("x"), node_factory("y")
    make_bridge(switch, "lan")
    plug(switch, "lan", x, "10.250.0.1/24")
    plug(switch, "lan", y, "10.250.0.2/24")
    switch.run("iptables-legacy", "-A", "FORWARD", "-j", "ACCEPT")  # counts what iptables sees
    if BR_NETFILTER.exists():
        values = {k: switch.run("cat", f"/proc/sys/net/bridge/{k}").stdout.strip()
                  for k in BRIDGE_NETFILTER_SYSCTLS}
        assert values == dict.fromkeys(BRIDGE_NETFILTER_SYSCTLS, "0")
    assert ping_ok(x, "10.250.0.2", count=3)
    assert forwarded_packets(switch) == 0
    if not BR_NETFILTER.exists():
        return  # no br_netfilter on this machine: bridges never call iptables anyway
    # The counter does see bridged frames when the bridge hands them over (the check can fail).
    bridge_netfilter(switch, True)
    assert ping_ok(x, "10.250.0.2", count=3)
    assert forwarded_packets(switch) >= 3
