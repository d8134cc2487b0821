"""When to re-program a new WireGuard peer whose tunnel does not answer yet, and when a handshake
calls for a probe at once (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# A new peer whose tunnel is not answering the probe yet is re-programmed at these ages (seconds).
# Its first handshake can be lost while a load balancer still points the remote's answers at the
# previous gateway, and WireGuard itself only retries after its 5 s rekey timeout. A completed
# handshake is not enough either: when both ends initiate at once, each can end up holding a session
# the other no longer decrypts (measured: about 1 in 200 peerings created on both sides together;
# the sender saw handshakes, the receiver counted none of its packets), and WireGuard only rekeys
# after 15 s of sending without an answer.
HANDSHAKE_NUDGES = (0.5, 1.0, 2.0, 4.0)


def settled_peers(
    programmed: Mapping[str, float | None], desired: Iterable[str], unanswered: set[str]
) -> set[str]:
    """The programmed peers (key -> last handshake, wall clock s; None or 0 for none) that need no
    nudge: handshaken, with their tunnel's probe answered (`unanswered`: keys of tunnels still
    Connecting), plus every peer that is not both programmed and desired."""
    answered = {k for k, t in programmed.items() if t and k not in unanswered}
    return answered | (programmed.keys() ^ set(desired))


def plan_nudges(
    fresh: Mapping[str, tuple[float, int]], now: float, settled: set[str]
) -> tuple[list[str], dict[str, tuple[float, int]]]:
    """Which fresh peers to re-program now, and the fresh set afterwards. `fresh` maps a key to
    (programmed at, nudges done); `settled` peers (`settled_peers`) are forgotten; a peer is nudged
    at each age in HANDSHAKE_NUDGES, then forgotten."""
    nudge: list[str] = []
    after: dict[str, tuple[float, int]] = {}
    for key, (t0, n) in fresh.items():
        if key in settled:
            continue
        if now - t0 < HANDSHAKE_NUDGES[n]:
            after[key] = (t0, n)
            continue
        nudge.append(key)
        if n + 1 < len(HANDSHAKE_NUDGES):
            after[key] = (t0, n + 1)
    return sorted(nudge), after


# While a tunnel is Connecting, the device's last-handshake times are read this often, so that a
# completed handshake is probed at once rather than at the next probe tick (2 s by default): the
# first PING may have been lost with a handshake the remote could not answer yet, or dropped with
# the queue of a nudged peer. Otherwise the loop keeps its idle pace (no device read at all).
HANDSHAKE_POLL = 0.1  # seconds, while some tunnel is Connecting
IDLE_POLL = 0.25  # seconds: the nudge schedule's resolution


def poll_interval(connecting: bool) -> float:
    """How long the handshake loop sleeps before its next round."""
    return HANDSHAKE_POLL if connecting else IDLE_POLL


def new_handshakes(seen: Mapping[str, float], current: Mapping[str, float]) -> list[str]:
    """The peers (by key) whose last handshake (wall clock s, 0 for none) is newer in `current`
    than in `seen`; a peer not seen before counts from 0, so a handshake it already has counts."""
    return sorted(k for k, t in current.items() if t > seen.get(k, 0.0))


def clusters_of(keys: Iterable[str], cluster_by_key: Mapping[str, str]) -> list[str]:
    """The clusters of these peers (keys no tunnel claims are skipped)."""
    return sorted({cluster_by_key[k] for k in keys if k in cluster_by_key})
