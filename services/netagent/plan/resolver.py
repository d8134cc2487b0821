"""Which address of a remote gateway endpoint to program (pure); the DNS lookup itself is
`services.netagent.kernel.resolver`."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address

from services.netagent.errors import Transient

__all__ = ["choose_endpoint", "endpoint_literal"]


def endpoint_literal(endpoint: str) -> IPv4Address | None:
    """The endpoint as an IPv4 literal, or None when it is a name to resolve."""
    try:
        return IPv4Address(endpoint)
    except ValueError:
        return None


def choose_endpoint(
    endpoint: str, answers: Sequence[IPv4Address], current: IPv4Address | None
) -> IPv4Address:
    """Keeps `current` while it is still in the DNS answer set, else the first answer: round-robin
    DNS must not make the peer endpoint hop on every call. Transient when there is no answer."""
    if not answers:
        raise Transient(f"endpoint {endpoint!r} has no IPv4 address")
    return current if current is not None and current in answers else answers[0]
