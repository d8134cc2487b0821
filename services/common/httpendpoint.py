"""A small HTTP endpoint (GET only) for /metrics, /healthz and /readyz, shared by every component.

The socket is bound when the object is made and served only from `start()`, so a component binds
all its endpoints before it changes anything (creates a Secret, touches the kernel) and a busy port
is a one-line `BindError` naming the flag, never a traceback after a half start. On a hostNetwork
pod these ports are the node's: another agent may hold them.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = [
    "BindError", "HttpEndpoint", "Reply", "bind_endpoints", "check_address", "health_routes", "parse_address",
]

log = logging.getLogger(__name__)

# What a route returns: (HTTP status, body, content type).
Reply = tuple[int, bytes, str]
Route = Callable[[], Reply]


class BindError(Exception):
    """The endpoint's address cannot be bound (busy, not local, no permission). The message is one
    line: "<flag> <address>: <reason>"."""


def parse_address(address: str, what: str = "address") -> tuple[str, int]:
    """`host:port`, `:port` (every IPv4 address) or `[v6]:port`; ValueError otherwise."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {address!r}: expected host:port with a port in 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{what} {address!r}: write an IPv6 host in brackets")
    return host or "0.0.0.0", int(port_text)


def check_address(address: str, flag: str) -> None:
    """ValueError naming `flag` unless `address` is empty (off) or parses."""
    if address:
        parse_address(address, flag)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], ipv6: bool) -> None:
        if ipv6:
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)


class HttpEndpoint:
    """GET `path` -> `routes[path]()`; 404 for anything else. Bound at construction (BindError naming
    `flag`), served by a daemon thread after `start()`; `stop()` closes it. Port 0 picks a free
    port (see `.port`)."""

    def __init__(self, address: str, routes: Mapping[str, Route], *, flag: str = "address",
                 name: str = "http") -> None:
        try:
            host, port = parse_address(address, flag)
        except ValueError as e:
            raise BindError(str(e)) from None
        self.address = address
        self.name = name
        self._routes = dict(routes)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = outer._routes.get(self.path.split("?", 1)[0])
                try:
                    code, body, ctype = route() if route else (404, b"not found\n", "text/plain")
                except Exception as e:  # a failing check is an unhealthy answer, not a dropped socket
                    code, body, ctype = 500, f"error: {e}\n".encode(), "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes and scrapes are not news
                pass

        try:
            self._server = _Server((host, port), Handler, ipv6=":" in host)
        except OSError as e:
            raise BindError(f"{flag} {address}: {e.strerror or e}") from None
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def route(self, path: str, fn: Route) -> None:
        self._routes[path] = fn

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        log.info("serving", extra={"endpoint": self.name, "address": self.address, "port": self.port,
                                   "paths": sorted(self._routes)})

    def stop(self) -> None:
        """Stops serving and releases the port; idempotent."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()


def _check(ok: bool, bad: bytes) -> Reply:
    return (200, b"ok\n", "text/plain") if ok else (503, bad, "text/plain")


def health_routes(healthy: Callable[[], bool], ready: Callable[[], bool]) -> dict[str, Route]:
    """/healthz and /livez (200 when `healthy()`, else 503) and /readyz (the same with `ready()`)."""
    live: Route = lambda: _check(healthy(), b"unhealthy\n")  # noqa: E731
    return {"/healthz": live, "/livez": live, "/readyz": lambda: _check(ready(), b"not ready\n")}


def bind_endpoints(
    metrics: tuple[str, str], health: tuple[str, str]
) -> tuple[HttpEndpoint | None, HttpEndpoint | None]:
    """Binds a component's metrics and health endpoints (each `(address, flag)`; an empty address
    leaves it off) without serving them; BindError naming the flag of the first that fails, with the
    other released, so a busy port leaves nothing behind."""
    metrics_ep = HttpEndpoint(metrics[0], {}, flag=metrics[1], name="metrics") if metrics[0] else None
    try:
        health_ep = HttpEndpoint(health[0], {}, flag=health[1], name="health") if health[0] else None
    except BindError:
        if metrics_ep is not None:
            metrics_ep.stop()
        raise
    return metrics_ep, health_ep
