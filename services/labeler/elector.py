"""The election loop: the thin I/O around services/common/leaderelection.py.

One attempt per retry period (ticks are aligned, so a slow attempt does not push the next one out):
read the Lease, plan, write, settle, then bring the netagent's role in line (fencing). A 409 makes a
leader re-read at once; a release seen on the Lease watch makes a follower try at once, so a graceful
hand-over does not wait for the next tick. On stop, a leader first sets its netagent STANDBY and only
then empties the Lease: a successor can never go ACTIVE while our peers are still live.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.leaderelection import (
    Change,
    Edge,
    ElectionState,
    Failed,
    HeldByOther,
    LeaseRecord,
    Observed,
    Outcome,
    RoleDirective,
    Timings,
    Write,
    Wrote,
    micro_time,
    needs_call,
    note_agent_epoch,
    observe,
    parse_time,
    plan_claim,
    role_directive,
    settle,
)
from services.common.netagent_client import NetAgentError
from services.labeler.availability import FAILOVER_CAUSES, Availability, Stretch
from services.labeler.lease_lock import LeaseLock, LockFailed
from services.labeler.metrics import LabelerMetrics

log = logging.getLogger(__name__)


class RoleClient(Protocol):
    """The part of NetAgentClient the elector uses (one attempt per call, short deadline)."""

    def set_role(self, role: pb.Role.ValueType, epoch: int, ttl: float, reason: str = "") -> Any: ...

    def get_info(self, *, retry_deadline: float | None = None) -> Any: ...


# Attempt this long after another holder's lease expires by our clock (scheduling slack).
_EXPIRY_MARGIN = 0.05
# A leader whose netagent keeps refusing ACTIVE for a lease duration steps down, and then stays out of
# the election for this many lease durations, so that a healthy replica can take over.
_STEP_DOWN_HOLD_OFF = 3


class Elector:
    def __init__(
        self,
        lock: LeaseLock,
        netagent: RoleClient,
        identity: str,
        timings: Timings,
        metrics: LabelerMetrics,
        *,
        on_active: Callable[[int], None] = lambda _epoch: None,
        on_standby: Callable[[str], None] = lambda _reason: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.lock = lock
        self.netagent = netagent
        self.identity = identity
        self.timings = timings
        self.metrics = metrics
        self.on_active = on_active
        self.on_standby = on_standby
        self.clock = clock
        self.wall = wall
        self.state = ElectionState()
        self.observed: Observed | None = None
        self._blind = False  # a Lease read failed since the last successful one
        self._refused_since: float | None = None  # our netagent refuses ACTIVE since then
        self._unreachable = False  # the last ACTIVE grant failed because the netagent did not answer
        self._agent_ready: bool | None = None  # last seen: could our netagent lead (for the log)
        self._hold_off_until = 0.0  # after stepping down: no campaigning before then
        self.granted: RoleDirective | None = None  # what the netagent last accepted
        self.wake = threading.Event()
        self.last_tick = clock()
        self._active_epoch: int | None = None  # tenure whose first ACTIVE was confirmed
        self._previous: LeaseRecord | None = None  # the record we took over from
        self.availability = Availability(clock)  # what the no-active-replica and failover metrics see
        metrics.availability = self.availability

    # --- what other threads ask ------------------------------------------------------------------

    def may_write(self) -> bool:
        """Leader with an unexpired ACTIVE role confirmed by the netagent: labels may be written."""
        g = self.granted
        return (
            self.state.leading
            and g is not None
            and g.active
            and g.until is not None
            and g.until > self.clock()
        )

    def healthy(self) -> bool:
        t = self.timings
        return self.clock() - self.last_tick < 2 * t.retry_period + 3 * self.lock.timeout + 1.0

    def lease_changed(self, record: LeaseRecord, resource_version: str) -> None:
        """From the Lease watch. A released lease is worth an attempt now; another holder's renewal
        restarts its expiry on our clock as soon as we see it, so that the attempt after a crash can be
        timed to the expiry instead of waiting for the next retry tick."""
        if self.state.leading:
            return
        if record.holder and record.holder != self.identity:
            seen = observe(self.observed, record, resource_version, self.clock())
            self.observed = seen
            self.availability.lease_seen(self.clock(), seen.since + seen.record.duration)
        if not record.holder:
            self.availability.lease_seen(self.clock(), None, released=True)
            self.wake.set()

    def _next_attempt(self, next_tick: float) -> float:
        """The next tick, or earlier: the moment another holder's lease expires by our observation
        (never before it: fencing relies on a successor starting no sooner than that)."""
        seen = self.observed
        if (
            self.state.leading
            or seen is None
            or not seen.record.holder
            or seen.record.holder == self.identity
        ):
            return next_tick
        expiry = seen.since + seen.record.duration + _EXPIRY_MARGIN
        return min(next_tick, expiry) if expiry > self.clock() else next_tick

    # --- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        next_at = self.clock()
        try:
            while not stop.is_set():
                self.tick()
                next_at += self.timings.retry_period
                next_at = self._next_attempt(max(next_at, self.clock()))
                while not stop.is_set() and self.clock() < next_at:
                    if self.wake.wait(min(0.1, max(0.0, next_at - self.clock()))):
                        next_at = self.clock()
                        break
                    if self._unreachable and self.state.leading:
                        # Our netagent is restarting: grant again the moment it answers (it comes
                        # back STANDBY once the last grant lapsed), not at the next renewal.
                        self.sync_role()
        finally:
            self.release()

    def tick(self) -> None:
        self.wake.clear()
        self.last_tick = self.clock()
        if self.last_tick < self._hold_off_until:
            return
        if not self.state.leading and not self._agent_can_lead():
            return
        change = settle(self.state, self._attempt(), self.clock(), self.timings)
        if change.reread:
            self._apply(change)
            change = settle(self.state, self._attempt(), self.clock(), self.timings)
        self._apply(change)
        self.sync_role()

    def _attempt(self) -> Outcome:
        try:
            got = self.lock.read()
        except LockFailed as e:
            self._blind = True
            self.metrics.attempts.labels(e.kind.value).inc()
            self.availability.lease_unreadable(self.clock())
            log.warning("lease read failed", extra={"kind": e.kind.value, "error": e.detail})
            return Failed(e.kind, e.detail)
        if self._blind and got is not None:
            # We could not watch the Lease for a while, so we cannot tell for how long it went
            # unrenewed: its holder gets a full lease duration from now (an outage is not a lost lease).
            self.observed = Observed(got[0], got[1], self.clock())
        else:
            self.observed = None if got is None else observe(self.observed, got[0], got[1], self.clock())
        self._blind = False
        self._note_lease(self.observed)
        if self.observed is not None:
            self.metrics.epoch.set(self.observed.record.transitions)
        plan = plan_claim(
            self.identity, self.observed, self.clock(), self.wall(), self.timings, self.state.min_epoch
        )
        if isinstance(plan, HeldByOther):
            self.metrics.attempts.labels("held").inc()
            return plan
        return self._write(plan)

    def _write(self, plan: Write) -> Outcome:
        sent_at = self.clock()
        try:
            record, rv = self.lock.write(plan)
        except LockFailed as e:
            self._blind = True
            self.metrics.attempts.labels(e.kind.value).inc()
            log.warning(
                "lease write failed",
                extra={"kind": e.kind.value, "error": e.detail, "acquiring": plan.acquiring},
            )
            return Failed(e.kind, e.detail)
        if plan.acquiring:
            self._previous = self.observed.record if self.observed else None
        self.observed = Observed(record, rv, sent_at)
        self.availability.lease_seen(self.clock(), None)  # ours now: only our own grant counts
        self.metrics.attempts.labels("acquired" if plan.acquiring else "renewed").inc()
        return Wrote(record, sent_at)

    def _note_lease(self, seen: Observed | None) -> None:
        """A Lease read, for the availability metrics: another holder is live until its lease expires
        by our observation (the takeover rule); an empty holderIdentity is a release."""
        if seen is not None and seen.record.holder and seen.record.holder != self.identity:
            self.availability.lease_seen(self.clock(), seen.since + seen.record.duration)
        else:
            released = seen is not None and not seen.record.holder
            self.availability.lease_seen(self.clock(), None, released=released)

    def _apply(self, change: Change) -> None:
        was_outage = self.state.outage
        self.state = change.state
        self.metrics.is_leader.set(1 if self.state.leading else 0)
        self.metrics.api_outage.set(1 if self.state.outage else 0)
        if self.state.outage and not was_outage:
            log.warning(
                "API server unreachable: keeping the dataplane active within the outage grace",
                extra={"outage_grace": self.timings.outage_grace},
            )
        if change.edge is Edge.ACQUIRED:
            self.metrics.transitions.labels("acquired").inc()
            log.info("lease acquired", extra={"identity": self.identity, "epoch": self.state.epoch})
        elif change.edge is Edge.LOST:
            self.metrics.transitions.labels("lost").inc()
            log.warning("leadership lost, fencing the dataplane", extra={"reason": change.reason})
            self._active_epoch = None
            self.on_standby(change.reason)

    # --- fencing ---------------------------------------------------------------------------------

    def sync_role(self) -> None:
        now = self.clock()
        want = role_directive(self.state, now, self.timings)
        if not needs_call(want, self.granted, now):
            self._role_gauge()
            return
        if want.active:
            self._grant_active(want)
        else:
            self._grant_standby(want.epoch, "not the lease holder")
        self._role_gauge()

    def _role_gauge(self) -> None:
        self.metrics.role_active.set(1 if self.may_write() else 0)

    def _grant_active(self, want: RoleDirective) -> None:
        assert want.until is not None
        ttl = want.until - self.clock()  # computed at the last moment: the fencing bound needs it
        if ttl <= 0:
            return
        reason = "lease outage grace" if self.state.outage else f"lease held by {self.identity}"
        try:
            self.netagent.set_role(pb.ROLE_ACTIVE, want.epoch, ttl, reason)
        except NetAgentError as e:
            self.metrics.role_errors.inc()
            if not (e.unavailable and self._unreachable):  # once per outage, not every retry
                log.warning("netagent refused the ACTIVE role", extra={"error": str(e), "epoch": want.epoch})
            if e.stale_epoch:
                self._learn_agent_epoch()
                return
            now = self.clock()
            if self._refused_since is None:
                self._refused_since = now
            # An unreachable netagent (its container restarting) has not withdrawn the dataplane:
            # wireguard-go, in a container of its own, forwards with the last peers and nobody can
            # remove them, so handing the Lease over would make two live dataplanes. Only a netagent
            # that answers and refuses is given up on after a lease duration; an unreachable one after
            # the outage grace (the same split-brain bound as an API outage).
            self._unreachable = e.unavailable
            patience = self.timings.outage_grace if e.unavailable else self.timings.lease_duration
            if now - self._refused_since >= max(patience, self.timings.lease_duration):
                self._step_down()
            return
        self._refused_since = None
        self._unreachable = False
        self.granted = want
        accepted = self.clock()
        ended = self.availability.own_grant(accepted, want.until)
        if self._active_epoch != want.epoch:
            self._active_epoch = want.epoch
            self._first_active(ended, accepted)

    def _first_active(self, ended: Stretch | None, accepted: float) -> None:
        started = self.state.tenure_started
        if started is not None:
            self.metrics.failover.set(self.clock() - started)
        if ended is not None and ended.cause in FAILOVER_CAUSES:
            # A takeover: from when we saw the previous leader gone to our ACTIVE (a cold start,
            # cause unknown, is not a failover).
            self.metrics.failover_duration.labels(ended.cause).observe(accepted - ended.start)
        prev = self._previous
        prev_write = parse_time(prev.renew_time) if prev is not None else None
        if prev is not None and prev.holder != self.identity and prev_write is not None:
            self.metrics.leaderless.set(max(0.0, self.wall() - prev_write))
        log.info(
            "netagent ACTIVE",
            extra={
                "epoch": self.state.epoch,
                "failover_s": round(self.clock() - started, 3) if started is not None else None,
                "previous_holder": prev.holder if prev else None,
            },
        )
        self.on_active(self.state.epoch)

    def _grant_standby(self, epoch: int, reason: str) -> bool:
        for _ in range(2):
            try:
                self.netagent.set_role(pb.ROLE_STANDBY, epoch, 0.0, reason)
            except NetAgentError as e:
                self.metrics.role_errors.inc()
                if e.stale_epoch:
                    # Demoting is always safe: repeat it at the epoch the netagent holds.
                    try:
                        epoch = max(epoch, int(self.netagent.get_info(retry_deadline=0.0).epoch))
                        continue
                    except NetAgentError:
                        pass
                log.warning("netagent refused the STANDBY role", extra={"error": str(e)})
                return False
            self.granted = RoleDirective(False, epoch)
            self.availability.own_grant(self.clock(), None)
            return True
        return False

    def _agent_can_lead(self) -> bool:
        """Whether our netagent could take the ACTIVE role: it answers and its device is configured.
        A replica whose pod is still starting (every container at once) would otherwise take the
        Lease, be refused, step down and hold off, while the healthy replica waits for it."""
        try:
            ready = bool(self.netagent.get_info(retry_deadline=0.0).device_configured)
        except NetAgentError:
            ready = False
        if ready != self._agent_ready:
            self._agent_ready = ready
            log.info("netagent ready to lead" if ready else "not campaigning until the netagent's device "
                     "is configured")
        return ready

    def _learn_agent_epoch(self) -> None:
        try:
            info = self.netagent.get_info(retry_deadline=0.0)
        except NetAgentError as e:
            log.warning("netagent GetInfo failed", extra={"error": str(e)})
            return
        self.state = note_agent_epoch(self.state, int(info.epoch))
        log.warning("lease epoch behind the netagent's; raising it", extra={"agent_epoch": int(info.epoch)})

    # --- graceful release --------------------------------------------------------------------------

    def _step_down(self) -> None:
        """Holding the Lease with a dataplane that will not go ACTIVE keeps every replica's traffic
        down. Our last ACTIVE grant (its TTL is shorter than a lease duration) has lapsed by now, so the
        Lease can go even if the netagent cannot be told STANDBY."""
        log.warning(
            "stepping down: the netagent refused the ACTIVE role for a lease duration",
            extra={"hold_off_s": _STEP_DOWN_HOLD_OFF * self.timings.lease_duration},
        )
        self._refused_since = None
        self._hold_off_until = self.clock() + _STEP_DOWN_HOLD_OFF * self.timings.lease_duration
        self._give_up_lease("stepped down", fenced=True)

    def release(self) -> None:
        """Fence first, then empty the Lease (leaseDurationSeconds 1) so a standby takes over at once.
        If the netagent cannot be set STANDBY, the Lease is left to expire: releasing it would let a
        successor go ACTIVE while our role may still run."""
        self._give_up_lease("shutting down", fenced=False)

    def _give_up_lease(self, reason: str, *, fenced: bool) -> None:
        """Withdraws the role and empties the Lease; `fenced`: the role has lapsed already, so the
        Lease goes even if the netagent cannot be reached."""
        if not self.state.leading:
            return
        epoch = self.state.epoch
        if not self._grant_standby(epoch, reason) and not fenced:
            log.warning("not releasing the lease: the netagent role could not be withdrawn")
            return
        st = self.state
        self.state = ElectionState(seen_epoch=st.seen_epoch, epoch=epoch, min_epoch=st.min_epoch)
        self.metrics.is_leader.set(0)
        self._role_gauge()
        self.on_standby("released")
        for _ in range(2):
            obs = self.observed
            if obs is None or obs.record.holder != self.identity:
                return
            stamp = micro_time(self.wall())
            rec = replace(obs.record, holder="", duration=1, acquire_time=stamp, renew_time=stamp)
            try:
                self.lock.write(Write(rec, obs.resource_version, acquiring=False))
            except LockFailed as e:
                log.warning("lease release failed", extra={"kind": e.kind.value, "error": e.detail})
                try:
                    got = self.lock.read()
                except LockFailed:
                    return
                if got is None:
                    return
                self.observed = Observed(got[0], got[1], self.clock())
                continue
            self.metrics.transitions.labels("released").inc()
            log.info("lease released", extra={"epoch": epoch})
            return
