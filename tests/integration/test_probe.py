"""The probe for real: two throwaway netns joined by a veth, a Prober in each, the link cut and restored."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

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
def pair() -> Iterator[tuple[Side, Side]]:
    suffix = secrets.token_hex(4)
    a = Side(f"lgt-probe-{suffix}-a", "pa")
    b = Side(f"lgt-probe-{suffix}-b", "pb")
    created: list[str] = []
    try:
        for side in (a, b):
            ip("netns", "add", side.netns)
            created.append(side.netns)
            ip("-n", side.netns, "link", "set", "lo", "up")
        # Created inside A with its peer in B: no link ever exists in the root namespace.
        ip("-n", a.netns, "link", "add", a.veth, "type", "veth", "peer", "name", b.veth, "netns", b.netns)
        for side, addr in ((a, ADDR_A), (b, ADDR_B)):
            ip("-n", side.netns, "addr", "add", f"{addr}/24", "dev", side.veth)
            ip("-n", side.netns, "link", "set", side.veth, "up")
        yield a, b
    finally:
        for side in (a, b):
            if side.prober is not None:
                side.prober.stop()
        for netns in created:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True, timeout=10)


def wait_until(cond: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `cond` held, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.01)
    return None


def test_two_netns_connect_detect_a_cut_and_recover(pair: tuple[Side, Side]) -> None:
    a, b = pair
    threads_before = set(threading.enumerate())
    a.prober = Prober(a.netns, PORT, INTERVAL, THRESHOLD, on_change=a.on_change)
    b.prober = Prober(b.netns, PORT, INTERVAL, THRESHOLD, on_change=b.on_change)
    a.prober.start()
    b.prober.start()
    # The sockets live in the namespaces, not in the test's.
    assert f":{PORT}" in udp_listeners(a.netns) and f":{PORT}" in udp_listeners(b.netns)
    a.prober.set_targets({"cluster-b": ADDR_B})
    b.prober.set_targets({"cluster-a": ADDR_A})

    took = wait_until(lambda: a.state("cluster-b") is b.state("cluster-a") is ProbeState.CONNECTED, 3.0)
    assert took is not None, (a.changes, b.changes)
    assert took < 0.5  # the first PING goes at once
    print(f"connected after {took:.3f}s")
    for side, peer in ((a, "cluster-b"), (b, "cluster-a")):
        st = side.prober.status(peer) if side.prober else None
        assert st is not None and st.latency is not None
        assert 0 < st.latency < 0.05, st.latency  # a veth round trip, not an interval
        print(f"latency {st.latency * 1e6:.0f} us")
        assert abs(st.since - time.time()) < 5

    # Steady: no flapping over several windows.
    time.sleep(2 * WINDOW)
    assert [s for s, _ in a.changes] == [ProbeState.CONNECTED]
    assert [s for s, _ in b.changes] == [ProbeState.CONNECTED]

    # Cut the link: DISCONNECTED after about the window since the last PONG (which came at most one
    # interval before the cut), and not before.
    cut = time.monotonic()
    ip("-n", a.netns, "link", "set", a.veth, "down")
    time.sleep(WINDOW - INTERVAL - 0.1)
    assert a.state("cluster-b") is ProbeState.CONNECTED and b.state("cluster-a") is ProbeState.CONNECTED
    assert wait_until(lambda: len(a.changes) == 2 and len(b.changes) == 2, 3.0) is not None
    for side in (a, b):
        state, at = side.changes[1]
        assert state is ProbeState.DISCONNECTED
        assert WINDOW - INTERVAL - 0.05 <= at - cut <= WINDOW + 0.5, at - cut
        print(f"{side.netns}: disconnected {at - cut:.3f}s after the cut (window {WINDOW}s)")
        assert side.prober is not None
        st = side.prober.status("cluster-b" if side is a else "cluster-a")
        assert st is not None and st.latency is None

    # Restore: back to CONNECTED after two consecutive PONGs.
    restored = time.monotonic()
    ip("-n", a.netns, "link", "set", a.veth, "up")
    back = wait_until(lambda: len(a.changes) == 3 and len(b.changes) == 3, 5.0)
    assert back is not None, (a.changes, b.changes)
    for side in (a, b):
        state, at = side.changes[2]
        assert state is ProbeState.CONNECTED
        assert at - restored >= INTERVAL * 0.5  # needs two PONGs, one interval apart
        assert at - restored < 3.0
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
