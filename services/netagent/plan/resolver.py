"""Remote gateway endpoints: IPv4 literals or DNS names."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

from services.netagent.errors import Transient


def resolve_endpoint(endpoint: str, current: IPv4Address | None) -> IPv4Address:
    """IPv4 literal as is; a DNS name resolved, keeping `current` while it is still in the answer set
    (round-robin DNS must not make the peer endpoint hop on every call)."""
    try:
        return IPv4Address(endpoint)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(endpoint, None, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise Transient(f"endpoint {endpoint!r} does not resolve: {e}") from e
    answers = [IPv4Address(info[4][0]) for info in infos]
    if not answers:
        raise Transient(f"endpoint {endpoint!r} has no IPv4 address")
    return current if current in answers else answers[0]
