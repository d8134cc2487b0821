"""TunnelEndpoint edits converge, with the tunnel and NatMapping controllers against REAL netagents.

Two emulated clusters whose pod CIDRs are the same (10.0.0.0/16), as in
tests/integration/test_netagent_two_nodes.py: A sees B's pods as 10.60.0.0/16 and B's external CIDR
as 10.70.0.0/16; B sees A's pods as 10.80.0.0/16 and A's external CIDR as 10.90.0.0/16. Each
cluster has its own API server, netagent and controllers. The tests run in file order on one pair
of clusters (each leaves the tunnel working on its new settings); the last deletes the tunnel.

After each edit: traffic flows on the new settings, the old settings stop working, and nothing of
them stays in the kernel (`wg show`, `ip route`, `ip rule`, iptables-legacy-save in the nodes).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.testkit.hosts import link_nodes
from sandbox.testkit.lab import (
    ID_B,
    NS_A,
    NS_B,
    WG_PORT,
    Cluster,
    Lab,
    liqo_chains,
    tep_for_a,
    tep_for_b,
    why_unavailable,
)
from sandbox.testkit.netagent import snapshot_diff
from sandbox.testkit.resources import tunnel_endpoint
from sandbox.testkit.traffic import ping_ok
from sandbox.testkit.wait import wait_for
from services.common.keys import generate
from services.common.vocabulary import TUNNEL_ENDPOINTS
from services.tunnel import status as st

pytestmark = pytest.mark.root

ID_C = "cccccccc-3333-4333-8333-0000000000c3"
NS_C = "liqo-tenant-cluster-c"
NS_EVIL = "liqo-tenant-intruder"
A_UL, B_UL = "192.0.2.1", "192.0.2.2"  # the first underlay
A_UL2, B_UL2 = "198.51.100.1", "198.51.100.2"  # the second underlay, where B moves
POD_A, POD_B = "10.0.1.5", "10.0.2.7"
LIQO_TABLE = "18952"


@dataclass
class Pair:
    a: Cluster
    b: Cluster
    b_underlay_dev: str
    a_empty: dict[str, str]  # A's kernel state with the agent active and no tunnel

    def a_pings_b(self, prefix: str = "10.60") -> bool:
        return ping_ok(self.a.pods["web"], f"{prefix}.2.7")

    def b_pings_a(self, prefix: str = "10.80") -> bool:
        return ping_ok(self.b.pods["web"], f"{prefix}.1.5")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if why := why_unavailable():
        pytest.skip(why)
    with Lab(Path(tmp_path_factory.mktemp("edits"))) as lab:
        na, nb = lab.node("eda"), lab.node("edb")
        _, b_dev = link_nodes(na, A_UL, nb, B_UL)
        link_nodes(na, A_UL2, nb, B_UL2)
        a = lab.cluster("a", na, A_UL, natmap=True)
        b = lab.cluster("b", nb, B_UL, natmap=True)
        a.add_pod("web", f"{POD_A}/16")
        b.add_pod("web", f"{POD_B}/16")
        a_empty = a.snapshot()
        a.create_tep(tep_for_b(B_UL, b.public_key))
        b.create_tep(tep_for_a(A_UL, a.public_key))
        p = Pair(a, b, b_dev, a_empty)
        a.wait_status("cluster-b", NS_B, st.CONNECTED)
        wait_for("A pod -> B pod", p.a_pings_b)
        yield p


def no_trace(snapshot: dict[str, str], text: str) -> list[str]:
    """The parts of a kernel snapshot that still mention `text` (as a whole address or CIDR:
    192.0.2.2 is not in 192.0.2.255)."""
    pattern = re.compile(rf"(?<![\d.]){re.escape(text)}(?!\d)")
    return [part for part, dump in snapshot.items() if pattern.search(dump)]


def test_tunnel_connects_pods_with_the_same_cidr(pair: Pair) -> None:
    conn = pair.a.wait_status("cluster-b", NS_B, st.CONNECTED,
                              where=lambda c: (c.get("latency") or {}).get("value") not in (None, "N/A"))
    assert conn["statusMessage"] == st.MSG_CONNECTED
    assert conn["peerConfiguration"]["endpointIP"] == B_UL
    assert conn["peerConfiguration"]["allowedIPs"] == "10.60.0.0/16, 10.70.0.0/16"
    assert pair.a.tep("cluster-b", NS_B)["status"]["gatewayIP"] == A_UL  # type: ignore[index]
    assert pair.b_pings_a(), "B pod -> A pod via 10.80.1.5"


def test_endpoint_change_converges(pair: Pair) -> None:
    """B moves to its second underlay address. B loses the first one entirely (so it cannot reach A
    there either, and WireGuard roaming cannot hide a missed edit): traffic stops until A's
    TunnelEndpoint names the new address, and only then flows again."""
    a, b = pair.a, pair.b
    b.node.run("ip", "addr", "del", f"{B_UL}/24", "dev", pair.b_underlay_dev)
    wait_for("traffic to stop on the lost address", lambda: not pair.a_pings_b())
    a.patch_tep_spec("cluster-b", NS_B, {"endpointIP": B_UL2})
    wait_for("A pod -> B pod over the new endpoint", pair.a_pings_b, timeout=30)
    # B now reaches A over the second underlay too.
    b.patch_tep_spec("cluster-a", NS_A, {"endpointIP": A_UL2})
    wait_for("B's peer endpoint", lambda: b.wg_peers()[a.public_key]["endpoint"] == f"{A_UL2}:{WG_PORT}")
    assert a.wg_peers()[b.public_key]["endpoint"] == f"{B_UL2}:{WG_PORT}"
    assert pair.b_pings_a()
    conn = a.wait_status("cluster-b", NS_B, st.CONNECTED,
                         where=lambda c: c.get("peerConfiguration", {}).get("endpointIP") == B_UL2)
    assert conn["peerConfiguration"]["port"] == str(WG_PORT)
    for c, old in ((a, B_UL), (b, A_UL)):
        assert not no_trace(c.snapshot(), old), f"{c.name} still knows the old endpoint {old}"


def test_public_key_rotation_converges(pair: Pair) -> None:
    """B's key Secret is rotated (no restart: the controller re-reads the Secret): B's device takes
    the new key, A's tunnel breaks until A's TunnelEndpoint names the new key, and the old key leaves
    A's device."""
    a, b = pair.a, pair.b
    old = b.public_key
    new = b.rotate_key()
    wait_for("B's device to hold the new key", lambda: b.netagent.get_info().public_key == new.public_key)
    assert b.public_key == new.public_key
    wait_for("traffic to stop with the old key", lambda: not pair.a_pings_b())
    a.patch_tep_spec("cluster-b", NS_B, {"backend_config": {"publicKey": new.public_key,
                                                             "port": str(WG_PORT)}})
    wait_for("A pod -> B pod with the new key", pair.a_pings_b, timeout=30)
    assert set(a.wg_peers()) == {new.public_key}
    snap = a.snapshot()
    assert not no_trace(snap, old), "A still holds B's old key"
    assert pair.b_pings_a()
    conn = a.wait_status("cluster-b", NS_B, st.CONNECTED,
                         where=lambda c: c.get("peerConfiguration", {}).get("publicKey") == new.public_key)
    assert conn["statusMessage"] == st.MSG_CONNECTED


def test_remapping_change_converges(pair: Pair) -> None:
    """Both clusters agree on a new remapping of B's pods (10.60/16 -> 10.61/16): A routes, admits
    and translates the new CIDR and B answers on it; 10.60/16 is gone from both kernels."""
    a, b = pair.a, pair.b
    a.patch_tep_spec("cluster-b", NS_B, {"remoteNATPodCIDR": "10.61.0.0/16"})
    b.patch_tep_spec("cluster-a", NS_A, {"localNATPodCIDR": "10.61.0.0/16"})
    wait_for("A pod -> B pod via 10.61.2.7", lambda: pair.a_pings_b("10.61"), timeout=30)
    assert not pair.a_pings_b("10.60"), "the old remapping must not reach B any more"
    assert pair.b_pings_a(), "B pod -> A pod via 10.80.1.5"
    snap_a, snap_b = a.snapshot(), b.snapshot()
    assert not no_trace(snap_a, "10.60.0.0/16"), "A kept the old remapping"
    assert not no_trace(snap_b, "10.60.0.0/16"), "B kept the old remapping"
    assert "10.61.0.0/16 dev liqo.tunnel" in snap_a["netns routes"]
    assert f"from all lookup {LIQO_TABLE}" in snap_a["host rules"]
    assert any(r.startswith(f"10.61.0.0/16 via 169.254.100.1 dev liqo.host table {LIQO_TABLE}")
               for r in snap_a["host routes"].splitlines())
    assert "10.61.0.0/16" in snap_a["wg"] and "10.61.0.0/16" in snap_b["iptables"]
    a.wait_status("cluster-b", NS_B, st.CONNECTED,
                  where=lambda c: c.get("peerConfiguration", {}).get("allowedIPs")
                  == "10.61.0.0/16, 10.70.0.0/16")


def test_invalid_tunnelendpoint_gets_error_and_changes_nothing(pair: Pair) -> None:
    a = pair.a
    before = a.snapshot()
    bad = tunnel_endpoint(name="cluster-c", namespace=NS_C, cluster_id=ID_C, local_pod="10.0.0.0/16",
                          local_ext="10.201.0.0/16", remote_pod="10.0.0.0/16",
                          remote_nat_pod="10.62.0.1/16",  # host bits: not a CIDR
                          remote_ext="10.202.0.0/16", endpoint="192.0.2.99", public_key=pair.b.public_key)
    a.create_tep(bad)
    conn = a.wait_status("cluster-c", NS_C, st.ERROR)
    assert "spec.remoteNATPodCIDR" in conn["statusMessage"], conn
    warnings = wait_for("a Warning Event", lambda: a.events_for("cluster-c", NS_C, "Warning"))
    assert any(e["reason"] == "InvalidSpec" and "spec.remoteNATPodCIDR" in e["message"] for e in warnings)
    # An invalid edit of the live tunnel: Error and an Event, and the tunnel keeps its last valid
    # settings (traffic flows on).
    a.patch_tep_spec("cluster-b", NS_B, {"remoteNATExternalCIDR": "10.70.0.5/16"})
    conn = a.wait_status("cluster-b", NS_B, st.ERROR)
    assert "spec.remoteNATExternalCIDR" in conn["statusMessage"], conn
    # The live tunnel's status stream (every 0.5 s here) must not overwrite the Error, nor may the
    # two fight: over several periods, no status write at all.
    rv = a.tep("cluster-b", NS_B)["metadata"]["resourceVersion"]  # type: ignore[index]
    time.sleep(3.0)
    obj = a.tep("cluster-b", NS_B) or {}
    assert obj["metadata"]["resourceVersion"] == rv, f"status flapping: {obj['status']}"
    wait_for("a Warning Event for the edit", lambda: [
        e for e in a.events_for("cluster-b", NS_B, "Warning") if e["reason"] == "InvalidSpec"])
    assert pair.a_pings_b("10.61"), "an invalid edit must not disturb the running tunnel"
    after = a.snapshot()
    assert after == before, snapshot_diff(before, after)
    # Deleting the invalid TunnelEndpoint finalizes it without touching the kernel either.
    a.kube.delete(TUNNEL_ENDPOINTS, "cluster-c", NS_C)
    wait_for("the invalid TunnelEndpoint to go", lambda: a.tep("cluster-c", NS_C) is None)
    a.patch_tep_spec("cluster-b", NS_B, {"remoteNATExternalCIDR": "10.70.0.0/16"})
    a.wait_status("cluster-b", NS_B, st.CONNECTED)
    assert a.snapshot() == before


def test_another_tenant_cannot_take_a_cluster_id_or_a_key(pair: Pair) -> None:
    """A TunnelEndpoint in another tenant's namespace naming A's cluster id (then another cluster id
    with A's peer key) gets status Error naming the owner and a Warning Event; A's tunnel stays
    Connected and its kernel state is untouched. Deleting the intruder deletes nothing of A's."""
    a = pair.a
    owner = f"{NS_B}/cluster-b"
    before = a.snapshot()
    peers = a.wg_peers()
    intruder = tunnel_endpoint(name="intruder", namespace=NS_EVIL, cluster_id=ID_B, local_pod="10.0.0.0/16",
                               local_ext="10.201.0.0/16", remote_pod="10.0.0.0/16",
                               remote_nat_pod="10.63.0.0/16", remote_ext="10.202.0.0/16",
                               remote_nat_ext="10.73.0.0/16", endpoint="203.0.113.66",
                               public_key=generate().public_key)
    a.create_tep(intruder)
    conn = a.wait_status("intruder", NS_EVIL, st.ERROR)
    assert owner in conn["statusMessage"] and ID_B in conn["statusMessage"], conn
    warnings = wait_for("a Warning Event", lambda: [
        e for e in a.events_for("intruder", NS_EVIL, "Warning") if e["reason"] == "ClusterOwned"])
    assert owner in warnings[0]["message"]
    # Not retried in a tight loop: no status write over several seconds.
    rv = a.tep("intruder", NS_EVIL)["metadata"]["resourceVersion"]  # type: ignore[index]
    time.sleep(2.0)
    assert a.tep("intruder", NS_EVIL)["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    # Another cluster id, with the key of A's peer: refused the same way.
    a.patch_tep_spec("intruder", NS_EVIL, {
        "clusterIdentity": {"clusterID": ID_C, "clusterName": "intruder"},
        "backend_config": {"publicKey": pair.b.public_key, "port": str(WG_PORT)},
    })
    conn = a.wait_status("intruder", NS_EVIL, st.ERROR, where=lambda c: "public_key" in c["statusMessage"])
    assert owner in conn["statusMessage"], conn
    # A's tunnel: untouched and Connected all along.
    assert a.connection("cluster-b", NS_B)["status"] == st.CONNECTED
    assert a.wg_peers() == peers
    assert pair.a_pings_b("10.61")
    after = a.snapshot()
    assert after == before, snapshot_diff(before, after)
    entries = {e.tunnel.cluster_id: e for e in a.netagent.list_tunnels()}
    assert set(entries) == {ID_B} and entries[ID_B].owner == owner
    assert entries[ID_B].tunnel.public_key == pair.b.public_key
    # The intruder goes: its finalizer deletes nothing of A's.
    a.kube.delete(TUNNEL_ENDPOINTS, "intruder", NS_EVIL)
    wait_for("the intruder to go", lambda: a.tep("intruder", NS_EVIL) is None)
    assert a.snapshot() == before
    assert a.connection("cluster-b", NS_B)["status"] == st.CONNECTED


def test_delete_removes_every_trace_and_the_finalizer(pair: Pair) -> None:
    """Runs last. A's kernel returns exactly to the state it had before the tunnel."""
    a = pair.a
    a.kube.delete(TUNNEL_ENDPOINTS, "cluster-b", NS_B)
    wait_for("the TunnelEndpoint (and its finalizer) to go", lambda: a.tep("cluster-b", NS_B) is None)
    snap = a.snapshot()
    assert a.wg_peers() == {}
    assert a.netns("ip", "-4", "route", "show", "table", "main", "dev", "liqo.tunnel").strip() == ""
    assert LIQO_TABLE not in snap["host rules"] and f"table {LIQO_TABLE}" not in snap["host routes"]
    assert not liqo_chains(snap["iptables"])
    assert snap == pair.a_empty, snapshot_diff(pair.a_empty, snap)
    assert not pair.a_pings_b("10.61")
    assert a.netagent.list_tunnels() == []
