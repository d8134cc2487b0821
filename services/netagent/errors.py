"""Agent errors, one per gRPC code the API documents (the server maps them 1:1)."""

from __future__ import annotations

from services.common.tunnelspec import SpecError

__all__ = [
    "NotActive",
    "NotConfigured",
    "NotOwner",
    "NotReady",
    "ResourceExhausted",
    "SpecError",
    "Transient",
]


class NotActive(Exception):
    """A mutation arrived while the agent is standby (FAILED_PRECONDITION)."""


class NotConfigured(Exception):
    """The device has no private key yet (FAILED_PRECONDITION)."""


class NotReady(Exception):
    """NAT mappings for a cluster without a tunnel (FAILED_PRECONDITION)."""


class Transient(Exception):
    """A kernel, wireguard-go or DNS failure worth retrying (UNAVAILABLE)."""


class NotOwner(Exception):
    """The cluster id (or the public key) is claimed by another TunnelEndpoint (FAILED_PRECONDITION).
    The message names the owner: "... is owned by TunnelEndpoint <namespace>/<name>"."""


class ResourceExhausted(Exception):
    """A bound (--max-tunnels, --max-nat-entries) would be exceeded (RESOURCE_EXHAUSTED)."""
