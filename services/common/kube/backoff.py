"""Capped exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """delay(n) = min(cap, base * factor**n), spread by +-jitter (a fraction) so that many retries
    started together do not stay in lockstep."""

    base: float = 0.2
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        d = min(self.cap, self.base * self.factor ** min(max(attempt, 0), 64))
        if self.jitter:
            d *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, min(d, self.cap))
