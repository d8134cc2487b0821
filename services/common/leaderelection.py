"""Leader election on a `coordination.k8s.io/v1` Lease: the decisions, as pure functions.

Written here rather than taken from `kubernetes.leaderelection` because that one neither releases the
Lease on shutdown nor maintains `leaseTransitions`, and because we need to tell *why* a renewal failed.
The I/O loop (services/labeler/elector.py) runs one attempt per retry period: read the Lease,
`plan_claim`, write it with optimistic concurrency (resourceVersion), `settle` the outcome, then bring
the netagent's role in line with `role_directive`. Every duration is measured on the monotonic clock of
the process that measures it; wall-clock times are only written into the Lease for humans and metrics.

Two ways to stop renewing, two rules:
- *Someone else can write the Lease* (409 Conflict, or 404/403/422...: the API server answers, we just
  cannot keep the lease): after `renew_deadline` without a successful write we step down, and we never
  extend the netagent role past `last write + lease_duration - fencing_margin`. Another holder seen in
  a read demotes us at once.
- *Nobody can reach the API server* (connection errors, timeouts, 429, 5xx): nobody can take the lease
  either, so the leader keeps renewing its netagent role, up to `outage_grace` after its last successful
  write, and steps down then. Liqo's gateway (like Submariner's) steps down on any failed
  renewal, so every control-plane upgrade or API server outage took cross-cluster traffic down;
  here a control-plane upgrade is not a dataplane outage. Outage mode holds only while *every*
  failed attempt since the last write was of that kind; one conflict or rejection falls back to the
  strict rule.

Fencing bound (why two dataplanes are never live at once outside the outage grace):
the netagent role granted after a write sent at `t_send` ends at `t_send + lease_duration - margin`
(the TTL is computed just before the SetRole call; the margin absorbs the call's delivery delay, which
the gRPC deadline caps at the margin). A candidate can only have observed that write at `t_obs >=
t_send`, and acquires only when it has seen no newer write for `lease_duration` (the record's
leaseDurationSeconds, timed on its own clock from `t_obs`); a stale read cannot win because the write
carries the resourceVersion it read. Its own SetRole(ACTIVE) therefore comes after
`t_obs + lease_duration > t_send + lease_duration - margin`: the old role has lapsed by then. A graceful
release sets the old netagent STANDBY *before* emptying holderIdentity, so the hand-over needs no wait.
Only the outage grace breaks this: a leader cut off from the API server while the others still reach it
keeps its role until `last write + outage_grace`, while another replica may go ACTIVE from
`last write + lease_duration` on; the split-brain window a partitioned node can cause is therefore at
most `outage_grace - lease_duration` (53 s with the defaults), and none when `outage_grace <=
lease_duration - margin` (at the price of dropping traffic in every API outage longer than that).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

# Seconds cut from every normal role TTL: covers the delay between computing the TTL and the netagent
# starting its timer (a local Unix-socket call), so the old role lapses before a successor can act.
FENCING_MARGIN = 0.5


class Failure(enum.Enum):
    """Why a read or write of the Lease failed; decides which deadline applies."""

    CONFLICT = "conflict"  # 409 or 404 on write: someone else changed the Lease
    UNREACHABLE = "unreachable"  # no answer, timeout, 429, 5xx: nobody can write it
    REJECTED = "rejected"  # any other answer (403, 422...): we cannot write, others may


def classify(http_status: int) -> Failure:
    """`http_status` 0 means the request got no HTTP answer (refused, reset, timed out)."""
    if http_status == 0 or http_status == 429 or http_status >= 500:
        return Failure.UNREACHABLE
    if http_status in (404, 409):
        return Failure.CONFLICT
    return Failure.REJECTED


@dataclass(frozen=True)
class Timings:
    """Defaults are Liqo's (7 s / 5 s / 2 s). `lease_duration` is whole seconds, as the Lease stores it."""

    lease_duration: int = 7
    renew_deadline: float = 5.0
    retry_period: float = 2.0
    outage_grace: float = 60.0
    fencing_margin: float = FENCING_MARGIN

    def check(self) -> None:
        """Raises ValueError naming the flag when the timings cannot work together."""
        if self.lease_duration < 1:
            raise ValueError("--lease-duration must be at least 1 second")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need 0 < --retry-period < --renew-deadline < --lease-duration")
        if not 0 <= self.fencing_margin < self.lease_duration - self.retry_period:
            # Otherwise the role lapses between two renewals even when every write succeeds.
            raise ValueError("fencing margin must be below --lease-duration minus --retry-period")
        if self.outage_grace < 0:
            raise ValueError("--outage-grace must not be negative")

    def check_request_timeout(self, timeout: float) -> None:
        """Raises ValueError unless renewals whose read and write each succeed just before `timeout`
        still extend the role before the last grant lapses. Such an attempt takes 2 x timeout (the
        next tick is then overdue and runs at once), and the grant runs `lease_duration -
        fencing_margin` from when its write was sent, a read after the tick: the next grant lands
        max(retry_period, 2 x timeout) + timeout after the last write was sent."""
        if timeout <= 0:
            raise ValueError("--election-request-timeout must be positive")
        if max(self.retry_period, 2 * timeout) + timeout >= self.lease_duration - self.fencing_margin:
            raise ValueError(
                "need max(--retry-period, 2 x --election-request-timeout) + --election-request-timeout "
                f"< --lease-duration - {self.fencing_margin:g} (the fencing margin): a slow API server "
                "would otherwise let the netagent's role lapse between two successful renewals"
            )


@dataclass(frozen=True)
class Profile:
    """A named set of election timings, what the chart's `election.profile` selects."""

    timings: Timings
    request_timeout: float

    def flags(self) -> list[str]:
        t = self.timings
        return [
            f"--lease-duration={t.lease_duration}",
            f"--renew-deadline={t.renew_deadline:g}",
            f"--retry-period={t.retry_period:g}",
            f"--election-request-timeout={self.request_timeout:g}",
            f"--outage-grace={t.outage_grace:g}",
        ]


# Liqo's timings: a crash fails over in lease_duration minus up to a retry period (5-7 s + SetRole).
DEFAULT_PROFILE = Profile(Timings(), request_timeout=1.0)
# A crash fails over in 1.75-2 s (+ SetRole). The price: one Lease write per 0.25 s per gateway (8x
# the default), a netagent must answer SetRole within 1.5 s - 0.25 s of the last grant or its peers are
# fenced, and an API server slower than 0.4 s per request counts as unreachable (outage grace).
FAST_PROFILE = Profile(
    Timings(lease_duration=2, renew_deadline=1.5, retry_period=0.25), request_timeout=0.4
)
PROFILES = {"default": DEFAULT_PROFILE, "fast": FAST_PROFILE}


@dataclass(frozen=True)
class LeaseRecord:
    """The spec of the Lease, the part election reads and writes."""

    holder: str
    duration: int  # leaseDurationSeconds
    transitions: int  # leaseTransitions: our fencing epoch
    acquire_time: str | None = None  # MicroTime strings, as stored
    renew_time: str | None = None


def micro_time(wall: float) -> str:
    """Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    """Unix time from a Kubernetes Time or MicroTime; None when absent or malformed."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def record_from_lease(obj: dict[str, Any]) -> LeaseRecord:
    spec = obj.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration=int(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
    )


def lease_body(
    name: str, namespace: str, record: LeaseRecord, resource_version: str | None
) -> dict[str, Any]:
    """The full object for a create (no resourceVersion) or an optimistic-concurrency replace."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


@dataclass(frozen=True)
class Observed:
    """A version of the Lease and when this process first saw it (client-go's observedTime): expiry
    is judged from here on our own clock, never from the holder's renewTime (clocks differ)."""

    record: LeaseRecord
    resource_version: str
    since: float


def observe(prev: Observed | None, record: LeaseRecord, resource_version: str, now: float) -> Observed:
    if prev is not None and prev.resource_version == resource_version and prev.record == record:
        return prev
    return Observed(record, resource_version, now)


# --- planning one attempt ---------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """Write `record`; `resource_version` None means create the Lease."""

    record: LeaseRecord
    resource_version: str | None
    acquiring: bool


@dataclass(frozen=True)
class HeldByOther:
    holder: str
    transitions: int
    expires_at: float  # monotonic, by our observation


def plan_claim(
    identity: str,
    observed: Observed | None,
    now: float,
    now_wall: float,
    timings: Timings,
    min_epoch: int = 0,
) -> Write | HeldByOther:
    """What to write after reading the Lease (`observed` None: it does not exist)."""
    stamp = micro_time(now_wall)
    if observed is None:
        rec = LeaseRecord(identity, timings.lease_duration, max(0, min_epoch), stamp, stamp)
        return Write(rec, None, acquiring=True)
    old = observed.record
    if old.holder and old.holder != identity:
        expires_at = observed.since + old.duration
        if now < expires_at:
            return HeldByOther(old.holder, old.transitions, expires_at)
    if old.holder == identity:
        rec = replace(
            old,
            duration=timings.lease_duration,
            transitions=max(old.transitions, min_epoch),
            renew_time=stamp,
            acquire_time=old.acquire_time or stamp,
        )
        return Write(rec, observed.resource_version, acquiring=False)
    # Free (released, empty) or expired: take it; a new holder is a new transition, hence a new epoch.
    rec = LeaseRecord(identity, timings.lease_duration, max(old.transitions + 1, min_epoch), stamp, stamp)
    return Write(rec, observed.resource_version, acquiring=True)


# --- the state machine --------------------------------------------------------------------------


@dataclass(frozen=True)
class Wrote:
    """Our write succeeded; `sent_at` is the monotonic time just before it was sent."""

    record: LeaseRecord
    sent_at: float


@dataclass(frozen=True)
class Failed:
    kind: Failure
    detail: str = ""


Outcome = Wrote | HeldByOther | Failed


class Edge(enum.Enum):
    NONE = "none"
    ACQUIRED = "acquired"
    RENEWED = "renewed"
    LOST = "lost"


@dataclass(frozen=True)
class ElectionState:
    leading: bool = False
    epoch: int = 0  # leaseTransitions of our tenure
    renewed_at: float | None = None  # sent_at of our last successful write
    tenure_started: float | None = None
    # None: no failure since the last successful write.
    last_failure: Failure | None = None
    # Every attempt since the last successful write failed as UNREACHABLE (and at least one did).
    outage: bool = False
    seen_epoch: int = 0  # highest leaseTransitions observed, for STANDBY calls
    min_epoch: int = 0  # the netagent has seen a higher epoch than the Lease carries


@dataclass(frozen=True)
class Change:
    state: ElectionState
    edge: Edge
    reason: str = ""
    # A leader got 409: re-read at once instead of waiting a retry period, so that losing the lease
    # to another writer demotes us immediately.
    reread: bool = False


def settle(state: ElectionState, outcome: Outcome, now: float, timings: Timings) -> Change:
    if isinstance(outcome, Wrote):
        rec = outcome.record
        edge = Edge.RENEWED if state.leading else Edge.ACQUIRED
        new = ElectionState(
            leading=True,
            epoch=rec.transitions,
            renewed_at=outcome.sent_at,
            tenure_started=state.tenure_started if state.leading else outcome.sent_at,
            seen_epoch=max(state.seen_epoch, rec.transitions),
            min_epoch=state.min_epoch,
        )
        return Change(new, edge, "lease acquired" if edge is Edge.ACQUIRED else "lease renewed")
    if isinstance(outcome, HeldByOther):
        seen = max(state.seen_epoch, outcome.transitions)
        follower = ElectionState(seen_epoch=seen, min_epoch=state.min_epoch, epoch=state.epoch)
        if state.leading:
            return Change(follower, Edge.LOST, f"lease held by {outcome.holder}")
        return Change(follower, Edge.NONE)
    # Failed
    if not state.leading:
        return Change(replace(state, last_failure=outcome.kind), Edge.NONE)
    outage = outcome.kind is Failure.UNREACHABLE and (state.last_failure is None or state.outage)
    assert state.renewed_at is not None
    if outage:
        limit = max(timings.renew_deadline, timings.outage_grace)
        why = f"API server unreachable for longer than the outage grace ({timings.outage_grace:g}s)"
    else:
        limit = timings.renew_deadline
        why = f"no renewal within the renew deadline ({timings.renew_deadline:g}s): {outcome.kind.value}"
    if now - state.renewed_at >= limit:
        follower = ElectionState(seen_epoch=state.seen_epoch, min_epoch=state.min_epoch, epoch=state.epoch)
        return Change(follower, Edge.LOST, why)
    new = replace(state, last_failure=outcome.kind, outage=outage)
    return Change(new, Edge.NONE, reread=outcome.kind is Failure.CONFLICT)


def note_agent_epoch(state: ElectionState, agent_epoch: int) -> ElectionState:
    """The netagent refused our epoch as stale (the Lease was recreated, resetting leaseTransitions):
    the next write raises leaseTransitions above what the netagent has seen."""
    return replace(state, min_epoch=max(state.min_epoch, agent_epoch + 1))


# --- what the netagent's role should be -------------------------------------------------------


@dataclass(frozen=True)
class RoleDirective:
    active: bool
    epoch: int
    until: float | None = None  # monotonic end of an ACTIVE role


def role_directive(state: ElectionState, now: float, timings: Timings) -> RoleDirective:
    if not state.leading or state.renewed_at is None:
        return RoleDirective(False, max(state.seen_epoch, state.epoch))
    base = state.renewed_at + timings.lease_duration - timings.fencing_margin
    if state.outage:
        ttl = timings.lease_duration - timings.fencing_margin
        stretched = min(state.renewed_at + timings.outage_grace, now + ttl)
        return RoleDirective(True, state.epoch, max(base, stretched))
    return RoleDirective(True, state.epoch, base)


def needs_call(want: RoleDirective, granted: RoleDirective | None, now: float) -> bool:
    """Whether to call SetRole. `granted` is what the netagent last accepted (None: unknown). STANDBY is
    sent once; ACTIVE whenever it extends the grant or changes the epoch, never when it has run out."""
    if not want.active:
        return granted is None or granted.active or granted.epoch != want.epoch
    assert want.until is not None
    if want.until <= now:
        return False
    if granted is None or not granted.active or granted.epoch != want.epoch or granted.until is None:
        return True
    return want.until > granted.until + 1e-3
