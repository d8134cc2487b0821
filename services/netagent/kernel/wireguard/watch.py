"""Link events that mean the WireGuard device went away or came back, as they happen.

When wireguard-go restarts (its container restarted, or someone killed the daemon) its TUN link and
everything on it vanish from the gateway netns (RTM_DELLINK there) and a fresh, unconfigured TUN of
the same name appears in the host namespace (RTM_NEWLINK there). Either event calls `on_event` at
once (from this watcher's thread), so the agent re-programs the device within milliseconds instead of
at its next periodic resync. The agent's own placement of the link also makes events; the resync
they cause finds nothing to do.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
from collections.abc import Callable

from services.netagent.kernel.netlink.codec import split_messages
from services.netagent.kernel.netlink.rtnl import (
    NETLINK_ROUTE,
    RTM_DELLINK,
    RTM_NEWLINK,
    RTMGRP_LINK,
    decode_link,
)
from services.netagent.kernel.netns import netns_socket

__all__ = ["LinkWatcher", "link_events"]

log = logging.getLogger(__name__)


def link_events(data: bytes) -> list[tuple[int, str]]:
    """(message type, link name) of the RTM_NEWLINK/RTM_DELLINK messages in a netlink datagram."""
    out: list[tuple[int, str]] = []
    for raw in split_messages(data):
        if raw.kind in (RTM_NEWLINK, RTM_DELLINK):
            name = decode_link(raw).get_attr("IFLA_IFNAME")
            if name:
                out.append((raw.kind, str(name)))
    return out


def _link_socket(netns: str | None) -> socket.socket:
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    else:
        sock = netns_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.bind((0, RTMGRP_LINK))
    except OSError:
        sock.close()
        raise
    return sock


class LinkWatcher:
    """Calls `on_event(reason)` when `device` appears in the host namespace (RTM_NEWLINK) or vanishes
    from `netns` (RTM_DELLINK). `start()` joins the groups (the netns must exist); `stop()` ends it."""

    def __init__(self, device: str, netns: str, on_event: Callable[[str], None]) -> None:
        self.device = device
        self.netns = netns
        self.on_event = on_event
        self._stopping = threading.Event()
        self._socks: dict[socket.socket, str] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        host = _link_socket(None)
        try:
            gw = _link_socket(self.netns)
        except BaseException:
            host.close()
            raise
        self._socks = {host: "host", gw: "netns"}
        self._thread = threading.Thread(target=self._watch, name="device-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for sock in self._socks:
            sock.close()
        self._socks = {}

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select(list(self._socks), [], [], 0.5)
                for sock in ready:
                    reason = self._read(sock, self._socks[sock])
                    if reason:
                        self.on_event(reason)
            except Exception as e:  # keep watching; the periodic resync is the safety net
                log.warning("device watch failed", extra={"error": str(e)})
                self._stopping.wait(0.5)

    def _read(self, sock: socket.socket, where: str) -> str:
        reason = ""
        while True:
            try:
                data, (port, _) = sock.recvfrom(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return reason
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # overflowed: events were lost, so look anyway
                    reason = reason or f"link events lost in the {where} namespace"
                    continue
                raise
            if port != 0:  # not the kernel: another privileged process writing to this socket
                continue
            for kind, name in link_events(data):
                if name != self.device:
                    continue
                if where == "host" and kind == RTM_NEWLINK:
                    reason = reason or f"{name} appeared in the host namespace"
                elif where == "netns" and kind == RTM_DELLINK:
                    reason = reason or f"{name} vanished from {self.netns}"
