"""Fencing grants over a fake clock."""

from __future__ import annotations

import pytest

from services.netagent.plan.role import MAX_TTL, Fence, Role, StaleEpoch, restored_seconds


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


# ---- int32 epochs, demotions, capped restores ---------------------------------------------------------

MAX_EPOCH = 2**31 - 1


@pytest.mark.parametrize(
    ("role", "epoch", "ok"),
    [
        (Role.ACTIVE, 0, True),
        (Role.ACTIVE, MAX_EPOCH, True),
        (Role.ACTIVE, MAX_EPOCH + 1, False),
        (Role.ACTIVE, 2**64 - 1, False),
        (Role.ACTIVE, -1, False),
        (Role.STANDBY, MAX_EPOCH, True),
    ],
)
def test_epochs_are_int32(role: Role, epoch: int, ok: bool) -> None:
    f, _ = make()
    if ok:
        assert f.set(role, epoch, 7.0, "x").epoch == epoch
    else:
        with pytest.raises(ValueError, match="epoch"):
            f.set(role, epoch, 7.0, "x")
        assert f.current() == Fence().current()


@pytest.mark.parametrize("demotion_epoch", [0, 4, 5, 6])
def test_a_demotion_is_always_accepted_and_never_lowers_the_epoch(demotion_epoch: int) -> None:
    f, _ = make()
    f.set(Role.ACTIVE, 5, 7.0, "lease")
    g = f.set(Role.STANDBY, demotion_epoch, 0, "lease lost")
    assert g.role is Role.STANDBY and g.epoch == max(5, demotion_epoch)
    with pytest.raises(StaleEpoch):
        f.set(Role.ACTIVE, 4, 7.0, "old leader")


@pytest.mark.parametrize("demotion_epoch", [MAX_EPOCH + 1, 2**64 - 1, -1])
def test_a_demotion_with_an_out_of_range_epoch_is_accepted_without_adopting_it(demotion_epoch: int) -> None:
    f, _ = make()
    f.set(Role.ACTIVE, 5, 7.0, "lease")
    g = f.set(Role.STANDBY, demotion_epoch, 0, "lease lost")
    assert g.role is Role.STANDBY and g.epoch == 5 and f.current().role is Role.STANDBY
    # the legitimate leader is not locked out: its epoch 5 is still the highest seen
    assert f.set(Role.ACTIVE, 5, 7.0, "lease").role is Role.ACTIVE
    with pytest.raises(ValueError, match="epoch"):
        f.set(Role.ACTIVE, demotion_epoch, 7.0, "x")


def test_current_never_overwrites_a_newer_grant() -> None:
    """A reader that sees the old grant lapse must not turn a concurrent renewal into STANDBY."""
    f, c = make()
    f.set(Role.ACTIVE, 1, 1.0, "lease")
    c.t += 2
    assert f.current().role is Role.STANDBY  # derived, not stored
    f.set(Role.ACTIVE, 1, 7.0, "renew")
    assert f.current().role is Role.ACTIVE


@pytest.mark.parametrize(
    ("expires_in", "written_ago", "left"),
    [
        (30.0, 0.0, 30.0),  # written just now
        (30.0, 10.0, 20.0),  # the agent was down 10 s
        (30.0, 40.0, 0.0),  # lapsed while down
        (1e9, 0.0, MAX_TTL),  # a grant beyond MAX_TTL is capped
        (1e9, 100.0, MAX_TTL - 100),  # capped, then shortened
        (30.0, -50.0, 30.0),  # the clock went backwards: no extra time
        (30.0, None, 30.0),  # an old file without a write time: the deadline alone
        (1e9, None, MAX_TTL),
    ],
)
def test_restored_seconds(expires_in: float, written_ago: float | None, left: float) -> None:
    now = 5000.0
    written = None if written_ago is None else now - written_ago
    # The persisted deadline is relative to the write (or to now for old files).
    expires = (written if written is not None else now) + expires_in
    assert max(0.0, restored_seconds(expires, written, now)) == pytest.approx(left)


def test_restore_caps_and_shortens_and_refuses_bad_epochs() -> None:
    f, c = make()
    wall = c.t + 1e9
    g = f.restore(7, wall + 1e9, written_wall=wall - 100)
    assert g.role is Role.ACTIVE and g.epoch == 7
    assert f.seconds_left() == pytest.approx(MAX_TTL - 100)
    f2, _ = make()
    assert f2.restore(2**63, wall + 60).role is Role.STANDBY and f2.current().epoch == 0
