"""Whether the gateway has an active replica, as one labeler can observe it; pure, clock passed in.

A labeler sees two things: its own netagent's ACTIVE grant (until when it runs, on our monotonic
clock) and the Lease as written by the others. Another holder's lease counts as live until it has
gone unrenewed for its leaseDurationSeconds *by our observation*: the very rule a candidate takes
over by (services/common/leaderelection.py). So, at time t, this replica observes **no active
replica** when its view is fresh (the last Lease read succeeded, or the watch delivered), its own
grant has run out (or there is none), and no other holder's lease is live.

What it cannot see, and the metrics' help says so:
- a live holder counts as active even before its netagent accepts the role (a standby cannot see
  another replica's netagent; the holder itself knows, and counts that time);
- after a crash the holder looks live until its lease expires: the crash-to-expiry part (at most a
  lease duration) is missing, and `liqo_labeler_last_leaderless_seconds` bounds it from above;
- while the Lease cannot be read nothing is counted: the leader may be keeping its role through an
  API outage, which we could not tell from a crash.

A stretch without an active replica has a start and a cause: `expired` (a lease, another's or our
own grant, ran out), `released` (the Lease was seen emptied by a holder that let go) or `unknown`
(nothing live since this view began: a start-up without a leader). The replica whose netagent then
accepts ACTIVE ends the stretch: that is a failover, timed from the moment this replica saw the
previous leader gone, unless the cause is `unknown` (not a failover, a cold start).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

EXPIRED = "expired"
RELEASED = "released"
UNKNOWN = "unknown"
FAILOVER_CAUSES = (EXPIRED, RELEASED)


@dataclass(frozen=True)
class Stretch:
    """A time without an active replica, as observed here: since `start` (monotonic), for `cause`."""

    start: float
    cause: str


class Availability:
    """Fed by the elector (any thread), read by scrapes. Every `now` is the elector's monotonic clock;
    `clock` is that same clock, for reads at scrape time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._known = False
        self._other: float | None = None  # another holder's lease is live until then
        self._own: float | None = None  # our netagent's ACTIVE grant runs until then
        self._released = False  # the live lease we last knew of was released, not expired
        self._t = 0.0  # accounted up to here
        self._total = 0.0
        self._stretch: Stretch | None = None

    # --- inputs ----------------------------------------------------------------------------------

    def lease_seen(self, now: float, other_until: float | None, *, released: bool = False) -> None:
        """A successful read or watch event of the Lease: another holder live until `other_until`, or
        none (absent, empty, or ours). `released`: the Lease was seen emptied (holderIdentity "")."""
        with self._lock:
            self._advance(now)
            had_live = self._live(now)
            self._other = other_until
            if released and had_live and not self._live(now):
                self._released = True
            self._known = True
            self._settle(now)

    def lease_unreadable(self, now: float) -> None:
        """A Lease read failed: we can no longer tell an API outage from a crash, so stop counting."""
        with self._lock:
            self._advance(now)
            self._known = False
            self._settle(now)

    def own_grant(self, now: float, until: float | None) -> Stretch | None:
        """Our netagent accepted ACTIVE until `until`, or was set STANDBY (None). Returns the stretch
        this grant ended, if it ended one (a failover when its cause is not `unknown`)."""
        with self._lock:
            self._advance(now)
            before, had_live = self._stretch, self._live(now)
            self._own = until
            if until is None and had_live and not self._live(now):
                self._released = True  # we withdrew our own role (stepped down, shut down)
            self._settle(now)
            return before if before is not None and self._stretch is None else None

    # --- reads -----------------------------------------------------------------------------------

    def totals(self, now: float | None = None) -> tuple[float, float]:
        """(seconds without an active replica since start, seconds of the current stretch)."""
        with self._lock:
            now = self._clock() if now is None else now
            total, stretch = self._peek(now)
            return total, (now - stretch.start if stretch is not None else 0.0)

    # --- internals (under the lock) --------------------------------------------------------------

    def _live_until(self) -> float | None:
        ends = [t for t in (self._other, self._own) if t is not None]
        return max(ends) if ends else None

    def _live(self, now: float) -> bool:
        until = self._live_until()
        return until is not None and now < until

    def _peek(self, now: float) -> tuple[float, Stretch | None]:
        """The total and the open stretch at `now`, the state having been constant since `_t`."""
        if not self._known or now < self._t:
            return self._total, self._stretch
        until = self._live_until()
        start = self._t if until is None else max(self._t, until)
        if start >= now and until is not None:
            return self._total, None  # live through the whole interval
        stretch = self._stretch
        if stretch is None:
            cause = EXPIRED if until is not None else (RELEASED if self._released else UNKNOWN)
            stretch = Stretch(start, cause)
        return self._total + (now - start), stretch

    def _advance(self, now: float) -> None:
        self._total, self._stretch = self._peek(now)
        self._t = max(self._t, now)

    def _settle(self, now: float) -> None:
        """After an input: a live view closes the stretch; an unknown one forgets it."""
        if not self._known or self._live(now):
            self._stretch = None
        if self._live(now):
            self._released = False
