"""Flags and environment common to every controller.

Environment (set by the Downward API in the chart): POD_NAME, POD_NAMESPACE, POD_IP. Every flag has
a help text ending in "(default: X)"; `--help` lists them all.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.httpendpoint import check_address
from services.common.vocabulary import netagent_socket


def add_runtime_flags(parser: argparse.ArgumentParser, *, default_metrics: str, default_health: str,
                      netagent_role: str) -> None:
    """`netagent_role` ("labeler", "tunnel", "natmap") names the netagent socket the component uses by
    default: the one that serves its own methods (and the reads). The gateway pod is hostNetwork, so
    its ports are the node's: the defaults (5873-5875 for metrics, 5877-5879 on loopback for the
    probes) stay clear of the 8080-8083 other node agents commonly take."""
    default_socket = netagent_socket(netagent_role)
    g = parser.add_argument_group("controller runtime")
    g.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG") or None,
        metavar="PATH",
        help="kubeconfig file to reach the API server; when absent, the in-cluster service account "
        "is used (default: env KUBECONFIG)",
    )
    g.add_argument(
        "--netagent-socket",
        default=default_socket,
        metavar="PATH",
        help=f"the netagent's {netagent_role} socket: serves this component's methods and the reads; "
        f"any other method answers PERMISSION_DENIED (default: {default_socket})",
    )
    g.add_argument(
        "--metrics-bind-address",
        default=default_metrics,
        metavar="HOST:PORT",
        help=f"where Prometheus /metrics is served (\":PORT\" = every address); port 0 picks a free "
        f"port, an empty value disables it; a port in use is an error at start (default: {default_metrics})",
    )
    g.add_argument(
        "--health-bind-address",
        default=default_health,
        metavar="HOST:PORT",
        help=f"where /healthz and /readyz are served for the kubelet's probes (loopback: the pod is "
        f"hostNetwork, probes reach it with host 127.0.0.1); port 0 picks a free port, an empty value "
        f"disables it; a port in use is an error at start (default: {default_health})",
    )
    g.add_argument(
        "--resync-period",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="every object is reconciled again this often even without changes (default: 300)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=4,
        metavar="N",
        help="reconciliations run in parallel (never two for the same object) (default: 4)",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="client-side timeout of every API request; bounds a hang on a half-open connection "
        "(default: 10)",
    )
    g.add_argument(
        "--watch-timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="server-side timeout of each watch request, after which the watch is re-opened from "
        "the last resourceVersion (default: 300)",
    )
    g.add_argument(
        "--retry-base-delay",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="first delay of the per-object exponential retry backoff (default: 0.2)",
    )
    g.add_argument(
        "--retry-max-delay",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="cap of the per-object exponential retry backoff (default: 60)",
    )
    g.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )


@dataclass(frozen=True)
class RuntimeConfig:
    kubeconfig: str | None
    netagent_socket: str
    metrics_bind_address: str
    health_bind_address: str
    resync_period: float
    workers: int
    request_timeout: float
    watch_timeout: int
    retry_base_delay: float
    retry_max_delay: float
    log_level: str
    pod_name: str
    pod_namespace: str
    pod_ip: str

    @staticmethod
    def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> RuntimeConfig:
        env = os.environ if env is None else env
        cfg = RuntimeConfig(
            kubeconfig=args.kubeconfig,
            netagent_socket=args.netagent_socket,
            metrics_bind_address=args.metrics_bind_address,
            health_bind_address=args.health_bind_address,
            resync_period=args.resync_period,
            workers=args.workers,
            request_timeout=args.request_timeout,
            watch_timeout=args.watch_timeout,
            retry_base_delay=args.retry_base_delay,
            retry_max_delay=args.retry_max_delay,
            log_level=args.log_level,
            pod_name=env.get("POD_NAME", ""),
            pod_namespace=env.get("POD_NAMESPACE", ""),
            pod_ip=env.get("POD_IP", ""),
        )
        cfg.check()
        return cfg

    def check(self) -> None:
        check_address(self.metrics_bind_address, "--metrics-bind-address")
        check_address(self.health_bind_address, "--health-bind-address")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.resync_period <= 0 or self.request_timeout <= 0 or self.watch_timeout <= 0:
            raise ValueError("--resync-period, --request-timeout and --watch-timeout must be positive")
        if not 0 < self.retry_base_delay <= self.retry_max_delay:
            raise ValueError("need 0 < --retry-base-delay <= --retry-max-delay")

    def require_env(self, *names: str) -> None:
        """ValueError naming the Downward-API variables the controller needs that are unset."""
        missing = [n for n in names if not getattr(self, n.lower())]
        if missing:
            raise ValueError(f"environment variable(s) {', '.join(missing)} must be set")
