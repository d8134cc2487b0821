"""Converges the kernel's routes and policy rules to what `services.netagent.plan.routes` computes.

The appliers read the Liqo-owned subset of the kernel's state, diff it against the desired set and
write only the difference, so adopting state left by a previous agent writes nothing and state nobody
claims goes.

Ownership (nothing else is ever read for deletion or written):
- in the gateway netns: IPv4 routes of the main table whose device is the WireGuard device;
- in the host namespace: IPv4 routes of table `cfg.table_id` and the IPv4 rules that look it up.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

from services.common.tunnelspec import TunnelSpec
from services.netagent.config import AgentConfig
from services.netagent.kernel.netlink.codec import Message, NetlinkError
from services.netagent.kernel.netlink.rtnl import RtNetlink, table_of
from services.netagent.kernel.netns import (
    KernelError,
    host_iproute,
    kernel_errors,
    netns_exists,
    netns_iproute,
)
from services.netagent.plan.routes import (
    MAIN_TABLE,
    Route,
    Rule,
    desired_host_routes,
    desired_host_rules,
    desired_netns_routes,
    plan,
)

__all__ = [
    "remove_host_routing",
    "sync_host_routing",
    "sync_netns_routes",
    "update_routing",
]

RTN_UNICAST = 1
RTNH_F_ONLINK = 4
FR_ACT_TO_TBL = 1


# ---- reading the kernel ------------------------------------------------------------------------------


def _names(ipr: RtNetlink) -> dict[int, str]:
    return {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in ipr.links()}


def _route_of(msg: Message, names: dict[int, str]) -> Route:
    """The Route a kernel message describes. Anything we never write (multipath, another type or
    scope) gets a device name no desired route has, so an owned one is deleted, never kept."""
    oif = msg.get_attr("RTA_OIF")
    dst = msg.get_attr("RTA_DST") or "0.0.0.0"
    gw = msg.get_attr("RTA_GATEWAY")
    route = Route(
        table=table_of(msg),
        dst=IPv4Network(f"{dst}/{msg['dst_len']}"),
        dev=names.get(oif, f"?if{oif}") if oif is not None else "?multipath",
        gateway=IPv4Address(gw) if gw else None,
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
    )
    if msg["type"] != RTN_UNICAST or msg["scope"] != route.scope or msg["tos"]:
        return Route(
            route.table,
            route.dst,
            f"?{route.dev}/type{msg['type']}/scope{msg['scope']}",
            route.gateway,
            route.onlink,
        )
    return route


def _read_routes(ipr: RtNetlink, table: int, dev: str | None = None) -> list[tuple[Route, Message]]:
    """The IPv4 routes of `table` (only those through `dev` when given), with their messages."""
    names = _names(ipr)
    out = []
    for msg in ipr.routes():
        if table_of(msg) != table:
            continue
        if dev is not None and names.get(msg.get_attr("RTA_OIF") or -1) != dev:
            continue
        out.append((_route_of(msg, names), msg))
    return out


def _read_rules(ipr: RtNetlink, table: int) -> list[Rule]:
    rules = []
    for msg in ipr.rules():
        if table_of(msg) != table:
            continue
        src, dst = msg.get_attr("FRA_SRC"), msg.get_attr("FRA_DST")
        rules.append(
            Rule(
                priority=msg.get_attr("FRA_PRIORITY") or 0,
                table=table,
                src=IPv4Network(f"{src}/{msg['src_len']}") if src else None,
                dst=IPv4Network(f"{dst}/{msg['dst_len']}") if dst else None,
                iif=msg.get_attr("FRA_IIFNAME"),
                oif=msg.get_attr("FRA_OIFNAME"),
                fwmark=msg.get_attr("FRA_FWMARK"),
            )
        )
    return rules


# ---- writing the kernel ------------------------------------------------------------------------------


def _route_args(route: Route, ifindex: int) -> dict[str, Any]:
    args: dict[str, Any] = {
        "dst": str(route.dst),
        "oif": ifindex,
        "table": route.table,
        "scope": route.scope,
        "proto": 3,  # boot/static, as `ip route add` writes
        "type": RTN_UNICAST,
    }
    if route.gateway is not None:
        args["gateway"] = str(route.gateway)
    if route.onlink:
        args["flags"] = RTNH_F_ONLINK
    return args


def _rule_args(rule: Rule) -> dict[str, Any]:
    args: dict[str, Any] = {
        "table": rule.table,
        "priority": rule.priority,
        "action": FR_ACT_TO_TBL,
    }
    if rule.src is not None:
        args.update(src=str(rule.src.network_address), src_len=rule.src.prefixlen)
    if rule.dst is not None:
        args.update(dst=str(rule.dst.network_address), dst_len=rule.dst.prefixlen)
    if rule.iif:
        args["iifname"] = rule.iif
    if rule.oif:
        args["oifname"] = rule.oif
    if rule.fwmark is not None:
        args["fwmark"] = rule.fwmark
    return args


def _ifindex(ipr: RtNetlink, name: str) -> int:
    found = ipr.link_lookup(name)
    if not found:
        raise FileNotFoundError(f"link {name} does not exist")
    return int(found[0])


def _delete_route_msg(ipr: RtNetlink, route: Route, msg: Message) -> None:
    """Deletes exactly the route `msg` describes (every key the kernel matches on)."""
    args: dict[str, Any] = {
        "dst": f"{msg.get_attr('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}",
        "table": route.table,
        "tos": msg["tos"],
        "type": msg["type"],
        "scope": msg["scope"],
        "proto": msg["proto"],
        "priority": msg.get_attr("RTA_PRIORITY") or 0,
    }
    if msg.get_attr("RTA_OIF") is not None:
        args["oif"] = msg.get_attr("RTA_OIF")
    if msg.get_attr("RTA_GATEWAY") is not None:
        args["gateway"] = msg.get_attr("RTA_GATEWAY")
    try:
        ipr.route("del", **args)
    except NetlinkError as e:
        if e.code != errno.ESRCH:  # gone already (rewritten in place by a replace): fine
            raise KernelError(e.code, f"route del {route}: {os.strerror(e.code)}") from e


def _converge_routes(ipr: RtNetlink, current: Sequence[tuple[Route, Message]], desired: set[Route]) -> bool:
    """Adds/replaces missing routes, then deletes owned routes not desired (add first: no gap)."""
    to_add, _ = plan((r for r, _ in current), desired)
    _write_routes(ipr, to_add, [])
    # `replace` rewrote in place the route with the same (table, dst, tos 0, metric 0): not stale.
    replaced = {(r.table, r.dst) for r in to_add}
    stale = [
        (r, m)
        for r, m in current
        if r not in desired
        and not ((r.table, r.dst) in replaced and not m["tos"] and not m.get_attr("RTA_PRIORITY"))
    ]
    for route, msg in stale:
        _delete_route_msg(ipr, route, msg)
    return bool(to_add or stale)


def sync_netns_routes(cfg: AgentConfig, specs: Iterable[TunnelSpec]) -> bool:
    """Converges the gateway netns's routes through the WireGuard device; True when it wrote."""
    desired = desired_netns_routes(cfg, specs)
    if not netns_exists(cfg.netns_name):
        if desired:
            raise FileNotFoundError(f"netns {cfg.netns_name} does not exist")
        return False
    with netns_iproute(cfg.netns_name) as ipr:
        if not ipr.link_lookup(cfg.wg_device):
            if desired:
                raise FileNotFoundError(f"{cfg.wg_device} does not exist in {cfg.netns_name}")
            return False  # no device, so no route through it either
        current = _read_routes(ipr, MAIN_TABLE, dev=cfg.wg_device)
        return _converge_routes(ipr, current, desired)


def sync_host_routing(cfg: AgentConfig, specs: Iterable[TunnelSpec]) -> bool:
    """Converges table `cfg.table_id` and the rules looking it up; True when it wrote."""
    specs = list(specs)
    want_rules = desired_host_rules(cfg, specs)
    with host_iproute() as ipr:
        changed = _converge_routes(ipr, _read_routes(ipr, cfg.table_id), desired_host_routes(cfg, specs))
        to_add, to_remove = plan(_read_rules(ipr, cfg.table_id), want_rules)
        _write_rules(ipr, to_add, to_remove)
        return changed or bool(to_add or to_remove)


def update_routing(cfg: AgentConfig, before: Iterable[TunnelSpec], after: Iterable[TunnelSpec]) -> bool:
    """Writes only the difference between two desired states, without reading the kernel.

    A full sync dumps every route and rule, so a burst of N tunnels costs N dumps of O(N) entries;
    one tunnel's change is a handful of writes. It trusts that the kernel matched `before` (the
    caller falls back to the full syncs on any error, and its periodic resync repairs drift)."""
    before, after = list(before), list(after)
    ns_add, ns_del = plan(desired_netns_routes(cfg, before), desired_netns_routes(cfg, after))
    host_add, host_del = plan(desired_host_routes(cfg, before), desired_host_routes(cfg, after))
    rule_add, rule_del = plan(desired_host_rules(cfg, before), desired_host_rules(cfg, after))
    if ns_add or ns_del:
        with netns_iproute(cfg.netns_name) as ipr:
            _write_routes(ipr, ns_add, ns_del)
    with host_iproute() as ipr:
        _write_routes(ipr, host_add, host_del)
        _write_rules(ipr, rule_add, rule_del)
    return bool(ns_add or ns_del or host_add or host_del or rule_add or rule_del)


def _write_routes(ipr: RtNetlink, add: Sequence[Route], remove: Sequence[Route]) -> None:
    """Replaces `add` first (no gap), then deletes what `remove` names and `add` did not rewrite."""
    for route in add:
        with kernel_errors(f"route replace {route}"):
            ipr.route("replace", **_route_args(route, _ifindex(ipr, route.dev)))
    rewritten = {(r.table, r.dst) for r in add}
    for route in remove:
        if (route.table, route.dst) in rewritten:
            continue
        with kernel_errors(f"route del {route}"):
            try:
                ipr.route("del", **_route_args(route, _ifindex(ipr, route.dev)))
            except NetlinkError as e:
                if e.code != errno.ESRCH:
                    raise


def _write_rules(ipr: RtNetlink, add: Sequence[Rule], remove: Sequence[Rule]) -> None:
    """Adds then removes rules; one already there (or already gone) is what was wanted."""
    steps: tuple[tuple[Literal["add", "del"], Sequence[Rule], int], ...] = (
        ("add", add, errno.EEXIST), ("del", remove, errno.ENOENT))
    for op, rules, done in steps:
        for rule in rules:
            with kernel_errors(f"rule {op} {rule}"):
                try:
                    ipr.rule(op, **_rule_args(rule))
                except NetlinkError as e:
                    if e.code != done:
                        raise


def remove_host_routing(cfg: AgentConfig) -> bool:
    """Removes every rule looking up `cfg.table_id` and every route in it; True when it wrote."""
    return sync_host_routing(cfg, [])
