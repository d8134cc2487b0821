"""TunnelSpec validation and Liqo's effective-CIDR arithmetic, as tables."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from sandbox.testkit.resources import SAMPLE_KEY, SAMPLE_TUNNEL
from services.common.tunnelspec import SpecError, TunnelSpec, chain_suffix

KEY = SAMPLE_KEY
BASE = SAMPLE_TUNNEL


def test_effective_cidrs_follow_liqo() -> None:
    s = TunnelSpec.parse(**BASE, local_nat_pod_cidr="10.80.0.0/16", local_nat_external_cidr="10.90.0.0/16")
    assert s.eff_remote_pod_cidr == IPv4Network("10.60.0.0/16")
    assert s.eff_remote_external_cidr == IPv4Network("10.70.0.0/16")
    assert s.local_remapped_external_cidr == IPv4Network("10.90.0.0/16")
    assert s.allowed_ips == (IPv4Network("10.60.0.0/16"), IPv4Network("10.70.0.0/16"))
    assert s.probe_target == IPv4Address("10.70.0.1")
    assert s.local_probe_address == IPv4Address("10.90.0.1")


def test_none_means_no_remapping() -> None:
    s = TunnelSpec.parse(
        **{
            **BASE,
            "remote_pod_cidr": "10.1.0.0/16",
            "remote_nat_pod_cidr": "None",
            "remote_external_cidr": "10.2.0.0/16",
            "remote_nat_external_cidr": "",
        }
    )
    assert s.remote_nat_pod_cidr is None and s.eff_remote_pod_cidr == IPv4Network("10.1.0.0/16")
    assert s.local_remapped_external_cidr == IPv4Network("10.201.0.0/16")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"cluster_id": ""}, "cluster_id"),
        ({"cluster_id": "a b"}, "cluster_id"),
        ({"cluster_id": "x" * 64}, "cluster_id"),
        ({"cluster_name": 'ro"me'}, "cluster_name"),
        ({"local_pod_cidr": "10.0.0.1/16"}, "local_pod_cidr"),  # not canonical
        ({"local_pod_cidr": "None"}, "local_pod_cidr"),  # required CIDRs cannot be None
        ({"remote_pod_cidr": "fd00::/64"}, "remote_pod_cidr"),
        ({"remote_nat_pod_cidr": "0.0.0.0/0"}, "remote_nat_pod_cidr"),
        ({"remote_nat_external_cidr": "garbage"}, "remote_nat_external_cidr"),
        ({"endpoint": "bad_host!"}, "endpoint"),
        ({"endpoint": "300.1.1.1"}, "endpoint"),
        ({"endpoint_port": 0}, "endpoint_port"),
        ({"endpoint_port": 65536}, "endpoint_port"),
        ({"public_key": "abc"}, "public_key"),
        ({"public_key": "AAAA"}, "public_key"),  # valid base64, wrong length
        ({"persistent_keepalive": -1}, "persistent_keepalive"),
        ({"remote_nat_pod_cidr": "None"}, "overlaps local_pod_cidr"),  # conflict must be remapped
        ({"remote_nat_external_cidr": "10.60.0.0/16"}, "overlap"),
        ({"remote_nat_external_cidr": "10.70.0.0/31"}, "at least 4 addresses"),
    ],
)
def test_invalid_specs_name_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        TunnelSpec.parse(**{**BASE, **override})


def test_nat_prefix_must_match_for_netmap() -> None:
    with pytest.raises(SpecError, match="local_nat_pod_cidr"):
        TunnelSpec.parse(**BASE, local_nat_pod_cidr="10.80.0.0/24")


def test_dns_endpoint_accepted() -> None:
    assert TunnelSpec.parse(**{**BASE, "endpoint": "gw.rome.example.com"}).endpoint == "gw.rome.example.com"


def test_chain_suffix_is_stable_short_and_distinct_for_shared_prefixes() -> None:
    a, b = chain_suffix("cluster-a"), chain_suffix("cluster-b")
    assert a != b  # Liqo's first-token scheme made both "cluster"
    assert len(a) == 8 and chain_suffix("cluster-a") == a
    assert len("LIQO-PRRT-MAP-CLS-" + a) <= 28
