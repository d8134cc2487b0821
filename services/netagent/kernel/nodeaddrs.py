"""What the node's own traffic needs, learned from the kernel and kept current: the host network
namespace's IPv4 addresses, connected subnets and main-table routes (default routes, Liqo's links and
Liqo's table left out), as the `node` part of the current `plan.protect.Protection`.

Read at start and again after every netlink change: a netlink socket joined to the link, IPv4
address and IPv4 route multicast groups wakes a daemon thread, which re-reads everything with one
full dump each (a dump, not the event itself: events can be lost when the socket buffer overflows,
a dump cannot). Everything happens in the calling process's network namespace: nothing forks.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import select
import socket
import threading
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network

from services.netagent.kernel.netlink.rtnl import NETLINK_ROUTE, RTMGRP_LINK, table_of
from services.netagent.kernel.netns import host_iproute, kernel_errors
from services.netagent.plan.protect import NodeAddresses, Protection

__all__ = ["NodeAddrs", "read_node_addresses"]

log = logging.getLogger(__name__)

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
MAIN_TABLE = 254
LIQO_LINK_PREFIX = "liqo."
# A burst of changes (an interface coming up with its addresses and routes) is read once.
SETTLE_SECONDS = 0.05


def read_node_addresses(excluded_links: Iterable[str] = (), excluded_prefix: str = LIQO_LINK_PREFIX
                        ) -> NodeAddresses:
    """One read of the current network namespace's addresses, connected subnets and main-table
    routes (not default routes), leaving out links named in `excluded_links` or starting with
    `excluded_prefix`."""
    excluded = set(excluded_links)

    def skip(name: str | None) -> bool:
        return name is not None and (name in excluded or name.startswith(excluded_prefix))

    addresses: set[IPv4Address] = set()
    subnets: set[IPv4Network] = set()
    routes: set[IPv4Network] = set()
    with host_iproute() as ipr, kernel_errors("read the node's addresses and routes"):
        names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in ipr.links()}
        for msg in ipr.addrs():
            if skip(names.get(msg["index"])):
                continue
            local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if not local:
                continue
            addresses.add(IPv4Address(local))
            if msg["prefixlen"] > 0:
                subnets.add(IPv4Network(f"{local}/{msg['prefixlen']}", strict=False))
        for msg in ipr.routes():
            if table_of(msg) != MAIN_TABLE or msg["dst_len"] == 0:
                continue
            oif = msg.get_attr("RTA_OIF")
            if oif is not None and skip(names.get(oif)):
                continue
            dst = msg.get_attr("RTA_DST") or "0.0.0.0"
            routes.add(IPv4Network(f"{dst}/{msg['dst_len']}", strict=False))
    return NodeAddresses(frozenset(addresses), frozenset(subnets), frozenset(routes))


class NodeAddrs:
    """The current `Protection`: `base` (configured CIDRs and bounds) with the node's addresses,
    subnets and routes kept current. `start()` reads them once (raising if it cannot) and starts the
    watcher; `protection()` is a consistent snapshot, safe from any thread."""

    def __init__(self, base: Protection, excluded_links: Iterable[str] = (),
                 on_change: Callable[[Protection], None] | None = None) -> None:
        self._base = base
        self._excluded = tuple(excluded_links)
        self._on_change = on_change
        self._current = base  # replaced whole, never mutated: reading it needs no lock
        self._lock = threading.Lock()  # serializes refreshes
        self._stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.refreshes = 0

    def protection(self) -> Protection:
        return self._current

    def refresh(self) -> Protection:
        """Re-reads the kernel now; returns the new snapshot."""
        with self._lock:
            node = read_node_addresses(self._excluded)
            self.refreshes += 1
            if node != self._current.node:
                self._current = dataclasses.replace(self._base, node=node)
                log.info(
                    "node addresses learned",
                    extra={"addresses": sorted(map(str, node.addresses)),
                           "subnets": sorted(map(str, node.subnets)),
                           "routes": sorted(map(str, node.routes))},
                )
                if self._on_change is not None:
                    self._on_change(self._current)
            return self._current

    def start(self) -> None:
        if self._thread is not None:
            return
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.refresh()  # after joining the groups: no change can fall between the read and the watch
        self._thread = threading.Thread(target=self._watch, name="node-addresses", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _watch(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            try:
                if not select.select([sock], [], [], 0.5)[0]:
                    continue
                self._drain(sock)
                self._stopping.wait(SETTLE_SECONDS)
                self._drain(sock)
                self.refresh()
            except Exception as e:  # keep watching: the previous snapshot stays in force meanwhile
                log.warning("cannot re-read the node's addresses", extra={"error": str(e)})
                self._stopping.wait(1.0)

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        """Discards queued notifications: only "something changed" matters, the dump says what."""
        while True:
            try:
                sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # overflowed: fine, a full read follows
                    continue
                raise
