"""The labeler's own series, on the runtime's private registry."""

from __future__ import annotations

from collections.abc import Iterator

from services.common.prometheus import (
    Collector,
    CollectorRegistry,
    Counter,
    CounterMetricFamily,
    Gauge,
    GaugeMetricFamily,
    Histogram,
    Metric,
)
from services.labeler.availability import Availability

# Graceful hand-overs land well under a second; crash failovers around the lease duration (7 s by
# default, 2 s in a fast profile); the tail covers outage graces.
FAILOVER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 30, 60)

FAILOVER_HELP = (
    "Failover duration as observed by the replica that took over, by cause: seconds from the moment "
    "this replica saw the previous leader gone (cause=released: the Lease seen emptied by a release; "
    "cause=expired: the previous holder's lease expired by our clock, i.e. leaseDurationSeconds after "
    "we first saw its last renewal) to our netagent accepting the ACTIVE role. Observed once per "
    "takeover. A crash's detection time before the expiry is not included (see "
    "liqo_labeler_last_leaderless_seconds for an upper bound)."
)
NO_ACTIVE_HELP = (
    "Seconds this replica observed no active replica: its own netagent not ACTIVE and no other holder's "
    "lease live by its clock, while the Lease was readable. A standby counts a live holder as active "
    "even before that holder's netagent accepts the role; nothing is counted while the Lease cannot be "
    "read. Every replica counts the same gaps: aggregate across replicas with max, not sum."
)
STRETCH_HELP = (
    "Length of the current stretch without an active replica, as defined for "
    "liqo_labeler_no_active_replica_seconds_total; 0 while a replica is seen active."
)


class LabelerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.is_leader = Gauge(
            "liqo_labeler_is_leader", "1 while this replica holds the gateway Lease.", registry=registry
        )
        self.role_active = Gauge(
            "liqo_labeler_netagent_role_active",
            "1 while the netagent has accepted an unexpired ACTIVE role from this replica.",
            registry=registry,
        )
        self.api_outage = Gauge(
            "liqo_labeler_api_outage",
            "1 while the leader keeps its role alive through an API server outage (outage grace).",
            registry=registry,
        )
        self.epoch = Gauge(
            "liqo_labeler_epoch", "leaseTransitions of the Lease as last seen (the fencing epoch).",
            registry=registry,
        )
        self.transitions = Counter(
            "liqo_labeler_leadership_changes_total",
            "Leadership changes of this replica: acquired, lost (to another holder or a deadline), "
            "released (graceful shutdown).",
            ["change"],
            registry=registry,
        )
        self.attempts = Counter(
            "liqo_labeler_lease_attempts_total",
            "Lease attempts by result: acquired, renewed, held (by another replica), conflict, "
            "unreachable, rejected.",
            ["result"],
            registry=registry,
        )
        self.failover = Gauge(
            "liqo_labeler_last_failover_seconds",
            "Time from acquiring the Lease to the netagent accepting the ACTIVE role, last takeover.",
            registry=registry,
        )
        self.leaderless = Gauge(
            "liqo_labeler_last_leaderless_seconds",
            "On the last takeover: wall time from the previous holder's last write of the Lease "
            "(renewal or release) to our ACTIVE role. Exact for a graceful hand-over, an upper bound "
            "of the time without a leader after a crash.",
            registry=registry,
        )
        self.role_errors = Counter(
            "liqo_labeler_setrole_errors_total", "SetRole calls the netagent failed or refused.",
            registry=registry,
        )
        self.label_patches = Counter(
            "liqo_labeler_patches_total", "Label and annotation patches written.", ["kind"],
            registry=registry,
        )
        self.failover_duration = Histogram(
            "liqo_labeler_failover_duration_seconds", FAILOVER_HELP, ["cause"], buckets=FAILOVER_BUCKETS,
            registry=registry,
        )
        # Set by the elector (it owns the clock); read at scrape time, so the counter grows while
        # nothing happens, without a thread ticking it.
        self.availability: Availability | None = None
        registry.register(_AvailabilityCollector(self))


class _AvailabilityCollector(Collector):
    def __init__(self, metrics: LabelerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(_families(0.0, 0.0))

    def collect(self) -> Iterator[Metric]:
        av = self._metrics.availability
        total, stretch = av.totals() if av is not None else (0.0, 0.0)
        return iter(_families(total, stretch))


def _families(total: float, stretch: float) -> list[Metric]:
    counter = CounterMetricFamily("liqo_labeler_no_active_replica_seconds", NO_ACTIVE_HELP, value=total)
    gauge = GaugeMetricFamily("liqo_labeler_no_active_replica_stretch_seconds", STRETCH_HELP, value=stretch)
    return [counter, gauge]
