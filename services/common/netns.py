"""Entering a network namespace without forking: a socket born inside it, or a command run in it.

A namespace is named by its file: `/run/netns/NAME` for a named one, `/proc/PID/ns/net` for a
process's. setns() is per thread, so a short-lived thread enters the namespace, creates the socket
and exits; the caller's threads never change namespace. Nothing here forks in-process: the netagent
is a multithreaded gRPC server, and children forked from it (as pyroute2's `netns=` did) crash.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["in_netns", "nsenter_argv", "run_in", "socket_in"]

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def in_netns(ns_file: str, fn: Callable[[], T]) -> T:
    """Calls `fn` on a thread that has entered the network namespace `ns_file`; returns its result
    or raises its exception. Use it only for what keeps its namespace after the thread ends
    (sockets, netlink sockets): anything else `fn` does happens in that namespace too."""
    result: list[T] = []
    error: list[BaseException] = []

    def enter_and_call() -> None:
        try:
            fd = os.open(ns_file, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns_file}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:
            error.append(e)

    worker = threading.Thread(target=enter_and_call, name=f"netns:{ns_file}", daemon=True)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


def socket_in(ns_file: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM,
              proto: int = 0) -> socket.socket:
    """A socket created inside the network namespace `ns_file` (it stays there for its life)."""
    return in_netns(ns_file, lambda: socket.socket(family, kind, proto))


def nsenter_argv(ns_file: str, argv: Sequence[str]) -> list[str]:
    """`argv` run by nsenter in the network namespace `ns_file` only (mounts stay the caller's, so
    wireguard-go's sockets under /var/run/wireguard remain visible)."""
    if not argv:
        raise ValueError("empty command")
    return ["nsenter", f"--net={ns_file}", "--", *argv]


def run_in(ns_file: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30,
           input: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Runs `argv` in the network namespace `ns_file`; CalledProcessError (naming `argv`, not
    nsenter) when it fails and `check` is set."""
    cp = subprocess.run(nsenter_argv(ns_file, argv), capture_output=True, text=True, timeout=timeout,
                        input=input, check=False, **kw)
    if check and cp.returncode != 0:
        raise subprocess.CalledProcessError(cp.returncode, list(argv), cp.stdout, cp.stderr)
    return cp
