"""Where the CPU went while a benchmark ran: CPU time of the processes living in a set of emulated
hosts (by their mount namespace, which a node's pods and daemons share), split into user and system
time per program, plus the machine's softirq and idle time from /proc/stat.

Kernel forwarding (veth, bridge, netfilter, routing) mostly runs as softirq work in the context of
the process whose write or send started it, so it shows up as that process's system time, or as
softirq: a path with more kernel hops costs more system and softirq time per packet, while
WireGuard's own work (crypto, in wireguard-go's user time) costs the same per packet on any path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["CHILDREN", "SELF", "CpuUse", "measure_cpu", "namespaces"]

T = TypeVar("T")
HZ = os.sysconf("SC_CLK_TCK")
_KINDS = ("mnt", "net")
SELF, CHILDREN = "(this process)", "(its commands)"
_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")


def namespaces(pids: Iterable[int]) -> set[int]:
    """The mount- and network-namespace inodes of `pids` (the holders of emulated hosts: a node's
    processes share its mount namespace, a pod's its network namespace)."""
    out = set()
    for pid in pids:
        for kind in _KINDS:
            with contextlib.suppress(OSError):
                out.add(os.stat(f"/proc/{pid}/ns/{kind}").st_ino)
    return out


def _program(pid: int, comm: str) -> str:
    """The program's name; for Python, the script or module it runs."""
    if comm not in ("python", "python3", "python3.11"):
        return comm
    with contextlib.suppress(OSError, IndexError):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        arg = args[2] if args[1] == b"-m" else args[1]
        return os.path.basename(arg.decode(errors="replace"))
    return comm


def _inside(pid: int, inodes: set[int]) -> bool:
    return any(os.stat(f"/proc/{pid}/ns/{kind}").st_ino in inodes for kind in _KINDS)


def _processes(inodes: set[int]) -> dict[int, tuple[str, int, int]]:
    """pid -> (program, user ticks, system ticks) for every process in the namespaces `inodes`,
    our own process as SELF, and under the key -1 the children it waited for as CHILDREN (the
    commands it ran, in the hosts or not)."""
    out = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        with contextlib.suppress(OSError, ValueError):
            if pid != me and not _inside(pid, inodes):
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            f = stat[stat.rindex(")") + 2:].split()
            user, system = int(f[11]), int(f[12])
            if pid == me:  # our threads, and apart the children we waited for
                out[-1] = (CHILDREN, int(f[13]), int(f[14]))
                comm = SELF
            out[pid] = (_program(pid, comm), user, system)
    return out


def _machine() -> dict[str, int]:
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:1 + len(_STAT_FIELDS)]
    return dict(zip(_STAT_FIELDS, map(int, first), strict=True))


@dataclass(frozen=True)
class CpuUse:
    """Seconds of CPU: per program (user, system), and the machine's softirq and idle."""

    programs: dict[str, tuple[float, float]]
    softirq: float
    idle: float

    def user(self, program: str) -> float:
        return self.programs.get(program, (0.0, 0.0))[0]

    def system(self, program: str) -> float:
        return self.programs.get(program, (0.0, 0.0))[1]

    def total(self, programs: Iterable[str] | None = None) -> float:
        keys = self.programs if programs is None else programs
        return sum(sum(self.programs.get(k, (0.0, 0.0))) for k in keys)


def measure_cpu(inodes: set[int], fn: Callable[[], T]) -> tuple[T, CpuUse]:
    """fn()'s result and the CPU used meanwhile by the processes in the namespaces `inodes` (a
    process that both started and ended meanwhile is missed unless it was our own child)."""
    p0, m0 = _processes(inodes), _machine()
    result = fn()
    p1, m1 = _processes(inodes), _machine()
    programs: dict[str, tuple[float, float]] = {}
    for pid, (name, user, system) in p1.items():
        _, u0, s0 = p0.get(pid, (name, 0, 0))
        du, ds = (user - u0) / HZ, (system - s0) / HZ
        if du > 0 or ds > 0:
            pu, ps = programs.get(name, (0.0, 0.0))
            programs[name] = (pu + du, ps + ds)
    return result, CpuUse(programs, (m1["softirq"] - m0["softirq"]) / HZ, (m1["idle"] - m0["idle"]) / HZ)
