"""Controller metrics on a private registry, and the HTTP endpoint serving /healthz and /metrics."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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


class HealthServer:
    """Serves GET /healthz (200 when `healthy()`, else 503), /readyz (same with `ready()`) and
    /metrics on `host:port`; port 0 picks a free port (see `.port`)."""

    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        ready: Callable[[], bool] | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        self._registry = registry
        self._healthy = healthy
        self._ready = ready or healthy
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(outer._registry)
                    self._reply(200, body, CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez"):
                    ok = outer._healthy()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
                elif path == "/readyz":
                    ok = outer._ready()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                pass

        self._server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("serving /healthz and /metrics", extra={"port": self.port})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
