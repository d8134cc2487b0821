"""NatMappings through the natmap controller with REAL netagents, end to end.

The clusters of test_tunnel_edits_e2e.py (same pod CIDR 10.0.0.0/16 on both sides, remapped). Cluster B
exports its pod 10.0.2.7 to cluster A through B's external CIDR as A sees it (10.70.0.0/16): a
NatMapping in B's API server for cluster A. The proof is traffic from A's pod to the mapped address
and the DNAT rules in B's gateway netns. The tests run in file order on one pair of clusters; the
first one starts with B's TunnelEndpoint missing (the mapping must wait for the tunnel).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.testkit.hosts import link_nodes
from sandbox.testkit.lab import ID_A, NS_B, Cluster, Lab, tep_for_a, tep_for_b, why_unavailable
from sandbox.testkit.resources import nat_mapping
from sandbox.testkit.traffic import ping_ok
from sandbox.testkit.wait import wait_for
from services.common.vocabulary import FINALIZER, NAT_MAPPINGS
from services.tunnel import status as st

pytestmark = pytest.mark.root

A_UL, B_UL = "192.0.2.1", "192.0.2.2"
POD_A, POD_B = "10.0.1.5", "10.0.2.7"
NM = "natmapping-cluster-a"


@dataclass
class Pair:
    a: Cluster
    b: Cluster

    def reaches(self, address: str) -> bool:
        """A's pod reaches `address` (an address B exports) through the tunnel."""
        return ping_ok(self.a.pods["web"], address)

    def dnat_rules(self) -> list[str]:
        """The DNAT rules in B's gateway netns, as `-d X/32 ... --to-destination Y` lines."""
        save = self.b.netns("iptables-legacy-save", "-t", "nat")
        return [line for line in save.splitlines() if "-j DNAT" in line and "--to-destination 10.0." in line]

    def dnat(self) -> dict[str, str]:
        """mapped address -> real address, from B's DNAT rules."""
        out = {}
        for line in self.dnat_rules():
            m = re.search(r"-d (\S+)/32 .*--to-destination (\S+)", line)
            assert m, line
            out[m.group(1)] = m.group(2)
        return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if why := why_unavailable():
        pytest.skip(why)
    with Lab(Path(tmp_path_factory.mktemp("natmap"))) as lab:
        na, nb = lab.node("nma"), lab.node("nmb")
        link_nodes(na, A_UL, nb, B_UL)
        a = lab.cluster("a", na, A_UL, natmap=True)
        b = lab.cluster("b", nb, B_UL, natmap=True)
        a.add_pod("web", f"{POD_A}/16")
        b.add_pod("web", f"{POD_B}/16")
        # Only A's side of the tunnel: B's TunnelEndpoint comes in the first test.
        a.create_tep(tep_for_b(B_UL, b.public_key))
        yield Pair(a, b)


def warnings(c: Cluster, reason: str) -> list[dict[str, object]]:
    return [e for e in c.events_for(NM, "default", "Warning") if e["reason"] == reason]


def test_natmapping_waits_for_its_tunnel_then_applies(pair: Pair) -> None:
    a, b = pair.a, pair.b
    b.kube.create(NAT_MAPPINGS, nat_mapping(name=NM, cluster_id=ID_A, pod_cidr="10.80.0.0/16",
                                            external_cidr="10.70.0.0/16", mappings={POD_B: "10.70.0.7"}))
    ev = wait_for("a TunnelNotReady Event", lambda: warnings(b, "TunnelNotReady"))
    assert ID_A in str(ev[0]["message"])
    assert pair.dnat() == {}, "nothing is applied before the tunnel exists"
    assert [t.tunnel.cluster_id for t in b.netagent.list_tunnels()] == []
    b.create_tep(tep_for_a(A_UL, a.public_key))
    wait_for("the DNAT rule once the tunnel exists", lambda: pair.dnat() == {"10.70.0.7": POD_B})
    a.wait_status("cluster-b", NS_B, st.CONNECTED)
    wait_for("A pod -> 10.70.0.7 (B's pod)", lambda: pair.reaches("10.70.0.7"))
    assert FINALIZER in (b.natmapping(NM) or {}).get("metadata", {}).get("finalizers", [])
    assert [e for e in b.events_for(NM, "default", "Normal") if e["reason"] == "MappingsApplied"]


def test_changed_mapping_moves_the_address(pair: Pair) -> None:
    b = pair.b
    b.kube.patch(NAT_MAPPINGS, NM, {"spec": {"clusterMappings": {POD_B: "10.70.0.8"}}})
    wait_for("A pod -> 10.70.0.8", lambda: pair.reaches("10.70.0.8"))
    assert pair.dnat() == {"10.70.0.8": POD_B}, pair.dnat_rules()
    assert not pair.reaches("10.70.0.7"), "the old address must stop working"
    save = b.netns("iptables-legacy-save", "-t", "nat")
    assert "10.70.0.7/32" not in save


def test_invalid_entries_are_reported_and_valid_ones_applied(pair: Pair) -> None:
    b = pair.b
    b.kube.patch(NAT_MAPPINGS, NM, {"spec": {"clusterMappings": {
        "10.0.2.10": "10.70.0.10",  # valid (no such pod: the rule is what counts)
        "not-an-ip": "10.70.0.20",  # key is not an address
        "10.0.2.8": "10.99.0.1",  # outside the external CIDR
        "10.0.2.9": "10.70.0.8",  # already used by 10.0.2.7
    }}})
    ev = wait_for("an InvalidMappings Event", lambda: warnings(b, "InvalidMappings"))
    msg = str(ev[0]["message"])
    assert msg.startswith("3 entries skipped, 2 applied"), msg
    for bad in ("not-an-ip", "10.0.2.8: 10.99.0.1 is outside", "10.0.2.9: 10.70.0.8 is already mapped"):
        assert bad in msg, msg
    wait_for("the valid entries applied",
               lambda: pair.dnat() == {"10.70.0.8": POD_B, "10.70.0.10": "10.0.2.10"})
    save = b.netns("iptables-legacy-save", "-t", "nat")
    assert "10.99.0.1" not in save and "10.70.0.20" not in save and "10.0.2.9" not in save
    assert pair.reaches("10.70.0.8")


def test_deleting_the_natmapping_removes_its_rules_and_finalizer(pair: Pair) -> None:
    b = pair.b
    b.kube.delete(NAT_MAPPINGS, NM)
    wait_for("the NatMapping (and its finalizer) to go", lambda: b.natmapping(NM) is None)
    assert pair.dnat() == {}
    save = b.netns("iptables-legacy-save", "-t", "nat")
    assert "10.70.0.8/32" not in save and "10.70.0.10/32" not in save
    assert not pair.reaches("10.70.0.8"), "an unmapped address must not be forwarded"
    # The tunnel itself is untouched.
    assert ping_ok(pair.a.pods["web"], "10.60.2.7")
