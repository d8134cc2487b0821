"""100 TunnelEndpoints created at once, with REAL netagents: all are programmed, the live ones connect.

A hub cluster gets 100 TunnelEndpoints (distinct clusterIDs; remote pods 10.64.N.0/24 and external
CIDR 10.65.N.0/24; valid WireGuard keys) in one burst. Two of them point at live remote clusters
(each with its own netagent, tunnel controller and a TunnelEndpoint for the hub); the other 98 at
addresses nobody answers. Expected in the hub's dataplane: 100 WireGuard peers, 200 netns routes,
400 host rules (from + to per remote CIDR) and 200 routes in the Liqo table, 4 chains per cluster;
the two live ones Connected, the 98 others Connecting and then Error (no PONG within the probe
window), as Liqo reports a tunnel that does not come up. The times are printed (pytest -s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.testkit.fanout import HUB_TENANT_NS, Fanout, percentile
from sandbox.testkit.lab import Lab, liqo_chains, why_unavailable
from sandbox.testkit.wait import wait_for
from services.common.tunnelspec import chain_suffix
from services.common.vocabulary import TUNNEL_ENDPOINTS
from services.tunnel import status as st

pytestmark = pytest.mark.root

N = 100
LIVE = 2
LIQO_TABLE = "18952"


@pytest.fixture
def fanout(tmp_path: Path) -> Iterator[Fanout]:
    if why := why_unavailable():
        pytest.skip(why)
    with Lab(tmp_path) as lab:
        yield Fanout(lab, live=LIVE, workers=8)


def test_100_tunnelendpoints_are_programmed_and_the_live_ones_connect(fanout: Fanout) -> None:
    run = fanout.burst(N, timeout=90)
    hub = fanout.hub
    programmed = run.latencies("programmed")
    print(f"\n{N} TunnelEndpoints: all programmed {run.all_programmed_after():.2f}s after the first "
          f"creation (per TEP p50 {percentile(programmed, 50):.2f}s p95 {percentile(programmed, 95):.2f}s "
          f"max {programmed[-1]:.2f}s); {LIVE} live ones Connected after {run.live_connected_after():.2f}s")

    # The whole dataplane, counted with the kernel's own tools.
    bodies = fanout.bodies(N)  # same names and CIDRs (dead keys differ: compare the live ones only)
    cidrs = {b["spec"][f] for b in bodies for f in ("remotePodCIDR", "remoteExternalCIDR")}
    peers = hub.wg_peers()
    assert len(peers) == N
    for spoke in fanout.spokes:
        assert spoke.public_key in peers
    netns_routes = hub.netns("ip", "-4", "route", "show", "table", "main", "dev", "liqo.tunnel").split("\n")
    assert {r.split()[0] for r in netns_routes if r.strip()} == cidrs
    assert len([r for r in netns_routes if r.strip()]) == 2 * N
    rules = [r for r in hub.node.run("ip", "-4", "rule", "show").stdout.splitlines()
             if f"lookup {LIQO_TABLE}" in r]
    assert [r.split(":")[1].strip() for r in rules] == [f"from all lookup {LIQO_TABLE}"]  # one for all
    table = hub.node.run("ip", "-4", "route", "show", "table", LIQO_TABLE).stdout.splitlines()
    assert {r.split()[0] for r in table} == cidrs and len(table) == 2 * N
    chains = liqo_chains(hub.netns("iptables-legacy-save"))
    for b in bodies:
        sfx = chain_suffix(b["spec"]["clusterIdentity"]["clusterID"])
        for kind in ("PSTRT", "PRRT", "PRRT-MAP", "FRWD-EXT"):
            assert f"LIQO-{kind}-CLS-{sfx}" in chains
    assert len(chains) == 4 * N

    # Status: the live ones Connected (with a latency); the others never connect and, after the
    # probe window, are reported in Error with Liqo's message.
    def statuses() -> dict[str, dict[str, object]]:
        items = hub.kube.list(TUNNEL_ENDPOINTS, HUB_TENANT_NS)["items"]
        return {o["metadata"]["name"]: (o.get("status") or {}).get("connection") or {} for o in items}

    now = statuses()
    assert len(now) == N
    for name in run.live:
        assert now[name]["status"] == st.CONNECTED, (name, now[name])
    dead = [n for n in now if n not in run.live]
    assert all(now[n].get("status") in (None, st.CONNECTING, st.ERROR) for n in dead)
    def all_dead_in_error() -> bool:
        s = statuses()
        return all(s[n].get("status") == st.ERROR for n in dead)

    wait_for("the unreachable ones to be reported in Error", all_dead_in_error, timeout=30)
    final = statuses()
    assert all(final[n]["statusMessage"] == st.MSG_DISCONNECTED for n in dead)
    assert all(final[n]["status"] == st.CONNECTED for n in run.live), {n: final[n] for n in run.live}
    assert run.all_programmed_after() < 60, "100 TunnelEndpoints should be programmed within a minute"
