"""Desired routes and rules as tables (pure), and the plan that converges to them."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from sandbox.testkit.resources import SAMPLE_TUNNEL
from services.common.tunnelspec import TunnelSpec
from services.netagent.config import AgentConfig
from services.netagent.plan.routes import (
    MAIN_TABLE,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    Route,
    Rule,
    desired_host_routes,
    desired_host_rules,
    desired_netns_routes,
    plan,
)

CFG = AgentConfig()
N = IPv4Network


def spec(cluster: str, **kw: Any) -> TunnelSpec:
    return TunnelSpec.parse(**{**SAMPLE_TUNNEL, "cluster_id": cluster, **kw})


A = spec("a")  # R* 10.60/16, X* 10.70/16 (remapped)
B = spec("b", remote_nat_pod_cidr="None", remote_pod_cidr="10.1.0.0/16",
         remote_nat_external_cidr="", remote_external_cidr="10.2.0.0/16")  # no remapping: R, X as declared


@pytest.mark.parametrize(
    ("specs", "nets"),
    [
        ([], []),
        ([A], ["10.60.0.0/16", "10.70.0.0/16"]),
        ([B], ["10.1.0.0/16", "10.2.0.0/16"]),
        ([A, B], ["10.1.0.0/16", "10.2.0.0/16", "10.60.0.0/16", "10.70.0.0/16"]),
        ([A, A], ["10.60.0.0/16", "10.70.0.0/16"]),  # deduplicated
    ],
)
def test_desired_state_per_remote_cidr(specs: list[TunnelSpec], nets: list[str]) -> None:
    assert desired_netns_routes(CFG, specs) == {Route(MAIN_TABLE, N(n), "liqo.tunnel") for n in nets}
    assert desired_host_routes(CFG, specs) == {
        Route(18952, N(n), "liqo.host", gateway=IPv4Address("169.254.100.1"), onlink=True) for n in nets
    }
    # One rule looking up the table, whatever the number of tunnels; none without a tunnel.
    assert desired_host_rules(CFG, specs) == ({Rule(18952, 18952)} if nets else set())


def test_names_table_and_priority_follow_the_config() -> None:
    cfg = AgentConfig(wg_device="wg9", host_veth="h9", table_id=77, rule_priority=500,
                      gateway_veth_ip=IPv4Address("169.254.9.1"))
    assert desired_netns_routes(cfg, [A]) == {Route(MAIN_TABLE, N("10.60.0.0/16"), "wg9"),
                                              Route(MAIN_TABLE, N("10.70.0.0/16"), "wg9")}
    gw = IPv4Address("169.254.9.1")
    assert Route(77, N("10.60.0.0/16"), "h9", gw, True) in desired_host_routes(cfg, [A])
    assert desired_host_rules(cfg, [A]) == {Rule(500, 77)}


def test_scope_is_what_ip_route_would_pick() -> None:
    assert Route(MAIN_TABLE, N("10.0.0.0/8"), "x").scope == RT_SCOPE_LINK
    assert Route(MAIN_TABLE, N("10.0.0.0/8"), "x", IPv4Address("1.2.3.4")).scope == RT_SCOPE_UNIVERSE


@pytest.mark.parametrize(
    ("current", "desired", "add", "remove"),
    [
        ([], [], [], []),
        ([1, 2], [1, 2], [], []),
        ([], [2, 1], [1, 2], []),
        ([1, 2, 3], [2], [], [1, 3]),
        ([1, 4], [1, 2], [2], [4]),
    ],
)
def test_plan(current: list[int], desired: list[int], add: list[int], remove: list[int]) -> None:
    assert plan(current, desired) == (add, remove)


def test_a_foreign_looking_owned_rule_is_not_desired() -> None:
    """A rule on our table with an extra selector is owned and differs: the plan removes it."""
    want = desired_host_rules(CFG, [A])
    odd = Rule(18952, 18952, iif="eth0")
    add, remove = plan([*want, odd], want)
    assert (add, remove) == ([], [odd])


def test_rendering_is_readable() -> None:
    assert str(Rule(5, 18952)) == "5: from all lookup 18952"
    assert str(Rule(5, 18952, src=N("10.60.0.0/16"))) == "5: from 10.60.0.0/16 lookup 18952"
    assert str(Rule(5, 18952, dst=N("10.60.0.0/16"))) == "5: from all to 10.60.0.0/16 lookup 18952"
    assert str(Route(18952, N("10.60.0.0/16"), "liqo.host", IPv4Address("169.254.100.1"), True)) == (
        "10.60.0.0/16 via 169.254.100.1 dev liqo.host onlink table 18952")
