"""A work queue of object keys, after client-go's: de-duplicating, one key at a time, rate-limited.

- Adding a key that is already waiting does nothing (de-duplication).
- A key handed to a worker is not handed to another until `done(key)`; if it was added meanwhile it
  is queued again at `done` (so every change is seen, and one key is never processed concurrently).
- `add_rate_limited(key)` re-adds after a per-key capped exponential delay; `forget(key)` resets it
  after a success. `add_after(key, delay)` schedules a plain delayed add.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque

from services.common.kube.backoff import Backoff


class ShutDown(Exception):
    """The queue was shut down; workers should return."""


class WorkQueue:
    def __init__(self, backoff: Backoff | None = None) -> None:
        self._backoff = backoff or Backoff(base=0.2, cap=60.0)
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()  # waiting in _queue, or re-added while processing
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []  # (due, seq, key) heap
        self._seq = itertools.count()
        self._shutdown = False

    # --- producers -------------------------------------------------------------------------------

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutdown:
                return
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key))
            self._cond.notify()

    def add_rate_limited(self, key: str) -> float:
        """Re-adds `key` after its backoff delay; returns the delay."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        delay = self._backoff.delay(n)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    # --- consumers -------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> str | None:
        """The next key, blocking; None on timeout. Raises ShutDown once shut down."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    raise ShutDown()
                self._promote_due_locked()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                now = time.monotonic()
                waits = [d - now for d in ([deadline] if deadline is not None else [])]
                if self._delayed:
                    waits.append(self._delayed[0][0] - now)
                if deadline is not None and now >= deadline:
                    return None
                self._cond.wait(timeout=max(0.0, min(waits)) if waits else None)

    def _promote_due_locked(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._add_locked(key)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutdown:
                self._queue.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys ready to be processed (not counting delayed retries or keys being processed)."""
        with self._cond:
            return len(self._queue)

    def pending(self) -> int:
        """Everything not yet handed out: ready keys plus delayed retries."""
        with self._cond:
            return len(self._queue) + len(self._delayed)
