"""The metrics users chart, from real processes: apply-to-Connected from the tunnel controller and the
per-tunnel series (bytes, handshake age, probe latency) scraped from a REAL netagent's /metrics, whose
series go when the tunnel goes. Two emulated clusters (sandbox/testkit/lab.py), torn down by the Lab
even when a test fails."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.testkit import promql
from sandbox.testkit.chart import CHART
from sandbox.testkit.hosts import link_nodes
from sandbox.testkit.lab import ID_B, NS_A, NS_B, Cluster, Lab, tep_for_a, tep_for_b, why_unavailable
from sandbox.testkit.wait import wait_for
from services.common.vocabulary import TUNNEL_ENDPOINTS
from services.tunnel import status as st

pytestmark = pytest.mark.root

A_UL, B_UL = "192.0.2.1", "192.0.2.2"
METRICS = "127.0.0.1:5872"  # the netagent's, inside its node's network namespace
APPLY = "liqo_tunnel_apply_to_connected_seconds"
GET = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def scrape(c: Cluster) -> str:
    return c.node.run(sys.executable, "-c", GET, f"http://{METRICS}/metrics").stdout


def peer_value(text: str, name: str, cluster_id: str) -> float | None:
    m = re.search(rf'^{name}\{{[^}}]*cluster_id="{cluster_id}"[^}}]*\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def applied(c: Cluster, sample: str, change: str = "created") -> float | None:
    assert c.tunnel_mgr is not None
    return c.tunnel_mgr.metrics.registry.get_sample_value(f"{APPLY}_{sample}", {"change": change})


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Cluster, Cluster]]:
    if why := why_unavailable():
        pytest.skip(why)
    with Lab(tmp_path) as lab:
        na, nb = lab.node("mta"), lab.node("mtb")
        link_nodes(na, A_UL, nb, B_UL)
        a = lab.cluster("a", na, A_UL, agent_args=("--metrics-address", METRICS))
        b = lab.cluster("b", nb, B_UL, agent_args=("--metrics-address", METRICS))
        for c in (a, b):
            # Apply-to-Connected is timed only for generations applied while the replica is active.
            wait_for(f"{c.name}: tunnel controller active",
                     lambda c=c: c.tunnel is not None and c.tunnel.role.active)
        yield a, b


def test_apply_to_connected_and_per_tunnel_series(pair: tuple[Cluster, Cluster]) -> None:
    a, b = pair
    assert applied(a, "count") is None  # nothing observed before anything was applied
    started = time.monotonic()
    a.create_tep(tep_for_b(B_UL, b.public_key))
    b.create_tep(tep_for_a(A_UL, a.public_key))
    a.wait_status("cluster-b", NS_B, st.CONNECTED)
    b.wait_status("cluster-a", NS_A, st.CONNECTED)
    waited = time.monotonic() - started
    for c in (a, b):
        wait_for(f"{c.name}: apply-to-Connected observed", lambda c=c: applied(c, "count") == 1)
        took = applied(c, "sum")
        print(f"{c.name}: apply -> Connected {took:.3f}s (the test saw it after {waited:.3f}s)")
        # Timed from the watch delivering the creation, which is after the create call was sent.
        assert took is not None and 0 < took < waited
        # Resyncs and latency refreshes write Connected again: still one observation per generation.
        assert c.tunnel is not None
        c.tunnel.controller.enqueue_all()
        wait_for(f"{c.name}: resync done", c.tunnel.controller.idle)
        assert applied(c, "count") == 1

    # The real netagent's per-tunnel series, labelled by cluster_id.
    def series() -> dict[str, float] | None:
        text = scrape(a)
        got = {n: peer_value(text, n, ID_B) for n in (
            "liqo_peer_receive_bytes_total", "liqo_peer_transmit_bytes_total",
            "liqo_peer_handshake_age_seconds", "liqo_peer_latency_us", "liqo_peer_is_connected")}
        return {k: v for k, v in got.items() if v is not None} if None not in got.values() else None

    got = wait_for("A's netagent exports the tunnel's series", series)
    assert got["liqo_peer_receive_bytes_total"] and got["liqo_peer_transmit_bytes_total"]  # the probe's
    assert got["liqo_peer_is_connected"] == 1.0
    assert 0 <= got["liqo_peer_handshake_age_seconds"] < 180
    assert 0 < got["liqo_peer_latency_us"] < 1e6
    # What the dashboard asks of the netagent, this real netagent exports.
    dashboard = json.loads((CHART / "dashboards" / "liqo-gateway.json").read_text())
    asked = {n for _, q in promql.dashboard_queries(dashboard) for n in promql.metric_names(q)
             if n.startswith(("liqo_peer_", "liqo_netagent_", "liqo_wireguard_"))}
    assert "liqo_peer_receive_bytes_total" in asked
    assert asked - promql.exported_names(scrape(a)) == set()

    # A spec change is a new generation, timed once as an update; the series follow the new name.
    assert applied(a, "count", "updated") is None
    a.patch_tep_spec("cluster-b", NS_B, {"clusterIdentity": {"clusterID": ID_B, "clusterName": "renamed"}})
    wait_for("the update observed", lambda: applied(a, "count", "updated") == 1)
    assert applied(a, "count") == 1
    wait_for("the series renamed", lambda: 'cluster_name="renamed"' in scrape(a))

    a.kube.delete(TUNNEL_ENDPOINTS, "cluster-b", NS_B)
    wait_for("the TunnelEndpoint to go", lambda: a.tep("cluster-b", NS_B) is None)
    wait_for("the tunnel's series to go", lambda: f'cluster_id="{ID_B}"' not in scrape(a))
    assert re.search(r"^liqo_netagent_tunnels 0\.0$", scrape(a), re.M)
