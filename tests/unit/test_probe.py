"""Probe: Liqo's message format, the state machine as event tables, and the threads over loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from ipaddress import IPv4Address

import pytest

from sandbox.testkit.wait import wait_for
from services.netagent.kernel.probe import Prober
from services.netagent.plan.probe import (
    EXPEDITE_GAP,
    PeerProbe,
    ProbeState,
    ProbeStatus,
    decode_message,
    encode_message,
    expedited_send,
    format_timestamp,
    parse_timestamp,
)

C, D, X = ProbeState.CONNECTING, ProbeState.CONNECTED, ProbeState.DISCONNECTED

# ---- timestamps and messages: what Go's encoding/json does with time.Time ------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (1641092645_000000000, "2022-01-02T03:04:05Z"),  # Go drops a zero fraction
        (1641092645_120000000, "2022-01-02T03:04:05.12Z"),  # and trailing zeros
        (1641092645_123456789, "2022-01-02T03:04:05.123456789Z"),
        (1641092645_000000001, "2022-01-02T03:04:05.000000001Z"),
        (0, "1970-01-01T00:00:00Z"),
    ],
)
def test_timestamp_round_trip(ns: int, text: str) -> None:
    assert format_timestamp(ns) == text
    assert parse_timestamp(text) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        # Go's time.Now() in a non-UTC location marshals with its offset.
        ("2022-01-02T04:04:05.5+01:00", 1641092645_500000000),
        ("2022-01-01T22:34:05.000000007-04:30", 1641092645_000000007),
        ("2022-01-02T03:04:05.1234Z", 1641092645_123400000),
    ],
)
def test_parse_accepts_what_go_produces(text: str, ns: int) -> None:
    assert parse_timestamp(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2022-01-02 03:04:05Z",
        "2022-01-02T03:04:05",  # no zone
        "2022-13-02T03:04:05Z",
        "2022-02-30T03:04:05Z",
        "2022-01-02T24:04:05Z",
        "2022-01-02T03:04:05.1234567891Z",  # ten digits
        "2022-01-02T03:04:05+25:00",
        "2022-01-02T03:04:05Z trailing",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_message_bytes_match_go() -> None:
    # json.Marshal(Msg{ClusterID: "c1", MsgType: PING, TimeStamp: ...}) in Go gives exactly this.
    want = b'{"clusterID":"c1","msgType":"PING","timeStamp":"2022-01-02T03:04:05.12Z"}'
    assert encode_message("c1", "PING", "2022-01-02T03:04:05.12Z") == want
    msg = decode_message(want)
    assert (msg.cluster_id, msg.msg_type, msg.timestamp_ns) == ("c1", "PING", 1641092645_120000000)


def test_decode_tolerates_spacing_and_unknown_fields() -> None:
    data = b'{ "timeStamp": "2022-01-02T03:04:05Z", "msgType": "PONG", "clusterID": "a", "x": 1 }'
    msg = decode_message(data)
    assert (msg.cluster_id, msg.msg_type, msg.timestamp) == ("a", "PONG", "2022-01-02T03:04:05Z")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"clusterID":"a","msgType":"PING"}',
        b'{"clusterID":"","msgType":"PING","timeStamp":"2022-01-02T03:04:05Z"}',
        b'{"clusterID":7,"msgType":"PING","timeStamp":"2022-01-02T03:04:05Z"}',
        b'{"clusterID":"a","msgType":"ping","timeStamp":"2022-01-02T03:04:05Z"}',
        b'{"clusterID":"a","msgType":"PING","timeStamp":1641092645}',
        b'{"clusterID":"a","msgType":"PING","timeStamp":"yesterday"}',
        json.dumps({"clusterID": "a" * 300, "msgType": "PING", "timeStamp": "2022-01-02T03:04:05Z"}).encode(),
        b'{"clusterID":"a","msgType":"PING","timeStamp":"2022-01-02T03:04:05Z","pad":"' + b"x" * 1000 + b'"}',
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_message(data)


# ---- the state machine: interval 2 s, threshold 5 (Liqo's defaults) -------------------------------
# Events: ("ping", t) sends PING number k (0, 1, ...); ("pong", k, t) its echo arrives at t;
# ("tick", t) loss detection. Each step names the state expected after it.

Step = tuple[tuple[object, ...], ProbeState]


def run(steps: list[Step]) -> PeerProbe:
    p = PeerProbe(2.0, 5, now=0.0)
    sent: list[int] = []
    for i, (event, want) in enumerate(steps):
        match event:
            case ("ping", float(t)):
                sent.append(p.ping(t, 1_700_000_000 * 10**9 + int(t * 1e9)))
            case ("pong", int(k), float(t)):
                p.pong(sent[k], t)
            case ("pong_foreign", float(t)):
                p.pong(123, t)
            case ("tick", float(t)):
                p.tick(t)
            case _:
                raise AssertionError(f"bad event {event}")
        assert p.status().state is want, f"step {i} {event}: {p.status().state} != {want}"
    return p


TABLES: dict[str, list[Step]] = {
    "first pong connects": [
        (("ping", 0.0), C),
        (("tick", 1.0), C),
        (("pong", 0, 0.01), D),
    ],
    "never answered: disconnected after interval x threshold, not before": [
        (("ping", 0.0), C),
        (("ping", 2.0), C),
        (("tick", 10.0), C),
        (("tick", 10.001), X),
    ],
    "one lost pong does not disconnect": [
        (("ping", 0.0), C),
        (("pong", 0, 0.01), D),
        (("ping", 2.0), D),  # lost
        (("ping", 4.0), D),
        (("pong", 2, 4.01), D),
        (("tick", 14.0), D),
    ],
    "disconnect exactly after the window since the last pong": [
        (("ping", 0.0), C),
        (("pong", 0, 0.05), D),
        (("tick", 10.05), D),
        (("tick", 10.06), X),
    ],
    "one stray pong does not reconnect, two consecutive do": [
        (("ping", 0.0), C),
        (("pong", 0, 0.01), D),
        (("tick", 11.0), X),
        (("ping", 12.0), X),  # 1
        (("ping", 14.0), X),  # 2, lost
        (("ping", 16.0), X),  # 3
        (("pong", 1, 12.01), X),
        (("pong", 3, 16.01), X),  # not consecutive with 1
        (("ping", 18.0), X),  # 4
        (("pong", 4, 18.01), D),  # 3 and 4 are consecutive
    ],
    "out-of-order and duplicate pongs are dropped": [
        (("ping", 0.0), C),
        (("ping", 2.0), C),
        (("tick", 10.5), X),
        (("ping", 11.0), X),  # 2
        (("pong", 2, 11.01), X),
        (("pong", 1, 11.02), X),  # older than 2: dropped, must not count
        (("pong", 2, 11.03), X),  # duplicate: dropped
        (("ping", 13.0), X),  # 3
        (("pong", 3, 13.01), D),
    ],
    "pongs that echo no ping of ours never count": [
        (("ping", 0.0), C),
        (("pong_foreign", 0.01), C),
        (("tick", 10.5), X),
        (("pong_foreign", 10.6), X),
        (("pong_foreign", 10.7), X),
    ],
    "a late pong extends the connection": [
        (("ping", 0.0), C),
        (("pong", 0, 0.01), D),
        (("ping", 2.0), D),
        (("ping", 4.0), D),
        (("pong", 1, 9.0), D),  # 7 s late but newer: deadline moves to 19.0
        (("tick", 18.9), D),
        (("tick", 19.1), X),
    ],
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_state_table(name: str) -> None:
    run(TABLES[name])


def test_latency_is_the_round_trip_of_the_accepted_pong() -> None:
    p = PeerProbe(2.0, 5, now=0.0)
    ts0 = p.ping(0.0, 5)
    ts1 = p.ping(2.0, 5)  # same wall clock: timestamps still distinct
    assert ts1 > ts0
    assert p.pong(ts0, 0.030) is True
    st = p.status()
    assert st.state is D and st.latency == pytest.approx(0.030) and st.since == 0.030
    assert p.pong(ts1, 2.007) is False  # no state change, latency follows
    assert p.status().latency == pytest.approx(0.007)
    assert p.status().since == 0.030
    assert p.tick(12.1) is True
    assert p.status() == ProbeStatus(X, None, 12.1)
    assert p.next_check == float("inf")


def test_forgets_old_pings() -> None:
    p = PeerProbe(2.0, 5, now=0.0)
    first = p.ping(0.0, 1)
    for i in range(1, 100):
        p.ping(float(i), 1 + i)
    assert p.pong(first, 100.0) is False  # beyond the history: treated as foreign
    assert p.status().state is C


@pytest.mark.parametrize(("interval", "threshold"), [(0.0, 5), (-1.0, 5), (float("nan"), 5), (2.0, 0)])
def test_rejects_bad_numbers(interval: float, threshold: int) -> None:
    with pytest.raises(ValueError):
        PeerProbe(interval, threshold, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0},
        {"port": 70000},
        {"netns": "../etc"},
        {"netns": ""},
        {"interval": 0.0},
        {"loss_threshold": 0},
    ],
)
def test_prober_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"netns": None, "port": 12345, "interval": 1.0, "loss_threshold": 5}
    args.update(kwargs)
    with pytest.raises(ValueError):
        Prober(on_change=lambda c, s: None, **args)  # type: ignore[arg-type]


# ---- scheduling: a PING ahead of the schedule, at a bounded rate ------------------------------------

G = EXPEDITE_GAP


@pytest.mark.parametrize(
    ("next_send", "last_sent", "now", "at"),
    [
        (0.0, None, 10.0, 0.0),  # a new target is due already: unchanged
        (12.0, None, 10.0, 10.0),  # never sent: at once
        (12.0, 9.0, 10.0, 10.0),  # the last PING is older than the gap: at once
        (12.0, 10.0 - G / 2, 10.0, 10.0 + G / 2),  # too soon after the last: the gap is kept
        (12.0, 10.0, 10.0, 10.0 + G),  # asked again right after sending: the gap is kept
        (10.05, 10.0, 10.0, 10.05),  # the schedule is sooner than the gap: never delayed
        (10.0, 9.0, 10.0, 10.0),  # due now anyway
    ],
)
def test_expedited_send(next_send: float, last_sent: float | None, now: float, at: float) -> None:
    assert expedited_send(next_send, last_sent, now) == pytest.approx(at)


def test_expedited_pings_are_bounded_whatever_the_asking_rate() -> None:
    """Asked every millisecond for a second, a target sends at most one PING per gap."""
    next_send, last_sent, sent = 1e9, None, 0
    for ms in range(1000):
        now = ms / 1000
        next_send = expedited_send(next_send, last_sent, now)
        if now >= next_send:  # what the send loop does
            sent += 1
            last_sent, next_send = now, now + 2.0
    assert sent <= 1 / G + 1


# ---- threads over loopback, no root: a prober that pings itself answers itself ----------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prober_loopback_connects_answers_go_pings_and_stops_clean() -> None:
    port = free_udp_port()
    changes: list[tuple[str, ProbeState]] = []
    threads_before = set(threading.enumerate())
    prober = Prober(None, port, 0.1, 3, on_change=lambda cid, st: changes.append((cid, st.state)))
    prober.start()
    try:
        prober.set_targets({"self": IPv4Address("127.0.0.1")})
        wait_for("the self target CONNECTED once", lambda: changes == [("self", D)], 2.0, 0.01)
        st = prober.status("self")
        assert st is not None and st.state is D and st.latency is not None and 0 <= st.latency < 0.1
        assert abs(st.since - time.time()) < 5  # wall clock
        assert prober.status("other") is None

        # A Go liqonet peer's PING is echoed byte for byte except msgType.
        ping = b'{"clusterID":"remote-1","msgType":"PING","timeStamp":"2022-01-02T04:04:05.5+01:00"}'
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.settimeout(2)
            peer.sendto(b"garbage", ("127.0.0.1", port))  # ignored
            peer.sendto(ping, ("127.0.0.1", port))
            assert peer.recv(2048) == ping.replace(b"PING", b"PONG")

        prober.set_targets({})
        assert prober.status("self") is None
    finally:
        prober.stop()
    leftover = [t for t in set(threading.enumerate()) - threads_before if t.name.startswith("probe")]
    assert leftover == []
    # The port is free again: the socket is closed.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
    prober.stop()  # idempotent


def test_callback_may_call_back_into_the_prober() -> None:
    """The callback reads the prober's status: it would deadlock if it ran under the lock."""
    port = free_udp_port()
    seen: list[tuple[ProbeState, ProbeStatus | None]] = []
    prober: Prober

    def on_change(cid: str, st: ProbeStatus) -> None:
        seen.append((st.state, prober.status(cid)))

    prober = Prober(None, port, 0.1, 3, on_change=on_change)
    prober.start()
    try:
        prober.set_targets({"self": IPv4Address("127.0.0.1")})
        wait_for("a PING seen", lambda: seen, 2.0, 0.01)
    finally:
        prober.stop()
    state, status = seen[0]
    assert state is D and status is not None and status.state is D


class FakeRemote:
    """A peer on 127.0.0.2 that the test drives: it receives our PINGs and echoes only when told."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.2", port))
        self.sock.settimeout(2)

    def next_ping(self) -> tuple[bytes, tuple[str, int], float]:
        data, source = self.sock.recvfrom(2048)
        return data, source, time.monotonic()

    def echo(self, data: bytes, source: tuple[str, int]) -> None:
        msg = decode_message(data)
        self.sock.sendto(encode_message(msg.cluster_id, "PONG", msg.timestamp), source)


def test_silent_remote_disconnects_after_the_window_and_needs_two_pongs_back() -> None:
    port = free_udp_port()
    changes: list[tuple[ProbeState, float]] = []
    remote = FakeRemote(port)
    prober = Prober(
        None, port, 0.1, 3, bind_address="127.0.0.1",
        on_change=lambda cid, st: changes.append((st.state, time.monotonic())),
    )
    prober.start()
    try:
        t0 = time.monotonic()
        prober.set_targets({"remote": IPv4Address("127.0.0.2")})
        data, _, first_at = remote.next_ping()
        assert first_at - t0 < 0.05  # the first PING goes at once
        msg = decode_message(data)
        assert (msg.cluster_id, msg.msg_type) == ("remote", "PING")
        assert abs(msg.timestamp_ns / 1e9 - time.time()) < 1  # wall clock, as Liqo's time.Now()
        _, _, second_at = remote.next_ping()
        assert 0.07 < second_at - first_at < 0.2  # then every interval
        wait_for("a change", lambda: changes, 2.0, 0.01)
        state, at = changes[0]
        assert state is X and 0.29 < at - t0 < 0.6, at - t0  # interval x threshold = 0.3 s

        # One answered PING (a stray) does not reconnect; PONGs of two consecutive PINGs do.
        remote.echo(*remote.next_ping()[:2])
        time.sleep(0.05)
        assert changes[-1][0] is X and prober.status("remote") is not None
        assert prober.status("remote").state is X  # type: ignore[union-attr]
        remote.next_ping()  # not answered: breaks the streak
        remote.echo(*remote.next_ping()[:2])
        time.sleep(0.05)
        assert len(changes) == 1
        remote.echo(*remote.next_ping()[:2])
        wait_for("two changes", lambda: len(changes) == 2, 1.0, 0.01)
        assert changes[1][0] is D
    finally:
        prober.stop()
        remote.sock.close()


def test_probe_now_pings_ahead_of_the_interval_until_connected() -> None:
    """With a 5 s interval: the first PING goes at once, `probe_now` sends the next one at once (its
    answer connects), and a CONNECTED target is not pinged ahead of its schedule."""
    port = free_udp_port()
    interval = 5.0
    changes: list[ProbeState] = []
    remote = FakeRemote(port)
    prober = Prober(None, port, interval, 3, bind_address="127.0.0.1",
                    on_change=lambda cid, st: changes.append(st.state))
    prober.start()
    try:
        prober.set_targets({"remote": IPv4Address("127.0.0.2")})
        remote.next_ping()  # the first, lost (not answered)
        asked = time.monotonic()
        prober.probe_now(["remote", "unknown"])  # an unknown target is ignored
        data, source, at = remote.next_ping()
        assert at - asked < interval / 4, at - asked
        remote.echo(data, source)
        wait_for("CONNECTED", lambda: changes == [D], interval / 4, 0.01)
        prober.probe_now(["remote"])
        remote.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            remote.next_ping()
    finally:
        prober.stop()
        remote.sock.close()
