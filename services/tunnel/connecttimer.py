"""Apply-to-Connected: how long a TunnelEndpoint's spec takes to show status Connected; pure, clock passed in.

The start is the moment this controller's watch delivered a new generation of the object (its
creation, or a spec change: generation only moves with the spec), on the monotonic clock. Kubernetes'
creationTimestamp has whole-second resolution and a spec change has no timestamp at all, so the
watch delivery is the precise start we have; the API server's own delay to deliver it (usually
milliseconds) is not included. The end is this controller writing status Connected after the netagent
accepted that generation (EnsureTunnel returned): a Connected reported for an older spec does not count,
except one the status stream delivers after that (the netagent's status carries no generation, so
such a late message can end a spec change's timing early).

Each generation is observed at most once. Only generations first seen while this replica is active
and its cache is synced are timed: objects listed at start-up, or applied while a standby (they wait
for a failover, which the labeler's metrics time), are never observed, and a lost role drops
whatever was pending.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

CREATED = "created"
UPDATED = "updated"


@dataclass
class _Pending:
    uid: str
    generation: int
    since: float
    change: str
    ensured: bool = False


class ConnectTimer:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # the informer thread, the workers and the status stream
        self._seen: dict[str, tuple[str, int]] = {}  # key -> (uid, generation) last seen
        self._pending: dict[str, _Pending] = {}

    def seen(self, key: str, uid: str, generation: int, now: float, *, timing: bool) -> None:
        """The watch delivered `key` at `generation`; `timing`: this replica times it (active, synced)."""
        with self._lock:
            last = self._seen.get(key)
            if last == (uid, generation):
                return  # a status or metadata update of a generation already seen
            self._seen[key] = (uid, generation)
            if timing:
                change = UPDATED if last is not None and last[0] == uid else CREATED
                self._pending[key] = _Pending(uid, generation, now, change)
            else:
                self._pending.pop(key, None)

    def ensured(self, key: str, uid: str, generation: int) -> None:
        """The netagent accepted this generation: a Connected from now on is its own."""
        with self._lock:
            p = self._pending.get(key)
            if p is not None and (p.uid, p.generation) == (uid, generation):
                p.ensured = True

    def connected(self, key: str, now: float) -> tuple[str, float] | None:
        """Status Connected was written for `key`: (change, seconds) the first time for an ensured
        generation, None otherwise."""
        with self._lock:
            p = self._pending.get(key)
            if p is None or not p.ensured:
                return None
            del self._pending[key]
            return p.change, max(0.0, now - p.since)

    def forget(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)
            self._pending.pop(key, None)

    def drop_pending(self) -> None:
        """The role was lost and regained: what was pending waited for a failover, not for us."""
        with self._lock:
            self._pending.clear()
