"""Wiring emulated hosts together: bridges, veths plugged into them, and the WAN between clusters."""

from __future__ import annotations

import uuid

from sandbox.testkit.hosts import Node

__all__ = ["Wan", "bridge_netfilter", "make_bridge", "plug"]


def plug(bridge_node: Node, bridge: str, other: Node, ip_cidr: str) -> str:
    """A veth from `bridge_node`'s bridge into `other`, addressed `ip_cidr` there; returns its name
    in `other`. Created inside `bridge_node` with the peer placed straight into `other`."""
    tag = uuid.uuid4().hex[:6]
    here, there = f"b{tag}", f"e{tag}"
    bridge_node.run("ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", str(other.pid))
    bridge_node.run("ip", "link", "set", here, "master", bridge, "up")
    other.run("ip", "addr", "add", ip_cidr, "dev", there)
    other.run("ip", "link", "set", there, "up")
    return there


# With br_netfilter loaded (podman loads it), every frame a bridge switches also runs the node's
# iptables and conntrack: on the lb nodes, with the VIP's nat table, that is a conntrack lookup per
# frame per bridge, which no switch does. Opted out per namespace (the sysctls are per netns).
BRIDGE_NETFILTER_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


def bridge_netfilter(node: Node, on: bool) -> None:
    """Whether `node`'s bridges hand their frames to its iptables (a no-op without br_netfilter)."""
    for key in BRIDGE_NETFILTER_SYSCTLS:
        path = f"/proc/sys/net/bridge/{key}"
        node.run("sh", "-c", f"[ ! -e {path} ] || echo {int(on)} > {path}")


def make_bridge(node: Node, name: str, ip_cidr: str | None = None) -> None:
    bridge_netfilter(node, False)
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
            make_bridge(self.node, "wan")
        except BaseException:
            self.node.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.node.stop()

    def attach(self, node: Node, host: int) -> tuple[str, str]:
        """Plugs `node` into the WAN as 172.31.0.`host`; returns (ip, device in node)."""
        ip = f"{self.PREFIX}.{host}"
        return ip, plug(self.node, "wan", node, f"{ip}/24")
