"""When to re-program a new WireGuard peer that has not handshaken yet (pure)."""

from __future__ import annotations

from collections.abc import Mapping

# A new peer without a handshake is re-programmed at these ages (seconds): its first handshake can be
# lost while a load balancer still points the remote's answers at the previous gateway, and
# WireGuard itself only retries after its 5 s rekey timeout.
HANDSHAKE_NUDGES = (0.5, 1.0, 2.0, 4.0)


def plan_nudges(
    fresh: Mapping[str, tuple[float, int]], now: float, settled: set[str]
) -> tuple[list[str], dict[str, tuple[float, int]]]:
    """Which fresh peers to re-program now, and the fresh set afterwards. `fresh` maps a key to
    (programmed at, nudges done); `settled` peers (handshaken, or no longer both programmed and
    desired) are forgotten; a peer is nudged at each age in HANDSHAKE_NUDGES, then forgotten."""
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
