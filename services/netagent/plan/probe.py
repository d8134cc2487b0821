"""The UDP connectivity probe (Liqo's conncheck), with hysteresis: its messages and its per-target
state machine (pure).

Messages are Liqo's JSON, so a Go liqonet peer and this probe understand each other:
`{"clusterID": <id of the pinged cluster>, "msgType": "PING"|"PONG", "timeStamp": <RFC 3339>}`.

`PeerProbe` is the state machine of one target, driven by explicit timestamps;
`services.netagent.kernel.probe.Prober` is the socket and thread part around it.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

__all__ = [
    "Message",
    "PeerProbe",
    "ProbeState",
    "ProbeStatus",
    "decode_message",
    "encode_message",
    "expedited_send",
    "format_timestamp",
    "parse_timestamp",
]

BUFFER_SIZE = 1024  # Liqo's read buffer: a longer datagram is not a conncheck message
MAX_CLUSTER_ID_LEN = 253
PING, PONG = "PING", "PONG"
RECOVER_PONGS = 2  # consecutive PONGs that bring a DISCONNECTED peer back
PING_HISTORY = 64  # pings remembered per target, to match PONGs to the ping they echo
# A PING sent ahead of the schedule (the peer was just programmed, or just handshook) never follows
# the previous PING of its target closer than this: however often something asks, the extra
# traffic is bounded at 10 PINGs/s per target, and only while it is not Connected.
EXPEDITE_GAP = 0.1  # seconds
_NS = 1_000_000_000

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


# ---- scheduling ------------------------------------------------------------------------------------


def expedited_send(next_send: float, last_sent: float | None, now: float,
                   gap: float = EXPEDITE_GAP) -> float:
    """When a target asked to be probed now sends its next PING: now, but never closer than `gap`
    to its previous PING (`last_sent`, None when it sent none), and never later than its schedule.

    Only when PINGs go out changes: PONGs are judged as before, so the hysteresis holds (a PONG to an
    extra PING counts as any other; DISCONNECTED still needs RECOVER_PONGS consecutive ones)."""
    earliest = now if last_sent is None else max(now, last_sent + gap)
    return min(next_send, earliest)


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
