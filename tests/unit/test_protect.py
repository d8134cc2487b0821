"""The protected address space (services.netagent.plan.protect) as tables: every reproduced attack of
issue 8 is refused naming its field, and the sandbox's realistic values still pass."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from sandbox.testkit.resources import sample_spec
from services.common.tunnelspec import SpecError
from services.netagent.plan.protect import NodeAddresses, Protection

N, A = IPv4Network, IPv4Address

# The reproduced node: uplink 192.168.77.10/24, default via .1, a CNI route 10.0.1.0/24.
NODE = NodeAddresses(
    addresses=frozenset({A("192.168.77.10")}),
    subnets=frozenset({N("192.168.77.0/24")}),
    routes=frozenset({N("192.168.77.0/24"), N("10.0.1.0/24")}),
)
BARE = Protection(node=NODE)
CONFIGURED = Protection(
    node=NODE, pod_cidr=N("10.0.0.0/16"), external_cidr=N("10.201.0.0/16"), service_cidr=N("10.96.0.0/12")
)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        # Wide remote CIDRs that together cover the node's gateway, its subnet, 8.8.8.8, metadata...
        ({"local_pod_cidr": "100.64.0.0/16", "local_external_cidr": "100.65.0.0/16",
          "remote_nat_pod_cidr": "8.0.0.0/5", "remote_external_cidr": "128.0.0.0/2"}, "remote_nat_pod_cidr"),
        ({"remote_nat_pod_cidr": "10.60.0.0/16", "remote_external_cidr": "128.0.0.0/2"},
         "remote_external_cidr"),
        ({"remote_nat_pod_cidr": "192.0.0.0/3", "remote_external_cidr": "32.0.0.0/3"}, "remote_nat_pod_cidr"),
        ({"remote_nat_pod_cidr": "10.60.0.0/16", "remote_external_cidr": "169.254.169.252/30"},
         "remote_external_cidr"),
        ({"remote_nat_pod_cidr": "169.254.169.254/32"}, "remote_nat_pod_cidr"),
        # liqo-netns's own next hop, the probe address
        ({"remote_nat_pod_cidr": "169.254.100.2/32"}, "remote_nat_pod_cidr"),
        ({"remote_nat_pod_cidr": "169.254.0.0/30"}, "remote_nat_pod_cidr"),
        # the node's gateway / uplink subnet, a same-subnet host, the CNI route
        ({"remote_nat_pod_cidr": "192.168.77.0/28"}, "remote_nat_pod_cidr"),
        ({"remote_nat_pod_cidr": "192.168.77.10/32"}, "remote_nat_pod_cidr"),
        ({"remote_nat_pod_cidr": "192.168.0.0/16"}, "remote_nat_pod_cidr"),
        ({"remote_nat_pod_cidr": "10.0.1.128/25", "local_pod_cidr": "10.9.0.0/16"}, "remote_nat_pod_cidr"),
        ({"remote_nat_pod_cidr": "None", "remote_pod_cidr": "10.0.1.0/24", "local_pod_cidr": "10.9.0.0/16"},
         "remote_pod_cidr"),
        # the always-protected ranges
        ({"remote_external_cidr": "0.0.0.0/8"}, "remote_external_cidr"),
        ({"remote_external_cidr": "127.0.0.0/8"}, "remote_external_cidr"),
        ({"remote_external_cidr": "224.0.0.0/8"}, "remote_external_cidr"),
        ({"remote_external_cidr": "240.0.0.0/8"}, "remote_external_cidr"),
        ({"remote_external_cidr": "255.255.255.252/30"}, "remote_external_cidr"),
        # shorter than the minimum prefix, even where nothing is protected
        ({"remote_external_cidr": "64.0.0.0/7"}, "remote_external_cidr"),
    ],
)
def test_tunnels_reaching_protected_space_are_refused(over: dict[str, Any], field: str) -> None:
    s = sample_spec(**over)
    with pytest.raises(SpecError, match=f"^{field}: "):
        BARE.check_tunnel(s)
    with pytest.raises(SpecError):  # possibly naming a local CIDR first
        CONFIGURED.check_tunnel(s)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        # this cluster's own pod CIDR claimed as remote, with a made-up local pod CIDR
        ({"local_pod_cidr": "10.9.0.0/16", "remote_nat_pod_cidr": "None", "remote_pod_cidr": "10.0.0.0/16"},
         "local_pod_cidr"),
        ({"local_external_cidr": "10.202.0.0/16"}, "local_external_cidr"),
    ],
)
def test_local_cidrs_must_be_the_configured_ones(over: dict[str, Any], field: str) -> None:
    s = sample_spec(**over)
    with pytest.raises(SpecError, match=f"^{field}: "):
        CONFIGURED.check_tunnel(s)


@pytest.mark.parametrize(
    ("protection", "remote", "why"),
    [
        # this cluster's pod CIDR as a remote CIDR: refused by the node's CNI route alone...
        (BARE, "10.0.0.0/16", "^remote_pod_cidr: 10.0.0.0/16 overlaps the node's route to 10.0.1.0/24"),
        # ...by the configured pod CIDR even where the node has no route for it...
        (Protection(pod_cidr=N("10.0.0.0/16")), "10.0.0.0/16", "^local_pod_cidr: 10.9.0.0/16 is not"),
        (Protection(external_cidr=N("10.201.0.0/16")), "10.201.0.0/24", "^local_external_cidr: "),
        # ...and a service IP by the configured service CIDR
        (Protection(service_cidr=N("10.96.0.0/12")), "10.96.0.0/16",
         "^remote_pod_cidr: 10.96.0.0/16 overlaps this cluster's service CIDR 10.96.0.0/12"),
    ],
)
def test_this_clusters_own_cidrs_are_protected(protection: Protection, remote: str, why: str) -> None:
    s = sample_spec(local_pod_cidr="10.9.0.0/16", local_external_cidr="10.8.0.0/16",
                    remote_nat_pod_cidr="None", remote_pod_cidr=remote)
    Protection().check_tunnel(s)  # nothing known about this cluster: nothing to refuse
    with pytest.raises(SpecError, match=why):
        protection.check_tunnel(s)


def test_min_remote_prefix_is_configurable() -> None:
    s = sample_spec(remote_external_cidr="10.64.0.0/10", remote_nat_pod_cidr="10.128.0.0/16")
    BARE.check_tunnel(s)
    with pytest.raises(SpecError, match=r"remote_external_cidr: 10.64.0.0/10 is wider than /12"):
        Protection(node=NODE, min_remote_prefix=12).check_tunnel(s)


@pytest.mark.parametrize(
    "over",
    [
        # the sandbox's realistic values: same pod CIDR on both sides remapped to 10.60 / 10.80
        {},
        {"remote_nat_pod_cidr": "10.80.0.0/16", "remote_external_cidr": "10.90.0.0/16"},
        {"local_nat_pod_cidr": "10.80.0.0/16", "remote_nat_external_cidr": "10.90.0.0/16"},
        {"local_nat_external_cidr": "10.90.0.0/16", "remote_nat_pod_cidr": "10.60.0.0/16"},
        {"remote_nat_pod_cidr": "None", "remote_pod_cidr": "10.1.0.0/16",
         "remote_external_cidr": "10.202.0.0/16"},
        {"endpoint": "gw.example.com"},
        {"remote_external_cidr": "11.0.0.0/8"},  # exactly the minimum
    ],
)
def test_legitimate_tunnels_pass(over: dict[str, Any]) -> None:
    s = sample_spec(**over)
    BARE.check_tunnel(s)
    CONFIGURED.check_tunnel(s)
    Protection().check_tunnel(s)


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.168.77.10", "node's own"),
        ("192.168.77.255", r"the broadcast address of the node's subnet 192\.168\.77\.0/24"),
        ("192.168.77.0", r"the network address of the node's subnet 192\.168\.77\.0/24"),
    ],
)
def test_endpoints_that_are_not_a_remote_gateway_are_refused(ip: str, why: str) -> None:
    with pytest.raises(SpecError, match=f"^endpoint: {ip} is .*{why}"):
        BARE.check_endpoint(A(ip))


@pytest.mark.parametrize("ip", ["172.31.0.2", "172.31.0.254", "192.168.77.1", "192.168.77.11", "8.8.8.8",
                                "192.0.2.50"])
def test_remote_gateways_pass(ip: str) -> None:
    BARE.check_endpoint(A(ip))  # same-subnet peers are fine: only the node itself is refused


@pytest.mark.parametrize(
    ("subnet", "ip", "ok"),
    [
        ("10.7.0.0/30", "10.7.0.3", False),
        ("10.7.0.0/30", "10.7.0.0", False),
        ("10.7.0.0/30", "10.7.0.2", True),
        ("10.7.0.0/31", "10.7.0.0", True),  # point-to-point: both addresses are hosts
        ("10.7.0.0/31", "10.7.0.1", True),
        ("10.7.0.4/32", "10.7.0.4", True),
        ("10.0.0.0/8", "10.255.255.255", False),
        ("10.0.0.0/8", "10.255.255.254", True),
    ],
)
def test_node_subnet_edges_are_refused_as_endpoints(subnet: str, ip: str, ok: bool) -> None:
    p = Protection(node=NodeAddresses(subnets=frozenset({N(subnet)})))
    if ok:
        p.check_endpoint(A(ip))
    else:
        with pytest.raises(SpecError, match=rf"^endpoint: {ip} is the (broadcast|network) address of"):
            p.check_endpoint(A(ip))


@pytest.mark.parametrize(("port", "ok"), [(53, False), (1, False), (1023, False), (1024, True), (5871, True),
                                          (51820, True), (0, True)])  # 0: keep the current port
def test_listen_port(port: int, ok: bool) -> None:
    if ok:
        BARE.check_listen_port(port)
    else:
        with pytest.raises(SpecError, match=r"^listen_port: .*--allow-privileged-ports"):
            BARE.check_listen_port(port)
    Protection(allow_privileged_ports=True).check_listen_port(port)


OTHER = sample_spec(cluster_id="other", remote_nat_pod_cidr="10.80.0.0/16",
                    remote_external_cidr="10.90.0.0/16")


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),  # the probe / tunnel address
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "this network"),
        ("192.168.77.10", "node's own"),
        ("10.80.3.4", "remote CIDR 10.80.0.0/16 of tunnel 'other'"),
        ("10.90.0.1", "remote CIDR 10.90.0.0/16 of tunnel 'other'"),
        ("239.1.1.1", "multicast"),
        ("255.255.255.255", "broadcast"),
    ],
)
def test_nat_targets_outside_this_cluster_are_refused(ip: str, why: str) -> None:
    with pytest.raises(SpecError, match=rf"^mappings\['{ip}'\]: DNAT to {ip} refused: .*{why}"):
        BARE.check_nat_target(A(ip), [sample_spec(), OTHER], cluster_id="remote-1")


def test_probe_address_is_protected_when_moved() -> None:
    with pytest.raises(SpecError, match=r"probe/tunnel address 100\.64\.0\.1"):
        Protection(tunnel_ip=A("100.64.0.1")).check_nat_target(A("100.64.0.1"))


@pytest.mark.parametrize("ip", ["10.0.0.5", "10.0.1.7", "192.168.77.11", "10.60.0.9"])
def test_workload_nat_targets_pass(ip: str) -> None:
    # 10.60.0.9 is in the cluster's own remote CIDR: only other tunnels' are refused
    BARE.check_nat_target(A(ip), [sample_spec(), OTHER], cluster_id="remote-1")


def test_many_nat_targets_are_checked_in_bulk_quickly() -> None:
    targets = [int(A("10.0.0.0")) + i for i in range(10_000)]
    t0 = time.perf_counter()
    BARE.check_nat_targets(targets, [sample_spec(), OTHER], cluster_id="remote-1")
    assert time.perf_counter() - t0 < 0.05
    with pytest.raises(SpecError, match=r"mappings\['192.168.77.10'\]"):
        BARE.check_nat_targets([*targets, int(A("192.168.77.10"))], [OTHER], cluster_id="remote-1")
