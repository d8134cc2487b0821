"""The netagent's Prometheus metrics, on a private registry (tests create many; no process collectors).

Liqo's names where Liqo has the metric (`liqo_peer_*`, `liqo_wireguard_implementation`, with its labels
driver, device, cluster_id, cluster_name), ours under `liqo_netagent_*`. Peer metrics are read from a
snapshot at scrape time; a record without identity is skipped and counted, never a failed scrape
(Liqo's collector dereferenced a peer's missing identity and panicked).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.httpendpoint import HttpEndpoint
from services.common.httpendpoint import parse_address as _parse_address
from services.common.prometheus import (
    Collector,
    CollectorRegistry,
    Counter,
    CounterMetricFamily,
    GaugeMetricFamily,
    Histogram,
    Metric,
    exposition,
    metrics_route,
)

__all__ = [
    "MetricsEndpoint", "NetagentMetrics", "PeerRecord", "metrics_route", "parse_address", "peer_records",
]

log = logging.getLogger(__name__)

DRIVER = "wireguard"
ROLES = ("active", "standby")
PEER_LABELS = ["driver", "device", "cluster_id", "cluster_name"]
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
APPLY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True)
class PeerRecord:
    """One tunnel as the metrics see it; any field may be missing."""

    cluster_id: str | None
    cluster_name: str | None
    connected: bool
    latency_s: float | None = None
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    handshake_age_s: float | None = None


# ---- what the agent looks like to the metrics (structural: no import of the agent) -------------------


class _Spec(Protocol):
    @property
    def cluster_id(self) -> str: ...
    @property
    def cluster_name(self) -> str: ...


class TunnelViewLike(Protocol):
    @property
    def spec(self) -> _Spec: ...
    @property
    def state(self) -> str: ...
    @property
    def latency(self) -> float | None: ...
    @property
    def handshake_age(self) -> float | None: ...
    @property
    def rx_bytes(self) -> int: ...
    @property
    def tx_bytes(self) -> int: ...


class _RoleValue(Protocol):
    @property
    def value(self) -> str: ...


class _Grant(Protocol):
    @property
    def role(self) -> _RoleValue: ...


class _Device(Protocol):
    @property
    def implementation(self) -> str: ...


class AgentLike(Protocol):
    def list_tunnels(self) -> Sequence[TunnelViewLike]: ...
    def role(self) -> _Grant: ...
    @property
    def device(self) -> _Device: ...


def peer_records(views: Iterable[TunnelViewLike]) -> list[PeerRecord]:
    """The agent's tunnel views as metric records."""
    return [
        PeerRecord(
            cluster_id=v.spec.cluster_id,
            cluster_name=v.spec.cluster_name,
            connected=v.state == "connected",
            latency_s=v.latency,
            rx_bytes=v.rx_bytes,
            tx_bytes=v.tx_bytes,
            handshake_age_s=v.handshake_age,
        )
        for v in views
    ]


# ---- the collector ---------------------------------------------------------------------------------


def _finite(x: float) -> bool:
    return math.isfinite(x) and x >= 0


def _safe(what: str, fn: Callable[[], str | None]) -> str | None:
    try:
        return fn()
    except Exception as e:  # a scrape must not fail because the agent is starting or busy
        log.debug("metrics source failed", extra={"source": what, "error": str(e)})
        return None


class _StateCollector(Collector):
    """Peer, role and implementation metrics, read from callables at scrape time."""

    def __init__(self, device: str) -> None:
        self._device = device
        self._peers: Callable[[], Iterable[PeerRecord]] = lambda: ()
        self._implementation: Callable[[], str | None] = lambda: None
        self._role: Callable[[], str | None] = lambda: None
        self._snapshot_errors = 0
        self._lock = threading.Lock()  # scrapes may run concurrently

    def bind(
        self,
        peers: Callable[[], Iterable[PeerRecord]],
        implementation: Callable[[], str | None],
        role: Callable[[], str | None],
    ) -> None:
        self._peers, self._implementation, self._role = peers, implementation, role

    def describe(self) -> Iterator[Metric]:
        return iter(_Families().all())

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        try:
            records = list(self._peers())
        except Exception as e:
            log.warning("metrics: peer snapshot failed", extra={"error": str(e)})
            with self._lock:
                self._snapshot_errors += 1
            records = []
        seen: set[str] = set()
        unidentified = 0
        for r in records:
            if not r.cluster_id or r.cluster_id in seen:
                unidentified += not r.cluster_id
                continue
            seen.add(r.cluster_id)
            labels = [DRIVER, self._device, r.cluster_id, r.cluster_name or ""]
            f.connected.add_metric(labels, 1.0 if r.connected else 0.0)
            # Byte counters are WireGuard's and meaningful while disconnected too (one-way traffic).
            if r.rx_bytes is not None and r.rx_bytes >= 0:
                f.rx.add_metric(labels, float(r.rx_bytes))
            if r.tx_bytes is not None and r.tx_bytes >= 0:
                f.tx.add_metric(labels, float(r.tx_bytes))
            if r.connected and r.latency_s is not None and _finite(r.latency_s):  # as Liqo: while connected
                f.latency.add_metric(labels, r.latency_s * 1e6)
            if r.handshake_age_s is not None and _finite(r.handshake_age_s):
                f.handshake_age.add_metric(labels, r.handshake_age_s)
        f.tunnels.add_metric([], float(len(seen)))
        f.unidentified.add_metric([], float(unidentified))
        with self._lock:
            f.snapshot_errors.add_metric([], float(self._snapshot_errors))
        implementation = _safe("implementation", self._implementation)
        if implementation:
            f.implementation.add_metric([DRIVER, implementation], 1.0)
        role = _safe("role", self._role)
        for name in sorted({*ROLES, *([role] if role else [])}):
            f.role.add_metric([name], 1.0 if name == role else 0.0)
        return iter(f.all())


class _Families:
    """Fresh metric families for one scrape."""

    def __init__(self) -> None:
        g, c, peer = GaugeMetricFamily, CounterMetricFamily, PEER_LABELS
        self.connected = g("liqo_peer_is_connected", "1 when the probe reaches the peer.", labels=peer)
        self.rx = c("liqo_peer_receive_bytes", "Bytes received from the WireGuard peer.", labels=peer)
        self.tx = c("liqo_peer_transmit_bytes", "Bytes sent to the WireGuard peer.", labels=peer)
        self.latency = g("liqo_peer_latency_us", "Probe round-trip time to the peer (us).", labels=peer)
        self.handshake_age = g(
            "liqo_peer_handshake_age_seconds", "Seconds since the last WireGuard handshake.", labels=peer
        )
        self.tunnels = g("liqo_netagent_tunnels", "Tunnels configured on this agent.", labels=[])
        self.unidentified = g(
            "liqo_netagent_unidentified_peers", "Peer records without a cluster id (skipped).", labels=[]
        )
        self.snapshot_errors = c(
            "liqo_netagent_peer_snapshot_errors", "Scrapes whose peer snapshot failed.", labels=[]
        )
        self.implementation = g(
            "liqo_wireguard_implementation", "WireGuard implementation in use (value 1).",
            labels=["driver", "implementation"],
        )
        self.role = g("liqo_netagent_role", "1 for the agent's current role.", labels=["role"])

    def all(self) -> list[Metric]:
        return [
            self.connected, self.rx, self.tx, self.latency, self.handshake_age, self.tunnels,
            self.unidentified, self.snapshot_errors, self.implementation, self.role,
        ]


# ---- the public object -----------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """`host:port`, `:port` (all IPv4 addresses) or `[v6]:port`; ValueError otherwise."""
    return _parse_address(address, "metrics address")


class MetricsEndpoint:
    """A running /metrics HTTP server; call it to stop (joins its thread, closes its socket)."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        parse_address(address)  # ValueError for a malformed address, as before
        self._endpoint = HttpEndpoint(address, {"/metrics": metrics_route(registry)},
                                      flag="--metrics-address", name="metrics")
        self._endpoint.start()
        self.port: int = self._endpoint.port

    def __call__(self) -> None:
        self._endpoint.stop()


class NetagentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, device: str = "liqo.tunnel") -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc_duration = Histogram(
            "liqo_netagent_rpc_duration_seconds",
            "Time to serve one netagent RPC, by method and gRPC status code.",
            ["method", "code"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.apply_duration = Histogram(
            "liqo_netagent_apply_duration_seconds",
            "Time to apply one kind of kernel state (iptables, routes, wireguard, ...).",
            ["what"],
            buckets=APPLY_BUCKETS,
            registry=self.registry,
        )
        self.state_entries_skipped = Counter(
            "liqo_netagent_state_entries_skipped",
            "Entries of the state file skipped at start because they no longer validate.",
            registry=self.registry,
        )
        self._state = _StateCollector(device)
        self.registry.register(self._state)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_duration.labels(method=method, code=code).observe(seconds)

    def observe_apply(self, what: str, seconds: float) -> None:
        self.apply_duration.labels(what=what).observe(seconds)

    def observe_state_skipped(self, entries: int) -> None:
        self.state_entries_skipped.inc(entries)

    def bind_sources(
        self,
        peers: Callable[[], Iterable[PeerRecord]],
        implementation: Callable[[], str | None] = lambda: None,
        role: Callable[[], str | None] = lambda: None,
    ) -> None:
        """Where scrapes read the peers, the WireGuard implementation and the role from."""
        self._state.bind(peers, implementation, role)

    def bind(self, agent: AgentLike) -> None:
        """Reads everything from the agent at scrape time."""
        self.bind_sources(
            peers=lambda: peer_records(agent.list_tunnels()),
            implementation=lambda: agent.device.implementation,
            role=lambda: agent.role().role.value,
        )

    def exposition(self) -> bytes:
        return exposition(self.registry)

    def serve(self, address: str) -> MetricsEndpoint:
        """Serves /metrics on `address` ("host:port", port 0 picks one: see `.port`)."""
        endpoint = MetricsEndpoint(address, self.registry)
        log.info("metrics served", extra={"address": address, "port": endpoint.port})
        return endpoint
