"""The gateway's named network namespace: create or adopt, open netlink in it, run commands in it.

Named namespaces live as bind mounts under /run/netns of the current mount
namespace. Unlike Liqo, which deleted and recreated `liqo-netns` at every start, an existing namespace
is adopted: recreating it would cut every tunnel while the agent restarts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import socket
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from services.common.netns import run_in, socket_in
from services.netagent.kernel.netlink.codec import NetlinkError
from services.netagent.kernel.netlink.rtnl import NETLINK_ROUTE, RtNetlink

__all__ = [
    "NETNS_DIR",
    "KernelError",
    "delete_netns",
    "ensure_netns",
    "host_iproute",
    "kernel_errors",
    "netns_exists",
    "netns_fd",
    "netns_iproute",
    "netns_path",
    "netns_socket",
    "run_in_netns",
]

NETNS_DIR = "/var/run/netns"
_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type
_CLONE_NEWNET = 0x40000000
# What `ip netns` accepts: no slashes, not "." or "..", a sane length.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # matched whole (fullmatch)


class KernelError(OSError):
    """A netlink request failed; an OSError so callers treat it like any other kernel failure."""


@contextlib.contextmanager
def kernel_errors(what: str) -> Iterator[None]:
    """Re-raises a refused netlink request as KernelError naming what was being done."""
    try:
        yield
    except NetlinkError as e:
        raise KernelError(e.code, f"{what}: {os.strerror(e.code) if e.code else e}") from e


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"netns name {name!r}: 1..63 characters of [A-Za-z0-9._-]")
    return name


def netns_path(name: str) -> str:
    """The file naming the netns: what setns() and `nsenter --net=` take. The one place the
    namespace directory is joined to a name (which is checked here)."""
    return os.path.join(NETNS_DIR, check_name(name))


@contextlib.contextmanager
def netns_fd(name: str) -> Iterator[int]:
    """A descriptor of the named netns, for the kernel calls that take one (a veth peer born there,
    a link moved there, its netns id); closed on exit."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def netns_exists(name: str) -> bool:
    """True when /run/netns/NAME is a mounted network namespace (not a stale empty file)."""
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except PermissionError:
        # A namespace file is readable by all; this is a leftover mount point (created mode 0) that
        # a netagent without CAP_DAC_OVERRIDE (the chart's capabilities mode) cannot open.
        return False
    try:
        # A leftover mount point (namespace gone) is a plain file: NS_GET_NSTYPE fails on it.
        return bool(fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET)
    except OSError:
        return False
    finally:
        os.close(fd)


def ensure_netns(name: str) -> bool:
    """Creates the named netns unless it exists (adopted as is); returns True when created."""
    if netns_exists(name):
        return False
    path = netns_path(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # stale mount point of a namespace that is gone
    # iproute2 in a child that execs (it mounts the namespace file): never a fork of this threaded
    # process without exec, whose children crash (the drift repair re-creates the netns while serving).
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise KernelError(errno.EIO, f"netns {name}: ip netns add: {r.stderr.strip()}")
    if not netns_exists(name):
        raise KernelError(errno.EIO, f"netns {name}: created but not usable")
    # A fresh namespace has loopback down; the probe and local traffic want it up.
    with netns_iproute(name) as ipr, kernel_errors(f"netns {name}: lo up"):
        (lo,) = ipr.link_lookup("lo")
        ipr.set_link(lo, up=True)
    return True


def delete_netns(name: str) -> bool:
    """Removes the named netns (its links go with it); absent is fine. Returns True when removed."""
    path = netns_path(name)
    if not os.path.exists(path):
        return False
    r = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True, check=False)
    if r.returncode != 0 and os.path.exists(path):
        raise KernelError(errno.EIO, f"netns {name}: ip netns delete: {r.stderr.strip()}")
    return True


def host_iproute() -> RtNetlink:
    """rtnetlink in the current ("host") network namespace."""
    return RtNetlink()


def netns_iproute(name: str) -> RtNetlink:
    """rtnetlink inside the named netns; never creates it, FileNotFoundError when absent."""
    return RtNetlink(netns_socket(name, socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE))


def netns_socket(
    name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM, proto: int = 0
) -> socket.socket:
    """A socket created inside the named netns (a socket stays in the netns it was born in), by a
    short-lived thread that enters it (`services.common.netns.socket_in`), never by forking."""
    if not netns_exists(name):
        raise FileNotFoundError(errno.ENOENT, f"netns {name} does not exist", netns_path(name))
    return socket_in(netns_path(name), family, kind, proto)


def run_in_netns(
    name: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None,
    **kw: Any,
) -> subprocess.CompletedProcess[str]:
    """Runs a command in the named netns (`services.common.netns.run_in`: network namespace only, so
    the wireguard-go sockets under /var/run/wireguard remain visible)."""
    return run_in(netns_path(name), argv, check=check, timeout=timeout, input=input, **kw)


def read_sysctl(name: str, key: str) -> str:
    """Reads a sysctl inside the named netns (/proc/sys/net is per network namespace)."""
    return run_in_netns(name, ["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()


def write_sysctl(name: str, key: str, value: str) -> bool:
    """Writes a sysctl inside the named netns when it differs; returns True when it changed."""
    if read_sysctl(name, key) == value:
        return False
    make_proc_sys_writable()
    run_in_netns(name, ["sysctl", "-qw", f"{key}={value}"])
    return True


# mount(2) flags, and the statvfs flags that carry the same per-mount bits.
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND = 2, 4, 8, 32, 4096
_KEPT_FLAGS = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | 1024 | 2048 | 8192  # + noatime, nodiratime, relatime


def make_proc_sys_writable(path: str = "/proc/sys") -> bool:
    """A container that is not privileged gets /proc/sys as a read-only bind mount, so even with
    CAP_NET_ADMIN the agent could not turn on forwarding in liqo-netns (/proc/sys/net is the opener's
    network namespace). With CAP_SYS_ADMIN (the chart's capabilities mode) that one bind mount is made
    writable again, in the agent's own mount namespace only (the container's); the other per-mount
    flags are kept. Returns True when it remounted; OSError when the remount is refused (for instance
    by an AppArmor profile that denies mount: run the netagent unconfined, as the chart does)."""
    flags = os.statvfs(path).f_flag
    if not flags & os.ST_RDONLY:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    keep = flags & _KEPT_FLAGS
    if libc.mount(None, path.encode(), None, _MS_REMOUNT | _MS_BIND | keep, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{path} is read-only and cannot be remounted read-write "
                           f"({os.strerror(err)}): the netagent needs CAP_SYS_ADMIN and mount allowed", path)
    return True
