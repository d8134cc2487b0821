"""End to end: the tunnel controllers of two "clusters" against the in-memory API server and REAL
netagents in two emulated nodes (the kit's Lab, sandbox/testkit/lab.py), with overlapping pod CIDRs.
A TunnelEndpoint on each side must bring the WireGuard tunnel up and the status must reach Connected
with a latency; deleting it must remove the peer. The role is given to the agents with SetRole
directly (the labeler's election is tested on its own); the netagents probe every 0.5 s (the kit's
default). Skipped when not root or without wireguard-go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.testkit.hosts import link_nodes
from sandbox.testkit.lab import Cluster, Lab, why_unavailable
from sandbox.testkit.resources import tunnel_endpoint
from sandbox.testkit.wait import wait_for
from services.common.vocabulary import TUNNEL_ENDPOINTS

pytestmark = [pytest.mark.root]


@pytest.fixture
def two_clusters(tmp_path: Path) -> Iterator[tuple[Cluster, Cluster]]:
    """The kit's in-process lab: per cluster an API server, a real netagent on its node, the tunnel
    controller, the role ACTIVE; the two nodes joined by an underlay veth."""
    if why := why_unavailable():
        pytest.skip(f"real netagent unavailable: {why}")
    with Lab(tmp_path) as lab:
        a, b = lab.node("ctl-a"), lab.node("ctl-b")
        link_nodes(a, "192.0.2.1", b, "192.0.2.2")
        yield lab.cluster("a", a, "192.0.2.1"), lab.cluster("b", b, "192.0.2.2")


def side(cid: str, name: str, pod: str, remote_pod: str, nat_remote: str, nat_local: str, endpoint: str,
         key: str) -> dict[str, Any]:
    return tunnel_endpoint(
        name=name, namespace="tenant", cluster_id=cid, local_pod=pod, local_nat_pod=nat_local,
        remote_pod=remote_pod, remote_nat_pod=nat_remote,
        local_ext="10.220.0.0/16" if name == "b" else "10.230.0.0/16",
        remote_ext="10.230.0.0/16" if name == "b" else "10.220.0.0/16",
        endpoint=endpoint, public_key=key,
    )


def test_tunnelendpoints_bring_up_a_real_tunnel(two_clusters: tuple[Cluster, Cluster]) -> None:
    ca, cb = two_clusters
    key_a, key_b = ca.public_key, cb.public_key
    # Both clusters use 10.200.0.0/16 for pods: each reaches the other's through a remapping.
    t0 = time.monotonic()
    ca.create_tep(side("cluster-b", "b", "10.200.0.0/16", "10.200.0.0/16",
                       "10.201.0.0/16", "10.202.0.0/16", "192.0.2.2", key_b))
    cb.create_tep(side("cluster-a", "a", "10.200.0.0/16", "10.200.0.0/16",
                       "10.202.0.0/16", "10.201.0.0/16", "192.0.2.1", key_a))
    conn = ca.wait_status("b", "tenant", "Connected", timeout=30)
    took = time.monotonic() - t0
    print(f"\nTunnelEndpoint created -> Connected: {took:.2f}s, latency {conn['latency']}")
    assert conn["latency"]["value"] != "N/A"
    assert key_b in ca.wg_peers()
    ca.kube.delete(TUNNEL_ENDPOINTS, "b", "tenant")
    wait_for("B's peer removed from A", lambda: key_b not in ca.wg_peers(), 15, 0.2)
