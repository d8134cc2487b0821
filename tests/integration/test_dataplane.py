"""The kernel layer (netns, veth, routes and host rules) against the real kernel, inside emulated nodes.

Every function under test runs in a forked child that entered the node's namespaces (`Node.call`),
and every check reads the kernel back with `ip`. A dummy link stands in for the WireGuard device
here (the routes only need a device; this kernel has no dummy module, so a veth end it is);
tests/integration/test_wireguard.py uses the real one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.resources import SAMPLE_TUNNEL
from services.common.tunnelspec import TunnelSpec
from services.netagent.config import AgentConfig
from services.netagent.kernel import netns, routes, veth

pytestmark = pytest.mark.root

CFG = AgentConfig()
NS = CFG.netns_name


def spec(cluster: str, pod: str, ext: str) -> TunnelSpec:
    return TunnelSpec.parse(**{**SAMPLE_TUNNEL, "cluster_id": cluster, "remote_nat_pod_cidr": pod,
                               "remote_nat_external_cidr": ext})


SPEC_A = spec("cluster-a", "10.60.0.0/16", "10.70.0.0/16")
SPEC_B = spec("cluster-b", "10.61.0.0/16", "10.71.0.0/16")


def setup_gateway(cfg: AgentConfig = CFG) -> veth.VethInfo:
    netns.ensure_netns(cfg.netns_name)
    return veth.ensure_veth(cfg)


def add_dummy_tunnel(node: Node) -> None:
    node.exec_in_netns(NS, ["ip", "link", "add", CFG.wg_device, "type", "veth", "peer", "name", "tunpeer"])
    node.exec_in_netns(NS, ["ip", "link", "set", "tunpeer", "up"])
    node.exec_in_netns(NS, ["ip", "link", "set", CFG.wg_device, "up"])


def state(node: Node) -> dict[str, str]:
    """Everything the layer may touch, in both namespaces, as the tools print it. IPv4 only: the
    kernel gives the veth ends IPv6 link-local addresses (and routes) some time after they go up."""
    def host(*argv: str) -> str:
        return node.run(*argv).stdout

    def gw(*argv: str) -> str:
        return node.exec_in_netns(NS, list(argv)).stdout

    return {
        "host links": host("ip", "-d", "link"),
        "host routes": host("ip", "-4", "route", "show", "table", "all"),
        "host rules": host("ip", "rule"),
        "host neigh": host("ip", "-4", "neigh"),
        "host sysctl": host("sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
                            "net.ipv4.conf.default.rp_filter"),
        "gw links": gw("ip", "-d", "link"),
        "gw addrs": gw("ip", "-4", "addr"),
        "gw routes": gw("ip", "-4", "route", "show", "table", "all"),
        "gw rules": gw("ip", "rule"),
        "gw neigh": gw("ip", "-4", "neigh"),
        "gw forward": gw("sysctl", "net.ipv4.ip_forward"),
    }


def test_veth_is_created_then_adopted_unchanged(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("veth")
    host_sysctl = node.run("sysctl", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.liqo/host.rp_filter",
                           check=False).stdout
    first = node.call(setup_gateway)
    assert first.created
    s1 = state(node)

    # Links: veth pair across the namespaces, no ARP, the MTU, up, no addresses.
    assert re.search(r"liqo\.host@if\d+: <[^>]*NOARP[^>]*UP[^>]*> mtu 1340 .*\n.*link-netns liqo-netns",
                     s1["host links"]), s1["host links"]
    assert re.search(r"liqo\.gateway@if\d+: <[^>]*NOARP[^>]*UP[^>]*> mtu 1340", s1["gw links"])
    assert "inet " not in node.run("ip", "addr", "show", "dev", "liqo.host").stdout
    assert "inet " not in node.exec_in_netns(NS, ["ip", "addr", "show", "dev", "liqo.gateway"]).stdout
    # Routes and static neighbours, both sides.
    assert "169.254.100.1 dev liqo.host scope link" in s1["host routes"]
    assert "169.254.100.2 dev liqo.gateway scope link" in s1["gw routes"]
    assert "default via 169.254.100.2 dev liqo.gateway" in s1["gw routes"]
    assert f"169.254.100.1 dev liqo.host lladdr {first.gateway_mac} PERMANENT" in s1["host neigh"]
    assert f"169.254.100.2 dev liqo.gateway lladdr {first.host_mac} PERMANENT" in s1["gw neigh"]
    assert s1["gw forward"].strip() == "net.ipv4.ip_forward = 1"

    second = node.call(setup_gateway)
    assert not second.created
    assert (second.host_ifindex, second.host_mac, second.gateway_mac) == (
        first.host_ifindex, first.host_mac, first.gateway_mac)
    assert state(node) == s1
    # No sysctl of the host was touched (rp_filter of the node's all/default, as before).
    assert node.run("sysctl", "net.ipv4.conf.all.rp_filter").stdout in host_sysctl


def test_broken_attributes_are_repaired_in_place(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("repair")
    info = node.call(setup_gateway)
    node.run("ip", "link", "set", "liqo.host", "arp", "on", "mtu", "1500")
    node.exec_in_netns(NS, ["ip", "route", "del", "default"])
    node.run("ip", "neigh", "del", "169.254.100.1", "dev", "liqo.host", check=False)  # arp on flushed it
    again = node.call(setup_gateway)
    assert not again.created and again.host_ifindex == info.host_ifindex  # same pair, fixed
    s = state(node)
    assert re.search(r"liqo\.host@if\d+: <[^>]*NOARP[^>]*> mtu 1340", s["host links"])
    assert "default via 169.254.100.2 dev liqo.gateway" in s["gw routes"]
    assert "PERMANENT" in s["host neigh"]


def test_half_pair_is_replaced(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("half")
    node.call(netns.ensure_netns, NS)
    # A stale Liqo-named veth paired with something else.
    node.run("ip", "link", "add", "liqo.host", "type", "veth", "peer", "name", "stray0")
    info = node.call(setup_gateway)
    assert info.created
    assert "link-netns liqo-netns" in node.run("ip", "-d", "link", "show", "liqo.host").stdout
    assert "stray0" not in node.run("ip", "link").stdout


def test_refresh_neighbours_follows_a_mac_change(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("mac")
    node.call(setup_gateway)
    node.exec_in_netns(NS, ["ip", "link", "set", "liqo.gateway", "address", "02:00:00:00:be:ef"])
    assert node.call(veth.refresh_neighbours, CFG) is True
    assert "169.254.100.1 dev liqo.host lladdr 02:00:00:00:be:ef PERMANENT" in node.run("ip", "neigh").stdout
    assert node.call(veth.refresh_neighbours, CFG) is False


def test_netns_is_adopted_not_recreated(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("netns")
    assert node.call(netns.ensure_netns, NS) is True
    node.exec_in_netns(NS, ["ip", "link", "add", "marker0", "type", "veth", "peer", "name", "marker1"])
    assert node.call(netns.ensure_netns, NS) is False
    assert "marker0" in node.exec_in_netns(NS, ["ip", "link"]).stdout
    assert node.call(netns.netns_exists, NS)
    assert node.call(netns.delete_netns, NS) is True
    assert node.call(netns.delete_netns, NS) is False
    assert not node.call(netns.netns_exists, NS)
    assert node.run("ip", "netns", "list").stdout == ""


def _sync(specs: list[TunnelSpec]) -> tuple[bool, bool]:
    return routes.sync_netns_routes(CFG, specs), routes.sync_host_routing(CFG, specs)


def test_routes_and_rules_converge_and_never_touch_foreign_state(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("routes")
    node.call(setup_gateway)
    add_dummy_tunnel(node)
    # Foreign state in the host (other tables, other rules, main table) and in the netns.
    node.run("ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p")
    node.run("ip", "link", "set", "eth9", "up")
    foreign_host = [
        ("ip", "rule", "add", "from", "10.99.0.0/16", "lookup", "100", "priority", "100"),
        ("ip", "rule", "add", "to", "10.60.0.0/16", "lookup", "101", "priority", str(CFG.rule_priority)),
        ("ip", "route", "add", "10.98.0.0/16", "dev", "eth9"),
        ("ip", "route", "add", "10.60.0.0/16", "dev", "eth9", "table", "100"),
    ]
    for cmd in foreign_host:
        node.run(*cmd)
    node.exec_in_netns(NS, ["ip", "route", "add", "10.97.0.0/16", "via", "169.254.100.2",
                            "dev", "liqo.gateway"])
    # Stale Liqo state left by a previous agent: to be removed since nobody claims it.
    node.run("ip", "rule", "add", "from", "10.250.0.0/16", "lookup", str(CFG.table_id), "priority", "7")
    node.run("ip", "route", "add", "10.250.0.0/16", "dev", "eth9", "table", str(CFG.table_id))
    node.exec_in_netns(NS, ["ip", "route", "add", "10.251.0.0/16", "dev", CFG.wg_device])
    before = state(node)

    assert node.call(_sync, [SPEC_A, SPEC_B]) == (True, True)
    s = state(node)
    t, p = CFG.table_id, CFG.rule_priority
    rules = [line for line in s["host rules"].splitlines() if f"lookup {t}" in line]
    assert rules == [f"{p}:\tfrom all lookup {t}"]  # one rule, whatever the number of tunnels
    table = sorted(x.strip() for x in node.run("ip", "route", "show", "table", str(t)).stdout.splitlines())
    assert table == sorted(f"{net} via 169.254.100.1 dev liqo.host onlink" for net in
                           ("10.60.0.0/16", "10.61.0.0/16", "10.70.0.0/16", "10.71.0.0/16"))
    tunnel = node.exec_in_netns(NS, ["ip", "route", "show", "dev", CFG.wg_device]).stdout.split("\n")
    assert sorted(x.strip() for x in tunnel if x) == [
        f"{net} scope link" for net in ("10.60.0.0/16", "10.61.0.0/16", "10.70.0.0/16", "10.71.0.0/16")]

    def foreign(st: dict[str, str]) -> dict[str, list[str]]:
        return {
            "rules": [x for x in st["host rules"].splitlines() if f"lookup {t}" not in x],
            "routes": [x for x in st["host routes"].splitlines() if f"table {t}" not in x],
            "gw": [x for x in st["gw routes"].splitlines() if CFG.wg_device not in x],
        }

    assert foreign(s) == foreign(before)

    # Converged: a second sync writes nothing and changes nothing.
    assert node.call(_sync, [SPEC_A, SPEC_B]) == (False, False)
    assert state(node) == s

    # Dropping a tunnel removes exactly its routes and rules.
    assert node.call(_sync, [SPEC_B]) == (True, True)
    after_b = state(node)
    assert "10.60.0.0/16" not in node.run("ip", "route", "show", "table", str(t)).stdout
    assert [x for x in after_b["host rules"].splitlines() if f"lookup {t}" in x] == rules
    assert "10.61.0.0/16 via 169.254.100.1" in node.run("ip", "route", "show", "table", str(t)).stdout

    # Removal: nothing Liqo-owned is left in the host, foreign state is intact.
    assert node.call(routes.remove_host_routing, CFG) is True
    assert node.call(routes.sync_netns_routes, CFG, []) is True
    end = state(node)
    assert f"lookup {t}" not in end["host rules"]
    assert node.run("ip", "route", "show", "table", str(t)).stdout == ""
    assert node.exec_in_netns(NS, ["ip", "route", "show", "dev", CFG.wg_device]).stdout == ""
    assert foreign(end) == foreign(before)
    assert node.call(routes.remove_host_routing, CFG) is False


def test_route_changes_rewrite_in_place(node_factory: Callable[[str], Node]) -> None:
    """A wrong owned route (other gateway) is replaced, not duplicated; routes move with the spec."""
    node = node_factory("inplace")
    node.call(setup_gateway)
    add_dummy_tunnel(node)
    node.run("ip", "route", "add", "10.60.0.0/16", "via", "169.254.100.9", "dev", "liqo.host", "onlink",
             "table", str(CFG.table_id))
    assert node.call(_sync, [SPEC_A])[1] is True
    table = node.run("ip", "route", "show", "table", str(CFG.table_id)).stdout
    assert "10.60.0.0/16 via 169.254.100.1 dev liqo.host onlink" in table
    assert "169.254.100.9" not in table
    moved = dataclasses.replace(SPEC_A, remote_nat_pod_cidr=SPEC_A.remote_nat_pod_cidr.supernet())  # type: ignore[union-attr]
    node.call(_sync, [moved])
    table = node.run("ip", "route", "show", "table", str(CFG.table_id)).stdout
    assert "10.60.0.0/15 via" in table and "10.60.0.0/16" not in table


def _pod_through_gateway() -> Any:
    setup_gateway()
    return _sync([SPEC_A])


def test_host_traffic_crosses_the_addressless_veth(node_factory: Callable[[str], Node]) -> None:
    """A pod on the node reaches an address inside the netns through table 18952, the veth with no
    IPs and its static neighbours, and the reply comes back via the netns's default route."""
    node = node_factory("path")
    pod = node.add_pod("p", "10.0.0.5/16", "10.0.0.1")
    node.call(netns.ensure_netns, NS)
    add_dummy_tunnel(node)
    node.exec_in_netns(NS, ["ip", "addr", "add", "10.60.0.1/32", "dev", "lo"])
    node.call(_pod_through_gateway)
    out = pod.run("ping", "-c", "3", "-i", "0.2", "-W", "1", "10.60.0.1", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0% packet loss" in out.stdout
    # And it stops working without the Liqo routing: the check can fail.
    node.call(routes.remove_host_routing, CFG)
    assert pod.run("ping", "-c", "1", "-W", "1", "10.60.0.1", check=False).returncode != 0
