"""Sampling the WireGuard peers of a cluster's replicas: the proof that never two dataplanes are live."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.testkit.cluster.cluster import EmulatedCluster

__all__ = ["PeerSampler"]


class PeerSampler:
    """Reads the WireGuard peers of every replica of a cluster every 50 ms (wireguard-go's UAPI socket,
    what `wg show` reads) and records (time.time(), peer counts per replica; -1 = unreadable)."""

    def __init__(self, cluster: EmulatedCluster, interval: float = 0.05) -> None:
        self.cluster, self.interval = cluster, interval
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            counts = []
            for r in self.cluster.replicas:
                peers = r.uapi_peers()
                counts.append(-1 if peers is None else len(peers))
            self.samples.append((time.time(), counts))

    def overlaps(self) -> list[tuple[float, list[int]]]:
        return [s for s in self.samples if sum(1 for n in s[1] if n > 0) > 1]

    def first_with_peers(self, index: int, after: float) -> float | None:
        return next((t for t, c in self.samples if t > after and c[index] > 0), None)

    def last_with_peers(self, index: int) -> float | None:
        return max((t for t, c in self.samples if c[index] > 0), default=None)
