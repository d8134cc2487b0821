"""Agent errors, one per gRPC code the API documents (the server maps them 1:1)."""

from __future__ import annotations

from services.common.tunnelspec import SpecError

__all__ = ["NotActive", "NotConfigured", "NotReady", "SpecError", "Transient"]


class NotActive(Exception):
    """A mutation arrived while the agent is standby (FAILED_PRECONDITION)."""


class NotConfigured(Exception):
    """The device has no private key yet (FAILED_PRECONDITION)."""


class NotReady(Exception):
    """NAT mappings for a cluster without a tunnel (FAILED_PRECONDITION)."""


class Transient(Exception):
    """A kernel, wireguard-go or DNS failure worth retrying (UNAVAILABLE)."""
