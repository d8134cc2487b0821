"""services.common.httpendpoint against a real endpoint on 127.0.0.1, mostly over raw sockets: what it
serves, what it refuses, and how it holds up on a node port anyone may connect to (read deadline,
connection cap, prompt stop). Time bounds are generous upper bounds: the endpoints' own timeouts are
a fraction of them, so a loaded machine does not make these tests fail."""

from __future__ import annotations

import logging
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.httpendpoint import BindError, HttpEndpoint, Reply

ROOT = Path(__file__).resolve().parents[2]
MODULE = "services.common.httpendpoint"
FAST = 0.2  # the read timeout of endpoints that must drop stallers within the test
SLOW = 30.0  # the read timeout of endpoints whose stallers must hold on throughout the test
PATIENT = 5.0  # the most anything expected "after the timeout" may take
AT_ONCE = 2.0  # the most anything expected "at once" may take


class Calls:
    """Routes that count their calls: a refused request must call none."""

    def __init__(self) -> None:
        self.n = 0

    def routes(self) -> dict[str, Callable[[], Reply]]:
        def metrics() -> Reply:
            self.n += 1
            return 200, b"up 1\n", "text/plain; version=0.0.4"

        def broken() -> Reply:
            self.n += 1
            raise RuntimeError("boom")

        return {"/metrics": metrics, "/broken": broken}


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def serve(calls: Calls) -> Iterator[Callable[..., HttpEndpoint]]:
    """Starts endpoints on 127.0.0.1:0 serving `calls`' routes; all stopped at the end."""
    made: list[HttpEndpoint] = []

    def make(**kw: Any) -> HttpEndpoint:
        ep = HttpEndpoint("127.0.0.1:0", calls.routes(), flag="--test", name="test", **kw)
        made.append(ep)
        ep.start()
        return ep

    yield make
    for ep in made:
        ep.stop()


@pytest.fixture
def connect() -> Iterator[Callable[[int], socket.socket]]:
    """Client sockets to 127.0.0.1:port, all closed at the end."""
    opened: list[socket.socket] = []

    def make(port: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=PATIENT)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture(autouse=True)
def quiet(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a client does: no traceback and nothing above debug in the log (but "serving" at
    start), and no exception escaping a thread."""
    escaped: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    caplog.set_level(logging.DEBUG, logger=MODULE)
    yield
    loud = [r for r in caplog.get_records("call") if r.name == MODULE
            and (r.exc_info or (r.levelno > logging.DEBUG and r.getMessage() != "serving"))]
    assert loud == []
    assert escaped == []


def read_to_eof(s: socket.socket, reset_ok: bool = True) -> bytes:
    """Everything until the server closes; fails if it has not closed within PATIENT."""
    s.settimeout(PATIENT)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with our input unread: what arrived before still counts
        if not reset_ok:
            raise
    return data


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status), headers, body


def exchange(connect: Callable[[int], socket.socket], port: int, request: bytes) -> tuple[
        int, dict[str, str], bytes]:
    s = connect(port)
    s.sendall(request)
    return parse(read_to_eof(s))


def get(port: int, path: str = "/metrics") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENT) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return parse(read_to_eof(s))[0]


def status_of(port: int) -> int | None:
    """A GET's status, or None when the connection is closed (or reset) without a response."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENT) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = read_to_eof(s)
    except (BrokenPipeError, ConnectionResetError):
        return None
    return parse(data)[0] if data else None


def dropped_within(s: socket.socket, seconds: float) -> bool:
    """True when the server closes `s` within `seconds` (sending nothing that counts)."""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# ---- what it loads ---------------------------------------------------------------------------------------


def test_importing_it_loads_no_http_server_and_its_baggage() -> None:
    # -S: the editable install's path finder (site-packages) loads urllib.parse at start-up by itself.
    code = ("import sys; import services.common.httpendpoint as m; print(m.__file__); "
            "print(sorted(n for n in sys.modules if n in {'http.server', 'http.client', 'ssl'} "
            "or n.split('.')[0] in {'email', 'html', 'mimetypes', 'urllib'}))")
    cp = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, check=True)
    where, loaded = cp.stdout.splitlines()
    assert where.startswith(str(ROOT))
    assert loaded == "[]"


# ---- what it serves --------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_", [b"GET /metrics?name[]=up HTTP/1.1\r\nHost: x\r\n\r\n",
                                      b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"], ids=["HTTP/1.1", "HTTP/1.0"])
def test_get_serves_the_route_ignoring_the_query_then_closes(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket], request_: bytes
) -> None:
    ep = serve()
    status, headers, body = exchange(connect, ep.port, request_)
    assert (status, body) == (200, b"up 1\n")
    assert headers["content-type"] == "text/plain; version=0.0.4"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"


def test_an_unknown_path_is_404(serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket],
                                calls: Calls) -> None:
    ep = serve()
    status, headers, body = exchange(connect, ep.port, b"GET /metricsz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body, headers["content-length"], headers["connection"]) == (404, b"not found\n", "10",
                                                                                "close")
    assert calls.n == 0


def test_a_failing_route_is_500_with_the_error(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket]
) -> None:
    ep = serve()
    status, headers, body = exchange(connect, ep.port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (500, b"error: boom\n")
    assert headers["content-length"] == str(len(body))


def test_head_has_the_headers_of_get_and_no_body(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket]
) -> None:
    ep = serve()
    _, get_headers, _ = exchange(connect, ep.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = exchange(connect, ep.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers, body) == (200, get_headers, b"")


def test_routes_added_after_start_are_served(serve: Callable[..., HttpEndpoint]) -> None:
    ep = serve()
    assert get(ep.port, "/readyz") == 404
    ep.route("/readyz", lambda: (503, b"not ready\n", "text/plain"))
    assert get(ep.port, "/readyz") == 503


def test_an_ordinary_client_works(serve: Callable[..., HttpEndpoint]) -> None:
    ep = serve()
    url = f"http://127.0.0.1:{ep.port}"
    with urllib.request.urlopen(f"{url}/metrics?x=1", timeout=PATIENT) as r:
        assert (r.status, r.headers["Content-Type"], r.read()) == (200, "text/plain; version=0.0.4",
                                                                   b"up 1\n")
    head = urllib.request.Request(f"{url}/metrics", method="HEAD")
    with urllib.request.urlopen(head, timeout=PATIENT) as r:
        assert (r.status, r.headers["Content-Length"], r.read()) == (200, "5", b"")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}/nope", timeout=PATIENT)
    assert e.value.code == 404
    e.value.close()


def test_ipv6(calls: Calls) -> None:
    try:
        ep = HttpEndpoint("[::1]:0", calls.routes(), flag="--test")
    except BindError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    ep.start()
    try:
        with socket.create_connection(("::1", ep.port), timeout=PATIENT) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert parse(read_to_eof(s))[0] == 200
    finally:
        ep.stop()


def test_bind_errors_are_one_line_naming_the_flag(calls: Calls) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BindError, match=rf"^--x 127\.0\.0\.1:{port}: Address already in use$"):
            HttpEndpoint(f"127.0.0.1:{port}", {}, flag="--x")
    with pytest.raises(BindError, match=r"^--x 'nohost': expected host:port"):
        HttpEndpoint("nohost", {}, flag="--x")


# ---- what it refuses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"get"])
def test_other_methods_are_405_with_allow_and_call_no_route(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket], calls: Calls, method: bytes
) -> None:
    ep = serve()
    status, headers, _ = exchange(
        connect, ep.port, method + b" /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert status == 405
    assert {m.strip() for m in headers["allow"].split(",")} == {"GET", "HEAD"}
    assert headers["connection"] == "close"
    assert calls.n == 0


def test_input_left_unread_does_not_reset_the_connection(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket]
) -> None:
    """Closing a socket with input unread sends a reset, not a FIN, and a reset can destroy a reply
    still on its way: the endpoint drains what a refused client sent before it closes."""
    ep = serve()
    s = connect(ep.port)
    s.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + b"x" * 20000)
    assert parse(read_to_eof(s, reset_ok=False))[0] == 405


HOSTILE = {
    "request line over 8 KiB": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {414, 400}),
    "8 KiB and no line end": (b"GET /" + b"a" * 9000, {414, 400}),
    "no target, no version": (b"GET\r\n\r\n", {400}),
    "HTTP/0.9": (b"GET /metrics\r\n\r\n", {400}),
    "empty request line": (b"\r\n\r\n", {400}),
    "four words": (b"GET /metrics HTTP/1.1 x\r\n\r\n", {400}),
    "NUL in the method": (b"G\x00T /metrics HTTP/1.1\r\n\r\n", {400}),
    "binary garbage": (bytes(range(256)) + b"\r\n\r\n", {400}),
    "HTTP/2.0": (b"GET /metrics HTTP/2.0\r\n\r\n", {400, 505}),
    "HTTP/1.1.1": (b"GET /metrics HTTP/1.1.1\r\n\r\n", {400, 505}),
    "not HTTP": (b"GET /metrics FTP/1.1\r\n\r\n", {400}),
    "101 header lines": (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", {431}),
    "17 KiB of headers": (b"GET /metrics HTTP/1.1\r\n" + (b"X: " + b"y" * 1000 + b"\r\n") * 17 + b"\r\n",
                          {431}),
    "one 17 KiB header, no end": (b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 17000, {431}),
    "header line without a name": (b"GET /metrics HTTP/1.1\r\nnonsense\r\n\r\n", {400}),
    "non-ASCII path": (b"GET /m\xc3\xa9trics HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404}),
    "control character in the path": (b"GET /metrics\x7f HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404}),
    "no slash": (b"GET metrics HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404}),
}


@pytest.mark.parametrize("request_, statuses", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_input_is_4xx_and_closed_and_service_goes_on(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket], calls: Calls,
    request_: bytes, statuses: set[int], caplog: pytest.LogCaptureFixture,
) -> None:
    ep = serve()
    status, headers, _ = exchange(connect, ep.port, request_)  # read_to_eof: closed within PATIENT
    assert status in statuses
    assert headers["connection"] == "close"
    assert calls.n == 0
    assert get(ep.port) == 200
    # At most a debug line for the refusal; none at all for the GET that follows.
    assert [r.levelno for r in caplog.records if r.name == MODULE and r.getMessage() != "serving"] == [
        logging.DEBUG]


def test_requests_are_not_logged(serve: Callable[..., HttpEndpoint],
                                 caplog: pytest.LogCaptureFixture) -> None:
    ep = serve()
    for path in ("/metrics", "/broken", "/nope"):
        get(ep.port, path)
    assert [r.getMessage() for r in caplog.records if r.name == MODULE] == ["serving"]


# ---- stallers, floods, stop ------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"],
                         ids=["nothing", "half a request line", "no end of headers"])
def test_a_staller_is_dropped_after_the_read_timeout(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket], sent: bytes
) -> None:
    ep = serve(read_timeout=FAST)
    staller = connect(ep.port)
    staller.sendall(sent)
    assert dropped_within(staller, PATIENT)
    assert get(ep.port) == 200


def test_a_trickling_client_is_dropped_at_the_deadline(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket]
) -> None:
    """A byte every 50 ms never lets a per-read timeout of 200 ms expire: the deadline counts from
    accept, for the whole request head."""
    ep = serve(read_timeout=FAST)
    s = connect(ep.port)
    s.sendall(b"GET /")
    give_up = time.monotonic() + PATIENT
    dropped = False
    while not dropped and time.monotonic() < give_up:  # at most 100 bytes: far below any size limit
        try:
            s.send(b"a")
            if select.select([s], [], [], 0.05)[0]:
                dropped = s.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
    assert dropped


def test_stallers_do_not_delay_other_clients(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket]
) -> None:
    ep = serve(read_timeout=SLOW)
    stallers = [connect(ep.port) for _ in range(3)]
    stallers[1].sendall(b"GET /metr")
    t0 = time.monotonic()
    assert get(ep.port) == 200
    assert time.monotonic() - t0 < AT_ONCE
    assert not dropped_within(stallers[0], 0.1)  # still held: they were stalling all along


def test_connections_beyond_the_cap_are_closed_and_get_no_thread(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket]
) -> None:
    cap = 4
    ep = serve(read_timeout=SLOW, max_connections=cap)
    before = threading.active_count()
    peak = before
    flood = []
    for _ in range(200):
        flood.append(connect(ep.port))
        peak = max(peak, threading.active_count())
    time.sleep(0.5)  # let the accept loop catch up with the last of them
    peak = max(peak, threading.active_count())
    assert peak <= before + cap
    assert dropped_within(flood[-1], PATIENT)  # over the cap: closed on accept
    assert not dropped_within(flood[0], 0.1)  # within it: held (read timeout SLOW)
    assert status_of(ep.port) in (None, 503)  # a probe while full is refused, not queued
    for s in flood:
        s.close()
    give_up = time.monotonic() + PATIENT
    while (status := status_of(ep.port)) != 200 and time.monotonic() < give_up:
        time.sleep(0.05)  # the stallers' threads see EOF and go
    assert status == 200


def test_stop_with_a_client_connected_is_prompt_and_releases_the_port(
    serve: Callable[..., HttpEndpoint], connect: Callable[[int], socket.socket], calls: Calls
) -> None:
    ep = serve(read_timeout=SLOW)
    staller = connect(ep.port)
    staller.sendall(b"GET /metr")
    assert get(ep.port) == 200  # accepted in order: the staller's connection is being served
    t0 = time.monotonic()
    ep.stop()
    assert time.monotonic() - t0 < AT_ONCE
    assert dropped_within(staller, PATIENT)
    ep.stop()  # idempotent
    again = HttpEndpoint(f"127.0.0.1:{ep.port}", calls.routes(), flag="--test")
    try:
        again.start()
        assert get(again.port) == 200
    finally:
        again.stop()


def test_stop_without_start_releases_the_port(calls: Calls) -> None:
    ep = HttpEndpoint("127.0.0.1:0", calls.routes(), flag="--test")
    ep.stop()
    ep.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", ep.port))
