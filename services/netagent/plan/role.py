"""Fencing: the agent's role is a lease-like grant with an epoch and an expiry.

Pure over an injected clock: `Fence` decides, the agent acts (removing peers when the role lapses).
Expiry uses the monotonic clock so that wall-clock jumps cannot extend a grant; the wall-clock expiry
is only kept to persist the grant across an agent restart.

Rules (docs/security.md, "Fencing"):
- Epochs are the Lease's `leaseTransitions`, an int32: ACTIVE with an epoch outside 0..2^31-1 is
  refused (ValueError), so no call can push the epoch out of reach of every later legitimate caller.
- ACTIVE with an epoch lower than the highest seen is refused (StaleEpoch): a stale leader renews late.
- STANDBY is always accepted, whatever its epoch (stopping traffic is never unsafe); it never lowers
  the stored epoch, and an out-of-range epoch is not adopted.
- A grant restored after a restart is capped at MAX_TTL and shortened by the wall-clock time since it
  was written; it is never extended.

`current()` never mutates: it derives the lapsed STANDBY from the stored grant, so a concurrent
`set` cannot be overwritten by a reader that saw the old grant lapse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

MAX_TTL = 3600.0
MAX_EPOCH = 2**31 - 1  # the Lease's leaseTransitions is an int32


class Role(Enum):
    ACTIVE = "active"
    STANDBY = "standby"


class StaleEpoch(Exception):
    """A SetRole carried an epoch lower than one already seen: the caller is a stale leader."""


@dataclass(frozen=True)
class Grant:
    role: Role
    epoch: int
    # Monotonic deadline of an ACTIVE grant; None for STANDBY.
    expires_mono: float | None
    # Wall-clock deadline, for persistence and for the API.
    expires_wall: float | None
    reason: str

    def active_at(self, now_mono: float) -> bool:
        return self.role is Role.ACTIVE and self.expires_mono is not None and now_mono < self.expires_mono


STANDBY_AT_START = Grant(Role.STANDBY, 0, None, None, "startup")


def check_epoch(epoch: int) -> int:
    """ValueError unless 0 <= epoch <= MAX_EPOCH."""
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"epoch: {epoch} not in 0..{MAX_EPOCH} (the Lease's leaseTransitions, an int32)")
    return epoch


def restored_seconds(expires_wall: float, written_wall: float | None, now_wall: float) -> float:
    """What is left of a persisted ACTIVE grant: at most MAX_TTL from when it was written, minus the
    wall-clock time since then (a clock that went backwards counts as no time, never as extra)."""
    if written_wall is None:  # a file from before write times were kept: the deadline alone, capped
        return min(expires_wall - now_wall, MAX_TTL)
    left_at_write = min(expires_wall - written_wall, MAX_TTL)
    return left_at_write - max(0.0, now_wall - written_wall)


class Fence:
    def __init__(
        self,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._mono = mono
        self._wall = wall
        self._grant = STANDBY_AT_START

    def set(self, role: Role, epoch: int, ttl: float, reason: str) -> Grant:
        """Grants `role`; raises StaleEpoch or ValueError and changes nothing on bad input."""
        if role is Role.STANDBY:
            # Always accepted; the highest epoch seen stays (a demotion never re-opens old epochs),
            # and an out-of-range epoch is ignored rather than stored (it would lock out every leader).
            try:
                kept = max(check_epoch(epoch), self._grant.epoch)
            except ValueError:
                kept = self._grant.epoch
            self._grant = Grant(role, kept, None, None, reason)
            return self._grant
        check_epoch(epoch)
        if epoch < self._grant.epoch:
            raise StaleEpoch(f"epoch {epoch} is lower than the current epoch {self._grant.epoch}")
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl: {ttl}s not in (0, {MAX_TTL:.0f}]")
        self._grant = Grant(role, epoch, self._mono() + ttl, self._wall() + ttl, reason)
        return self._grant

    def restore(self, epoch: int, expires_wall: float | None, written_wall: float | None = None) -> Grant:
        """Re-arms an ACTIVE grant persisted by a previous agent process, if it has not lapsed yet.

        A restarted agent must keep traffic flowing for the rest of the grant (the labeler renews it
        within a retry period); it must never extend it. An epoch out of range restores nothing."""
        try:
            check_epoch(epoch)
        except ValueError:
            self._grant = STANDBY_AT_START
            return self._grant
        now = self._wall()
        remaining = 0.0 if expires_wall is None else restored_seconds(expires_wall, written_wall, now)
        if remaining <= 0:
            reason = "restored" if expires_wall is None else "restored-expired"
            self._grant = Grant(Role.STANDBY, epoch, None, None, reason)
        else:
            self._grant = Grant(
                Role.ACTIVE, epoch, self._mono() + remaining, self._wall() + remaining, "restored"
            )
        return self._grant

    def current(self) -> Grant:
        """The grant now, with an elapsed ACTIVE grant seen as STANDBY."""
        g = self._grant
        if g.role is Role.ACTIVE and not g.active_at(self._mono()):
            return Grant(Role.STANDBY, g.epoch, None, None, "expired")
        return g

    def seconds_left(self) -> float | None:
        g = self.current()
        return None if g.expires_mono is None else max(0.0, g.expires_mono - self._mono())
