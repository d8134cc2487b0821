"""Routes and policy rules for the tunnels, as data (pure): `services.netagent.kernel.routes`
converges the kernel to them.

Desired state is a function of the tunnel specs and the config (`desired_*`); `plan` is the diff
between what the kernel has and what is desired.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

from services.common.tunnelspec import TunnelSpec
from services.netagent.config import AgentConfig

__all__ = [
    "MAIN_TABLE",
    "RT_SCOPE_LINK",
    "RT_SCOPE_UNIVERSE",
    "Route",
    "Rule",
    "desired_host_routes",
    "desired_host_rules",
    "desired_netns_routes",
    "desired_veth_routes",
    "plan",
]

MAIN_TABLE = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253


@dataclass(frozen=True)
class Route:
    """An IPv4 unicast route: `dst [via gateway] dev dev [onlink] table table`."""

    table: int
    dst: IPv4Network
    dev: str
    gateway: IPv4Address | None = None
    onlink: bool = False

    @property
    def scope(self) -> int:
        # What `ip route add` picks: link scope without a gateway, universe with one.
        return RT_SCOPE_LINK if self.gateway is None else RT_SCOPE_UNIVERSE

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{self.dst}{via} dev {self.dev}{' onlink' if self.onlink else ''} table {self.table}"


@dataclass(frozen=True)
class Rule:
    """An IPv4 policy rule `[from src] [to dst] lookup table priority priority`.

    iif/oif/fwmark are read so that an owned rule carrying extra selectors is seen as different
    (and deleted exactly); desired rules never set them."""

    priority: int
    table: int
    src: IPv4Network | None = None
    dst: IPv4Network | None = None
    iif: str | None = None
    oif: str | None = None
    fwmark: int | None = None

    def __str__(self) -> str:
        parts = [f"from {self.src or 'all'}"]
        if self.dst:
            parts.append(f"to {self.dst}")
        parts += [f"iif {self.iif}"] * bool(self.iif) + [f"oif {self.oif}"] * bool(self.oif)
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}")
        return f"{self.priority}: {' '.join(parts)} lookup {self.table}"


def _remote_cidrs(specs: Iterable[TunnelSpec]) -> list[IPv4Network]:
    """R* and X* of every tunnel, deduplicated, in a stable order."""
    seen: dict[IPv4Network, None] = {}
    for spec in specs:
        for net in spec.allowed_ips:
            seen.setdefault(net, None)
    return sorted(seen)


def desired_netns_routes(cfg: AgentConfig, specs: Iterable[TunnelSpec]) -> set[Route]:
    """In the gateway netns: every remote CIDR into the tunnel."""
    return {Route(MAIN_TABLE, net, cfg.wg_device) for net in _remote_cidrs(specs)}


def desired_host_routes(cfg: AgentConfig, specs: Iterable[TunnelSpec]) -> set[Route]:
    """In the host's table: every remote CIDR via the gateway end of the veth."""
    return {
        Route(cfg.table_id, net, cfg.host_veth, gateway=cfg.gateway_veth_ip, onlink=True)
        for net in _remote_cidrs(specs)
    }


def desired_host_rules(cfg: AgentConfig, specs: Iterable[TunnelSpec]) -> set[Rule]:
    """In the host: traffic to the remote clusters looks up the Liqo table, through ONE rule whatever
    the number of tunnels.

    The Liqo table holds exactly the remote CIDRs' routes, and a lookup that finds no route there
    falls through to the next rule: one unconditional lookup selects the same packets as the
    original's `from R`/`to R` pair per remote CIDR. But the kernel evaluates rules one by one for
    every packet the node sends or forwards: with 256 tunnels' 1 024 rules, the node's own UDP send
    rate fell to 8 % (bench/host_rules.py); with one rule it does not depend on the tunnel count."""
    return {Rule(cfg.rule_priority, cfg.table_id)} if _remote_cidrs(specs) else set()


def desired_veth_routes(cfg: AgentConfig) -> tuple[list[Route], list[Route]]:
    """(host routes, netns routes) of the veth: on each side a /32 to the other end's address,
    and in the netns the default route via the host end; all in the main table."""
    host = [Route(MAIN_TABLE, IPv4Network(f"{cfg.gateway_veth_ip}/32"), cfg.host_veth)]
    gw = [
        Route(MAIN_TABLE, IPv4Network(f"{cfg.host_veth_ip}/32"), cfg.gateway_veth),
        Route(MAIN_TABLE, IPv4Network("0.0.0.0/0"), cfg.gateway_veth, gateway=cfg.host_veth_ip),
    ]
    return host, gw


T = TypeVar("T")


def plan(current: Iterable[T], desired: Iterable[T]) -> tuple[list[T], list[T]]:
    """(to_add, to_remove), both sorted so that the writes are deterministic."""
    cur, want = set(current), set(desired)
    return sorted(want - cur, key=str), sorted(cur - want, key=str)
