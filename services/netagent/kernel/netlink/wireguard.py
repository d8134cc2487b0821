"""The generic netlink family "wireguard": a device's listening port, public key and peers, and
changes to them. A device's private key is written, never read back: the kernel's dump carries it,
and it is skipped while decoding so that it never becomes a Python object."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any

from services.netagent.kernel.netlink.codec import Attr, Message, Schema, Struct, decode_attrs, encode_attrs
from services.netagent.kernel.netlink.nlsocket import NLM_F_DUMP, NetlinkSocket

__all__ = ["WGPEER_F_REMOVE_ME", "WGPEER_F_REPLACE_ALLOWEDIPS", "WireGuard", "encode_set_device"]

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
WG_CMD_GET_DEVICE, WG_CMD_SET_DEVICE = 0, 1
WG_GENL_VERSION = 1
WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS = 0x1, 0x2

GENLMSGHDR = Struct("BBxx", ("cmd", "version"))
CTRL_SCHEMA = Schema({1: ("CTRL_ATTR_FAMILY_ID", "u16"), 2: ("CTRL_ATTR_FAMILY_NAME", "str")})
ALLOWEDIP_SCHEMA = Schema({
    1: ("WGALLOWEDIP_A_FAMILY", "u16"), 2: ("WGALLOWEDIP_A_IPADDR", "ip"),
    3: ("WGALLOWEDIP_A_CIDR_MASK", "u8"),
})
PEER_SCHEMA = Schema({
    1: ("WGPEER_A_PUBLIC_KEY", "b64"), 3: ("WGPEER_A_FLAGS", "u32"), 4: ("WGPEER_A_ENDPOINT", "sockaddr"),
    5: ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", "u16"), 6: ("WGPEER_A_LAST_HANDSHAKE_TIME", "timespec"),
    7: ("WGPEER_A_RX_BYTES", "u64"), 8: ("WGPEER_A_TX_BYTES", "u64"),
    9: ("WGPEER_A_ALLOWEDIPS", ("array", ALLOWEDIP_SCHEMA)),
})
# Decoding: no WGDEVICE_A_PRIVATE_KEY (3), so the kernel's copy of the key is dropped unread.
DEVICE_SCHEMA = Schema({
    1: ("WGDEVICE_A_IFINDEX", "u32"), 2: ("WGDEVICE_A_IFNAME", "str"), 4: ("WGDEVICE_A_PUBLIC_KEY", "b64"),
    6: ("WGDEVICE_A_LISTEN_PORT", "u16"), 8: ("WGDEVICE_A_PEERS", ("array", PEER_SCHEMA)),
})
_SET_SCHEMA = Schema({**DEVICE_SCHEMA.attrs, 3: ("WGDEVICE_A_PRIVATE_KEY", "b64")})

# A peer change, as `set` takes it: public_key (base64) and either remove=True, or any of
# endpoint_addr + endpoint_port, persistent_keepalive, allowed_ips (CIDR strings) and
# replace_allowed_ips.
PeerChange = Mapping[str, Any]


def _peer_attrs(change: PeerChange) -> list[Attr]:
    attrs: list[Attr] = [("WGPEER_A_PUBLIC_KEY", change["public_key"])]
    flags = WGPEER_F_REMOVE_ME if change.get("remove") else 0
    if change.get("replace_allowed_ips"):
        flags |= WGPEER_F_REPLACE_ALLOWEDIPS
    attrs.append(("WGPEER_A_FLAGS", flags))
    if change.get("remove"):
        return attrs
    if change.get("endpoint_addr") is not None:
        endpoint = {"addr": change["endpoint_addr"], "port": change["endpoint_port"]}
        attrs.append(("WGPEER_A_ENDPOINT", endpoint))
    if change.get("persistent_keepalive") is not None:
        attrs.append(("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", change["persistent_keepalive"]))
    allowed = []
    for cidr in change.get("allowed_ips", ()):
        address, _, length = str(cidr).partition("/")
        family, host_bits = (socket.AF_INET6, 128) if ":" in address else (socket.AF_INET, 32)
        allowed.append([("WGALLOWEDIP_A_FAMILY", family), ("WGALLOWEDIP_A_IPADDR", address),
                        ("WGALLOWEDIP_A_CIDR_MASK", int(length or host_bits))])
    if allowed:
        attrs.append(("WGPEER_A_ALLOWEDIPS", allowed))
    return attrs


def encode_set_device(ifname: str, *, private_key: str | None = None, listen_port: int | None = None,
                      peers: Sequence[PeerChange] = ()) -> bytes:
    """A WG_CMD_SET_DEVICE body: every peer change in one WGDEVICE_A_PEERS, which the kernel applies
    in order under the device's lock (several WGDEVICE_A_PEERS: it reads only the last)."""
    attrs: list[Attr] = [("WGDEVICE_A_IFNAME", ifname)]
    if private_key is not None:
        attrs.append(("WGDEVICE_A_PRIVATE_KEY", private_key))
    if listen_port is not None:
        attrs.append(("WGDEVICE_A_LISTEN_PORT", listen_port))
    if peers:
        attrs.append(("WGDEVICE_A_PEERS", [_peer_attrs(p) for p in peers]))
    header = GENLMSGHDR.pack({"cmd": WG_CMD_SET_DEVICE, "version": WG_GENL_VERSION})
    return header + encode_attrs(_SET_SCHEMA, attrs)


def decode_device(body: bytes) -> Message:
    """One message of a WG_CMD_GET_DEVICE dump (a large peer list spans several)."""
    return decode_attrs(DEVICE_SCHEMA, memoryview(body)[GENLMSGHDR.size:])


class WireGuard(NetlinkSocket):
    """The "wireguard" family on one generic netlink socket (`use_socket`: born in another netns)."""

    def __init__(self, use_socket: socket.socket | None = None) -> None:
        super().__init__(NETLINK_GENERIC, use_socket)
        self._family: int | None = None

    def family(self) -> int:
        """The family's id (ENOENT when the wireguard module is not loaded)."""
        if self._family is None:
            body = GENLMSGHDR.pack({"cmd": CTRL_CMD_GETFAMILY, "version": 1}) + \
                encode_attrs(CTRL_SCHEMA, [("CTRL_ATTR_FAMILY_NAME", "wireguard")])
            (reply,) = self.request(GENL_ID_CTRL, body)
            found = decode_attrs(CTRL_SCHEMA, memoryview(reply.body)[GENLMSGHDR.size:])
            self._family = int(found.get_attr("CTRL_ATTR_FAMILY_ID"))
        return self._family

    def info(self, ifname: str) -> list[Message]:
        """The device's state, in one or more messages (ENODEV when there is no such device)."""
        body = GENLMSGHDR.pack({"cmd": WG_CMD_GET_DEVICE, "version": WG_GENL_VERSION}) + \
            encode_attrs(DEVICE_SCHEMA, [("WGDEVICE_A_IFNAME", ifname)])
        return [decode_device(r.body) for r in self.request(self.family(), body, NLM_F_DUMP)]

    def set(self, ifname: str, *, private_key: str | None = None, listen_port: int | None = None,
            peers: Sequence[PeerChange] = ()) -> None:
        body = encode_set_device(ifname, private_key=private_key, listen_port=listen_port, peers=peers)
        self.request(self.family(), body)
