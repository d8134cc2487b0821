"""The probe for real: two netns of a kit node joined by a veth, a Prober in each, the link cut and
restored."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.nodes import add_netns
from sandbox.testkit.wait import wait_for
from services.netagent.kernel.probe import Prober
from services.netagent.plan.probe import ProbeState, ProbeStatus

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

PORT = 12345
INTERVAL, THRESHOLD = 0.2, 5
WINDOW = INTERVAL * THRESHOLD
ADDR_A, ADDR_B = IPv4Address("169.254.77.1"), IPv4Address("169.254.77.2")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10).stdout


def udp_listeners(netns: str) -> str:
    cmd = ["ip", "netns", "exec", netns, "ss", "-H", "-uln"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)
    return out.stdout


@dataclass
class Side:
    netns: str
    veth: str
    changes: list[tuple[ProbeState, float]] = field(default_factory=list)
    prober: Prober | None = None

    def on_change(self, cluster_id: str, status: ProbeStatus) -> None:
        self.changes.append((status.state, time.monotonic()))

    def state(self, cluster_id: str) -> ProbeState | None:
        assert self.prober is not None
        st = self.prober.status(cluster_id)
        return st.state if st is not None else None


@pytest.fixture
def pair(node_factory: Callable[[str], Node]) -> tuple[Node, Side, Side]:
    """A node owning two named netns joined by a veth (created inside A with its peer in B). The
    Probers open /run/netns/NAME, so the test body runs inside the node (Node.call)."""
    node = node_factory("probe")
    a = Side(add_netns(node, "lgt-probe-a"), "pa")
    b = Side(add_netns(node, "lgt-probe-b"), "pb")
    node.run("ip", "-n", a.netns, "link", "add", a.veth, "type", "veth", "peer", "name", b.veth,
             "netns", b.netns)
    for side, addr in ((a, ADDR_A), (b, ADDR_B)):
        node.run("ip", "-n", side.netns, "addr", "add", f"{addr}/24", "dev", side.veth)
        node.run("ip", "-n", side.netns, "link", "set", side.veth, "up")
    # Static neighbours: the kernel flushes learnt ones when the carrier goes and then holds PINGs
    # while resolving the peer again, delivering PINGs sent during the cut together once the link is
    # back. With these, a PING sent while the link is down is lost, as on a cut WAN.
    for side, peer, peer_addr in ((a, b, ADDR_B), (b, a, ADDR_A)):
        mac = json.loads(node.run("ip", "-j", "-n", peer.netns, "link", "show", "dev", peer.veth).stdout)
        node.run("ip", "-n", side.netns, "neigh", "replace", str(peer_addr), "lladdr", mac[0]["address"],
                 "dev", side.veth, "nud", "permanent")
    return node, a, b


def test_two_netns_connect_detect_a_cut_and_recover(pair: tuple[Node, Side, Side]) -> None:
    node, a, b = pair
    node.call(connect_detect_a_cut_and_recover, a, b, timeout=120)


def connect_detect_a_cut_and_recover(a: Side, b: Side) -> None:
    """Runs inside the node; the probers are stopped whatever happens."""
    try:
        _connect_detect_a_cut_and_recover(a, b)
    finally:
        for side in (a, b):
            if side.prober is not None:
                side.prober.stop()


def _connect_detect_a_cut_and_recover(a: Side, b: Side) -> None:
    threads_before = set(threading.enumerate())
    a.prober = Prober(a.netns, PORT, INTERVAL, THRESHOLD, on_change=a.on_change)
    b.prober = Prober(b.netns, PORT, INTERVAL, THRESHOLD, on_change=b.on_change)
    a.prober.start()
    b.prober.start()
    # The sockets live in the namespaces, not in the test's.
    assert f":{PORT}" in udp_listeners(a.netns) and f":{PORT}" in udp_listeners(b.netns)
    a.prober.set_targets({"cluster-b": ADDR_B})
    b.prober.set_targets({"cluster-a": ADDR_A})

    start = time.monotonic()
    wait_for("both sides CONNECTED",
             lambda: a.state("cluster-b") is b.state("cluster-a") is ProbeState.CONNECTED, 3.0, 0.01)
    # The status changes before the callback runs: wait for the callback too.
    wait_for("both sides' first change", lambda: len(a.changes) >= 1 and len(b.changes) >= 1, 3.0, 0.01)
    # Judged by the change timestamps (taken by the prober on the PONG), not by when this thread
    # polled, which a loaded machine delays.
    took = max(side.changes[0][1] for side in (a, b)) - start
    assert took < 0.5  # the first PING goes at once
    print(f"connected after {took:.3f}s")
    for side, peer in ((a, "cluster-b"), (b, "cluster-a")):
        st = side.prober.status(peer) if side.prober else None
        assert st is not None and st.latency is not None
        # A veth round trip (well under a millisecond idle), not an interval; a loaded machine delays the
        # prober's thread by tens of milliseconds (0.12 s seen with the load average at 25).
        assert 0 < st.latency < INTERVAL, st.latency
        print(f"latency {st.latency * 1e6:.0f} us")
        assert abs(st.since - time.time()) < 5

    # Steady: no flapping over several windows.
    time.sleep(2 * WINDOW)
    assert [s for s, _ in a.changes] == [ProbeState.CONNECTED]
    assert [s for s, _ in b.changes] == [ProbeState.CONNECTED]

    # Cut the link: DISCONNECTED after about the window since the last PONG (which came at most one
    # interval before the cut), and not before. The link goes down somewhere between `cut` and
    # `downed` (the `ip` exec took over 0.3 s on a loaded machine), so the "not before" bound counts
    # from `cut` and the "not much after" bound from `downed`.
    not_before = WINDOW - INTERVAL - 0.05
    cut = time.monotonic()
    ip("-n", a.netns, "link", "set", a.veth, "down")
    downed = time.monotonic()
    time.sleep(max(0.0, cut + not_before - 0.05 - time.monotonic()))
    states = a.state("cluster-b"), b.state("cluster-a")
    if time.monotonic() - cut < not_before:  # read in time to judge (the timestamps below always are)
        assert states == (ProbeState.CONNECTED, ProbeState.CONNECTED), states
    wait_for("both sides' second change", lambda: len(a.changes) == 2 and len(b.changes) == 2, 3.0, 0.01)
    for side in (a, b):
        state, at = side.changes[1]
        assert state is ProbeState.DISCONNECTED
        assert at - cut >= not_before, at - cut
        assert at - downed <= WINDOW + 0.5, at - downed
        print(f"{side.netns}: disconnected {at - cut:.3f}s after the cut began, {at - downed:.3f}s after "
              f"it was done (window {WINDOW}s)")
        assert side.prober is not None
        st = side.prober.status("cluster-b" if side is a else "cluster-a")
        assert st is not None and st.latency is None

    # Restore: back to CONNECTED after two consecutive PONGs.
    restored = time.monotonic()
    ip("-n", a.netns, "link", "set", a.veth, "up")
    up = time.monotonic()
    wait_for("both sides' third change", lambda: len(a.changes) == 3 and len(b.changes) == 3, 5.0, 0.01)
    for side in (a, b):
        state, at = side.changes[2]
        assert state is ProbeState.CONNECTED
        assert at - restored >= INTERVAL * 0.5  # needs two PONGs, one interval apart
        assert at - up < 3.0
        print(f"{side.netns}: connected again {at - restored:.3f}s after the restore")

    # stop() leaves no thread and no socket behind.
    for side in (a, b):
        assert side.prober is not None
        side.prober.stop()
        assert f":{PORT}" not in udp_listeners(side.netns)
    leftover = [t.name for t in set(threading.enumerate()) - threads_before if t.name.startswith("probe")]
    assert leftover == []


def test_missing_netns_is_a_clear_error() -> None:
    name = f"lgt-probe-{secrets.token_hex(4)}-absent"
    prober = Prober(name, PORT, INTERVAL, THRESHOLD, on_change=lambda c, s: None)
    with pytest.raises(FileNotFoundError):
        prober.start()
    assert not os.path.exists(f"/run/netns/{name}")
