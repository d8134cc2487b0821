"""The labeler's view of "no active replica" and of failovers (services/labeler/availability.py), on a
fake clock: every case says what one replica observes and what it must count."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.labeler.availability import EXPIRED, RELEASED, UNKNOWN, Availability, Stretch
from services.labeler.metrics import LabelerMetrics


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_nothing_is_counted_before_the_lease_was_ever_read() -> None:
    av = Availability(Clock())
    assert av.totals(100.0) == (0.0, 0.0)


def test_a_cold_start_is_a_stretch_but_not_a_failover() -> None:
    av = Availability(Clock())
    av.lease_seen(1.0, None)  # no Lease yet
    assert av.totals(3.0) == (2.0, 2.0)
    assert av.own_grant(4.0, 10.0) == Stretch(1.0, UNKNOWN)
    assert av.totals(5.0) == (3.0, 0.0)


def test_a_crash_counts_from_the_expiry_by_our_clock_to_our_active() -> None:
    av = Availability(Clock())
    av.lease_seen(1.0, 8.0)  # another holder, last renewal seen at 1, lease 7 s
    assert av.totals(7.9) == (0.0, 0.0)  # the crash (somewhere before) is invisible until the expiry
    assert av.totals(9.0) == pytest.approx((1.0, 1.0))
    av.lease_seen(8.05, None)  # our acquiring write: the Lease is ours, not yet ACTIVE
    assert av.own_grant(8.25, 14.5) == Stretch(8.0, EXPIRED)
    total, stretch = av.totals(12.0)
    assert total == pytest.approx(0.25) and stretch == 0.0


def test_a_release_starts_the_stretch_when_it_is_seen() -> None:
    av = Availability(Clock())
    av.lease_seen(1.0, 8.0)
    av.lease_seen(3.0, None, released=True)
    assert av.own_grant(3.2, 9.0) == Stretch(3.0, RELEASED)
    assert av.totals(4.0)[0] == pytest.approx(0.2)


def test_renewals_keep_a_holder_live() -> None:
    av = Availability(Clock())
    for t in range(1, 30, 2):
        av.lease_seen(float(t), t + 7.0)
    assert av.totals(30.0) == (0.0, 0.0)


def test_an_unreadable_lease_stops_the_count() -> None:
    """An API outage: the leader may be keeping its role, so a standby counts nothing it cannot see."""
    av = Availability(Clock())
    av.lease_seen(1.0, 8.0)
    av.lease_unreadable(9.0)  # 1 s after the expiry by our clock
    assert av.totals(30.0) == (1.0, 0.0)
    av.lease_seen(30.0, 37.0)  # readable again, the holder renewed
    assert av.totals(35.0) == (1.0, 0.0)


def test_our_own_grant_running_out_is_counted_and_its_renewal_ends_it() -> None:
    av = Availability(Clock())
    av.lease_seen(0.0, None)
    av.own_grant(0.0, 6.5)
    assert av.totals(6.0) == (0.0, 0.0)
    assert av.totals(8.5) == pytest.approx((2.0, 2.0))
    assert av.own_grant(9.0, 15.0) == Stretch(6.5, EXPIRED)


def test_withdrawing_our_role_is_a_release() -> None:
    av = Availability(Clock())
    av.lease_seen(0.0, None)
    av.own_grant(0.0, 6.5)
    assert av.own_grant(2.0, None) is None
    av.lease_seen(2.1, None, released=True)
    assert av.totals(3.0) == pytest.approx((1.0, 1.0))
    assert av.own_grant(3.0, 9.0) == Stretch(2.0, RELEASED)


def test_a_successor_seen_live_ends_our_stretch_without_a_failover_here() -> None:
    av = Availability(Clock())
    av.lease_seen(1.0, 8.0)
    av.lease_seen(9.0, 16.0)  # another replica took over at 9 (its own expiry view), seen renewing
    assert av.totals(10.0) == pytest.approx((1.0, 0.0))


def test_scrapes_read_the_clock_and_the_metrics_export_it() -> None:
    clock = Clock()
    metrics = LabelerMetrics(CollectorRegistry())
    reg = metrics.registry
    assert reg.get_sample_value("liqo_labeler_no_active_replica_seconds_total") == 0.0
    metrics.availability = av = Availability(clock)
    av.lease_seen(0.0, None)
    clock.t = 2.5
    assert reg.get_sample_value("liqo_labeler_no_active_replica_seconds_total") == 2.5
    assert reg.get_sample_value("liqo_labeler_no_active_replica_stretch_seconds") == 2.5
    clock.t = 4.0
    av.own_grant(4.0, 10.0)
    assert reg.get_sample_value("liqo_labeler_no_active_replica_seconds_total") == 4.0
    assert reg.get_sample_value("liqo_labeler_no_active_replica_stretch_seconds") == 0.0
