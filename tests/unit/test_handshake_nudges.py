"""When a new WireGuard peer whose tunnel does not answer yet is re-programmed, and when a handshake
calls for an immediate probe, as tables."""

from __future__ import annotations

import pytest

from services.netagent.plan.handshake import (
    HANDSHAKE_NUDGES,
    HANDSHAKE_POLL,
    IDLE_POLL,
    clusters_of,
    new_handshakes,
    plan_nudges,
    poll_interval,
    settled_peers,
)

T0 = 100.0


@pytest.mark.parametrize(
    ("fresh", "now", "settled", "nudged", "after"),
    [
        ({}, T0, set(), [], {}),
        # Too young for its first nudge: kept, untouched.
        ({"k": (T0, 0)}, T0 + HANDSHAKE_NUDGES[0] - 0.01, set(), [], {"k": (T0, 0)}),
        # Due: nudged and moved to the next age.
        ({"k": (T0, 0)}, T0 + HANDSHAKE_NUDGES[0], set(), ["k"], {"k": (T0, 1)}),
        ({"k": (T0, 1)}, T0 + HANDSHAKE_NUDGES[1], set(), ["k"], {"k": (T0, 2)}),
        # Last nudge: forgotten afterwards (WireGuard's own retries take over).
        ({"k": (T0, len(HANDSHAKE_NUDGES) - 1)}, T0 + 60, set(), ["k"], {}),
        # Handshaken (or gone) peers are forgotten and never nudged, due or not.
        ({"k": (T0, 0)}, T0 + 60, {"k"}, [], {}),
        ({"k": (T0, 0)}, T0, {"k"}, [], {}),
        # Independent peers.
        (
            {"a": (T0, 0), "b": (T0 + 5, 0), "c": (T0, 2)},
            T0 + 5.1,
            {"c"},
            ["a"],
            {"a": (T0, 1), "b": (T0 + 5, 0)},
        ),
    ],
)
def test_plan_nudges(
    fresh: dict[str, tuple[float, int]],
    now: float,
    settled: set[str],
    nudged: list[str],
    after: dict[str, tuple[float, int]],
) -> None:
    assert plan_nudges(fresh, now, settled) == (nudged, after)


@pytest.mark.parametrize(
    ("programmed", "desired", "unanswered", "settled"),
    [
        # Not handshaken: nudged when due, whatever the probe says.
        ({"k": None}, {"k"}, set(), set()),
        ({"k": 0.0}, {"k"}, {"k"}, set()),
        # Handshaken and answering the probe: settled.
        ({"k": 1.0}, {"k"}, set(), {"k"}),
        # Handshaken but its tunnel still Connecting: a session the other end may not decrypt; not
        # settled, so it is reset when due.
        ({"k": 1.0}, {"k"}, {"k"}, set()),
        # Programmed but no longer desired, or desired but not programmed: never nudged.
        ({"old": None}, set(), set(), {"old"}),
        ({}, {"new"}, {"new"}, {"new"}),
        (
            {"a": 1.0, "b": 1.0, "c": None, "d": 2.0},
            {"a", "b", "c"},
            {"b", "c"},
            {"a", "d"},
        ),
    ],
)
def test_settled_peers(
    programmed: dict[str, float | None], desired: set[str], unanswered: set[str], settled: set[str]
) -> None:
    assert settled_peers(programmed, desired, unanswered) == settled


def test_nudge_ages_grow_and_stay_under_wireguards_own_retry() -> None:
    assert list(HANDSHAKE_NUDGES) == sorted(HANDSHAKE_NUDGES)
    assert HANDSHAKE_NUDGES[0] < 5.0  # WireGuard's REKEY_TIMEOUT: nudging later would be pointless


# ---- a completed handshake probes at once ---------------------------------------------------------


@pytest.mark.parametrize(
    ("seen", "current", "new"),
    [
        ({}, {}, []),
        # Never handshaken (0) and not seen before: nothing to probe.
        ({}, {"k": 0.0}, []),
        # First read of a peer that already handshook: counts (its PING may have been lost).
        ({}, {"k": 50.0}, ["k"]),
        # Same handshake as last read: nothing (the loop must not ping again and again).
        ({"k": 50.0}, {"k": 50.0}, []),
        # A newer handshake: probe.
        ({"k": 50.0}, {"k": 55.0}, ["k"]),
        # A clock reading older than seen (a reset peer reports 0): nothing.
        ({"k": 50.0}, {"k": 0.0}, []),
        # Several peers, sorted; peers gone from `current` are simply not reported.
        ({"a": 1.0, "b": 1.0, "gone": 1.0}, {"b": 2.0, "a": 2.0, "c": 0.0}, ["a", "b"]),
    ],
)
def test_new_handshakes(seen: dict[str, float], current: dict[str, float], new: list[str]) -> None:
    assert new_handshakes(seen, current) == new


@pytest.mark.parametrize(
    ("keys", "by_key", "clusters"),
    [
        ([], {"k": "c1"}, []),
        (["k"], {"k": "c1"}, ["c1"]),
        (["k", "unknown"], {"k": "c1"}, ["c1"]),  # a key no Connecting tunnel claims
        (["k2", "k1", "k1"], {"k1": "b", "k2": "a"}, ["a", "b"]),  # once each, sorted
    ],
)
def test_clusters_of(keys: list[str], by_key: dict[str, str], clusters: list[str]) -> None:
    assert clusters_of(keys, by_key) == clusters


def test_poll_interval_is_fast_only_while_connecting() -> None:
    assert poll_interval(True) == HANDSHAKE_POLL
    assert poll_interval(False) == IDLE_POLL
    # Bounded rates: never a busy loop, and the idle pace is the nudge schedule's (no extra wakeups).
    assert 0.05 <= HANDSHAKE_POLL < IDLE_POLL <= min(HANDSHAKE_NUDGES)
