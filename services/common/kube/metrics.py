"""Controller metrics on a private registry, and the HTTP endpoints serving /metrics and /healthz, /readyz."""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.common.httpendpoint import HttpEndpoint, health_routes
from services.common.prometheus import CollectorRegistry, Counter, Gauge, Histogram, metrics_route

log = logging.getLogger(__name__)


class ControllerMetrics:
    """One set per process; every series is labelled by controller name. A private registry keeps
    tests (several runtimes in one process) and the default process collectors apart."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "liqo_controller_reconciles_total",
            "Reconciliations by controller and result (success, error, requeue).",
            ["controller", "result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "liqo_controller_reconcile_errors_total",
            "Reconciliations that failed and were retried with backoff.",
            ["controller"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "liqo_controller_queue_depth",
            "Keys waiting in the work queue (ready plus delayed retries).",
            ["controller"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "liqo_controller_reconcile_duration_seconds",
            "Time spent in one reconciliation.",
            ["controller"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.watch_connected = Gauge(
            "liqo_controller_watch_connected",
            "1 while the informer's list/watch of a resource is connected.",
            ["resource"],
            registry=self.registry,
        )


def metrics_endpoint(address: str, registry: CollectorRegistry, *,
                     flag: str = "--metrics-bind-address") -> HttpEndpoint:
    """/metrics on `address`, bound now (BindError naming `flag`), served from `start()`."""
    return HttpEndpoint(address, {"/metrics": metrics_route(registry)}, flag=flag, name="metrics")


def health_endpoint(address: str, healthy: Callable[[], bool], ready: Callable[[], bool], *,
                    flag: str = "--health-bind-address") -> HttpEndpoint:
    """/healthz, /livez and /readyz on `address`, bound now (BindError naming `flag`)."""
    return HttpEndpoint(address, health_routes(healthy, ready), flag=flag, name="health")
