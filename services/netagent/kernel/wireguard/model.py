"""Values the WireGuard backends exchange with the agent, and the device protocol they implement."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

__all__ = ["DeviceError", "PeerConfig", "PeerState", "WireGuardDevice"]


class DeviceError(RuntimeError):
    """The device or its daemon cannot be created, reached or configured (worth retrying)."""


@dataclass(frozen=True)
class PeerConfig:
    """What the agent asks for one remote gateway."""

    public_key: str  # base64
    endpoint_ip: IPv4Address
    endpoint_port: int
    allowed_ips: tuple[IPv4Network, ...]
    persistent_keepalive: int = 0  # seconds, 0 = off

    def matches(self, state: PeerState) -> bool:
        """True when the device already has this peer exactly as configured."""
        return (
            state.public_key == self.public_key
            and state.endpoint_ip == self.endpoint_ip
            and state.endpoint_port == self.endpoint_port
            and set(state.allowed_ips) == set(self.allowed_ips)
            and state.persistent_keepalive == self.persistent_keepalive
        )


@dataclass(frozen=True)
class PeerState:
    """A peer as the device reports it."""

    public_key: str  # base64
    endpoint_ip: IPv4Address | None = None
    endpoint_port: int | None = None
    allowed_ips: tuple[IPv4Network, ...] = field(default_factory=tuple)
    persistent_keepalive: int = 0
    last_handshake: float | None = None  # wall clock (epoch seconds); None = never
    rx_bytes: int = 0
    tx_bytes: int = 0

    @property
    def endpoint(self) -> str | None:
        return f"{self.endpoint_ip}:{self.endpoint_port}" if self.endpoint_ip else None


class WireGuardDevice(Protocol):
    """The WireGuard device `cfg.wg_device`, living in `cfg.netns_name` with its UDP socket in the host
    namespace. Every method is idempotent; none returns or logs the private key."""

    @property
    def implementation(self) -> str:
        """"kernel" or "userspace"."""
        ...

    def ensure(self, private_key_b64: str | None, listen_port: int, mtu: int) -> bool:
        """Creates or adopts the device: born in the host namespace, moved into the netns, up, MTU,
        address cfg.tunnel_ip/32, port and (when given) private key programmed. None keeps the key
        the device has. True when something was written."""
        ...

    def set_peer(self, peer: PeerConfig) -> None:
        """Adds or updates a peer; its allowed IPs are replaced, not merged."""
        ...

    def reset_peer(self, peer: PeerConfig) -> None:
        """Removes and re-adds the peer in one request, so that its handshake state starts over (the
        next packet starts a new handshake) and no reader ever sees the peer missing."""
        ...

    def remove_peer(self, public_key: str) -> bool:
        """Removes a peer by its key; True when it was there."""
        ...

    def remove_all_peers(self) -> None: ...

    def peers(self) -> list[PeerState]: ...

    def public_key(self) -> str | None:
        """The device's public key (base64), None while no private key is set or no device exists."""
        ...

    def exists(self) -> bool: ...

    def delete(self) -> bool:
        """Removes the device (and the userspace daemon); True when something was removed."""
        ...
