"""Fencing grants over a fake clock."""

from __future__ import annotations

import pytest

from services.netagent.plan.role import Fence, Role, StaleEpoch


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make() -> tuple[Fence, Clock]:
    c = Clock()
    return Fence(mono=c, wall=lambda: c.t + 1e9), c


def test_starts_standby() -> None:
    f, _ = make()
    assert f.current().role is Role.STANDBY and f.seconds_left() is None


def test_active_lapses_after_ttl_and_not_before() -> None:
    f, c = make()
    f.set(Role.ACTIVE, 3, 7.0, "lease")
    c.t += 6.99
    assert f.current().role is Role.ACTIVE
    c.t += 0.02
    g = f.current()
    assert g.role is Role.STANDBY and g.reason == "expired" and g.epoch == 3


def test_renewal_extends_from_now() -> None:
    f, c = make()
    f.set(Role.ACTIVE, 1, 7.0, "lease")
    c.t += 5
    f.set(Role.ACTIVE, 1, 7.0, "renew")
    c.t += 6
    assert f.current().role is Role.ACTIVE


@pytest.mark.parametrize("ttl", [0.0, -1.0, 3601.0])
def test_bad_ttl_changes_nothing(ttl: float) -> None:
    f, _ = make()
    with pytest.raises(ValueError):
        f.set(Role.ACTIVE, 1, ttl, "x")
    assert f.current().role is Role.STANDBY


def test_stale_epoch_refused_and_grant_kept() -> None:
    f, _ = make()
    f.set(Role.ACTIVE, 5, 7.0, "lease")
    with pytest.raises(StaleEpoch):
        f.set(Role.ACTIVE, 4, 7.0, "late renew from an old leader")
    g = f.current()
    assert g.role is Role.ACTIVE and g.epoch == 5


def test_restore_keeps_remaining_time_only() -> None:
    f, c = make()
    wall_now = c.t + 1e9
    f.restore(2, wall_now + 3.0)
    assert f.current().role is Role.ACTIVE
    c.t += 3.01
    assert f.current().role is Role.STANDBY
    f2, c2 = make()
    assert f2.restore(2, c2.t + 1e9 - 1).role is Role.STANDBY
