"""Remote gateway endpoints: IPv4 literals or DNS names, resolved here (I/O); which answer to keep
is `services.netagent.plan.resolver.choose_endpoint`."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

from services.netagent.errors import Transient
from services.netagent.plan.resolver import choose_endpoint, endpoint_literal

__all__ = ["resolve_endpoint"]


def resolve_endpoint(endpoint: str, current: IPv4Address | None) -> IPv4Address:
    """IPv4 literal as is; a DNS name resolved, keeping `current` while it is still in the answer set."""
    literal = endpoint_literal(endpoint)
    if literal is not None:
        return literal
    try:
        infos = socket.getaddrinfo(endpoint, None, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise Transient(f"endpoint {endpoint!r} does not resolve: {e}") from e
    return choose_endpoint(endpoint, [IPv4Address(info[4][0]) for info in infos], current)
