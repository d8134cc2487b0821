"""A small HTTP endpoint (GET and HEAD only) for /metrics, /healthz and /readyz, shared by every component.

The socket is bound when the object is made and served only from `start()`, so a component binds
all its endpoints before it changes anything (creates a Secret, touches the kernel) and a busy port
is a one-line `BindError` naming the flag, never a traceback after a half start. On a hostNetwork
pod these ports are the node's: another agent may hold them, and anything on the node network may
connect.

Plain sockets and one thread per connection, not http.server: http.server loads http.client, email,
html and mimetypes (about 1.3 MB of RSS in every process) for features no probe or scrape needs, and
it has neither a read deadline nor a bound on threads. Here a connection has `read_timeout` seconds
to send its whole request head (a stalled or trickling client is dropped), at most `max_connections`
are served at once (beyond that a connection is closed on accept, with no thread), and the head is
bounded in size (414, 431). Every response closes its connection.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = [
    "BindError", "HttpEndpoint", "Reply", "bind_endpoints", "check_address", "health_routes", "parse_address",
]

log = logging.getLogger(__name__)

# What a route returns: (HTTP status, body, content type).
Reply = tuple[int, bytes, str]
Route = Callable[[], Reply]

READ_TIMEOUT = 5.0  # seconds from accept to the end of the request head; also bounds sending the reply
MAX_CONNECTIONS = 32  # served at once; a probe or scrape holds one for milliseconds
MAX_REQUEST_LINE = 8192  # bytes, line end included
MAX_HEADER_LINES = 100
MAX_HEADER_BYTES = 16384  # all header lines together, line ends included
_LINGER_BYTES = 65536  # at most this much unread input is drained after a reply, see _close
_ALLOW = "GET, HEAD"

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 414: "URI Too Long",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
# RFC 9110 token characters (a method); a request target is printable ASCII without spaces.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VCHAR = frozenset(range(0x21, 0x7F))


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


class _Reject(Exception):
    """A request answered with `status` and no route called."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _Gone(Exception):
    """The client closed, or stalled past the deadline: nothing to answer."""


def _response(status: int, body: bytes, ctype: str, head_only: bool, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


def _read_head(conn: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """Reads a request head; (method, path without query). _Reject for a head to refuse, _Gone when
    the client closes or `deadline` (time.monotonic) passes first, however it trickles."""
    buf = bytearray()
    request_line: bytes | None = None
    header_lines = header_bytes = 0
    while True:
        end = buf.find(b"\n")
        if end < 0:  # an incomplete line: bound it, then read more
            if request_line is None and len(buf) > MAX_REQUEST_LINE:
                raise _Reject(414, "request line too long")
            if request_line is not None and header_bytes + len(buf) > MAX_HEADER_BYTES:
                raise _Reject(431, "headers too large")
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Gone("read timeout")
            conn.settimeout(left)
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                raise _Gone("read timeout") from None
            if not chunk:
                raise _Gone("closed by the client")
            buf += chunk
            continue
        line = bytes(buf[:end + 1])
        del buf[:end + 1]
        if request_line is None:
            if len(line) > MAX_REQUEST_LINE:
                raise _Reject(414, "request line too long")
            request_line = line
            continue
        header_bytes += len(line)
        if header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431, "headers too large")
        if line in (b"\r\n", b"\n"):
            return _parse_request_line(request_line)
        header_lines += 1
        if header_lines > MAX_HEADER_LINES:
            raise _Reject(431, "too many headers")
        if b":" not in line or line[:1] in (b" ", b"\t"):  # no name, or an obsolete folded line
            raise _Reject(400, "malformed header line")


def _parse_request_line(line: bytes) -> tuple[bytes, bytes]:
    words = line.rstrip(b"\r\n").split(b" ")
    if len(words) != 3 or not all(words):
        raise _Reject(400, "malformed request line")
    method, target, version = words
    if not set(method) <= _TCHAR:
        raise _Reject(400, "malformed method")
    if not version.startswith(b"HTTP/") or len(version) != 8 or version[6:7] != b"." \
            or not version[5:6].isdigit() or not version[7:8].isdigit():
        raise _Reject(400, "malformed version")
    if version[5:6] != b"1":
        raise _Reject(505, "not HTTP/1.x")
    if not target.startswith(b"/") or not set(target) <= _VCHAR:
        raise _Reject(400, "malformed path")
    return method, target.split(b"?", 1)[0]


class HttpEndpoint:
    """GET (or HEAD) `path` -> `routes[path]()`; 404 for any other path, 405 for any other method.
    Bound at construction (BindError naming `flag`), served by a daemon thread after `start()`;
    `stop()` closes it. Port 0 picks a free port (see `.port`). `read_timeout` and
    `max_connections` are for tests; the module's constants otherwise."""

    def __init__(self, address: str, routes: Mapping[str, Route], *, flag: str = "address",
                 name: str = "http", read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        try:
            host, port = parse_address(address, flag)
        except ValueError as e:
            raise BindError(str(e)) from None
        self.address = address
        self.name = name
        self._routes = dict(routes)
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            raise BindError(f"{flag} {address}: {e.strerror or e}") from None
        try:
            # As http.server did: a restart can rebind while old connections sit in TIME_WAIT.
            # (It never lets two listeners share the port: a busy port is still EADDRINUSE.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen()
            sock.setblocking(False)  # accept only when the selector says so; never blocks the loop
        except OSError as e:
            sock.close()
            raise BindError(f"{flag} {address}: {e.strerror or e}") from None
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()  # stop() wakes the accept loop through it
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()  # open connections, guarded by _lock
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def route(self, path: str, fn: Route) -> None:
        self._routes[path] = fn

    def start(self) -> None:
        if self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        log.info("serving", extra={"endpoint": self.name, "address": self.address, "port": self.port,
                                   "paths": sorted(self._routes)})

    def stop(self) -> None:
        """Stops serving, drops open connections and releases the port; idempotent."""
        if self._closed:
            return
        self._stopping = True
        if self._thread is not None:
            self._wake_w.send(b"x")
            self._thread.join(5)
            self._thread = None
        self._closed = True
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()
        with self._lock:  # their threads see EOF or an error, close them and exit
            for conn in self._conns:
                with contextlib.suppress(OSError):  # already shut down by its client
                    conn.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                sel.select()
                if self._stopping:
                    return
                try:
                    conn, _ = self._sock.accept()
                except BlockingIOError:
                    continue
                except OSError as e:  # out of file descriptors, say: back off rather than spin
                    log.debug("accept failed", extra={"endpoint": self.name, "error": str(e)})
                    time.sleep(0.1)
                    continue
                self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        with self._lock:
            full = len(self._conns) >= self._max_connections
            if not full:
                self._conns.add(conn)
        if full:  # no thread for it: a flood of idle connections costs file descriptors only briefly
            log.debug("connection refused: too many", extra={"endpoint": self.name})
            conn.close()
            return
        try:
            threading.Thread(target=self._handle, args=(conn,), name=f"{self.name}-conn", daemon=True).start()
        except RuntimeError as e:  # can't start a new thread
            log.debug("connection dropped", extra={"endpoint": self.name, "error": str(e)})
            self._forget(conn)

    def _forget(self, conn: socket.socket) -> None:
        # Closed under the lock so stop() never shuts down a descriptor number reused meanwhile.
        with self._lock:
            self._conns.discard(conn)
            conn.close()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        except OSError as e:  # reset, timed out sending, dropped by stop(): the client's business
            log.debug("connection failed", extra={"endpoint": self.name, "error": repr(e)})
        except Exception:  # a bug here: visible, but the connection's only, never the process's
            log.exception("connection failed", extra={"endpoint": self.name})
        finally:
            self._forget(conn)

    def _answer(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self._read_timeout
        try:
            method, path = _read_head(conn, deadline)
        except _Gone:
            return
        except _Reject as e:
            log.debug("request rejected", extra={"endpoint": self.name, "status": e.status, "reason": str(e)})
            self._send(conn, _response(e.status, f"{_REASONS[e.status].lower()}\n".encode(), "text/plain",
                                       False))
            return
        head_only = method == b"HEAD"
        if method != b"GET" and not head_only:
            log.debug("request rejected", extra={"endpoint": self.name, "status": 405, "reason": "method"})
            self._send(conn, _response(405, b"method not allowed\n", "text/plain", False,
                                       f"Allow: {_ALLOW}\r\n"))
            return
        route = self._routes.get(path.decode("ascii"))  # ASCII: _parse_request_line checked it
        try:
            code, body, ctype = route() if route else (404, b"not found\n", "text/plain")
            data = _response(code, body, ctype, head_only)
        except Exception as e:  # a failing check is an unhealthy answer, not a dropped socket
            data = _response(500, f"error: {e}\n".encode(), "text/plain", head_only)
        self._send(conn, data)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.settimeout(self._read_timeout)  # a client that does not read is dropped too
        conn.sendall(data)
        # Closing with input unread (a body, the rest of an over-long line) makes the kernel send a
        # reset, which can destroy the reply before the client reads it: say we are done, then drain
        # what the client still sends, briefly and boundedly, until it closes.
        conn.shutdown(socket.SHUT_WR)
        drained, deadline = 0, time.monotonic() + min(self._read_timeout, 1.0)
        while drained < _LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                return
            drained += len(chunk)


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
