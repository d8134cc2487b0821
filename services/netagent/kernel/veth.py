"""The veth pair between the host and the gateway netns, with no IP addresses (Liqo's design).

`liqo.host` (host) <-> `liqo.gateway` (netns), ARP off on both; 169.254.100.1/.2 are never assigned:
each side has a /32 link route to the other's next-hop address and a PERMANENT neighbour entry
mapping it to the peer's MAC, and the netns's default route goes via 169.254.100.2. ip_forward is
turned on inside the netns only; no sysctl of the host is touched (rp_filter included).

An existing, correctly paired veth is adopted and only its attributes are corrected: recreating it
would cut the traffic a previous agent left flowing.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from ipaddress import IPv4Address

from services.netagent.config import AgentConfig
from services.netagent.kernel.netlink.codec import Message
from services.netagent.kernel.netlink.rtnl import IFF_NOARP, IFF_UP, RtNetlink
from services.netagent.kernel.netns import (
    KernelError,
    host_iproute,
    kernel_errors,
    netns_exists,
    netns_fd,
    netns_iproute,
    write_sysctl,
)
from services.netagent.kernel.routes import _read_routes, _route_args
from services.netagent.plan.routes import MAIN_TABLE, RT_SCOPE_LINK, Route, desired_veth_routes

__all__ = ["VethInfo", "delete_veth", "ensure_veth", "refresh_neighbours"]

NUD_PERMANENT = 0x80


@dataclass(frozen=True)
class VethInfo:
    host_ifindex: int
    host_mac: str
    gateway_ifindex: int
    gateway_mac: str
    created: bool  # False when an existing pair was adopted


def _kind(msg: Message) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _netns_id(ipr: RtNetlink, name: str) -> int | None:
    """The id under which the host knows the named netns (what IFLA_LINK_NETNSID refers to)."""
    with netns_fd(name) as fd, kernel_errors(f"netns id of {name}"):
        return ipr.get_netnsid(fd)


def _is_pair(host: Message | None, gw: Message | None, nsid: int | None) -> bool:
    """Both ends exist, are veths and point at each other: IFLA_LINK is the peer's ifindex, and the
    host end's peer lives in the netns (indexes alone coincide easily across namespaces)."""
    if host is None or gw is None or _kind(host) != "veth" or _kind(gw) != "veth":
        return False
    return bool(
        host.get_attr("IFLA_LINK") == gw["index"]
        and gw.get_attr("IFLA_LINK") == host["index"]
        and nsid is not None
        and host.get_attr("IFLA_LINK_NETNSID") == nsid
    )


def _fix_link(ipr: RtNetlink, msg: Message, mtu: int) -> bool:
    """MTU, ARP off, up: writes only what differs."""
    changed = False
    idx = msg["index"]
    with kernel_errors(f"link {msg.get_attr('IFLA_IFNAME')}"):
        if msg.get_attr("IFLA_MTU") != mtu:
            ipr.set_link(idx, mtu=mtu)
            changed = True
        flags = msg["flags"]
        if not flags & IFF_NOARP or not flags & IFF_UP:
            ipr.set_link(idx, arp=False, up=True)
            changed = True
    return changed


def _ensure_routes(ipr: RtNetlink, routes: list[Route]) -> bool:
    """Adds the given main-table routes when missing; other routes of the table are left alone."""
    have = {r for r, _ in _read_routes(ipr, MAIN_TABLE)}
    changed = False
    for route in routes:
        if route in have:
            continue
        (idx,) = ipr.link_lookup(route.dev)
        args = _route_args(route, idx)
        if route.gateway is None:
            args["scope"] = RT_SCOPE_LINK
        with kernel_errors(f"route replace {route}"):
            ipr.route("replace", **args)
        changed = True
    return changed


def _ensure_neighbour(ipr: RtNetlink, ifindex: int, ip: IPv4Address, mac: str) -> bool:
    for msg in ipr.neighbours(ifindex):
        if msg.get_attr("NDA_DST") == str(ip) and msg.get_attr("NDA_LLADDR") == mac \
                and msg["state"] & NUD_PERMANENT:
            return False
    with kernel_errors(f"neighbour {ip} -> {mac}"):
        ipr.replace_neighbour(ifindex, str(ip), mac, NUD_PERMANENT)
    return True


def _create_pair(cfg: AgentConfig, host_ipr: RtNetlink, gw_ipr: RtNetlink) -> None:
    """Creates the pair with the gateway end born inside the netns (no transient link in the host)."""
    for ipr, name in ((host_ipr, cfg.host_veth), (gw_ipr, cfg.gateway_veth)):
        stale = ipr.link_lookup(name)
        if stale:  # a half pair or something else with a Liqo-owned name
            with kernel_errors(f"delete stale {name}"):
                ipr.del_link(stale[0])
    with netns_fd(cfg.netns_name) as fd, kernel_errors(f"create veth {cfg.host_veth}/{cfg.gateway_veth}"):
        host_ipr.add_link(cfg.host_veth, "veth", mtu=cfg.mtu, peer_name=cfg.gateway_veth, peer_netns_fd=fd)


def ensure_veth(cfg: AgentConfig) -> VethInfo:
    """Creates or adopts the pair and converges its links, routes, neighbours and ip_forward."""
    if not netns_exists(cfg.netns_name):
        raise FileNotFoundError(errno.ENOENT, f"netns {cfg.netns_name} does not exist")
    with host_iproute() as h, netns_iproute(cfg.netns_name) as g:
        created = False
        pair = h.link_by_name(cfg.host_veth), g.link_by_name(cfg.gateway_veth)
        if not _is_pair(*pair, _netns_id(h, cfg.netns_name)):
            _create_pair(cfg, h, g)
            created = True
        host, gw = h.link_by_name(cfg.host_veth), g.link_by_name(cfg.gateway_veth)
        if host is None or gw is None or not _is_pair(host, gw, _netns_id(h, cfg.netns_name)):
            raise KernelError(errno.EIO, f"veth {cfg.host_veth}/{cfg.gateway_veth} not paired after creation")
        _fix_link(h, host, cfg.mtu)
        _fix_link(g, gw, cfg.mtu)
        host_routes, gw_routes = desired_veth_routes(cfg)
        _ensure_routes(h, host_routes)
        _ensure_routes(g, gw_routes)
        info = VethInfo(
            host_ifindex=host["index"],
            host_mac=host.get_attr("IFLA_ADDRESS"),
            gateway_ifindex=gw["index"],
            gateway_mac=gw.get_attr("IFLA_ADDRESS"),
            created=created,
        )
        _ensure_neighbour(h, info.host_ifindex, cfg.gateway_veth_ip, info.gateway_mac)
        _ensure_neighbour(g, info.gateway_ifindex, cfg.host_veth_ip, info.host_mac)
    write_sysctl(cfg.netns_name, "net.ipv4.ip_forward", "1")
    return info


def refresh_neighbours(cfg: AgentConfig) -> bool:
    """Re-installs both static neighbours from the current MACs (call when a MAC changed, e.g. by
    udev); True when an entry was rewritten."""
    with host_iproute() as h, netns_iproute(cfg.netns_name) as g:
        host, gw = h.link_by_name(cfg.host_veth), g.link_by_name(cfg.gateway_veth)
        if host is None or gw is None or not _is_pair(host, gw, _netns_id(h, cfg.netns_name)):
            raise FileNotFoundError(errno.ENOENT, f"veth {cfg.host_veth}/{cfg.gateway_veth} is missing")
        a = _ensure_neighbour(h, host["index"], cfg.gateway_veth_ip, gw.get_attr("IFLA_ADDRESS"))
        b = _ensure_neighbour(g, gw["index"], cfg.host_veth_ip, host.get_attr("IFLA_ADDRESS"))
        return a or b


def delete_veth(cfg: AgentConfig) -> bool:
    """Deletes the pair (its routes and neighbours go with it); absent is fine. True when deleted."""
    deleted = False
    with host_iproute() as h:
        for idx in h.link_lookup(cfg.host_veth):
            with kernel_errors(f"delete {cfg.host_veth}"):
                h.del_link(idx)
            deleted = True
    if netns_exists(cfg.netns_name):
        with netns_iproute(cfg.netns_name) as g:
            for idx in g.link_lookup(cfg.gateway_veth):
                with kernel_errors(f"delete {cfg.gateway_veth}"):
                    g.del_link(idx)
                deleted = True
    return deleted
