"""The UDP connectivity probe's socket and threads (Liqo's conncheck) around the pure per-target
state machine `services.netagent.plan.probe.PeerProbe`.

One UDP socket inside the gateway netns answers every PING with a PONG and sends a PING to each target
cluster every `interval`. Callbacks run on their own thread, in the order the changes happened, never
under the lock and never on the I/O threads (Liqo did API I/O under its receiver lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from services.common.netns import in_netns
from services.netagent.kernel.netns import check_name, netns_path
from services.netagent.plan.probe import (
    BUFFER_SIZE,
    PING,
    PONG,
    PeerProbe,
    ProbeState,
    ProbeStatus,
    decode_message,
    encode_message,
    expedited_send,
    format_timestamp,
)

__all__ = ["Prober", "open_udp_socket"]

log = logging.getLogger(__name__)


def open_udp_socket(netns: str | None, port: int, address: str = "0.0.0.0") -> socket.socket:
    """A non-blocking UDP socket bound to address:port inside the named netns (None: our own).

    A socket belongs to the netns it was created in: a short-lived thread enters the netns, creates
    and binds the socket, and exits (`in_netns`), so the caller's thread never changes namespace."""
    if netns is None:
        return _bind_udp(address, port)
    return in_netns(netns_path(netns), lambda: _bind_udp(address, port))


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
    last_sent: float | None = None  # when the last PING went out (the send loop's clock)
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
            check_name(netns)
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

    def probe_now(self, cluster_ids: Iterable[str]) -> None:
        """Pings these targets at once unless CONNECTED (`expedited_send` bounds the rate): called
        when a peer was just programmed or just handshook, when an answer is likely to come back
        now rather than at the next tick."""
        now = self._clock()
        woke = False
        with self._lock:
            for cid in cluster_ids:
                t = self._targets.get(cid)
                if t is None or t.machine.status().state is ProbeState.CONNECTED:
                    continue
                t.next_send = expedited_send(t.next_send, t.last_sent, now)
                woke = True
        if woke:
            self._wake.set()

    def connecting(self) -> set[str]:
        """The targets still CONNECTING (no PONG yet since they were set)."""
        with self._lock:
            return {cid for cid, t in self._targets.items()
                    if t.machine.status().state is ProbeState.CONNECTING}

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
                        t.last_sent = now
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
