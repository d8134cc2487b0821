"""Traffic between emulated pods: a ping that succeeds or not, a ping running in the background, and
its loss."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator

from sandbox.testkit.hosts import Pod

__all__ = ["background_ping", "ping_loss", "ping_ok"]


def ping_ok(pod: Pod, target: str, count: int = 1, wait: float = 1.0) -> bool:
    """True when `count` pings (0.2 s apart, each waiting `wait` s for its reply) all succeed."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", f"{wait:g}", target]
    return pod.run(*argv, check=False, timeout=count * (wait + 0.5) + 5).returncode == 0


@contextlib.contextmanager
def background_ping(pod: Pod, target: str, interval: float = 0.05) -> Iterator[subprocess.Popen[str]]:
    """A ping running while the body executes; read its summary with `ping_loss` after the block."""
    proc: subprocess.Popen[str] = pod.popen(
        ["ping", "-n", "-i", str(interval), "-W", "1", target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)  # ping prints its summary


def ping_loss(proc: subprocess.Popen[str]) -> tuple[int, int]:
    """(transmitted, received) from a finished ping's summary."""
    out, _ = proc.communicate(timeout=10)
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(f"no ping summary in:\n{out}")
