"""Fencing: the agent's role is a lease-like grant with an epoch and an expiry.

Pure over an injected clock: `Fence` decides, the agent acts (removing peers when the role lapses).
Expiry uses the monotonic clock so that wall-clock jumps cannot extend a grant; the wall-clock expiry
is only kept to persist the grant across an agent restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

MAX_TTL = 3600.0


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
        if epoch < self._grant.epoch:
            raise StaleEpoch(f"epoch {epoch} is lower than the current epoch {self._grant.epoch}")
        if role is Role.ACTIVE:
            if not 0 < ttl <= MAX_TTL:
                raise ValueError(f"ttl: {ttl}s not in (0, {MAX_TTL:.0f}]")
            self._grant = Grant(role, epoch, self._mono() + ttl, self._wall() + ttl, reason)
        else:
            self._grant = Grant(role, epoch, None, None, reason)
        return self._grant

    def restore(self, epoch: int, expires_wall: float) -> Grant:
        """Re-arms an ACTIVE grant persisted by a previous agent process, if it has not lapsed yet.

        A restarted agent must keep traffic flowing for the rest of the grant (the labeler renews it
        within a retry period); it must never extend it."""
        remaining = expires_wall - self._wall()
        if remaining <= 0:
            self._grant = Grant(Role.STANDBY, epoch, None, None, "restored-expired")
        else:
            self._grant = Grant(Role.ACTIVE, epoch, self._mono() + remaining, expires_wall, "restored")
        return self._grant

    def current(self) -> Grant:
        """The grant now, with an elapsed ACTIVE grant turned into STANDBY."""
        g = self._grant
        if g.role is Role.ACTIVE and not g.active_at(self._mono()):
            self._grant = Grant(Role.STANDBY, g.epoch, None, None, "expired")
        return self._grant

    def seconds_left(self) -> float | None:
        g = self.current()
        return None if g.expires_mono is None else max(0.0, g.expires_mono - self._mono())
