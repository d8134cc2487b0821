"""The protected address space (pure): what no tunnel, endpoint or NAT mapping may reach.

docs/security.md, "What stays out of reach". A `Protection` is one immutable value: the ranges
always protected, what the kernel says about the node (its addresses, connected subnets and
main-table routes, learned by `services.netagent.kernel.nodeaddrs`), the cluster's own CIDRs when
configured, and the bounds. Its checks raise `SpecError` (INVALID_ARGUMENT) naming the field, and
are run before anything is touched.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network

from services.common.tunnelspec import SpecError, TunnelSpec
from services.netagent.config import GATEWAY_VETH_IP, HOST_VETH_IP, TUNNEL_IP, AgentConfig

__all__ = [
    "ALWAYS_PROTECTED",
    "DEFAULT_MIN_REMOTE_PREFIX",
    "MIN_UNPRIVILEGED_PORT",
    "NodeAddresses",
    "Protection",
    "base_protection",
]

# Never a remote CIDR: "this network", loopback, link-local (every Liqo-owned next hop and the
# probe address live there, and the metadata service), multicast, reserved and broadcast.
ALWAYS_PROTECTED: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (IPv4Network("127.0.0.0/8"), "loopback (127.0.0.0/8)"),
    (IPv4Network("169.254.0.0/16"), "link-local (169.254.0.0/16: Liqo's next hops, the probe, metadata)"),
    (IPv4Network("224.0.0.0/4"), "multicast (224.0.0.0/4)"),
    (IPv4Network("240.0.0.0/4"), "reserved and broadcast (240.0.0.0/4)"),
)
DEFAULT_MIN_REMOTE_PREFIX = 8
MIN_UNPRIVILEGED_PORT = 1024
_LINK_LOCAL = IPv4Network("169.254.0.0/16")
_THIS_NETWORK = IPv4Network("0.0.0.0/8")


@dataclass(frozen=True)
class NodeAddresses:
    """What the host network namespace holds, Liqo's own links and table left out."""

    addresses: frozenset[IPv4Address] = frozenset()
    subnets: frozenset[IPv4Network] = frozenset()  # connected (an address's prefix)
    routes: frozenset[IPv4Network] = frozenset()  # main-table destinations, default routes left out


@dataclass(frozen=True)
class Protection:
    """Everything the checks need; `kernel.nodeaddrs` keeps `node` current."""

    node: NodeAddresses = field(default_factory=NodeAddresses)
    pod_cidr: IPv4Network | None = None
    external_cidr: IPv4Network | None = None
    service_cidr: IPv4Network | None = None
    min_remote_prefix: int = DEFAULT_MIN_REMOTE_PREFIX
    allow_privileged_ports: bool = False
    tunnel_ip: IPv4Address = TUNNEL_IP
    next_hops: tuple[IPv4Address, ...] = (GATEWAY_VETH_IP, HOST_VETH_IP)

    @cached_property
    def protected(self) -> tuple[tuple[IPv4Network, str], ...]:
        """Every range a remote CIDR may not overlap, with why."""
        out = list(ALWAYS_PROTECTED)
        out += [(IPv4Network(f"{ip}/32"), f"Liqo's address {ip}") for ip in (self.tunnel_ip, *self.next_hops)]
        for name, net in (
            ("this cluster's pod CIDR", self.pod_cidr),
            ("this cluster's external CIDR", self.external_cidr),
            ("this cluster's service CIDR", self.service_cidr),
        ):
            if net is not None:
                out.append((net, f"{name} {net}"))
        out += [(IPv4Network(f"{a}/32"), f"the node's address {a}") for a in sorted(self.node.addresses)]
        out += [(n, f"the node's connected subnet {n}") for n in sorted(self.node.subnets)]
        out += [(n, f"the node's route to {n}") for n in sorted(self.node.routes)]
        return tuple(out)

    # ---- EnsureTunnel ----------------------------------------------------------------------------

    def check_tunnel(self, spec: TunnelSpec) -> None:
        """Refuses a tunnel whose local CIDRs differ from the configured ones, or whose effective
        remote CIDRs are too wide or overlap a protected range."""
        for fname, got, want in (
            ("local_pod_cidr", spec.local_pod_cidr, self.pod_cidr),
            ("local_external_cidr", spec.local_external_cidr, self.external_cidr),
        ):
            if want is not None and got != want:
                raise SpecError(f"{fname}: {got} is not this cluster's {want}")
        for fname, net in (
            (_remote_field(spec, "pod"), spec.eff_remote_pod_cidr),
            (_remote_field(spec, "external"), spec.eff_remote_external_cidr),
        ):
            if net.prefixlen < self.min_remote_prefix:
                raise SpecError(
                    f"{fname}: {net} is wider than /{self.min_remote_prefix} (--min-remote-prefix)"
                )
            for prot, why in self.protected:
                if net.overlaps(prot):
                    raise SpecError(f"{fname}: {net} overlaps {why}")

    def check_endpoint(self, ip: IPv4Address, field_name: str = "endpoint") -> None:
        """Refuses an endpoint (literal or resolved) that cannot be a remote gateway."""
        why = _not_unicast(ip)
        if why is None and ip in self.node.addresses:
            why = "one of the node's own addresses"
        if why is None:
            why = self._subnet_edge(ip)
        if why is not None:
            raise SpecError(f"{field_name}: {ip} is {why}, not a remote gateway")

    def _subnet_edge(self, ip: IPv4Address) -> str | None:
        """Why `ip` is the network or broadcast address of a node subnet, or None. wireguard-go's
        socket may broadcast (Go sets SO_BROADCAST), so such an endpoint would spray handshakes over
        the node's LAN. /31 and /32 have neither address (RFC 3021)."""
        for net in sorted(self.node.subnets):
            if net.prefixlen > 30 or ip not in net:
                continue
            if ip == net.broadcast_address:
                return f"the broadcast address of the node's subnet {net}"
            if ip == net.network_address:
                return f"the network address of the node's subnet {net}"
        return None

    def check_listen_port(self, port: int) -> None:
        if 0 < port < MIN_UNPRIVILEGED_PORT and not self.allow_privileged_ports:
            raise SpecError(
                f"listen_port: {port} is a privileged port (below {MIN_UNPRIVILEGED_PORT});"
                " the netagent refuses it unless started with --allow-privileged-ports"
            )

    # ---- SetNatMappings --------------------------------------------------------------------------

    def check_nat_target(
        self, ip: IPv4Address, tunnels: Iterable[TunnelSpec] = (), *, cluster_id: str = "",
        field_name: str = "mappings",
    ) -> None:
        """Refuses a DNAT target (a mapping's key) that is not a workload of this cluster."""
        self.check_nat_targets([int(ip)], tunnels, cluster_id=cluster_id, field_name=field_name)

    def check_nat_targets(
        self, targets: Iterable[int], tunnels: Iterable[TunnelSpec] = (), *, cluster_id: str = "",
        field_name: str = "mappings",
    ) -> None:
        """`check_nat_target` for many targets (integers) at once: sorted once, then one bisection per
        forbidden range, so a 10 000-entry map costs about a millisecond."""
        ranges = self._nat_forbidden(tunnels, cluster_id)
        ordered = sorted(targets)
        for lo, hi, why in ranges:
            i = bisect.bisect_left(ordered, lo)
            if i < len(ordered) and ordered[i] <= hi:
                ip = IPv4Address(ordered[i])
                raise SpecError(f"{field_name}[{str(ip)!r}]: DNAT to {ip} refused: it is {why}")

    def _nat_forbidden(self, tunnels: Iterable[TunnelSpec], cluster_id: str) -> list[tuple[int, int, str]]:
        def span(net: IPv4Network) -> tuple[int, int]:
            return int(net.network_address), int(net.broadcast_address)

        out = [
            (*span(_THIS_NETWORK), "in 'this network' (0.0.0.0/8)"),
            (*span(IPv4Network("127.0.0.0/8")), "loopback"),
            (*span(_LINK_LOCAL), "link-local (Liqo's next hops, the probe, the metadata service)"),
            (*span(IPv4Network("224.0.0.0/4")), "multicast"),
            (*span(IPv4Network("240.0.0.0/4")), "reserved or broadcast"),
        ]
        out += [(int(ip), int(ip), f"Liqo's probe/tunnel address {ip}") for ip in (self.tunnel_ip,)]
        out += [(int(a), int(a), "one of the gateway node's own addresses") for a in self.node.addresses]
        for spec in tunnels:
            if spec.cluster_id == cluster_id:
                continue
            why = f"of tunnel {spec.cluster_id!r}"
            out += [(*span(net), f"in remote CIDR {net} {why}") for net in spec.allowed_ips]
        return out


def base_protection(cfg: AgentConfig) -> Protection:
    """What the configuration protects, before anything is learned about the node."""
    if not 1 <= cfg.min_remote_prefix <= 32:
        raise ValueError(f"min_remote_prefix: {cfg.min_remote_prefix} not in 1..32")
    return Protection(
        pod_cidr=cfg.pod_cidr,
        external_cidr=cfg.external_cidr,
        service_cidr=cfg.service_cidr,
        min_remote_prefix=cfg.min_remote_prefix,
        allow_privileged_ports=cfg.allow_privileged_ports,
        tunnel_ip=cfg.tunnel_ip,
        next_hops=(cfg.gateway_veth_ip, cfg.host_veth_ip),
    )


def _remote_field(spec: TunnelSpec, which: str) -> str:
    """The request field an effective remote CIDR comes from."""
    nat = spec.remote_nat_pod_cidr if which == "pod" else spec.remote_nat_external_cidr
    return f"remote_nat_{which}_cidr" if nat is not None else f"remote_{which}_cidr"


def _not_unicast(ip: IPv4Address) -> str | None:
    """Why `ip` cannot be a remote host's unicast address, or None."""
    if ip in _THIS_NETWORK:
        return "unspecified ('this network', 0.0.0.0/8)"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip == IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if ip.is_reserved:
        return "reserved (240.0.0.0/4)"
    return None


def protection_summary(p: Protection) -> Mapping[str, object]:
    """For logs: what is protected right now."""
    return {
        "addresses": sorted(map(str, p.node.addresses)),
        "subnets": sorted(map(str, p.node.subnets)),
        "routes": sorted(map(str, p.node.routes)),
        "pod_cidr": str(p.pod_cidr or ""),
        "external_cidr": str(p.external_cidr or ""),
        "service_cidr": str(p.service_cidr or ""),
    }
