"""Placing the WireGuard link: born in the host namespace (where its UDP socket stays bound), moved
into the gateway netns, then up with its MTU and the tunnel address. Shared by both backends."""

from __future__ import annotations

from collections.abc import Callable

from services.netagent.config import AgentConfig
from services.netagent.kernel.netlink.codec import Message
from services.netagent.kernel.netlink.rtnl import IFF_UP, RtNetlink
from services.netagent.kernel.netns import (
    host_iproute,
    kernel_errors,
    netns_exists,
    netns_fd,
    netns_iproute,
)

__all__ = ["Location", "delete_link", "find_link", "place_link"]

IpFactory = Callable[[], RtNetlink]


class Location:
    HOST = "host"
    NETNS = "netns"


def link_kind(msg: Message) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def find_link(cfg: AgentConfig, host: IpFactory | None = None,
              gw: IpFactory | None = None) -> tuple[str | None, str | None]:
    """(where, kind) of the device named cfg.wg_device: netns first (normal), then host (a create
    interrupted before the move); (None, None) when absent."""
    if gw is None and netns_exists(cfg.netns_name):
        gw = lambda: netns_iproute(cfg.netns_name)  # noqa: E731
    if gw is not None:
        with gw() as g:
            found = g.link_by_name(cfg.wg_device)
            if found is not None:
                return Location.NETNS, link_kind(found)
    with (host or host_iproute)() as h:
        found = h.link_by_name(cfg.wg_device)
        if found is not None:
            return Location.HOST, link_kind(found)
    return None, None


def prepare_in_host(h: RtNetlink, cfg: AgentConfig, mtu: int) -> None:
    """MTU and up while still in the host (wireguard-go only sees link events there), then the move."""
    (idx,) = h.link_lookup(cfg.wg_device)
    with kernel_errors(f"{cfg.wg_device}: mtu/up in host"):
        h.set_link(idx, mtu=mtu, up=True)
    with netns_fd(cfg.netns_name) as fd, kernel_errors(f"{cfg.wg_device}: move into {cfg.netns_name}"):
        h.set_link(idx, netns_fd=fd)


def place_link(cfg: AgentConfig, mtu: int, host: IpFactory | None = None,
               gw: IpFactory | None = None) -> bool:
    """Converges the device (which must exist) to: in the netns, MTU, up, cfg.tunnel_ip/32.
    True when something was written."""
    changed = False
    gw = gw or (lambda: netns_iproute(cfg.netns_name))
    where, _ = find_link(cfg, host, gw)
    if where is None:
        raise FileNotFoundError(f"{cfg.wg_device} does not exist")
    if where == Location.HOST:
        with (host or host_iproute)() as h:
            prepare_in_host(h, cfg, mtu)
        changed = True
    with gw() as g:
        msg = g.link_by_name(cfg.wg_device)
        if msg is None:
            raise FileNotFoundError(f"{cfg.wg_device} vanished from {cfg.netns_name}")
        idx = msg["index"]
        with kernel_errors(f"{cfg.wg_device}: mtu/up"):
            if msg.get_attr("IFLA_MTU") != mtu:
                g.set_link(idx, mtu=mtu)
                changed = True
            if not msg["flags"] & IFF_UP:
                g.set_link(idx, up=True)
                changed = True
        have = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in g.addrs(idx)
        }
        if (str(cfg.tunnel_ip), 32) not in have:
            with kernel_errors(f"{cfg.wg_device}: address {cfg.tunnel_ip}/32"):
                g.add_addr(idx, str(cfg.tunnel_ip), 32)
            changed = True
    return changed


def delete_link(cfg: AgentConfig, host: IpFactory | None = None, gw: IpFactory | None = None) -> bool:
    """Deletes the device wherever it is; True when one was deleted."""
    deleted = False
    factories: list[IpFactory] = [host or host_iproute]
    if gw is not None or netns_exists(cfg.netns_name):
        factories.insert(0, gw or (lambda: netns_iproute(cfg.netns_name)))
    for factory in factories:
        with factory() as ipr:
            for idx in ipr.link_lookup(cfg.wg_device):
                with kernel_errors(f"delete {cfg.wg_device}"):
                    ipr.del_link(idx)
                deleted = True
    return deleted
