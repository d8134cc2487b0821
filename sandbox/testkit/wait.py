"""The one way tests, benchmarks and the demo wait for something."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(what: str, cond: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, *,
             retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """Calls `cond` until it returns something truthy, and returns that. An exception of a type in
    `retry_on` counts as "not yet" (for instance an API server paused on purpose); any other
    propagates at once. After `timeout` seconds: AssertionError naming `what`, the last value and
    the last retried exception."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    error: BaseException | None = None
    while True:
        try:
            last = cond()
            if last:
                return last
        except retry_on as e:
            error = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} "
                                 f"(last value: {last!r}, last error: {error!r})")
        time.sleep(interval)
