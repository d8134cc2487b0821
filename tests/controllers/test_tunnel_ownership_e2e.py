"""Ownership of a cluster id and of a WireGuard key survives the netagent losing its state, with the
tunnel controller against a REAL netagent.

Tenant A's TunnelEndpoint (cluster-b in NS_B) holds cluster id ID_B with the peer key PEER. Two
intruders in other tenants' namespaces name ID_B (with their own key) and another cluster id with
PEER. Their namespaces sort before A's, so a full resync reaches them first: on a netagent that
remembers no claim (killed and restarted without its state file, as a new gateway pod or a failover
to a replica that never saw the claim), the first EnsureTunnel would own the cluster id. The
controller decides the owner from the status the gateway wrote (A's records that it holds ID_B and
PEER; the intruders' name A), so A keeps its tunnel after every restart and the intruders never
reach the netagent (their Error is the controller's own). A's invalid edit, with the netagent losing its
state meanwhile, does not hand the cluster id over either.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.testkit.lab import ID_B, NS_B, WG_PORT, Cluster, Lab, tep_for_b, why_unavailable
from sandbox.testkit.resources import tunnel_endpoint
from sandbox.testkit.wait import wait_for
from services.common.keys import generate
from services.common.kube import KubeError
from services.common.vocabulary import TUNNEL_ENDPOINTS
from services.tunnel import status as st

pytestmark = pytest.mark.root

ID_C = "cccccccc-3333-4333-8333-0000000000c3"
OWNER = f"{NS_B}/cluster-b"
PEER_ENDPOINT = "192.0.2.2"
# Before NS_B ("liqo-tenant-cluster-b") in namespace/name order, so resynced first.
NS_SAME_ID = "liqo-tenant-aaa-intruder"
NS_SAME_KEY = "liqo-tenant-aab-intruder"
ROUNDS = 3


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if why := why_unavailable():
        pytest.skip(why)
    with Lab(Path(tmp_path_factory.mktemp("ownership"))) as lab:
        yield lab.cluster("a", lab.node("own"), "192.0.2.1")


def owners(c: Cluster) -> dict[str, tuple[str, str, str]]:
    """The netagent's tunnels: cluster id -> (owner, public key, endpoint)."""
    return {e.tunnel.cluster_id: (e.owner, e.tunnel.public_key, e.tunnel.endpoint)
            for e in c.netagent.list_tunnels()}


def restart_without_state(c: Cluster, epoch: int) -> None:
    """A crash and a restart with an empty state (what a new pod or a replica that never held the
    claims sees); then the role is granted again, which resumes the controller with a full resync.
    Returns once that resync is done."""
    assert c.tunnel is not None
    ctl = c.tunnel.controller
    c.netagent_process.kill()
    wait_for("the controller to pause (role stream lost)", lambda: ctl.paused)
    c.netagent_process.state.unlink(missing_ok=True)
    c.netagent_process.start()
    assert owners(c) == {}, "the restarted netagent must remember no tunnel"
    c.activate(epoch=epoch)
    wait_for("the controller to resume", lambda: not ctl.paused, timeout=60)
    wait_for("the full resync to be done", ctl.idle, timeout=60)


def test_first_claimant_keeps_cluster_id_and_key_across_netagent_state_loss(gw: Cluster) -> None:
    peer = generate().public_key
    mine = (OWNER, peer, PEER_ENDPOINT)
    gw.create_tep(tep_for_b(PEER_ENDPOINT, peer))
    wait_for("A's tunnel", lambda: owners(gw).get(ID_B) == mine)
    gw.wait_status("cluster-b", NS_B, st.CONNECTING)
    same_id = tunnel_endpoint(name="intruder", namespace=NS_SAME_ID, cluster_id=ID_B, local_pod="10.0.0.0/16",
                              local_ext="10.201.0.0/16", remote_pod="10.0.0.0/16",
                              remote_nat_pod="10.63.0.0/16", remote_ext="10.202.0.0/16",
                              remote_nat_ext="10.73.0.0/16", endpoint="203.0.113.66",
                              public_key=generate().public_key)
    same_key = tunnel_endpoint(name="key-intruder", namespace=NS_SAME_KEY, cluster_id=ID_C,
                               local_pod="10.0.0.0/16", local_ext="10.201.0.0/16", remote_pod="10.0.0.0/16",
                               remote_nat_pod="10.64.0.0/16", remote_ext="10.203.0.0/16",
                               remote_nat_ext="10.74.0.0/16", endpoint="203.0.113.67", public_key=peer)
    intruders = (("intruder", NS_SAME_ID, ID_B), ("key-intruder", NS_SAME_KEY, ID_C))

    # The gateway's own decision, word for word: had an intruder reached the netagent, its
    # message would carry the netagent's refusal instead.
    held_back = {
        ("intruder", NS_SAME_ID): f"clusterID {ID_B} is owned by TunnelEndpoint {OWNER}",
        ("key-intruder", NS_SAME_KEY): f"clusterID {ID_C}: public_key is already used by cluster "
                                       f"'{ID_B}', which is owned by TunnelEndpoint {OWNER}",
    }

    def refused_naming_owner() -> bool:
        return all(gw.connection(name, ns).get("status") == st.ERROR
                   and gw.connection(name, ns).get("statusMessage") == msg
                   for (name, ns), msg in held_back.items())

    try:
        gw.create_tep(same_id)
        gw.create_tep(same_key)
        wait_for("both intruders refused naming A", refused_naming_owner)
        assert owners(gw) == {ID_B: mine}
        for round_ in range(ROUNDS):
            restart_without_state(gw, epoch=2 + round_)
            # Once A holds the cluster id, the netagent's own first-claim check keeps it: waiting
            # for A is enough, an intruder that got there first would hold it for good.
            got = wait_for(f"round {round_}: A's tunnel back", lambda: owners(gw).get(ID_B), timeout=60)
            assert got == mine, f"round {round_}: cluster id {ID_B} taken: {got}"
            wait_for(f"round {round_}: A's peer", lambda: set(gw.wg_peers()) == {peer}, timeout=30)
            assert gw.wg_peers()[peer]["endpoint"] == f"{PEER_ENDPOINT}:{WG_PORT}"
            gw.wait_status("cluster-b", NS_B, st.CONNECTING)
            assert refused_naming_owner(), [gw.connection(n, ns) for n, ns, _ in intruders]
            assert owners(gw) == {ID_B: mine}, f"round {round_}: the key intruder got a tunnel"
        # A's invalid edit keeps its record (its last valid tunnel runs on): a netagent that loses
        # its state meanwhile gets no tunnel at all, and A's fix takes the cluster id back.
        gw.patch_tep_spec("cluster-b", NS_B, {"remoteNATExternalCIDR": "10.70.0.5/16"})
        conn = gw.wait_status("cluster-b", NS_B, st.ERROR)
        assert "spec.remoteNATExternalCIDR" in conn["statusMessage"], conn
        assert conn.get("peerConfiguration") == {"clusterID": ID_B, "publicKey": peer}, conn
        restart_without_state(gw, epoch=2 + ROUNDS)
        assert owners(gw) == {}, "an intruder was sent while the owner's spec was invalid"
        assert refused_naming_owner(), [gw.connection(n, ns) for n, ns, _ in intruders]
        gw.patch_tep_spec("cluster-b", NS_B, {"remoteNATExternalCIDR": "10.70.0.0/16"})
        wait_for("A's tunnel back after its fix", lambda: owners(gw).get(ID_B) == mine, timeout=60)
        gw.wait_status("cluster-b", NS_B, st.CONNECTING)
        assert refused_naming_owner(), [gw.connection(n, ns) for n, ns, _ in intruders]
    finally:
        for name, ns, _ in intruders:
            try:
                gw.kube.delete(TUNNEL_ENDPOINTS, name, ns)
            except KubeError as e:
                if not e.not_found:
                    raise
        wait_for("the intruders to go", lambda: all(gw.tep(n, ns) is None for n, ns, _ in intruders))
    # A's tunnel outlived the intruders' finalizers.
    assert owners(gw) == {ID_B: mine}
    gw.kube.delete(TUNNEL_ENDPOINTS, "cluster-b", NS_B)
    wait_for("A's TunnelEndpoint to go", lambda: gw.tep("cluster-b", NS_B) is None)
    assert owners(gw) == {}
