"""Apply-to-Connected bookkeeping (services/tunnel/connecttimer.py): once per generation, only for
generations this replica timed, and only once the netagent accepted them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.tunnel.connecttimer import CREATED, UPDATED, ConnectTimer
from services.tunnel.metrics import TunnelMetrics

K = "ns/tep"


def test_creation_to_connected_once() -> None:
    t = ConnectTimer()
    t.seen(K, "u1", 1, 10.0, timing=True)
    assert t.connected(K, 10.5) is None  # not ensured yet: an older spec's Connected
    t.ensured(K, "u1", 1)
    assert t.connected(K, 11.25) == (CREATED, 1.25)
    assert t.connected(K, 12.0) is None  # a latency refresh writes Connected again: not observed


def test_metadata_and_status_updates_do_not_restart_the_clock() -> None:
    t = ConnectTimer()
    t.seen(K, "u1", 1, 10.0, timing=True)
    t.seen(K, "u1", 1, 10.2, timing=True)  # the finalizer added, a status written: same generation
    t.ensured(K, "u1", 1)
    assert t.connected(K, 11.0) == (CREATED, 1.0)


def test_a_spec_change_is_an_update_timed_from_its_own_delivery() -> None:
    t = ConnectTimer()
    t.seen(K, "u1", 1, 0.0, timing=True)
    t.ensured(K, "u1", 1)
    t.connected(K, 1.0)
    t.seen(K, "u1", 2, 50.0, timing=True)
    t.ensured(K, "u1", 1)  # a reconcile of the old generation finishing late
    assert t.connected(K, 50.1) is None
    t.ensured(K, "u1", 2)
    assert t.connected(K, 50.5) == (UPDATED, 0.5)


def test_a_recreated_object_is_a_creation() -> None:
    t = ConnectTimer()
    t.seen(K, "u1", 1, 0.0, timing=True)
    t.forget(K)
    t.seen(K, "u2", 1, 5.0, timing=True)
    t.ensured(K, "u2", 1)
    assert t.connected(K, 6.0) == (CREATED, 1.0)


def test_generations_seen_while_not_timing_are_never_observed() -> None:
    """Listed at start-up or applied on a standby: Connected after a failover is not apply latency."""
    t = ConnectTimer()
    t.seen(K, "u1", 1, 0.0, timing=False)
    t.seen(K, "u1", 1, 30.0, timing=True)  # a later status update while active: same generation
    t.ensured(K, "u1", 1)
    assert t.connected(K, 31.0) is None


def test_a_lost_role_drops_what_was_pending() -> None:
    t = ConnectTimer()
    t.seen(K, "u1", 1, 0.0, timing=True)
    t.drop_pending()
    t.ensured(K, "u1", 1)
    assert t.connected(K, 100.0) is None


def test_the_histogram_is_labelled_by_change() -> None:
    reg = CollectorRegistry()
    m = TunnelMetrics(reg)
    m.apply_to_connected.labels(CREATED).observe(0.25)
    assert reg.get_sample_value("liqo_tunnel_apply_to_connected_seconds_count", {"change": CREATED}) == 1
    assert reg.get_sample_value("liqo_tunnel_apply_to_connected_seconds_bucket",
                                {"change": CREATED, "le": "0.3"}) == 1
