"""Tables for the pure Lease election logic (services/common/leaderelection.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.leaderelection import (
    PROFILES,
    Change,
    Edge,
    ElectionState,
    Failed,
    Failure,
    HeldByOther,
    LeaseRecord,
    Observed,
    RoleDirective,
    Timings,
    Write,
    Wrote,
    classify,
    lease_body,
    micro_time,
    needs_call,
    note_agent_epoch,
    observe,
    parse_time,
    plan_claim,
    record_from_lease,
    role_directive,
    settle,
)

T = Timings()  # 7 s / 5 s / 2 s, grace 60 s, margin 0.5 s
ME, OTHER = "gw-a", "gw-b"
WALL = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0, Failure.UNREACHABLE),
        (429, Failure.UNREACHABLE),
        (500, Failure.UNREACHABLE),
        (503, Failure.UNREACHABLE),
        (504, Failure.UNREACHABLE),
        (409, Failure.CONFLICT),
        (404, Failure.CONFLICT),
        (403, Failure.REJECTED),
        (401, Failure.REJECTED),
        (422, Failure.REJECTED),
        (400, Failure.REJECTED),
    ],
)
def test_classify(status: int, kind: Failure) -> None:
    assert classify(status) is kind


@pytest.mark.parametrize(
    ("timings", "message"),
    [
        (Timings(lease_duration=0), "--lease-duration"),
        (Timings(renew_deadline=8), "--retry-period < --renew-deadline < --lease-duration"),
        (Timings(retry_period=5), "--retry-period < --renew-deadline"),
        (Timings(retry_period=0), "0 < --retry-period"),
        (Timings(outage_grace=-1), "--outage-grace"),
        (Timings(lease_duration=3, renew_deadline=2.5, retry_period=2, fencing_margin=1), "fencing margin"),
    ],
)
def test_timings_rejected(timings: Timings, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("-", r"\-")):
        timings.check()


def test_default_timings_valid() -> None:
    T.check()
    Timings(lease_duration=2, renew_deadline=1.5, retry_period=0.5, outage_grace=0).check()


def _slow_renewals_keep_the_role(t: Timings, request_timeout: float) -> bool:
    """A leader whose every Lease read and write succeeds just before `request_timeout`: does each
    ACTIVE grant land before the previous one lapses? (Ticks are aligned; an overdue one runs at once.)"""
    rec = LeaseRecord("me", t.lease_duration, 1)
    state, tick, until = ElectionState(), 0.0, None
    for _ in range(20):
        sent = tick + request_timeout
        done = sent + request_timeout
        state = settle(state, Wrote(rec, sent), done, t).state
        if until is not None and done >= until:
            return False
        until = role_directive(state, done, t).until
        tick = max(tick + t.retry_period, done)
    return True


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_are_valid_and_survive_a_slow_api_server(name: str) -> None:
    p = PROFILES[name]
    p.timings.check()
    p.timings.check_request_timeout(p.request_timeout)
    assert _slow_renewals_keep_the_role(p.timings, p.request_timeout)
    # The fencing bound: a grant ends before a successor may act (lease duration after the write).
    assert p.timings.lease_duration - p.timings.fencing_margin < p.timings.lease_duration


def test_a_request_timeout_that_lets_the_role_lapse_is_refused() -> None:
    fast = PROFILES["fast"].timings
    assert not _slow_renewals_keep_the_role(fast, 1.0)  # the default timeout with the fast lease
    with pytest.raises(ValueError, match=r"need max\(--retry-period, 2 x --election-request-timeout\)"):
        fast.check_request_timeout(1.0)
    with pytest.raises(ValueError, match="must be positive"):
        fast.check_request_timeout(0)
    with pytest.raises(ValueError, match="lapse"):
        fast.check_request_timeout(0.5)  # the limit itself: 2 x 0.5 + 0.5 = 2 - 0.5
    assert not _slow_renewals_keep_the_role(fast, 0.5)
    fast.check_request_timeout(0.49)
    assert _slow_renewals_keep_the_role(fast, 0.49)


def rec(holder: str, transitions: int = 3, duration: int = 7) -> LeaseRecord:
    return LeaseRecord(holder, duration, transitions, micro_time(WALL - 100), micro_time(WALL - 1))


def obs(holder: str, since: float, transitions: int = 3, duration: int = 7) -> Observed:
    return Observed(rec(holder, transitions, duration), "42", since)


# (name, observed, now, min_epoch, expected kind, holder written, transitions written, create)
PLAN_CASES = [
    ("absent: create", None, 100.0, 0, Write, ME, 0, True),
    ("absent after agent saw epoch 4", None, 100.0, 5, Write, ME, 5, True),
    ("other holder, fresh", obs(OTHER, since=99.0), 100.0, 0, HeldByOther, None, None, False),
    ("other holder, 6.9 s since seen", obs(OTHER, since=93.1), 100.0, 0, HeldByOther, None, None, False),
    ("other holder, expired 7 s after seen", obs(OTHER, since=93.0), 100.0, 0, Write, ME, 4, False),
    ("other holder with 1 s lease", obs(OTHER, since=98.5, duration=1), 100.0, 0, Write, ME, 4, False),
    ("released (empty holder) is free at once", obs("", since=99.9), 100.0, 0, Write, ME, 4, False),
    ("ours: renew keeps transitions", obs(ME, since=50.0), 100.0, 0, Write, ME, 3, False),
    ("ours, agent saw a higher epoch", obs(ME, since=50.0), 100.0, 9, Write, ME, 9, False),
]


@pytest.mark.parametrize(
    ("name", "observed", "now", "min_epoch", "kind", "holder", "transitions", "create"),
    PLAN_CASES,
    ids=[c[0] for c in PLAN_CASES],
)
def test_plan_claim(
    name: str,
    observed: Observed | None,
    now: float,
    min_epoch: int,
    kind: type,
    holder: str | None,
    transitions: int | None,
    create: bool,
) -> None:
    got = plan_claim(ME, observed, now, WALL, T, min_epoch)
    assert isinstance(got, kind)
    if isinstance(got, Write):
        assert got.record.holder == holder
        assert got.record.transitions == transitions
        assert got.record.duration == T.lease_duration
        assert got.record.renew_time == micro_time(WALL)
        assert (got.resource_version is None) is create
        assert got.acquiring is (observed is None or observed.record.holder != ME)
        if got.acquiring:
            assert got.record.acquire_time == micro_time(WALL)
        else:
            assert observed is not None and got.record.acquire_time == observed.record.acquire_time
    else:
        assert isinstance(got, HeldByOther)
        assert observed is not None
        assert got.holder == OTHER
        assert got.expires_at == observed.since + observed.record.duration


def test_observe_keeps_first_sighting_until_the_version_changes() -> None:
    first = observe(None, rec(OTHER), "1", 10.0)
    assert observe(first, rec(OTHER), "1", 15.0).since == 10.0
    assert observe(first, rec(OTHER), "2", 15.0).since == 15.0
    assert observe(first, replace(rec(OTHER), renew_time=micro_time(WALL)), "1", 15.0).since == 15.0


def test_lease_json_round_trip_and_times() -> None:
    r = rec(ME, 5)
    body = lease_body("l", "ns", r, "77")
    assert body["metadata"] == {"name": "l", "namespace": "ns", "resourceVersion": "77"}
    assert record_from_lease(body) == r
    assert "resourceVersion" not in lease_body("l", "ns", r, None)["metadata"]
    assert record_from_lease({"spec": {}}) == LeaseRecord("", 0, 0, None, None)
    assert micro_time(WALL + 0.25) == "2023-11-14T22:13:20.250000Z"
    assert parse_time(micro_time(WALL + 0.25)) == pytest.approx(WALL + 0.25)
    assert parse_time("2023-11-14T22:13:20Z") == pytest.approx(WALL)
    assert parse_time(None) is None
    assert parse_time("yesterday") is None


LEADER = ElectionState(leading=True, epoch=3, renewed_at=100.0, tenure_started=40.0, seen_epoch=3)
FOLLOWER = ElectionState(seen_epoch=3, epoch=0)
W = Wrote(rec(ME, 3), sent_at=102.0)
W4 = Wrote(rec(ME, 4), sent_at=102.0)
OTHER_HOLDS = HeldByOther(OTHER, 4, expires_at=110.0)
CONF, UNREACH, REJ = Failed(Failure.CONFLICT), Failed(Failure.UNREACHABLE), Failed(Failure.REJECTED)
IN_OUTAGE = replace(LEADER, last_failure=Failure.UNREACHABLE, outage=True)
AFTER_CONFLICT = replace(LEADER, last_failure=Failure.CONFLICT)

# (name, state, outcome, now, edge, leading after, outage after, reread)
SETTLE_CASES = [
    ("follower acquires", FOLLOWER, W4, 102.1, Edge.ACQUIRED, True, False, False),
    ("leader renews", LEADER, W, 102.1, Edge.RENEWED, True, False, False),
    ("renewal ends an outage", IN_OUTAGE, W, 102.1, Edge.RENEWED, True, False, False),
    ("follower sees other holder", FOLLOWER, OTHER_HOLDS, 102.0, Edge.NONE, False, False, False),
    ("leader sees other holder: demoted at once", LEADER, OTHER_HOLDS, 101.0, Edge.LOST, False, False, False),
    ("follower failures change nothing", FOLLOWER, UNREACH, 102.0, Edge.NONE, False, False, False),
    ("leader conflict before deadline: reread", LEADER, CONF, 102.0, Edge.NONE, True, False, True),
    ("leader conflict at renew deadline: lost", LEADER, CONF, 105.0, Edge.LOST, False, False, False),
    ("leader rejected before deadline", LEADER, REJ, 104.9, Edge.NONE, True, False, False),
    ("leader rejected at renew deadline: lost", LEADER, REJ, 105.0, Edge.LOST, False, False, False),
    ("unreachable starts outage mode", LEADER, UNREACH, 102.0, Edge.NONE, True, True, False),
    ("outage survives the renew deadline", IN_OUTAGE, UNREACH, 130.0, Edge.NONE, True, True, False),
    ("outage just before grace", IN_OUTAGE, UNREACH, 159.9, Edge.NONE, True, True, False),
    ("outage at grace: lost", IN_OUTAGE, UNREACH, 160.0, Edge.LOST, False, False, False),
    ("conflict ends outage mode", IN_OUTAGE, CONF, 104.0, Edge.NONE, True, False, True),
    ("conflict in outage past renew deadline: lost", IN_OUTAGE, CONF, 106.0, Edge.LOST, False, False, False),
    ("no outage mode after a conflict", AFTER_CONFLICT, UNREACH, 104.0, Edge.NONE, True, False, False),
    ("after a conflict, unreachable obeys renew deadline", AFTER_CONFLICT, UNREACH, 105.0, Edge.LOST, False,
     False, False),
]


@pytest.mark.parametrize(
    ("name", "state", "outcome", "now", "edge", "leading", "outage", "reread"),
    SETTLE_CASES,
    ids=[c[0] for c in SETTLE_CASES],
)
def test_settle(
    name: str,
    state: ElectionState,
    outcome: Wrote | HeldByOther | Failed,
    now: float,
    edge: Edge,
    leading: bool,
    outage: bool,
    reread: bool,
) -> None:
    ch: Change = settle(state, outcome, now, T)
    assert ch.edge is edge
    assert ch.state.leading is leading
    assert ch.state.outage is outage
    assert ch.reread is reread
    if edge is Edge.LOST:
        assert ch.reason
        assert ch.state.renewed_at is None


def test_settle_tenure_bookkeeping() -> None:
    acquired = settle(FOLLOWER, W4, 102.5, T).state
    assert (acquired.epoch, acquired.renewed_at, acquired.tenure_started) == (4, 102.0, 102.0)
    renewed = settle(acquired, Wrote(rec(ME, 4), sent_at=104.0), 104.1, T).state
    assert (renewed.renewed_at, renewed.tenure_started) == (104.0, 102.0)
    lost = settle(renewed, HeldByOther(OTHER, 7, 120.0), 110.0, T).state
    assert lost.seen_epoch == 7
    assert role_directive(lost, 110.0, T) == RoleDirective(False, 7)


def test_grace_shorter_than_renew_deadline_uses_renew_deadline() -> None:
    t = replace(T, outage_grace=0.0)
    assert settle(IN_OUTAGE, UNREACH, 104.9, t).edge is Edge.NONE
    assert settle(IN_OUTAGE, UNREACH, 105.0, t).edge is Edge.LOST


# (name, state, now, timings, active, until)
DIRECTIVE_CASES = [
    ("follower is standby at the highest epoch seen", replace(FOLLOWER, seen_epoch=8), 100.0, T, False, None),
    ("leader: lease duration minus margin from the write", LEADER, 100.1, T, True, 106.5),
    ("after a conflict the role is not extended", AFTER_CONFLICT, 104.0, T, True, 106.5),
    ("outage: extended to now + TTL", IN_OUTAGE, 120.0, T, True, 126.5),
    ("outage: capped at last write + grace", IN_OUTAGE, 157.0, T, True, 160.0),
    ("outage with zero grace: no extension", IN_OUTAGE, 104.0, replace(T, outage_grace=0.0), True, 106.5),
]


@pytest.mark.parametrize(
    ("name", "state", "now", "timings", "active", "until"),
    DIRECTIVE_CASES,
    ids=[c[0] for c in DIRECTIVE_CASES],
)
def test_role_directive(
    name: str, state: ElectionState, now: float, timings: Timings, active: bool, until: float | None
) -> None:
    d = role_directive(state, now, timings)
    assert d.active is active
    assert d.until == (pytest.approx(until) if until is not None else None)
    assert d.epoch == (state.epoch if active else max(state.seen_epoch, state.epoch))


def test_outage_role_never_outlives_grace() -> None:
    """Walk a 70 s outage tick by tick: the role's end never passes last write + grace, and the
    leader steps down exactly when the grace is over."""
    state, now = LEADER, 100.0
    ends = []
    while True:
        now += T.retry_period
        ch = settle(state, UNREACH, now, T)
        state = ch.state
        if ch.edge is Edge.LOST:
            break
        ends.append(role_directive(state, now, T).until)
    assert now == pytest.approx(160.0)
    assert max(e for e in ends if e is not None) <= 160.0
    assert role_directive(state, now, T).active is False


A5 = RoleDirective(True, 3, 105.0)
# (name, want, granted, now, call)
CALL_CASES = [
    ("unknown agent: standby sent", RoleDirective(False, 3), None, 0.0, True),
    ("standby already granted", RoleDirective(False, 3), RoleDirective(False, 3), 0.0, False),
    ("standby at a new epoch", RoleDirective(False, 4), RoleDirective(False, 3), 0.0, True),
    ("demotion", RoleDirective(False, 3), A5, 0.0, True),
    ("first active", A5, RoleDirective(False, 3), 100.0, True),
    ("renewal extends", RoleDirective(True, 3, 107.0), A5, 101.0, True),
    ("nothing to extend", A5, A5, 101.0, False),
    ("new epoch", RoleDirective(True, 4, 105.0), A5, 101.0, True),
    ("run out: no call with a non-positive ttl", A5, None, 105.0, False),
]


@pytest.mark.parametrize(
    ("name", "want", "granted", "now", "call"), CALL_CASES, ids=[c[0] for c in CALL_CASES]
)
def test_needs_call(
    name: str, want: RoleDirective, granted: RoleDirective | None, now: float, call: bool
) -> None:
    assert needs_call(want, granted, now) is call


def test_stale_epoch_raises_next_write() -> None:
    state = note_agent_epoch(LEADER, 11)
    assert state.min_epoch == 12
    assert note_agent_epoch(state, 2).min_epoch == 12
    got = plan_claim(ME, obs(ME, since=50.0), 101.0, WALL, T, state.min_epoch)
    assert isinstance(got, Write) and got.record.transitions == 12
    assert settle(state, Wrote(got.record, 101.0), 101.1, T).state.epoch == 12


def test_fencing_bound_old_role_ends_before_successor_can_acquire() -> None:
    """The bound of the module docstring, as arithmetic on the functions themselves: the successor
    observes the last write no earlier than it was sent, acquires only lease_duration later, and
    the old leader's role ends a fencing margin before that."""
    sent = 100.0
    leader = settle(FOLLOWER, Wrote(rec(ME, 4), sent_at=sent), sent + 0.01, T).state
    old_role_end = role_directive(leader, sent + 0.02, T).until
    assert old_role_end is not None
    for observed_at in (sent, sent + 0.3, sent + 1.9):
        seen = Observed(rec(ME, 4), "9", observed_at)
        first_acquire = observed_at + T.lease_duration
        assert isinstance(plan_claim(OTHER, seen, first_acquire - 0.001, WALL, T), HeldByOther)
        assert isinstance(plan_claim(OTHER, seen, first_acquire, WALL, T), Write)
        assert old_role_end <= first_acquire - T.fencing_margin
