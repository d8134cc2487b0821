"""Placing the WireGuard link: born in the host namespace (where its UDP socket stays bound), moved
into the gateway netns, then up with its MTU and the tunnel address. Shared by both backends."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pyroute2.iproute import IPRoute

from services.netagent.config import AgentConfig
from services.netagent.kernel.netns import host_iproute, kernel_errors, netns_exists, netns_iproute

__all__ = ["Location", "delete_link", "find_link", "place_link"]

IFF_UP = 0x1
IpFactory = Callable[[], IPRoute]


class Location:
    HOST = "host"
    NETNS = "netns"


def link_kind(msg: Any) -> str | None:
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
            found = g.link("dump", ifname=cfg.wg_device)
            if found:
                return Location.NETNS, link_kind(found[0])
    with (host or host_iproute)() as h:
        found = h.link("dump", ifname=cfg.wg_device)
        if found:
            return Location.HOST, link_kind(found[0])
    return None, None


def prepare_in_host(h: IPRoute, cfg: AgentConfig, mtu: int) -> None:
    """MTU and up while still in the host (wireguard-go only sees link events there), then the move."""
    (idx,) = h.link_lookup(ifname=cfg.wg_device)
    with kernel_errors(f"{cfg.wg_device}: mtu/up in host"):
        h.link("set", index=idx, mtu=mtu, state="up")
    with kernel_errors(f"{cfg.wg_device}: move into {cfg.netns_name}"):
        h.link("set", index=idx, net_ns_fd=cfg.netns_name)


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
        (msg,) = g.link("dump", ifname=cfg.wg_device)
        idx = msg["index"]
        with kernel_errors(f"{cfg.wg_device}: mtu/up"):
            if msg.get_attr("IFLA_MTU") != mtu:
                g.link("set", index=idx, mtu=mtu)
                changed = True
            if not msg["flags"] & IFF_UP:
                g.link("set", index=idx, state="up")
                changed = True
        have = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in g.addr("dump", index=idx, family=socket.AF_INET)
        }
        if (str(cfg.tunnel_ip), 32) not in have:
            with kernel_errors(f"{cfg.wg_device}: address {cfg.tunnel_ip}/32"):
                g.addr("add", index=idx, address=str(cfg.tunnel_ip), prefixlen=32)
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
            for idx in ipr.link_lookup(ifname=cfg.wg_device):
                with kernel_errors(f"delete {cfg.wg_device}"):
                    ipr.link("del", index=idx)
                deleted = True
    return deleted
