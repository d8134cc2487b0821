"""The labeler's own series, on the runtime's private registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class LabelerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
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
