"""The UDP connectivity probe (Liqo's conncheck), with hysteresis.

One UDP socket inside the gateway netns answers every PING with a PONG and sends a PING to each target
cluster every `interval`. Messages are Liqo's JSON, so a Go liqonet peer and this probe understand each
other: `{"clusterID": <id of the pinged cluster>, "msgType": "PING"|"PONG", "timeStamp": <RFC 3339>}`.

`PeerProbe` is the pure state machine of one target, driven by explicit timestamps; `Prober` is the
thin socket and thread part around it. Callbacks run on their own thread, in the order the changes
happened, never under the lock and never on the I/O threads (Liqo did API I/O under its receiver lock).
"""

from __future__ import annotations

import calendar
import contextlib
import ctypes
import json
import logging
import math
import os
import queue
import re
import select
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from ipaddress import IPv4Address

__all__ = [
    "Message",
    "PeerProbe",
    "ProbeState",
    "ProbeStatus",
    "Prober",
    "decode_message",
    "encode_message",
    "format_timestamp",
    "open_udp_socket",
    "parse_timestamp",
]

log = logging.getLogger(__name__)

BUFFER_SIZE = 1024  # Liqo's read buffer: a longer datagram is not a conncheck message
MAX_CLUSTER_ID_LEN = 253
PING, PONG = "PING", "PONG"
RECOVER_PONGS = 2  # consecutive PONGs that bring a DISCONNECTED peer back
PING_HISTORY = 64  # pings remembered per target, to match PONGs to the ping they echo
_NS = 1_000_000_000
_CLONE_NEWNET = 0x40000000

# Go marshals time.Time as RFC 3339 with up to nine fractional digits (trailing zeros trimmed) and
# parses any RFC 3339 time; we accept the same and produce what Go produces for a UTC time.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-](\d{2}):(\d{2}))"
)


def format_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch as Go's json of a UTC time.Time: `2022-01-02T03:04:05.12Z`."""
    secs, frac = divmod(ns, _NS)
    out = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    return out + "Z"


def parse_timestamp(text: str) -> int:
    """RFC 3339 (as Go's time.Time json) to nanoseconds since the epoch; ValueError otherwise."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text[:64]!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    datetime(y, mo, d, h, mi, s)  # range check (month 13, Feb 30, hour 24...)
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if m.group(8) != "Z":
        oh, om = int(m.group(9)), int(m.group(10))
        if oh > 23 or om > 59:
            raise ValueError(f"bad time zone offset in {text!r}")
        offset = (oh * 60 + om) * 60
        secs -= offset if m.group(8)[0] == "+" else -offset
    return secs * _NS + int((m.group(7) or "").ljust(9, "0"))


@dataclass(frozen=True)
class Message:
    cluster_id: str
    msg_type: str  # PING or PONG
    timestamp: str  # as received (validated), so a PONG echoes the very same text
    timestamp_ns: int


def encode_message(cluster_id: str, msg_type: str, timestamp: str) -> bytes:
    # Field order and compact separators as Go's encoding/json writes the struct.
    body = {"clusterID": cluster_id, "msgType": msg_type, "timeStamp": timestamp}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_message(data: bytes) -> Message:
    """Validates a datagram; ValueError for anything that is not a conncheck message."""
    if len(data) > BUFFER_SIZE:
        raise ValueError(f"datagram of {len(data)} bytes exceeds {BUFFER_SIZE}")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    cid, kind, ts = obj.get("clusterID"), obj.get("msgType"), obj.get("timeStamp")
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_CLUSTER_ID_LEN:
        raise ValueError("clusterID: a string of 1..253 characters is required")
    if kind not in (PING, PONG):
        raise ValueError(f"msgType: {str(kind)[:16]!r} is neither PING nor PONG")
    if not isinstance(ts, str):
        raise ValueError("timeStamp: an RFC 3339 string is required")
    return Message(cid, kind, ts, parse_timestamp(ts))


# ---- the state machine -----------------------------------------------------------------------------


class ProbeState(Enum):
    CONNECTING = "connecting"  # no PONG yet
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class ProbeStatus:
    state: ProbeState
    latency: float | None  # round-trip time of the last accepted PONG (s); None unless CONNECTED
    since: float  # when `state` was entered (PeerProbe: its clock; Prober: wall clock)


class PeerProbe:
    """Connectivity of one target, driven by explicit timestamps of one monotonic clock.

    - CONNECTING -> CONNECTED on the first PONG;
    - CONNECTED -> DISCONNECTED when no PONG for interval x loss_threshold after the last one arrived
      (Liqo: last echoed timestamp + latency + interval x threshold, i.e. the same instant);
    - CONNECTING -> DISCONNECTED when nothing came back within that time from the start (as Liqo);
    - DISCONNECTED -> CONNECTED only on PONGs of RECOVER_PONGS consecutive PINGs, so one stray or
      late packet does not flap the state.
    A PONG counts only if it echoes a PING this machine sent and is newer than the last accepted one
    (out-of-order and foreign PONGs are dropped).
    """

    def __init__(self, interval: float, loss_threshold: int, now: float) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval: {interval} must be a positive number of seconds")
        if loss_threshold < 1:
            raise ValueError(f"loss_threshold: {loss_threshold} must be at least 1")
        self._window = interval * loss_threshold
        self._sent: OrderedDict[int, tuple[int, float]] = OrderedDict()  # timestamp ns -> (seq, sent at)
        self._next_seq = 0
        self._last_ts = 0
        self._last_seq = -1  # seq of the last accepted PONG
        self._streak = 0  # consecutive PONGs while DISCONNECTED
        self._deadline = now + self._window
        self._state = ProbeState.CONNECTING
        self._since = now
        self._latency: float | None = None

    def ping(self, now: float, wall_ns: int) -> int:
        """Registers a PING sent at `now` and returns its timestamp (wall clock ns, strictly
        increasing, so that each PONG names exactly one PING)."""
        ts = max(wall_ns, self._last_ts + 1)
        self._last_ts = ts
        self._sent[ts] = (self._next_seq, now)
        self._next_seq += 1
        while len(self._sent) > PING_HISTORY:
            self._sent.popitem(last=False)
        return ts

    def pong(self, timestamp_ns: int, now: float) -> bool:
        """A PONG echoing `timestamp_ns` arrived at `now`; True when the state changed."""
        sent = self._sent.get(timestamp_ns)
        if sent is None:
            return False  # not ours, or too old to remember
        seq, sent_at = sent
        if seq <= self._last_seq:
            return False  # out of order or duplicate
        consecutive = seq == self._last_seq + 1
        self._last_seq = seq
        rtt = max(0.0, now - sent_at)
        self._deadline = now + self._window
        if self._state is ProbeState.DISCONNECTED:
            self._streak = self._streak + 1 if consecutive and self._streak else 1
            if self._streak < RECOVER_PONGS:
                return False
        self._latency = rtt
        return self._enter(ProbeState.CONNECTED, now)

    def tick(self, now: float) -> bool:
        """Loss detection; True when the state changed."""
        if self._state is ProbeState.DISCONNECTED or now <= self._deadline:
            return False
        self._latency = None
        self._streak = 0
        return self._enter(ProbeState.DISCONNECTED, now)

    @property
    def next_check(self) -> float:
        """When `tick` could next change the state (inf while DISCONNECTED)."""
        return math.inf if self._state is ProbeState.DISCONNECTED else self._deadline

    def status(self) -> ProbeStatus:
        return ProbeStatus(self._state, self._latency, self._since)

    def _enter(self, state: ProbeState, now: float) -> bool:
        if state is self._state:
            return False
        self._state, self._since = state, now
        return True


# ---- sockets and threads ---------------------------------------------------------------------------


def _check_netns_name(name: str) -> None:
    if not name or len(name) > 255 or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"netns: {name!r} is not a valid network namespace name")


def open_udp_socket(netns: str | None, port: int, address: str = "0.0.0.0") -> socket.socket:
    """A non-blocking UDP socket bound to address:port inside the named netns (None: our own).

    A socket belongs to the netns it was created in. A short-lived thread enters the netns, creates
    and binds the socket, and exits: the caller's thread never changes namespace, even on errors."""
    if netns is None:
        return _bind_udp(address, port)
    _check_netns_name(netns)
    result: list[socket.socket | BaseException] = []

    def enter_and_bind() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(_bind_udp(address, port))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=enter_and_bind, name=f"probe-netns-{netns}", daemon=True)
    t.start()
    t.join()
    if not result:
        raise OSError(f"could not open the probe socket in netns {netns}")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _bind_udp(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((address, port))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


@dataclass
class _Target:
    address: IPv4Address
    machine: PeerProbe
    next_send: float = 0.0  # first PING immediately
    send_error: str = ""  # last send error, logged once per change


_Change = tuple[str, ProbeStatus] | None  # None stops the notifier


class Prober:
    """Liqo's conncheck on one UDP socket in `netns`: answers PINGs, pings the targets on `port`."""

    def __init__(
        self,
        netns: str | None,
        port: int,
        interval: float,
        loss_threshold: int,
        on_change: Callable[[str, ProbeStatus], None],
        clock: Callable[[], float] = time.monotonic,
        bind_address: str = "0.0.0.0",
    ) -> None:
        if netns is not None:
            _check_netns_name(netns)
        if not 1 <= port <= 65535:
            raise ValueError(f"port: {port} not in 1..65535")
        PeerProbe(interval, loss_threshold, 0.0)  # validates the numbers
        self._netns = netns
        self._port = port
        self._interval = interval
        self._threshold = loss_threshold
        self._on_change = on_change
        self._clock = clock
        self._bind_address = bind_address
        self._lock = threading.Lock()
        self._targets: dict[str, _Target] = {}
        self._events: queue.SimpleQueue[_Change] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._sock: socket.socket | None = None
        self._pipe: tuple[int, int] | None = None
        self._threads: list[threading.Thread] = []
        self._started = False

    # ---- public --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError("prober already started")
        self._sock = open_udp_socket(self._netns, self._port, self._bind_address)
        self._pipe = os.pipe()
        self._started = True
        where = self._netns or "own netns"
        self._threads = [
            threading.Thread(target=self._receive_loop, name=f"probe-recv-{where}", daemon=True),
            threading.Thread(target=self._send_loop, name=f"probe-send-{where}", daemon=True),
            threading.Thread(target=self._notify_loop, name=f"probe-notify-{where}", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info(
            "probe started", extra={"netns": self._netns, "port": self._port, "interval": self._interval}
        )

    def stop(self) -> None:
        """Stops and joins the threads and closes the socket; idempotent."""
        if not self._started or self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        assert self._pipe is not None
        os.write(self._pipe[1], b"x")
        recv, send, notify = self._threads
        recv.join(5)
        send.join(5)
        self._events.put(None)  # after the I/O threads, so every change before it is delivered
        if threading.current_thread() is not notify:  # stop() called from a callback
            notify.join(5)
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                log.error("probe thread did not stop", extra={"thread": t.name})
        if self._sock is not None:
            self._sock.close()
        for fd in self._pipe:
            os.close(fd)
        log.info("probe stopped", extra={"netns": self._netns})

    def set_targets(self, targets: Mapping[str, IPv4Address]) -> None:
        """Pings exactly these clusters (id -> probe address); a new or moved target starts CONNECTING."""
        now = self._clock()
        with self._lock:
            for cid in self._targets.keys() - targets.keys():
                del self._targets[cid]
            for cid, address in targets.items():
                have = self._targets.get(cid)
                if have is not None and have.address == address:
                    continue
                fresh = _Target(address, PeerProbe(self._interval, self._threshold, now))
                self._targets[cid] = fresh
                if have is not None and have.machine.status().state is not ProbeState.CONNECTING:
                    self._emit(cid, fresh.machine.status())
        self._wake.set()

    def status(self, cluster_id: str) -> ProbeStatus | None:
        with self._lock:
            target = self._targets.get(cluster_id)
            st = target.machine.status() if target is not None else None
        return self._to_wall(st) if st is not None else None

    # ---- threads -------------------------------------------------------------------------------

    def _emit(self, cluster_id: str, status: ProbeStatus) -> None:
        # Called under the lock: the queue keeps the changes in the order they happened.
        self._events.put((cluster_id, status))

    def _to_wall(self, st: ProbeStatus) -> ProbeStatus:
        return replace(st, since=time.time() - (self._clock() - st.since))

    def _notify_loop(self) -> None:
        while (event := self._events.get()) is not None:
            cid, status = event
            log.info(
                "probe state changed",
                extra={"cluster_id": cid, "state": status.state.value, "latency": status.latency},
            )
            try:
                self._on_change(cid, self._to_wall(status))
            except Exception:
                log.exception("probe callback failed", extra={"cluster_id": cid})

    def _send_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            now = self._clock()
            wake_at = now + self._interval
            pings: list[tuple[_Target, bytes]] = []
            with self._lock:
                for cid, t in self._targets.items():
                    if t.machine.tick(now):
                        self._emit(cid, t.machine.status())
                    if now >= t.next_send:
                        ts = t.machine.ping(now, time.time_ns())
                        pings.append((t, encode_message(cid, PING, format_timestamp(ts))))
                        t.next_send = now + self._interval
                    # tick() fires strictly after the deadline: wake just past it.
                    wake_at = min(wake_at, t.next_send, t.machine.next_check + 0.001)
            for t, data in pings:
                self._send(t, data)
            self._wake.wait(max(0.0, wake_at - self._clock()))
            self._wake.clear()

    def _send(self, t: _Target, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(data, (str(t.address), self._port))
            error = ""
        except OSError as e:  # e.g. ENETUNREACH while the tunnel is down: the PING is just lost
            error = e.strerror or str(e)
        if error != t.send_error:
            t.send_error = error  # only this thread touches send_error
            if error:
                log.warning("probe send failed", extra={"target": str(t.address), "error": error})

    def _receive_loop(self) -> None:
        assert self._sock is not None and self._pipe is not None
        sock_fd, wake_fd = self._sock.fileno(), self._pipe[0]
        while not self._stopping.is_set():
            ready, _, _ = select.select([sock_fd, wake_fd], [], [], 1.0)
            if wake_fd in ready:
                return
            if sock_fd not in ready:
                continue
            while True:
                try:
                    data, source = self._sock.recvfrom(BUFFER_SIZE + 1)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    log.debug("probe receive error", extra={"error": str(e)})
                    break
                self._handle(data, source)

    def _handle(self, data: bytes, source: tuple[str, int]) -> None:
        now = self._clock()
        try:
            msg = decode_message(data)
        except ValueError as e:
            log.debug("dropped a non-probe datagram", extra={"source": source[0], "error": str(e)})
            return
        if msg.msg_type == PING:
            assert self._sock is not None
            with contextlib.suppress(OSError):  # the sender pings again next interval
                self._sock.sendto(encode_message(msg.cluster_id, PONG, msg.timestamp), source)
            return
        with self._lock:
            t = self._targets.get(msg.cluster_id)
            if t is not None and t.machine.pong(msg.timestamp_ns, now):
                self._emit(msg.cluster_id, t.machine.status())
