"""The tunnel controller's own series, on the runtime's private registry."""

from __future__ import annotations

from services.common.prometheus import CollectorRegistry, Histogram

# The probe ticks every 2 s and a handshake takes a round trip: most land under a few seconds; the
# tail covers a peer that comes up late.
APPLY_TO_CONNECTED_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120)


class TunnelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.apply_to_connected = Histogram(
            "liqo_tunnel_apply_to_connected_seconds",
            "Seconds from this controller's watch delivering a new TunnelEndpoint generation (change="
            "created: a new object; updated: a spec change) to its status Connected being written for "
            "that generation, once per generation; only generations applied while this replica is "
            "active (a failover is timed by liqo_labeler_failover_duration_seconds).",
            ["change"],
            buckets=APPLY_TO_CONNECTED_BUCKETS,
            registry=registry,
        )
