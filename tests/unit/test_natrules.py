"""The Liqo-owned iptables state as pure data: all eight NAT combinations, NatMapping rules and their
validation, and the restore scripts the applier derives from two states (checked on a model of the
kernel's chain semantics; tests/integration/test_iptables.py checks them on the real kernel)."""
# ruff: noqa: E501  (expected rules are literal iptables-legacy-save lines, kept whole to be readable)

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
import re
import shlex
from ipaddress import IPv4Address
from typing import Any

import pytest

from services.common.tunnelspec import SpecError, TunnelSpec, chain_suffix
from services.netagent.config import AgentConfig
from services.netagent.plan import natrules
from services.netagent.plan.iptables import parse_save, render_rule, table_script
from services.netagent.plan.natrules import Args, Ruleset, desired_state, parse_nat_map

KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
CID = "b1c2d3e4-0000-4000-8000-000000000001"
S = chain_suffix(CID)
CFG = AgentConfig()


def spec(local_nat: bool = False, remote_nat_pod: bool = False, remote_nat_ext: bool = False,
         **over: Any) -> TunnelSpec:
    args: dict[str, Any] = dict(
        cluster_id=CID,
        cluster_name="rome",
        local_pod_cidr="10.0.0.0/16",
        local_nat_pod_cidr="10.80.0.0/16" if local_nat else "None",
        local_external_cidr="10.201.0.0/16",
        remote_pod_cidr="10.1.0.0/16",
        remote_nat_pod_cidr="10.60.0.0/16" if remote_nat_pod else "None",
        remote_external_cidr="10.202.0.0/16",
        remote_nat_external_cidr="10.70.0.0/16" if remote_nat_ext else "None",
        endpoint="192.0.2.10",
        endpoint_port=5871,
        public_key=KEY,
    )
    args.update(over)
    return TunnelSpec.parse(**args)


def save_lines(text: str) -> list[tuple[str, Args]]:
    """Expected rules written as iptables-legacy-save prints them ("-A CHAIN args")."""
    out = []
    for line in text.strip().splitlines():
        words = shlex.split(line.strip())
        assert words[0] == "-A"
        out.append((words[1], tuple(words[2:])))
    return out


def rules_of(rs: Ruleset, table: str, *chains: str) -> list[tuple[str, Args]]:
    return [(c, r) for c in chains for r in rs.table(table)[c]]


# ---- the eight NAT combinations -----------------------------------------------------------------

# (L' set, R' set, X' set) -> expected POSTROUTING jumps, PSTRT, PREROUTING jumps, PRRT.
# R* = 10.60.0.0/16 if R' else 10.1.0.0/16; X* = 10.70.0.0/16 if X' else 10.202.0.0/16; E* = 10.201.0.0/16.
EIGHT = {
    (False, False, False): f"""
        -A LIQO-POSTROUTING -d 10.1.0.0/16 -m comment --comment "SNAT local traffic for 'rome' PodCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-POSTROUTING -d 10.202.0.0/16 -m comment --comment "SNAT local traffic for 'rome' ExternalCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.1.0.0/16 -j SNAT --to-source 10.0.0.0
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.202.0.0/16 -j SNAT --to-source 10.0.0.0
        -A LIQO-PREROUTING -s 10.1.0.0/16 -d 10.201.0.0/16 -m comment --comment "DNAT 'rome' traffic for local ExternalCIDR" -j LIQO-PRRT-MAP-CLS-{S}
    """,
    (False, False, True): f"""
        -A LIQO-POSTROUTING -d 10.1.0.0/16 -m comment --comment "SNAT local traffic for 'rome' PodCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-POSTROUTING -d 10.70.0.0/16 -m comment --comment "SNAT local traffic for 'rome' ExternalCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.1.0.0/16 -j SNAT --to-source 10.0.0.0
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.70.0.0/16 -j SNAT --to-source 10.0.0.0
        -A LIQO-PREROUTING -s 10.1.0.0/16 -d 10.201.0.0/16 -m comment --comment "DNAT 'rome' traffic for local ExternalCIDR" -j LIQO-PRRT-MAP-CLS-{S}
    """,
    (False, True, False): f"""
        -A LIQO-POSTROUTING -d 10.60.0.0/16 -m comment --comment "SNAT local traffic for 'rome' PodCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-POSTROUTING -d 10.202.0.0/16 -m comment --comment "SNAT local traffic for 'rome' ExternalCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.60.0.0/16 -j SNAT --to-source 10.0.0.0
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.202.0.0/16 -j SNAT --to-source 10.0.0.0
        -A LIQO-PREROUTING -s 10.60.0.0/16 -d 10.201.0.0/16 -m comment --comment "DNAT 'rome' traffic for local ExternalCIDR" -j LIQO-PRRT-MAP-CLS-{S}
    """,
    (False, True, True): f"""
        -A LIQO-POSTROUTING -d 10.60.0.0/16 -m comment --comment "SNAT local traffic for 'rome' PodCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-POSTROUTING -d 10.70.0.0/16 -m comment --comment "SNAT local traffic for 'rome' ExternalCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.60.0.0/16 -j SNAT --to-source 10.0.0.0
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.70.0.0/16 -j SNAT --to-source 10.0.0.0
        -A LIQO-PREROUTING -s 10.60.0.0/16 -d 10.201.0.0/16 -m comment --comment "DNAT 'rome' traffic for local ExternalCIDR" -j LIQO-PRRT-MAP-CLS-{S}
    """,
    (True, False, False): f"""
        -A LIQO-POSTROUTING -d 10.1.0.0/16 -m comment --comment "SNAT local traffic for 'rome' PodCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-POSTROUTING -d 10.202.0.0/16 -m comment --comment "SNAT local traffic for 'rome' ExternalCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-PSTRT-CLS-{S} -s 10.0.0.0/16 -d 10.1.0.0/16 -j NETMAP --to 10.80.0.0/16
        -A LIQO-PSTRT-CLS-{S} -s 10.0.0.0/16 -d 10.202.0.0/16 -j NETMAP --to 10.80.0.0/16
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.1.0.0/16 -j SNAT --to-source 10.80.0.0
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.202.0.0/16 -j SNAT --to-source 10.80.0.0
        -A LIQO-PREROUTING -s 10.1.0.0/16 -d 10.201.0.0/16 -m comment --comment "DNAT 'rome' traffic for local ExternalCIDR" -j LIQO-PRRT-MAP-CLS-{S}
        -A LIQO-PREROUTING -s 10.1.0.0/16 -d 10.80.0.0/16 -m comment --comment "DNAT 'rome' traffic for local PodCIDR" -j LIQO-PRRT-CLS-{S}
        -A LIQO-PRRT-CLS-{S} -s 10.1.0.0/16 -d 10.80.0.0/16 -j NETMAP --to 10.0.0.0/16
    """,
    (True, False, True): f"""
        -A LIQO-POSTROUTING -d 10.1.0.0/16 -m comment --comment "SNAT local traffic for 'rome' PodCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-POSTROUTING -d 10.70.0.0/16 -m comment --comment "SNAT local traffic for 'rome' ExternalCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-PSTRT-CLS-{S} -s 10.0.0.0/16 -d 10.1.0.0/16 -j NETMAP --to 10.80.0.0/16
        -A LIQO-PSTRT-CLS-{S} -s 10.0.0.0/16 -d 10.70.0.0/16 -j NETMAP --to 10.80.0.0/16
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.1.0.0/16 -j SNAT --to-source 10.80.0.0
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.70.0.0/16 -j SNAT --to-source 10.80.0.0
        -A LIQO-PREROUTING -s 10.1.0.0/16 -d 10.201.0.0/16 -m comment --comment "DNAT 'rome' traffic for local ExternalCIDR" -j LIQO-PRRT-MAP-CLS-{S}
        -A LIQO-PREROUTING -s 10.1.0.0/16 -d 10.80.0.0/16 -m comment --comment "DNAT 'rome' traffic for local PodCIDR" -j LIQO-PRRT-CLS-{S}
        -A LIQO-PRRT-CLS-{S} -s 10.1.0.0/16 -d 10.80.0.0/16 -j NETMAP --to 10.0.0.0/16
    """,
    (True, True, False): f"""
        -A LIQO-POSTROUTING -d 10.60.0.0/16 -m comment --comment "SNAT local traffic for 'rome' PodCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-POSTROUTING -d 10.202.0.0/16 -m comment --comment "SNAT local traffic for 'rome' ExternalCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-PSTRT-CLS-{S} -s 10.0.0.0/16 -d 10.60.0.0/16 -j NETMAP --to 10.80.0.0/16
        -A LIQO-PSTRT-CLS-{S} -s 10.0.0.0/16 -d 10.202.0.0/16 -j NETMAP --to 10.80.0.0/16
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.60.0.0/16 -j SNAT --to-source 10.80.0.0
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.202.0.0/16 -j SNAT --to-source 10.80.0.0
        -A LIQO-PREROUTING -s 10.60.0.0/16 -d 10.201.0.0/16 -m comment --comment "DNAT 'rome' traffic for local ExternalCIDR" -j LIQO-PRRT-MAP-CLS-{S}
        -A LIQO-PREROUTING -s 10.60.0.0/16 -d 10.80.0.0/16 -m comment --comment "DNAT 'rome' traffic for local PodCIDR" -j LIQO-PRRT-CLS-{S}
        -A LIQO-PRRT-CLS-{S} -s 10.60.0.0/16 -d 10.80.0.0/16 -j NETMAP --to 10.0.0.0/16
    """,
    (True, True, True): f"""
        -A LIQO-POSTROUTING -d 10.60.0.0/16 -m comment --comment "SNAT local traffic for 'rome' PodCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-POSTROUTING -d 10.70.0.0/16 -m comment --comment "SNAT local traffic for 'rome' ExternalCIDR" -j LIQO-PSTRT-CLS-{S}
        -A LIQO-PSTRT-CLS-{S} -s 10.0.0.0/16 -d 10.60.0.0/16 -j NETMAP --to 10.80.0.0/16
        -A LIQO-PSTRT-CLS-{S} -s 10.0.0.0/16 -d 10.70.0.0/16 -j NETMAP --to 10.80.0.0/16
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.60.0.0/16 -j SNAT --to-source 10.80.0.0
        -A LIQO-PSTRT-CLS-{S} ! -s 10.0.0.0/16 -d 10.70.0.0/16 -j SNAT --to-source 10.80.0.0
        -A LIQO-PREROUTING -s 10.60.0.0/16 -d 10.201.0.0/16 -m comment --comment "DNAT 'rome' traffic for local ExternalCIDR" -j LIQO-PRRT-MAP-CLS-{S}
        -A LIQO-PREROUTING -s 10.60.0.0/16 -d 10.80.0.0/16 -m comment --comment "DNAT 'rome' traffic for local PodCIDR" -j LIQO-PRRT-CLS-{S}
        -A LIQO-PRRT-CLS-{S} -s 10.60.0.0/16 -d 10.80.0.0/16 -j NETMAP --to 10.0.0.0/16
    """,
}  # fmt: skip


@pytest.mark.parametrize("combo", sorted(EIGHT), ids=lambda c: "L'{}-R'{}-X'{}".format(*("set" if x else "None" for x in c)))
def test_eight_nat_combinations(combo: tuple[bool, bool, bool]) -> None:
    rs = desired_state([spec(*combo)], {}, CFG)
    nat = rules_of(rs, "nat", "LIQO-POSTROUTING", f"LIQO-PSTRT-CLS-{S}", "LIQO-PREROUTING", f"LIQO-PRRT-CLS-{S}")
    assert nat == save_lines(EIGHT[combo])
    r_pod = "10.60.0.0/16" if combo[1] else "10.1.0.0/16"
    # Same in every combination: the probe DNAT, the forward jump and the ExternalCIDR drop.
    assert rs.table("nat")[f"LIQO-PRRT-MAP-CLS-{S}"] == (
        ("-d", "10.201.0.1/32", "-j", "DNAT", "--to-destination", "169.254.0.1"),
    )
    assert rules_of(rs, "filter", "LIQO-FORWARD", f"LIQO-FRWD-EXT-CLS-{S}") == save_lines(f"""
        -A LIQO-FORWARD -s {r_pod} -d 10.201.0.0/16 -j LIQO-FRWD-EXT-CLS-{S}
        -A LIQO-FRWD-EXT-CLS-{S} -m comment --comment "Avoid forwarding 'rome' remapped ExternalCIDR to liqo.gateway" -j DROP
    """)  # fmt: skip
    # The four per-cluster chains always exist, even empty (Liqo creates them unconditionally).
    assert f"LIQO-PRRT-CLS-{S}" in rs.table("nat")


def test_global_chains_jumps_and_mss_clamping() -> None:
    rs = desired_state([], {}, CFG)
    assert rs == Ruleset({
        "nat": {
            "PREROUTING": (("-j", "LIQO-PREROUTING"),),
            "POSTROUTING": (("-j", "LIQO-POSTROUTING"),),
            "LIQO-PREROUTING": (),
            "LIQO-POSTROUTING": (),
        },
        "filter": {"FORWARD": (("-j", "LIQO-FORWARD"),), "LIQO-FORWARD": ()},
        "mangle": {
            "FORWARD": (("-j", "LIQO-MSS"),),
            "LIQO-MSS": tuple(args for _, args in save_lines("""
                -A LIQO-MSS -o liqo.tunnel -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1300
                -A LIQO-MSS -i liqo.tunnel -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1300
            """)),
        },
    })  # fmt: skip


def test_mss_follows_mtu_and_device() -> None:
    cfg = dataclasses.replace(CFG, mtu=1420, wg_device="wg.test")
    mss = desired_state([], {}, cfg).table("mangle")["LIQO-MSS"]
    assert [r[:2] for r in mss] == [("-o", "wg.test"), ("-i", "wg.test")]
    assert all(r[-2:] == ("--set-mss", "1380") for r in mss)


def test_local_nat_external_cidr_is_what_the_remote_addresses() -> None:
    s = spec(local_nat_external_cidr="10.90.0.0/16")
    rs = desired_state([s], {s.cluster_id: {IPv4Address("10.0.3.4"): IPv4Address("10.90.0.9")}}, CFG)
    assert rs.table("nat")["LIQO-PREROUTING"][0][:4] == ("-s", "10.1.0.0/16", "-d", "10.90.0.0/16")
    assert rs.table("filter")["LIQO-FORWARD"] == (("-s", "10.1.0.0/16", "-d", "10.90.0.0/16", "-j", f"LIQO-FRWD-EXT-CLS-{S}"),)
    assert rs.table("nat")[f"LIQO-PRRT-MAP-CLS-{S}"] == tuple(args for _, args in save_lines(f"""
        -A LIQO-PRRT-MAP-CLS-{S} -d 10.90.0.1/32 -j DNAT --to-destination 169.254.0.1
        -A LIQO-PRRT-MAP-CLS-{S} -d 10.90.0.9/32 -j DNAT --to-destination 10.0.3.4
    """))  # fmt: skip


# ---- NAT map rules ------------------------------------------------------------------------------


def test_nat_map_rules_probe_first_then_sorted_by_new_address() -> None:
    s = spec()
    raw = {"10.0.0.5": "10.201.0.20", "192.168.1.7": "10.201.0.3", "10.0.9.9": "10.201.1.0", "169.254.0.1": "10.201.0.1"}
    rs = desired_state([s], {s.cluster_id: parse_nat_map(s, raw)}, CFG)
    assert rules_of(rs, "nat", f"LIQO-PRRT-MAP-CLS-{S}") == save_lines(f"""
        -A LIQO-PRRT-MAP-CLS-{S} -d 10.201.0.1/32 -j DNAT --to-destination 169.254.0.1
        -A LIQO-PRRT-MAP-CLS-{S} -d 10.201.0.3/32 -j DNAT --to-destination 192.168.1.7
        -A LIQO-PRRT-MAP-CLS-{S} -d 10.201.0.20/32 -j DNAT --to-destination 10.0.0.5
        -A LIQO-PRRT-MAP-CLS-{S} -d 10.201.1.0/32 -j DNAT --to-destination 10.0.9.9
    """)  # fmt: skip


def test_liqo_tunnel_entry_is_merged_into_the_probe_dnat() -> None:
    s = spec()
    parsed = parse_nat_map(s, {"169.254.0.1": "10.201.0.1", "10.0.0.5": "10.201.0.9"})
    assert parsed == {IPv4Address("10.0.0.5"): IPv4Address("10.201.0.9")}
    assert parse_nat_map(s, {"169.254.0.1": "10.201.0.1"}) == {}


def test_maps_of_unknown_clusters_are_ignored_and_order_of_specs_does_not_matter() -> None:
    a = spec()
    b = spec(cluster_id="zz-other", cluster_name="oslo", remote_pod_cidr="10.3.0.0/16",
             remote_external_cidr="10.204.0.0/16")
    maps = {a.cluster_id: {IPv4Address("10.0.0.5"): IPv4Address("10.201.0.9")},
            "ghost": {IPv4Address("10.0.0.6"): IPv4Address("10.201.0.10")}}
    one, two = desired_state([a, b], maps, CFG), desired_state([b, a], maps, CFG)
    assert one == two
    sb = chain_suffix("zz-other")
    assert [r[-1] for r in one.table("nat")["LIQO-POSTROUTING"]] == [f"LIQO-PSTRT-CLS-{S}"] * 2 + [f"LIQO-PSTRT-CLS-{sb}"] * 2
    assert len(one.table("nat")[f"LIQO-PRRT-MAP-CLS-{sb}"]) == 1  # only its probe DNAT
    assert "10.0.0.6" not in str(one)


BAD_MAPS = [
    ({"10.0.0.5": "10.202.0.9"}, "'10.0.0.5'.*outside the local external CIDR 10.201.0.0/16"),
    ({"10.0.0.5": "nope"}, "'10.0.0.5'.*value 'nope' is not an IPv4 address"),
    ({"10.0.0.5": "10.201.0.09"}, "not an IPv4 address"),
    ({"10.0.0.5/32": "10.201.0.9"}, "key '10.0.0.5/32' is not an IPv4 address"),
    ({"fd00::5": "10.201.0.9"}, "key 'fd00::5' is not an IPv4 address"),
    ({"10.0.0.5": " 10.201.0.9"}, "not an IPv4 address"),
    ({"127.0.0.1": "10.201.0.9"}, "'127.0.0.1'.*cannot be a workload address"),
    ({"224.0.0.5": "10.201.0.9"}, "cannot be a workload address"),
    ({"0.0.0.0": "10.201.0.9"}, "cannot be a workload address"),
    ({"10.0.0.5": "10.201.0.9", "10.0.0.6": "10.201.0.9"}, "'10.0.0.6'.*10.201.0.9 is already the new address of 10.0.0.5"),
    ({"10.0.0.5": "10.201.0.1"}, "'10.0.0.5'.*10.201.0.1 is reserved for the probe"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "message"), BAD_MAPS)
def test_invalid_nat_maps_are_refused_naming_the_entry(raw: dict[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_nat_map(spec(), raw)


def test_nat_map_size_limit() -> None:
    s = spec(local_external_cidr="100.64.0.0/10", local_pod_cidr="172.16.0.0/16")
    ok = {f"172.16.{i >> 8}.{i & 255}": f"100.65.{i >> 8}.{i & 255}" for i in range(natrules.MAX_NAT_ENTRIES)}
    assert len(parse_nat_map(s, ok)) == natrules.MAX_NAT_ENTRIES
    too_many = {**ok, "172.17.0.1": "100.66.0.1"}
    with pytest.raises(SpecError, match="65537 entries, at most 65536"):
        parse_nat_map(s, too_many)


def test_new_addresses_must_be_in_the_remapped_external_cidr() -> None:
    s = spec(local_nat_external_cidr="10.90.0.0/16")
    assert parse_nat_map(s, {"10.0.0.5": "10.90.3.3"}) == {IPv4Address("10.0.0.5"): IPv4Address("10.90.3.3")}
    with pytest.raises(SpecError, match=re.escape("outside the local external CIDR 10.90.0.0/16")):
        parse_nat_map(s, {"10.0.0.5": "10.201.3.3"})


def test_comments_never_carry_double_quotes() -> None:
    bad = dataclasses.replace(spec(), cluster_name='ro"me')  # TunnelSpec.parse refuses it; belt and braces
    with pytest.raises(SpecError, match="double quotes"):
        desired_state([bad], {}, CFG)


# ---- parsing iptables-legacy-save ---------------------------------------------------------------

SAVE = r"""# Generated by iptables-save v1.8.9
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:LIQO-PRRT-MAP-CLS-0a0b0c0d - [0:0]
:LIQO-PRRT-CLS-0a0b0c0d - [0:0]
:OTHER - [0:0]
-A PREROUTING -j OTHER
-A PREROUTING -j LIQO-PREROUTING
-A PREROUTING -j ACCEPT
-A POSTROUTING -j MASQUERADE
-A LIQO-PRRT-MAP-CLS-0a0b0c0d -d 10.201.0.1/32 -j DNAT --to-destination 169.254.0.1
-A OTHER -s 1.2.3.4/32 -j RETURN
COMMIT
*filter
:FORWARD ACCEPT [0:0]
:LIQO-FRWD-EXT-CLS-0a0b0c0d - [0:0]
-A FORWARD -j LIQO-FORWARD
-A LIQO-FRWD-EXT-CLS-0a0b0c0d -m comment --comment "Avoid forwarding \'x y\' remapped ExternalCIDR to liqo.gateway" -j DROP
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j CT --notrack
COMMIT
"""


def test_parse_save_keeps_liqo_chains_and_foreign_heads_only() -> None:
    assert parse_save(SAVE) == Ruleset({
        "nat": {
            "PREROUTING": (("-j", "OTHER"), ("-j", "LIQO-PREROUTING")),
            "LIQO-PRRT-MAP-CLS-0a0b0c0d": (("-d", "10.201.0.1/32", "-j", "DNAT", "--to-destination", "169.254.0.1"),),
            "LIQO-PRRT-CLS-0a0b0c0d": (),
        },
        "filter": {
            "FORWARD": (("-j", "LIQO-FORWARD"),),
            "LIQO-FRWD-EXT-CLS-0a0b0c0d": (
                ("-m", "comment", "--comment", "Avoid forwarding 'x y' remapped ExternalCIDR to liqo.gateway", "-j", "DROP"),
            ),
        },
    })  # fmt: skip


def test_render_quotes_only_what_needs_it_and_refuses_double_quotes() -> None:
    assert render_rule("C", ("-d", "10.0.0.1/32", "-j", "DROP")) == "-A C -d 10.0.0.1/32 -j DROP"
    assert render_rule("C", ("-m", "comment", "--comment", "a 'b' c", "-j", "DROP"), "-I", 3) == (
        "-I C 3 -m comment --comment \"a 'b' c\" -j DROP"
    )
    with pytest.raises(Exception, match="refused"):
        render_rule("C", ("--comment", 'a "b"'))


# ---- restore scripts, checked on a model of libiptc's chain semantics -----------------------------


class ModelError(Exception):
    pass


def run_script(chains: dict[str, list[Args]], script: str) -> None:
    """Executes a restore script the way `iptables-legacy-restore --noflush` does, raising on any
    command the kernel would refuse (whole script then discarded, like the real commit)."""
    work = {c: list(r) for c, r in chains.items()}
    lines = script.strip().splitlines()
    assert lines[0].startswith("*") and lines[-1] == "COMMIT"
    for line in lines[1:-1]:
        if line.startswith(":"):
            work[line[1:].split()[0]] = []  # creates, or flushes an existing chain
            continue
        words = shlex.split(line)
        op, chain, rest = words[0], words[1], words[2:]
        if chain not in work:
            raise ModelError(f"no chain {chain}: {line}")
        if op == "-F":
            work[chain] = []
        elif op == "-X":
            refs = [c for c, rs in work.items() for r in rs if natrules.jump_target(r) == chain]
            if work[chain] or refs:
                raise ModelError(f"chain {chain} not empty or referenced: {line}")
            del work[chain]
        elif op == "-A":
            work[chain].append(tuple(rest))
        elif op == "-I":
            pos = int(rest[0])
            if not 1 <= pos <= len(work[chain]) + 1:
                raise ModelError(f"index of insertion too big: {line}")
            work[chain].insert(pos - 1, tuple(rest[1:]))
        elif op == "-D":
            try:
                work[chain].remove(tuple(rest))
            except ValueError:
                raise ModelError(f"no such rule: {line}") from None
        else:
            raise ModelError(f"unexpected command {line}")
        for r in work.get(chain, []):
            target = natrules.jump_target(r)
            if target and target.startswith("LIQO-") and target not in work:
                raise ModelError(f"jump to missing chain {target}")
    chains.clear()
    chains.update(work)


def owned(chains: dict[str, list[Args]]) -> dict[str, tuple[Args, ...]]:
    text = "*t\n" + "".join(f":{c} - [0:0]\n" for c in chains)
    text += "".join(render_rule(c, r) + "\n" for c, rs in chains.items() for r in rs) + "COMMIT\n"
    return dict(parse_save(text).table("t"))


def converge(chains: dict[str, list[Args]], desired: dict[str, tuple[Args, ...]]) -> str | None:
    script = table_script("t", owned(chains), desired)
    if script is not None:
        run_script(chains, script)
    return script


def test_scripts_reach_any_desired_state_and_leave_foreign_rules_alone() -> None:
    rng = random.Random(42)
    pool = [("-d", f"10.201.0.{i}/32", "-j", "DNAT", "--to-destination", f"10.0.0.{i}") for i in range(40)]
    foreign = [("-j", "ACCEPT"), ("-s", "1.1.1.1/32", "-j", "DROP")]
    for _ in range(400):
        chains: dict[str, list[Args]] = {"PREROUTING": list(foreign), "OTHER": []}
        for name in rng.sample(["LIQO-A", "LIQO-B", "LIQO-C"], rng.randint(0, 3)):
            chains[name] = rng.sample(pool, rng.randint(0, 30))
            chains["PREROUTING"].insert(rng.randint(0, len(chains["PREROUTING"])), ("-j", name))
        desired: dict[str, tuple[Args, ...]] = {}
        for name in rng.sample(["LIQO-A", "LIQO-B", "LIQO-C", "LIQO-D"], rng.randint(0, 4)):
            current = chains.get(name, [])
            if current and rng.random() < 0.6:  # small edit of the current chain
                edited = [r for r in current if rng.random() > 0.1]
                for r in rng.sample(pool, 3):
                    if r not in edited:
                        edited.insert(rng.randint(0, len(edited)), r)
                desired[name] = tuple(edited)
            else:
                desired[name] = tuple(rng.sample(pool, rng.randint(0, 30)))
        if desired:
            desired["PREROUTING"] = tuple(("-j", n) for n in sorted(desired)[:2])
        converge(chains, desired)
        assert owned(chains) == desired
        assert [r for r in chains["PREROUTING"] if not natrules.jump_target(r).startswith("LIQO-")] == foreign
        assert converge(chains, desired) is None  # converged: nothing left to write


def test_one_changed_entry_in_a_large_chain_is_a_two_line_edit() -> None:
    base = [("-d", f"10.201.{i >> 8}.{i & 255}/32", "-j", "DNAT", "--to-destination", f"10.0.{i >> 8}.{i & 255}")
            for i in range(10000)]  # fmt: skip
    chains: dict[str, list[Args]] = {"LIQO-M": list(base)}
    changed = list(base)
    changed[5000] = ("-d", "10.201.19.136/32", "-j", "DNAT", "--to-destination", "192.168.0.1")
    script = converge(chains, {"LIQO-M": tuple(changed)})
    assert script is not None
    assert script.splitlines()[1:-1] == [
        "-D LIQO-M -d 10.201.19.136/32 -j DNAT --to-destination 10.0.19.136",
        "-I LIQO-M 5001 -d 10.201.19.136/32 -j DNAT --to-destination 192.168.0.1",
    ]
    assert chains["LIQO-M"] == changed
    moved = changed[:100] + changed[101:] + [changed[100]]  # a kept rule moved: sequence diff
    script = converge(chains, {"LIQO-M": tuple(moved)})
    assert script is not None and len(script.splitlines()) == 4
    assert chains["LIQO-M"] == moved


def test_big_changes_rewrite_the_chain_and_removed_chains_are_deleted_last() -> None:
    rules = [("-d", f"10.201.0.{i}/32", "-j", "DROP") for i in range(200)]
    chains: dict[str, list[Args]] = {"LIQO-M": rules, "LIQO-GONE": [("-j", "LIQO-M")], "FORWARD": [("-j", "LIQO-GONE")]}
    script = converge(chains, {"LIQO-M": tuple(reversed(rules)), "FORWARD": ()})
    assert script is not None
    lines = script.splitlines()
    assert ":LIQO-M - [0:0]" in lines and lines[-2] == "-X LIQO-GONE"
    assert chains == {"LIQO-M": list(reversed(rules)), "FORWARD": []}


def test_owning_a_non_jump_rule_in_a_builtin_is_refused() -> None:
    with pytest.raises(ValueError, match="only jumps to LIQO chains"):
        table_script("nat", {}, {"PREROUTING": (("-j", "ACCEPT"),)})


def test_equal_states_give_no_script() -> None:
    rs = desired_state([spec(True, True, True)], {}, CFG)
    for table in natrules.TABLES:
        assert table_script(table, rs.table(table), rs.table(table)) is None


def test_whole_chain_blocks_quote_like_single_lines() -> None:
    rs = desired_state([spec(True, False, True)], {}, CFG)
    for table in natrules.TABLES:
        script = table_script(table, {}, rs.table(table))
        assert script is not None
        expected = [render_rule(c, r) for c in sorted(rs.table(table)) for r in rs.table(table)[c]
                    if c.startswith("LIQO-")]
        assert [line for line in script.splitlines() if line.startswith("-A ")] == expected


def test_duplicated_rules_are_never_deleted_by_content() -> None:
    r = [("-d", f"10.201.0.{i}/32", "-j", "DROP") for i in range(300)]
    chains: dict[str, list[Args]] = {"LIQO-M": [*r, r[7]]}  # somebody appended a copy of rule 8
    script = converge(chains, {"LIQO-M": tuple(r[:7] + r[8:])})  # ...and rule 8 is to go
    assert script is not None and ":LIQO-M - [0:0]" in script  # rewritten, not "-D" by content
    assert chains["LIQO-M"] == r[:7] + r[8:]


def test_parsing_only_the_changes_gives_what_a_full_parse_gives() -> None:
    """Maps are resent whole; parse_nat_map derives the next map from the cluster's previous one
    when few entries differ. Random edit sequences, each checked against a fresh full parse."""
    rng = random.Random(7)
    s = spec(local_external_cidr="10.201.0.0/24")
    cur = {f"10.0.0.{i}": f"10.201.0.{i + 2}" for i in range(1, 200)}
    for step in range(300):
        nxt = dict(cur)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.3 and nxt:
                del nxt[rng.choice(list(nxt))]
            elif op < 0.6 and nxt:
                nxt[rng.choice(list(nxt))] = f"10.201.0.{rng.randint(0, 255)}"  # may collide or hit the probe
            elif op < 0.9:
                nxt[f"10.0.{rng.randint(1, 9)}.{rng.randint(1, 254)}"] = f"10.201.0.{rng.randint(2, 255)}"
            else:
                nxt[rng.choice(["169.254.0.1", "127.0.0.1", "10.0.0.x"])] = "10.201.0.1"
        try:
            got: natrules.NatMap | SpecError = parse_nat_map(s, nxt)
        except SpecError as e:
            got = e
        natrules._parse_memo.clear()
        try:
            want: natrules.NatMap | SpecError = parse_nat_map(s, nxt)
        except SpecError as e:
            want = e
        if isinstance(want, SpecError):
            assert isinstance(got, SpecError), f"step {step}: {want} not detected"
            parse_nat_map(s, cur)  # back to the last good map (re-seeds the memo)
            continue
        assert isinstance(got, natrules.NatMap), f"step {step}: {got}"
        assert got == want and got.rules == want.rules, f"step {step}"
        assert desired_state([s], {s.cluster_id: got}, CFG) == desired_state([s], {s.cluster_id: dict(want)}, CFG)
        cur = nxt


def test_nat_maps_are_read_only() -> None:
    """The rules a map carries cannot drift from its entries: there is no way to mutate it."""
    m = parse_nat_map(spec(), {"10.0.0.5": "10.201.0.9"})
    with pytest.raises(TypeError):
        m[IPv4Address("10.0.0.6")] = IPv4Address("10.201.0.7")  # type: ignore[index]
    for mutator in ("clear", "pop", "update", "popitem", "setdefault", "__delitem__"):
        assert not hasattr(m, mutator), mutator
    assert m == {IPv4Address("10.0.0.5"): IPv4Address("10.201.0.9")}
    assert m[IPv4Address("10.0.0.5")] == IPv4Address("10.201.0.9") and "10.0.0.5" not in m
    for clone in (copy.copy(m), copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone == m and clone.rules == m.rules


def test_nat_map_as_strings_round_trips() -> None:
    raw = {"10.0.0.5": "10.201.0.9", "192.168.3.4": "10.201.7.7", "169.254.0.1": "10.201.0.1"}
    m = parse_nat_map(spec(), raw)
    assert m.as_strings() == {"10.0.0.5": "10.201.0.9", "192.168.3.4": "10.201.7.7"}
    assert m.as_strings() == {str(o): str(n) for o, n in m.items()}


def test_nat_maps_compare_by_content() -> None:
    s = spec()
    a = parse_nat_map(s, {"10.0.0.5": "10.201.0.9"})
    natrules._parse_memo.clear()  # a second, independent parse
    b = parse_nat_map(s, {"10.0.0.5": "10.201.0.9"})
    c = parse_nat_map(s, {"10.0.0.5": "10.201.0.8"})
    plain = {IPv4Address("10.0.0.5"): IPv4Address("10.201.0.9")}
    assert a is not b and a == b and a != c
    assert a == plain and plain == a and c != plain and a != {}
