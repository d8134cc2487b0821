"""Which socket may call which method: the netagent's capability table, as pure data.

The netagent serves one Unix socket per caller role. A controller's container mounts only its own
role's socket directory, so the mount is the capability: the NAT controller cannot call SetRole, the
labeler cannot program tunnels. The operator socket (`--socket`, in the netagent's private
directory) serves every method. Reads, the health service and reflection are served everywhere.
A method a socket does not serve answers PERMISSION_DENIED naming the socket's role.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType

__all__ = ["ALL_METHODS", "ALWAYS_SERVED_SERVICES", "METHODS", "NETAGENT_SERVICE", "READS", "WRITES",
           "SocketRole", "allowed", "split_method"]

NETAGENT_SERVICE = "liqo.netagent.v1.NetAgentService"

# Services every socket serves whole: health checks and reflection (grpcurl's describe).
ALWAYS_SERVED_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class SocketRole(Enum):
    """Who a socket is for; the value is the name used in flags, logs and error messages."""

    LABELER = "labeler"
    TUNNEL = "tunnel"
    NATMAP = "natmap"
    OPERATOR = "operator"  # --socket: every method (grpcurl from inside the netagent container)


# Methods that change nothing. WatchRole is one: every controller follows the role through it
# (services/common/rolegate.py) to run only while its netagent is ACTIVE.
READS = frozenset({"GetInfo", "WatchRole", "ListTunnels", "WatchTunnelStatus"})

# The mutating methods, each owned by exactly one controller role.
WRITES: Mapping[SocketRole, frozenset[str]] = MappingProxyType(
    {
        SocketRole.LABELER: frozenset({"SetRole"}),
        SocketRole.TUNNEL: frozenset({"ConfigureDevice", "EnsureTunnel", "DeleteTunnel"}),
        SocketRole.NATMAP: frozenset({"SetNatMappings", "DeleteNatMappings"}),
    }
)

ALL_METHODS = READS.union(*WRITES.values())

# What each socket serves of NetAgentService.
METHODS: Mapping[SocketRole, frozenset[str]] = MappingProxyType(
    {
        **{role: READS | writes for role, writes in WRITES.items()},
        SocketRole.OPERATOR: ALL_METHODS,
    }
)


def split_method(full_method: str) -> tuple[str, str]:
    """("pkg.Service", "Method") of a gRPC path "/pkg.Service/Method"; ("", "") when malformed."""
    parts = full_method.split("/")
    if len(parts) != 3 or parts[0] != "" or not parts[1] or not parts[2]:
        return "", ""
    return parts[1], parts[2]


def allowed(role: SocketRole, full_method: str) -> bool:
    """Whether a socket for `role` serves the gRPC path `full_method` ("/pkg.Service/Method")."""
    service, method = split_method(full_method)
    if service in ALWAYS_SERVED_SERVICES:
        return True
    return service == NETAGENT_SERVICE and method in METHODS[role]
