"""Netlink messages as bytes and back: headers, fixed structs and attributes (pure, no socket).

Only what the netagent reads and writes is described: a message type's fixed struct, and the
attributes it knows by number, name and type. An attribute not in the table is skipped when decoding
(the kernel adds new ones all the time), and a name not in the table cannot be encoded.
"""

from __future__ import annotations

import base64
import errno
import os
import socket
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "NLA_F_NESTED",
    "Attr",
    "Message",
    "NetlinkError",
    "Schema",
    "Struct",
    "decode_attrs",
    "encode_attrs",
    "encode_message",
    "split_messages",
]

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_HEADER = struct.Struct("=HH")  # nlattr: length, type
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # without the NESTED and NET_BYTEORDER flags
NLMSGERR_ATTR_MSG = 1  # extended ack: the kernel's text for the error
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # flags of an NLMSG_ERROR


class NetlinkError(OSError):
    """The kernel refused a request: errno in `code` (and `errno`), its extended-ack text if any."""

    @property
    def code(self) -> int:
        return int(self.errno or 0)


def _align(n: int) -> int:
    return (n + 3) & ~3


class Struct:
    """A message type's fixed part: field names (None for padding) over a struct format."""

    def __init__(self, fmt: str, names: tuple[str | None, ...]) -> None:
        self._st = struct.Struct("=" + fmt)
        self.names = names
        self.size = self._st.size

    def pack(self, values: Mapping[str, int]) -> bytes:
        return self._st.pack(*(values.get(n, 0) if n else 0 for n in self.names))

    def unpack(self, data: bytes | memoryview) -> dict[str, int]:
        """The fields; a body shorter than the struct reads as zeros past its end."""
        raw = self._st.unpack_from(bytes(data[: self.size]).ljust(self.size, b"\0"))
        return {n: v for n, v in zip(self.names, raw, strict=True) if n}


# An attribute's type: how its payload is read and written.
# "u8".."u64", "s32", "s64": integers (host order); "be16": network order; "str": NUL-terminated;
# "ip": an IPv4/IPv6 address as text; "mac": a hardware address as aa:bb:..; "bytes": as is;
# "b64": a key as base64 text; a Schema: nested attributes; ("array", Schema): a list of nested
# entries, each a Schema; "sockaddr": struct sockaddr_in/in6 as {"addr", "port"};
# "timespec": {"tv_sec", "tv_nsec"}.
Kind = Any


@dataclass(frozen=True)
class Schema:
    """Attributes by number: (name, kind). Names must be unique within a schema."""

    attrs: Mapping[int, tuple[str, Kind]]
    by_name: dict[str, tuple[int, Kind]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, kind in self.attrs.values():
            inner = kind[1] if isinstance(kind, tuple) and kind[0] == "array" else kind
            if not isinstance(inner, Schema) and inner not in _SCALARS:
                raise ValueError(f"{name}: unknown attribute kind {kind!r}")
        object.__setattr__(self, "by_name", {n: (t, k) for t, (n, k) in self.attrs.items()})


_INTS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "s32": "i", "s64": "q", "be16": ">H"}
_SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family (host order), port (network order), address
_SOCKADDR_IN6 = struct.Struct("=H2s4s16s4s")  # family, port, flowinfo, address, scope id
_TIMESPEC = struct.Struct("=qq")
_SCALARS = {*_INTS, "str", "ip", "mac", "b64", "sockaddr", "timespec", "bytes"}


def _decode_value(kind: Kind, data: bytes) -> Any:
    if isinstance(kind, Schema):
        return decode_attrs(kind, data)
    if isinstance(kind, tuple):  # ("array", Schema)
        return [decode_attrs(kind[1], payload) for _, payload in _iter_attrs(data)]
    if kind in _INTS:
        fmt = _INTS[kind]
        return struct.unpack(fmt if fmt.startswith(">") else "=" + fmt, data[: struct.calcsize(fmt)])[0]
    if kind == "str":
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")
    if kind == "ip":
        family = socket.AF_INET if len(data) == 4 else socket.AF_INET6
        return socket.inet_ntop(family, data)
    if kind == "mac":
        return ":".join(f"{b:02x}" for b in data)
    if kind == "sockaddr":
        if len(data) >= _SOCKADDR_IN6.size and struct.unpack_from("=H", data)[0] == socket.AF_INET6:
            _, port, _, addr, _ = _SOCKADDR_IN6.unpack_from(data)
            return {"addr": socket.inet_ntop(socket.AF_INET6, addr), "port": int.from_bytes(port, "big")}
        _, port, addr = _SOCKADDR_IN.unpack_from(data)
        return {"addr": socket.inet_ntop(socket.AF_INET, addr), "port": int.from_bytes(port, "big")}
    if kind == "timespec":
        sec, nsec = _TIMESPEC.unpack_from(data)
        return {"tv_sec": sec, "tv_nsec": nsec}
    if kind == "b64":
        return base64.b64encode(data).decode()
    if kind == "bytes":
        return bytes(data)
    raise ValueError(f"unknown attribute kind {kind!r}")


def _encode_value(kind: Kind, value: Any) -> tuple[bytes, bool]:
    """(payload, nested)."""
    if isinstance(kind, Schema):
        return encode_attrs(kind, value), True
    if isinstance(kind, tuple):
        return b"".join(attr(i, encode_attrs(kind[1], v), nested=True) for i, v in enumerate(value)), True
    if kind in _INTS:
        fmt = _INTS[kind]
        return struct.pack(fmt if fmt.startswith(">") else "=" + fmt, value), False
    if kind == "str":
        return str(value).encode() + b"\0", False
    if kind == "ip":
        text = str(value)
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text), False
    if kind == "mac":
        return bytes(int(x, 16) for x in str(value).split(":")), False
    if kind == "sockaddr":
        addr, port = str(value["addr"]), int(value["port"]).to_bytes(2, "big")
        if ":" in addr:
            return _SOCKADDR_IN6.pack(socket.AF_INET6, port, b"\0" * 4,
                                      socket.inet_pton(socket.AF_INET6, addr), b"\0" * 4), False
        return _SOCKADDR_IN.pack(socket.AF_INET, port, socket.inet_pton(socket.AF_INET, addr)), False
    if kind == "b64":
        return base64.b64decode(str(value), validate=True), False
    if kind == "bytes":
        return bytes(value), False
    raise ValueError(f"attribute kind {kind!r} cannot be encoded")


def attr(number: int, payload: bytes, *, nested: bool = False) -> bytes:
    head = NLA_HEADER.pack(NLA_HEADER.size + len(payload), number | (NLA_F_NESTED if nested else 0))
    return head + payload + b"\0" * (_align(len(payload)) - len(payload))


def _iter_attrs(data: bytes | memoryview) -> Iterator[tuple[int, bytes]]:
    """(type without flags, payload) of each attribute; a truncated one ends the walk."""
    view = memoryview(data)
    off = 0
    while off + NLA_HEADER.size <= len(view):
        length, number = NLA_HEADER.unpack_from(view, off)
        if length < NLA_HEADER.size or off + length > len(view):
            return
        yield number & NLA_TYPE_MASK, bytes(view[off + NLA_HEADER.size: off + length])
        off += _align(length)


Attr = tuple[str, Any]


def encode_attrs(schema: Schema, attrs: Sequence[Attr]) -> bytes:
    out = []
    for name, value in attrs:
        number, kind = schema.by_name[name]
        payload, nested = _encode_value(kind, value)
        out.append(attr(number, payload, nested=nested))
    return b"".join(out)


def decode_attrs(schema: Schema, data: bytes | memoryview) -> Message:
    attrs: list[Attr] = []
    for number, payload in _iter_attrs(data):
        known = schema.attrs.get(number)
        if known is None:
            continue
        try:
            value = _decode_value(known[1], payload)
        except (struct.error, ValueError):  # too short for its kind: malformed, so left out
            continue
        attrs.append((known[0], value))
    return Message({}, attrs)


@dataclass
class Message:
    """A decoded message: its fixed fields (`msg["index"]`) and attributes (`msg.get_attr(name)`);
    `header` holds the nlmsghdr's fields when it came off a socket."""

    fields: dict[str, int]
    attrs: list[Attr]
    header: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.fields[name]

    def get_attr(self, name: str, default: Any = None) -> Any:
        for key, value in self.attrs:
            if key == name:
                return value
        return default

    def get_attrs(self, name: str) -> list[Any]:
        return [value for key, value in self.attrs if key == name]


def encode_message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


@dataclass(frozen=True)
class Raw:
    """One message of a datagram, its body not yet decoded."""

    kind: int
    flags: int
    seq: int
    port: int
    body: bytes


def split_messages(data: bytes | memoryview) -> Iterator[Raw]:
    view = memoryview(data)
    off = 0
    while off + HEADER.size <= len(view):
        length, kind, flags, seq, port = HEADER.unpack_from(view, off)
        if length < HEADER.size or off + length > len(view):
            return
        yield Raw(kind, flags, seq, port, bytes(view[off + HEADER.size: off + length]))
        off += _align(length)


def error_of(raw: Raw) -> NetlinkError | None:
    """The error an NLMSG_ERROR carries (None for an ack): errno and the extended-ack text."""
    if len(raw.body) < 4 + HEADER.size:
        return NetlinkError(errno.EPROTO, "malformed netlink error message")
    (negated,) = struct.unpack_from("=i", raw.body)
    if negated == 0:
        return None
    code = -negated
    text = ""
    # With NETLINK_CAP_ACK the echoed request is only its header; extended-ack attributes follow.
    (echo_len,) = struct.unpack_from("=I", raw.body, 4)
    tail = raw.body[4 + HEADER.size:] if raw.flags & NLM_F_CAPPED else raw.body[4 + _align(echo_len):]
    if raw.flags & NLM_F_ACK_TLVS:
        for number, payload in _iter_attrs(tail):
            if number == NLMSGERR_ATTR_MSG:
                text = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
    return NetlinkError(code, os.strerror(code) + (f" ({text})" if text else ""))
