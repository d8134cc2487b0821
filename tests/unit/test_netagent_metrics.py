"""Netagent metrics: the exposition text a scrape sees, nil-safety, and the HTTP endpoint."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from enum import Enum

import pytest

from services.netagent.metrics import NetagentMetrics, PeerRecord, parse_address, peer_records

DEVICE = 'device="liqo.tunnel",driver="wireguard"'


def peer(cluster_id: str, cluster_name: str) -> str:
    """Label set of a peer series as the exposition writes it (labels sorted by name)."""
    return f'{{cluster_id="{cluster_id}",cluster_name="{cluster_name}",{DEVICE}}}'


def lines(m: NetagentMetrics) -> set[str]:
    return {line for line in m.exposition().decode().splitlines() if not line.startswith("#")}


def test_peer_metrics_with_liqo_names_and_labels() -> None:
    m = NetagentMetrics()
    m.bind_sources(
        peers=lambda: [
            PeerRecord("c-1", "milan", True, latency_s=0.00125, rx_bytes=1000, tx_bytes=2000,
                       handshake_age_s=4.5),
            PeerRecord("c-2", "turin", False, latency_s=0.5, rx_bytes=10, tx_bytes=0, handshake_age_s=None),
        ],
        implementation=lambda: "userspace",
        role=lambda: "active",
    )
    got = lines(m)
    c1, c2 = peer("c-1", "milan"), peer("c-2", "turin")
    for want in [
        f"liqo_peer_is_connected{c1} 1.0",
        f"liqo_peer_is_connected{c2} 0.0",
        f"liqo_peer_receive_bytes_total{c1} 1000.0",
        f"liqo_peer_transmit_bytes_total{c1} 2000.0",
        f"liqo_peer_receive_bytes_total{c2} 10.0",
        f"liqo_peer_latency_us{c1} 1250.0",
        f"liqo_peer_handshake_age_seconds{c1} 4.5",
        "liqo_netagent_tunnels 2.0",
        "liqo_netagent_unidentified_peers 0.0",
        'liqo_wireguard_implementation{driver="wireguard",implementation="userspace"} 1.0',
        'liqo_netagent_role{role="active"} 1.0',
        'liqo_netagent_role{role="standby"} 0.0',
    ]:
        assert want in got, want
    # As Liqo: no latency for a disconnected peer; no handshake age when there was none.
    assert not any(line.startswith(f"liqo_peer_latency_us{c2}") for line in got)
    assert not any(line.startswith(f"liqo_peer_handshake_age_seconds{c2}") for line in got)
    text = m.exposition().decode()
    assert "# TYPE liqo_peer_receive_bytes_total counter" in text
    assert "# TYPE liqo_peer_is_connected gauge" in text


def test_stale_peer_without_identity_never_breaks_a_scrape() -> None:
    m = NetagentMetrics()
    m.bind_sources(
        peers=lambda: [
            PeerRecord(None, None, True, latency_s=0.01, rx_bytes=5, tx_bytes=5),  # no identity at all
            PeerRecord("", None, False),
            PeerRecord("c-1", None, True, latency_s=float("nan"), rx_bytes=None, tx_bytes=-1,
                       handshake_age_s=float("inf")),
            PeerRecord("c-1", "dup", True),  # a duplicate series would make the exposition invalid
        ],
    )
    got = lines(m)
    assert "liqo_netagent_unidentified_peers 2.0" in got
    assert "liqo_netagent_tunnels 1.0" in got
    c1 = peer("c-1", "")
    assert f"liqo_peer_is_connected{c1} 1.0" in got
    peer_lines = [line for line in got if line.startswith("liqo_peer_")]
    assert peer_lines == [f"liqo_peer_is_connected{c1} 1.0"]  # no NaN, inf, negative or missing values
    assert not any("liqo_wireguard_implementation{" in line for line in got)


def test_failing_sources_are_counted_not_raised() -> None:
    m = NetagentMetrics()

    def broken() -> list[PeerRecord]:
        raise RuntimeError("agent is starting")

    def no_device() -> str:
        raise RuntimeError("agent is starting")

    m.bind_sources(peers=broken, implementation=no_device, role=lambda: None)
    got = lines(m)
    assert "liqo_netagent_peer_snapshot_errors_total 1.0" in got
    assert "liqo_netagent_tunnels 0.0" in got
    assert 'liqo_netagent_role{role="active"} 0.0' in got and 'liqo_netagent_role{role="standby"} 0.0' in got
    assert "liqo_netagent_peer_snapshot_errors_total 2.0" in lines(m)


def test_rpc_and_apply_histograms() -> None:
    m = NetagentMetrics()
    m.observe_rpc("EnsureTunnel", "OK", 0.003)
    m.observe_rpc("EnsureTunnel", "INVALID_ARGUMENT", 0.0002)
    m.observe_apply("iptables", 0.02)
    m.observe_apply("iptables", 0.04)
    m.observe_apply("routes", 0.0003)
    got = lines(m)
    for want in [
        'liqo_netagent_rpc_duration_seconds_count{code="OK",method="EnsureTunnel"} 1.0',
        'liqo_netagent_rpc_duration_seconds_bucket{code="OK",le="0.0025",method="EnsureTunnel"} 0.0',
        'liqo_netagent_rpc_duration_seconds_bucket{code="OK",le="0.005",method="EnsureTunnel"} 1.0',
        'liqo_netagent_rpc_duration_seconds_count{code="INVALID_ARGUMENT",method="EnsureTunnel"} 1.0',
        'liqo_netagent_apply_duration_seconds_count{what="iptables"} 2.0',
        'liqo_netagent_apply_duration_seconds_sum{what="iptables"} 0.06',
        'liqo_netagent_apply_duration_seconds_count{what="routes"} 1.0',
    ]:
        assert want in got, (want, sorted(line for line in got if "duration" in line and "count" in line))


def test_registries_are_private() -> None:
    a, b = NetagentMetrics(), NetagentMetrics()
    a.observe_apply("wireguard", 0.1)
    assert 'liqo_netagent_apply_duration_seconds_count{what="wireguard"} 1.0' in lines(a)
    assert not any("wireguard" in line for line in lines(b) if "apply" in line)
    assert not any(line.startswith("process_") or line.startswith("python_") for line in lines(a))


# The agent as the metrics see it: the same shapes as services.netagent.agent.TunnelView and Grant.


class Role(Enum):
    ACTIVE = "active"
    STANDBY = "standby"


@dataclass(frozen=True)
class Spec:
    cluster_id: str
    cluster_name: str


@dataclass(frozen=True)
class View:
    spec: Spec
    state: str
    latency: float | None
    handshake_age: float | None
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class Grant:
    role: Role


@dataclass(frozen=True)
class Device:
    implementation: str


class Agent:
    def __init__(self) -> None:
        self.views = [
            View(Spec("c-1", "milan"), "connected", 0.002, 1.0, 7, 8),
            View(Spec("c-2", "turin"), "fenced", None, None, 0, 0),
        ]

    def list_tunnels(self) -> list[View]:
        return self.views

    def role(self) -> Grant:
        return Grant(Role.STANDBY)

    @property
    def device(self) -> Device:
        return Device("kernel")


def test_peer_records_from_views() -> None:
    recs = peer_records(Agent().views)
    assert recs == [
        PeerRecord("c-1", "milan", True, 0.002, 7, 8, 1.0),
        PeerRecord("c-2", "turin", False, None, 0, 0, None),
    ]


@pytest.mark.parametrize(
    ("address", "want"),
    [
        ("127.0.0.1:5872", ("127.0.0.1", 5872)),
        (":5872", ("0.0.0.0", 5872)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:9", ("localhost", 9)),
    ],
)
def test_parse_address(address: str, want: tuple[str, int]) -> None:
    assert parse_address(address) == want


@pytest.mark.parametrize("address", ["", "5872", "host:", "host:port", "h:70000", "::1:5872", "h:-1"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_serve_bound_agent_over_http_and_stop() -> None:
    m = NetagentMetrics()
    m.bind(Agent())
    threads_before = set(threading.enumerate())
    endpoint = m.serve("127.0.0.1:0")
    url = f"http://127.0.0.1:{endpoint.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
            assert resp.status == 200
    finally:
        endpoint()
    assert f'liqo_peer_latency_us{peer("c-1", "milan")} 2000.0' in body
    assert f'liqo_peer_is_connected{peer("c-2", "turin")} 0.0' in body
    assert 'liqo_wireguard_implementation{driver="wireguard",implementation="kernel"} 1.0' in body
    assert 'liqo_netagent_role{role="standby"} 1.0' in body
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
    assert not [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    endpoint()  # idempotent
