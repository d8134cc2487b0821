"""When a new WireGuard peer that has not handshaken is re-programmed, as a table."""

from __future__ import annotations

import pytest

from services.netagent.plan.handshake import HANDSHAKE_NUDGES, plan_nudges

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


def test_nudge_ages_grow_and_stay_under_wireguards_own_retry() -> None:
    assert list(HANDSHAKE_NUDGES) == sorted(HANDSHAKE_NUDGES)
    assert HANDSHAKE_NUDGES[0] < 5.0  # WireGuard's REKEY_TIMEOUT: nudging later would be pointless
