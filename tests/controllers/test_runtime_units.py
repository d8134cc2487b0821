"""Pure parts of the controller runtime: work queue semantics, backoff, merge-patch diffs."""

from __future__ import annotations

import threading
import time

import pytest

from services.common.kube import Backoff, WorkQueue, merge_patch_diff
from services.common.kube.workqueue import ShutDown


def test_queue_deduplicates_waiting_keys() -> None:
    q = WorkQueue()
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(0.1) == "a"
    assert q.get(0.1) == "b"
    assert q.get(0.05) is None


def test_key_readded_while_processing_is_not_handed_out_twice() -> None:
    q = WorkQueue()
    q.add("a")
    assert q.get(0.1) == "a"
    q.add("a")  # a change arrives while a worker holds "a"
    assert q.get(0.05) is None  # no second worker gets it concurrently
    q.done("a")
    assert q.get(0.1) == "a"  # but the change is not lost
    q.done("a")
    assert q.get(0.05) is None


def test_rate_limited_retries_grow_and_forget_resets() -> None:
    q = WorkQueue(Backoff(base=0.01, cap=0.08, jitter=0))
    delays = [q.add_rate_limited("k") for _ in range(6)]
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
    q.forget("k")
    assert q.add_rate_limited("k") == 0.01


def test_add_after_delivers_no_earlier_than_due() -> None:
    q = WorkQueue()
    t0 = time.monotonic()
    q.add_after("x", 0.15)
    assert q.get(0.05) is None
    assert q.get(1.0) == "x"
    assert time.monotonic() - t0 >= 0.15


def test_shutdown_wakes_blocked_getters() -> None:
    q = WorkQueue()
    raised = threading.Event()

    def getter() -> None:
        try:
            q.get()
        except ShutDown:
            raised.set()

    t = threading.Thread(target=getter)
    t.start()
    time.sleep(0.05)
    q.shutdown()
    t.join(2)
    assert raised.is_set()


def test_backoff_is_capped_and_jittered_within_bounds() -> None:
    b = Backoff(base=1, cap=10, jitter=0.1)
    for n in range(100):
        d = b.delay(n)
        assert 0.9 * min(10, 2**n) <= d <= 10


@pytest.mark.parametrize(
    ("current", "desired", "patch"),
    [
        ({}, {"a": 1}, {"a": 1}),
        ({"a": 1}, {"a": 1}, None),
        ({"a": 1, "b": 2}, {"a": 1}, None),  # keys not named are left alone
        ({"c": {"x": 1, "y": 2}}, {"c": {"x": 1, "y": 3}}, {"c": {"y": 3}}),
        ({"c": {"x": 1}}, {"c": {"x": 1}}, None),
        ({"a": 1}, {"a": None}, {"a": None}),  # None deletes
        ({}, {"a": None}, None),  # deleting an absent key is no change
        ({"l": [1, 2]}, {"l": [1, 2, 3]}, {"l": [1, 2, 3]}),  # lists are replaced whole
        ({"c": "str"}, {"c": {"x": 1}}, {"c": {"x": 1}}),
    ],
)
def test_merge_patch_diff(current: dict[str, object], desired: dict[str, object], patch: object) -> None:
    assert merge_patch_diff(current, desired) == patch
