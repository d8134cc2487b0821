"""The node's addresses, connected subnets and main-table routes as the netagent learns them
(services.netagent.kernel.nodeaddrs), in a kit node with a realistic uplink: an address, a default
route and a CNI-like route; Liqo's own link and table are left out; a change is seen within a second."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

import pytest

from sandbox.testkit.hosts import Node
from services.netagent.kernel.nodeaddrs import NodeAddrs
from services.netagent.plan.protect import Protection

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def uplink(node: Node) -> None:
    """192.168.77.10/24 on an uplink, default via .1, a CNI route 10.0.1.0/24; Liqo's veth end with
    its /32 route, and a route in Liqo's table."""
    node.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    for dev in ("eth0", "eth0-peer"):
        node.run("ip", "link", "set", dev, "up")
    node.run("ip", "addr", "add", "192.168.77.10/24", "dev", "eth0")
    node.run("ip", "route", "add", "default", "via", "192.168.77.1")
    node.run("ip", "route", "add", "10.0.1.0/24", "via", "192.168.77.20")
    node.run("ip", "link", "add", "liqo.host", "type", "veth", "peer", "name", "liqo.other")
    node.run("ip", "link", "set", "liqo.host", "up")
    node.run("ip", "route", "add", "169.254.100.1/32", "dev", "liqo.host")
    node.run("ip", "route", "add", "10.99.0.0/16", "via", "192.168.77.3", "table", "18952")


def watch_and_change() -> tuple[Protection, float, Protection]:
    """Runs in the node: the first snapshot, how long an added address took to show, the last one."""
    import subprocess

    watcher = NodeAddrs(Protection(min_remote_prefix=9))
    watcher.start()
    try:
        first = watcher.protection()
        t0 = time.monotonic()
        subprocess.run(["ip", "addr", "add", "192.168.88.5/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "route", "add", "10.0.2.0/24", "via", "192.168.88.1"], check=True)
        while time.monotonic() - t0 < 5:
            node = watcher.protection().node
            if IPv4Address("192.168.88.5") in node.addresses and IPv4Network("10.0.2.0/24") in node.routes:
                break
            time.sleep(0.01)
        seen = time.monotonic() - t0
        return first, seen, watcher.protection()
    finally:
        watcher.stop()


def test_node_addresses_are_learned_and_followed(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("nodeaddrs")
    uplink(node)
    first, seen, last = node.call(watch_and_change)
    assert first.min_remote_prefix == 9  # the configured part is kept
    assert IPv4Address("192.168.77.10") in first.node.addresses
    assert IPv4Network("192.168.77.0/24") in first.node.subnets
    assert {IPv4Network("10.0.1.0/24"), IPv4Network("192.168.77.0/24")} <= first.node.routes
    assert IPv4Network("0.0.0.0/0") not in first.node.routes  # default routes are not "the node's"
    assert IPv4Network("169.254.100.1/32") not in first.node.routes  # Liqo's own link
    assert IPv4Network("10.99.0.0/16") not in first.node.routes  # Liqo's own table
    assert seen < 1.0, f"an added address took {seen:.2f}s to be seen"
    assert IPv4Address("192.168.88.5") in last.node.addresses
    assert IPv4Network("192.168.88.0/24") in last.node.subnets
    assert IPv4Network("10.0.2.0/24") in last.node.routes
