"""The harness's pure parts as tables (no root needed): the Service VIP's nat table and which pod the
VIP follows while a hand-over briefly shows two pods labelled active."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.testkit.cluster import ServiceVIP, active_pod_ip
from services.common.vocabulary import GATEWAY_LABEL


def pod(name: str, ip: str | None, label: str | None) -> dict[str, Any]:
    labels = {GATEWAY_LABEL: label} if label else {}
    return {"metadata": {"name": name, "labels": labels}, "status": {"podIP": ip} if ip else {}}


@pytest.mark.parametrize(
    ("pods", "hint", "want"),
    [
        ([], None, None),
        ([pod("g1", "172.31.1.1", "standby"), pod("g2", "172.31.1.2", "standby")], None, None),
        ([pod("g1", "172.31.1.1", "standby"), pod("g2", "172.31.1.2", "active")], None, "172.31.1.2"),
        ([pod("g1", None, "active")], None, None),  # no IP yet: nothing to send traffic to
        ([pod("g1", "172.31.1.1", "active"), pod("g2", "172.31.1.2", "active")], "172.31.1.2", "172.31.1.2"),
        ([pod("g1", "172.31.1.1", "active"), pod("g2", "172.31.1.2", "active")], None, "172.31.1.1"),
        ([pod("g1", "172.31.1.1", "active"), pod("g2", "172.31.1.2", "active")], "10.9.9.9", "172.31.1.1"),
    ],
)
def test_active_pod_ip(pods: list[dict[str, Any]], hint: str | None, want: str | None) -> None:
    assert active_pod_ip(pods, hint) == want


def test_vip_rules_dnat_in_and_snat_out_only_for_the_backend() -> None:
    vip = ServiceVIP(node=None, vip="172.31.0.11", wan_dev="e1")  # type: ignore[arg-type]
    rules = vip.rules("172.31.1.2").splitlines()
    assert rules[0] == "*nat" and rules[-1] == "COMMIT"
    assert ("-A PREROUTING -d 172.31.0.11/32 -p udp -m udp --dport 5871 -j DNAT --to-destination "
            "172.31.1.2:5871") in rules
    assert ("-A POSTROUTING -s 172.31.1.2/32 -o e1 -p udp -m udp --sport 5871 -j SNAT --to-source "
            "172.31.0.11:5871") in rules
    assert not [r for r in vip.rules(None).splitlines() if r.startswith("-A")]
