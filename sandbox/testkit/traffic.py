"""Traffic between emulated pods: a ping that succeeds or not, and a timestamped ping running in the
background (`Pinger`) whose replies say how much was lost and for how long traffic stopped."""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from sandbox.testkit.hosts import Node, Pod

__all__ = ["PingSummary", "Pinger", "parse_ping", "ping_ok"]


def ping_ok(pod: Pod | Node, target: str, count: int = 1, wait: float = 1.0) -> bool:
    """True when `count` pings (0.2 s apart, each waiting `wait` s for its reply) all succeed."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", f"{wait:g}", target]
    return pod.run(*argv, check=False, timeout=count * (wait + 0.5) + 5).returncode == 0


@dataclass(frozen=True)
class PingSummary:
    sent: int
    received: int
    rtt_avg_ms: float | None
    replies: tuple[tuple[float, int, float], ...] = ()  # (arrival from `ping -D`, icmp_seq, rtt ms)

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def longest_gap_after(self, t: float) -> tuple[float, float]:
        """(start, end) of the longest silence between consecutive replies that ends after `t`
        ((t, t) with no reply after `t`)."""
        times = sorted(r[0] for r in self.replies)
        best = (t, t)
        prev = max((r for r in times if r <= t), default=t)
        for r in (r for r in times if r > t):
            if r - prev > best[1] - best[0]:
                best = (prev, r)
            prev = r
        return best

    def missing(self) -> tuple[int, int]:
        """(missing, expected) replies between the first and the last reply: the loss, without the
        request still in flight when ping was stopped."""
        seqs = {q for _, q, _ in self.replies}
        if not seqs:
            return (self.sent, self.sent)
        expected = max(seqs) - min(seqs) + 1
        return expected - len(seqs), expected

    def lost_between(self, t0: float, t1: float) -> tuple[int, int]:
        """(missing, expected) replies between the first and the last reply that arrived in [t0, t1]."""
        inside = {q for t, q, _ in self.replies if t0 <= t <= t1}
        if not inside:
            return (0, 0)
        expected = max(inside) - min(inside) + 1
        return expected - len(inside), expected

    def delayed(self, over_ms: float) -> list[float]:
        """The round-trip times above `over_ms`: packets that were held somewhere, not lost."""
        return [rtt for _, _, rtt in self.replies if rtt > over_ms]


_PING_TOTALS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/")
_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+) .*time=([\d.]+) ms", re.M)


def parse_ping(text: str) -> PingSummary:
    """The totals, average rtt and (with `-D`) the timestamped replies of iputils ping's output;
    ValueError when there is no summary (for instance "Network is unreachable")."""
    m = _PING_TOTALS.search(text)
    if m is None:
        raise ValueError(f"no ping summary in: {text[-300:]!r}")
    rtt = _PING_RTT.search(text)
    replies = tuple((float(t), int(q), float(ms)) for t, q, ms in _PING_REPLY.findall(text))
    return PingSummary(int(m.group(1)), int(m.group(2)), float(rtt.group(1)) if rtt else None, replies)


class Pinger:
    """`ping -D` from a pod every `interval` seconds for the duration of a with-block; `.result` (a
    PingSummary with wall-clock reply times) afterwards. The output goes to an unnamed temporary
    file, so a long run never blocks on a full pipe and nothing is left behind."""

    def __init__(self, pod: Pod, target: str, interval: float = 0.05) -> None:
        self.pod, self.target, self.interval = pod, target, interval
        self.proc: subprocess.Popen[Any] | None = None
        self.result: PingSummary | None = None
        self._out: IO[bytes] | None = None

    def __enter__(self) -> Pinger:
        self._out = tempfile.TemporaryFile()
        self.proc = self.pod.popen(["ping", "-n", "-D", "-i", f"{self.interval:g}", "-W", "1", self.target],
                                   stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None and self._out is not None
        self.proc.send_signal(signal.SIGINT)  # ping prints its summary
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._out.seek(0)
        text = self._out.read().decode(errors="replace")
        self._out.close()
        self.result = parse_ping(text)
