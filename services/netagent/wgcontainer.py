"""`liqo-netagent wireguard`: the gateway pod's wireguard container.

Resolves the implementation as `serve` does (`resolve_implementation`: an existing device keeps its
kind, "auto" takes the kernel module when available) and then either execs `wireguard-go -f DEVICE`
(userspace: no Python left running, the container's main process is wireguard-go, so a container
restart is a wireguard-go restart and nothing else) or, for the kernel implementation, where there is
no daemon to run, waits idle until SIGTERM or SIGINT and exits 0.

Kept light on imports: a restart of this container is on the traffic's critical path, and for
"userspace" nothing needs netlink.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from services.netagent.config import AgentConfig

__all__ = ["WIREGUARD_GO", "run"]

WIREGUARD_GO = "wireguard-go"


def resolve(cfg: AgentConfig) -> str:
    """"kernel" or "userspace", as `serve` decides it."""
    if cfg.wireguard_implementation == "userspace":
        return "userspace"  # nothing to look at
    from services.netagent.kernel.wireguard import resolve_implementation

    return resolve_implementation(cfg)


def exec_wireguard_go(device: str, binary: str = WIREGUARD_GO) -> NoReturn:
    """Replaces this process with `wireguard-go -f device` (foreground, logs on stderr)."""
    os.execvp(binary, [binary, "-f", device])


def wait_for_signal(stop: threading.Event | None = None, ready: Callable[[], object] | None = None) -> int:
    """Idles until SIGTERM or SIGINT (or `stop` is set); returns 0. `ready()` runs once the
    handlers are in place."""
    done = stop or threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ready is not None:
        ready()
    while not done.wait(3600):
        pass
    return 0


def run(cfg: AgentConfig, *, execute: Callable[[str], object] = exec_wireguard_go,
        idle: Callable[[], int] = wait_for_signal) -> int:
    try:
        impl = resolve(cfg)
    except Exception as e:  # e.g. "kernel" forced without the module: one line, not a traceback
        print(f"liqo-netagent wireguard: {e}", file=sys.stderr)
        return 1
    if impl == "userspace":
        try:
            execute(cfg.wg_device)
        except OSError as e:
            print(f"liqo-netagent wireguard: cannot run {WIREGUARD_GO}: {e.strerror or e}", file=sys.stderr)
            return 1
        return 0  # only reached with a test's `execute`
    print(f"liqo-netagent wireguard: {cfg.wg_device} uses the kernel module: no wireguard-go to run, "
          f"idle until stopped", file=sys.stderr)
    return idle()
