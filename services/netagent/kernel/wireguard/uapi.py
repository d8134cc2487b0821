"""wireguard-go's cross-platform userspace API (https://www.wireguard.com/xplatform/): encoding and
parsing as pure functions, and a client speaking it over the daemon's Unix socket.

A request is `get=1` or `set=1` followed by `key=value` lines and an empty line; the reply ends with
`errno=N` and an empty line. Keys are hex. The private key read by `get` is turned into the public
key at once and never kept.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network

from services.common.keys import b64_to_hex, hex_to_b64, public_key_of
from services.netagent.kernel.wireguard.model import DeviceError, PeerConfig, PeerState

__all__ = [
    "DeviceInfo",
    "UapiClient",
    "UapiError",
    "encode_device_set",
    "encode_peer_remove",
    "encode_peer_set",
    "encode_remove_all_peers",
    "parse_get",
]

MAX_REPLY = 16 << 20  # a get with 1000 peers is well under 1 MiB


class UapiError(DeviceError):
    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"wireguard-go {what}: errno={code}")
        self.code = code


@dataclass(frozen=True)
class DeviceInfo:
    public_key: str | None  # base64, derived from the private key
    listen_port: int
    peers: tuple[PeerState, ...]


# ---- requests (pure) ----------------------------------------------------------------------------------


def encode_device_set(private_key_b64: str | None, listen_port: int | None) -> str:
    lines = ["set=1"]
    if private_key_b64 is not None:
        lines.append(f"private_key={b64_to_hex(private_key_b64)}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    return "\n".join(lines) + "\n\n"


def _peer_lines(peer: PeerConfig) -> list[str]:
    lines = [
        f"public_key={b64_to_hex(peer.public_key)}",
        "replace_allowed_ips=true",
        f"endpoint={peer.endpoint_ip}:{peer.endpoint_port}",
        f"persistent_keepalive_interval={peer.persistent_keepalive}",
    ]
    return lines + [f"allowed_ip={net}" for net in peer.allowed_ips]


def encode_peer_set(peer: PeerConfig) -> str:
    return "\n".join(["set=1", *_peer_lines(peer)]) + "\n\n"


def encode_peer_reset(peer: PeerConfig) -> str:
    """Removes the peer and adds it again in one request."""
    return "\n".join(["set=1", f"public_key={b64_to_hex(peer.public_key)}", "remove=true",
                      *_peer_lines(peer)]) + "\n\n"


def encode_peer_remove(public_key_b64: str) -> str:
    return f"set=1\npublic_key={b64_to_hex(public_key_b64)}\nremove=true\n\n"


def encode_remove_all_peers() -> str:
    return "set=1\nreplace_peers=true\n\n"


# ---- replies (pure) -----------------------------------------------------------------------------------


def _split_reply(text: str) -> tuple[list[tuple[str, str]], int]:
    pairs: list[tuple[str, str]] = []
    code = -1
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise DeviceError(f"wireguard-go: malformed reply line {key[:40]!r}")
        if key == "errno":
            code = int(value)
        else:
            pairs.append((key, value))
    if code < 0:
        raise DeviceError("wireguard-go: reply without errno")
    return pairs, code


def check_set_reply(text: str, what: str) -> None:
    _, code = _split_reply(text)
    if code != 0:
        raise UapiError(code, what)


def _endpoint(value: str) -> tuple[IPv4Address | None, int | None]:
    host, _, port = value.rpartition(":")
    try:
        return IPv4Address(host), int(port)
    except ValueError:  # IPv6 endpoints are not ours
        return None, None


def parse_get(text: str) -> DeviceInfo:
    """Parses a `get=1` reply; raises UapiError on a non-zero errno."""
    pairs, code = _split_reply(text)
    if code != 0:
        raise UapiError(code, "get")
    public_key: str | None = None
    listen_port = 0
    peers: list[PeerState] = []
    cur: dict[str, object] | None = None

    def close() -> None:
        if cur is not None:
            sec, nsec = int(str(cur.pop("hs_sec", 0))), int(str(cur.pop("hs_nsec", 0)))
            cur["last_handshake"] = sec + nsec / 1e9 if sec else None
            cur["allowed_ips"] = tuple(cur["allowed_ips"])  # type: ignore[arg-type]
            peers.append(PeerState(**cur))  # type: ignore[arg-type]

    for key, value in pairs:
        if key == "public_key":
            close()
            cur = {"public_key": hex_to_b64(value), "allowed_ips": []}
        elif cur is None:
            if key == "private_key":
                public_key = public_key_of(hex_to_b64(value)) if value.strip("0") else None
            elif key == "listen_port":
                listen_port = int(value)
        elif key == "endpoint":
            cur["endpoint_ip"], cur["endpoint_port"] = _endpoint(value)
        elif key == "allowed_ip":
            net = ip_network(value, strict=False)
            if isinstance(net, IPv4Network):
                cur["allowed_ips"].append(net)  # type: ignore[attr-defined]
        elif key == "persistent_keepalive_interval":
            cur["persistent_keepalive"] = int(value)
        elif key == "last_handshake_time_sec":
            cur["hs_sec"] = value
        elif key == "last_handshake_time_nsec":
            cur["hs_nsec"] = value
        elif key == "rx_bytes":
            cur["rx_bytes"] = int(value)
        elif key == "tx_bytes":
            cur["tx_bytes"] = int(value)
    close()
    return DeviceInfo(public_key=public_key, listen_port=listen_port, peers=tuple(peers))


# ---- the socket ---------------------------------------------------------------------------------------


class UapiClient:
    """One request per connection: simple, and a daemon restart between calls cannot confuse it."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def _exchange(self, request: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise DeviceError(f"wireguard-go socket {self.path} not reachable: {e.strerror}") from e
            s.sendall(request.encode())
            buf = bytearray()
            while not buf.endswith(b"\n\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise DeviceError("wireguard-go: reply too large")
        if not buf.endswith(b"\n\n"):
            raise DeviceError("wireguard-go: connection closed mid-reply")
        return buf.decode()

    def alive(self) -> bool:
        try:
            self.get()
        except (DeviceError, OSError):
            return False
        return True

    def get(self) -> DeviceInfo:
        return parse_get(self._exchange("get=1\n\n"))

    def set(self, request: str, what: str) -> None:
        check_set_reply(self._exchange(request), what)

    def set_many(self, requests: Iterable[tuple[str, str]]) -> None:
        for request, what in requests:
            self.set(request, what)


def is_missing(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOENT, errno.ECONNREFUSED)
