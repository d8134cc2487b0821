"""The netagent's own netlink codec (services/netagent/kernel/netlink), without a socket: each attribute
kind round trips; the requests RtNetlink and WireGuard build are read back by pyroute2 (an independent
implementation, installed for the tests only) with the same fields, and what pyroute2 encodes decodes
with ours to the same values; hostile bytes end a walk cleanly; NLMSG_ERROR becomes NetlinkError; a
device dump's private key never becomes a Python object."""

from __future__ import annotations

import base64
import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.generic.wireguard import wgmsg
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from services.netagent.kernel.netlink import rtnl
from services.netagent.kernel.netlink import wireguard as wgnl
from services.netagent.kernel.netlink.codec import (
    HEADER,
    NLA_F_NESTED,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLMSG_ERROR,
    NLMSGERR_ATTR_MSG,
    Message,
    NetlinkError,
    Raw,
    Schema,
    attr,
    decode_attrs,
    encode_attrs,
    encode_message,
    error_of,
    split_messages,
)
from services.netagent.kernel.netlink.nlsocket import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
)
from services.netagent.kernel.netlink.rtnl import IFF_NOARP, IFF_UP, RtNetlink, table_of
from services.netagent.kernel.netlink.wireguard import WireGuard, decode_device, encode_set_device

PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="  # a fixed example key (also in test_wireguard_kernel)
PEER = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
OTHER = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="  # RFC 7748's Alice, public
WG_FAMILY = 0x15  # a generic netlink family id, as the kernel would have assigned to "wireguard"
LIQO_TABLE = 18952  # > 255: a table id that only RTA_TABLE/FRA_TABLE can carry
RTM_NEWADDR, RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_NEWRULE, RTM_DELRULE = 20, 24, 25, 28, 32, 33


# ---- the requests, without a socket ---------------------------------------------------------------------


Sent = tuple[int, bytes, int]


class Kernel:
    """The far side of a request: records what is sent, answers with queued replies (Raw messages)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.replies: list[Raw] = []

    def request(self, kind: int, body: bytes, flags: int = 0) -> list[Raw]:
        self.sent.append((kind, body, flags))
        replies, self.replies = self.replies, []
        return replies


class RecordingRtNetlink(RtNetlink):
    """RtNetlink whose `request` goes to `kernel` (no socket is opened: NetlinkSocket's constructor,
    which opens and binds one, is not run; `request` is the only thing the methods use)."""

    def __init__(self, kernel: Kernel) -> None:  # deliberately not super().__init__
        self.kernel = kernel

    def request(self, kind: int, body: bytes, flags: int = 0) -> list[Raw]:
        return self.kernel.request(kind, body, flags)


class RecordingWireGuard(WireGuard):
    """WireGuard on `kernel`, its family id already resolved (no CTRL_CMD_GETFAMILY round trip)."""

    def __init__(self, kernel: Kernel) -> None:  # deliberately not super().__init__
        self.kernel = kernel
        self._family = WG_FAMILY

    def request(self, kind: int, body: bytes, flags: int = 0) -> list[Raw]:
        return self.kernel.request(kind, body, flags)


def sent_by(fn: Any) -> Sent:
    """The one request `fn(ipr)` sends (ipr: a RecordingRtNetlink)."""
    kernel = Kernel()
    fn(RecordingRtNetlink(kernel))
    (sent,) = kernel.sent
    return sent


def parsed(cls: Any, sent: Sent) -> Any:
    """The request as pyroute2's message class `cls` reads it off the wire."""
    kind, body, flags = sent
    msg = cls(encode_message(kind, flags | NLM_F_REQUEST | NLM_F_ACK, 1, body))
    msg.decode()
    assert msg["header"]["type"] == kind and msg["header"]["length"] == HEADER.size + len(body)
    return msg


def raw_of(pyroute2_msg: Any, kind: int) -> Raw:
    """A message encoded by pyroute2, as split_messages hands it to our decoders."""
    pyroute2_msg["header"]["type"] = kind
    pyroute2_msg.encode()
    (raw,) = split_messages(bytes(pyroute2_msg.data))
    return raw


def plain(value: Any) -> Any:
    """A decoded value without Message objects: [(name, value)] for each nested message."""
    if isinstance(value, Message):
        return [(name, plain(v)) for name, v in value.attrs]
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def case_id(value: Any) -> str | None:
    """Readable test ids: bytes by their length (pytest's default would print them raw)."""
    return f"{len(value)}B" if isinstance(value, bytes) else None


# ---- attribute kinds ------------------------------------------------------------------------------------


INNER = Schema({1: ("A", "u16"), 2: ("B", "str")})


@pytest.mark.parametrize(("kind", "value", "payload"), [
    ("u8", 255, b"\xff"),
    ("u16", 5871, struct.pack("=H", 5871)),  # host order
    ("u32", 2**32 - 1, b"\xff" * 4),
    ("u32", 1420, struct.pack("=I", 1420)),
    ("u64", 2**64 - 1, b"\xff" * 8),
    ("u64", 1 << 40, struct.pack("=Q", 1 << 40)),
    ("s32", -1, b"\xff" * 4),
    ("s32", -(2**31), struct.pack("=i", -(2**31))),
    ("s64", -(2**63), struct.pack("=q", -(2**63))),
    ("be16", 5871, b"\x16\xef"),  # network order
    ("str", "liqo.tunnel", b"liqo.tunnel\0"),
    ("str", "", b"\0"),
    ("ip", "10.60.0.1", bytes([10, 60, 0, 1])),
    ("ip", "fd00::1", bytes.fromhex("fd00" + "00" * 13 + "01")),
    ("mac", "02:00:5e:10:00:ff", bytes.fromhex("02005e1000ff")),
    ("b64", PEER, base64.b64decode(PEER)),
    ("sockaddr", {"addr": "192.0.2.10", "port": 5871},
     struct.pack("=H", socket.AF_INET) + b"\x16\xef" + bytes([192, 0, 2, 10]) + bytes(8)),
    ("sockaddr", {"addr": "fd00::1", "port": 51820},
     struct.pack("=H", socket.AF_INET6) + b"\xca\x6c" + bytes(4)
     + socket.inet_pton(socket.AF_INET6, "fd00::1") + bytes(4)),
    ("bytes", b"\x01\x02\x03", b"\x01\x02\x03"),
], ids=case_id)
def test_scalar_kinds_round_trip_with_their_wire_layout(kind: str, value: Any, payload: bytes) -> None:
    schema = Schema({7: ("X", kind)})
    wire = encode_attrs(schema, [("X", value)])
    assert wire == attr(7, payload)  # length, type without NLA_F_NESTED, payload, padding to 4
    assert len(wire) % 4 == 0
    assert decode_attrs(schema, wire).get_attr("X") == value


@pytest.mark.parametrize(("sec", "nsec"), [(0, 0), (1700000000, 500000000), (2**62, 999999999)])
def test_timespec_decodes(sec: int, nsec: int) -> None:
    """timespec is read only (a peer's last handshake, which the kernel reports); struct timespec of
    64-bit time: two native 64-bit integers."""
    schema = Schema({6: ("T", "timespec")})
    assert decode_attrs(schema, attr(6, struct.pack("=qq", sec, nsec))).get_attr("T") == \
        {"tv_sec": sec, "tv_nsec": nsec}


@pytest.mark.parametrize(("kind", "value", "expected"), [
    (INNER, [("A", 1), ("B", "x")], [("A", 1), ("B", "x")]),
    (INNER, [], []),
    (("array", INNER), [[("A", 1)], [("A", 2), ("B", "yz")], []],
     [[("A", 1)], [("A", 2), ("B", "yz")], []]),
    (("array", INNER), [], []),
    (Schema({1: ("L", ("array", INNER))}), [("L", [[("B", "deep")]])], [("L", [[("B", "deep")]])]),
])
def test_nested_kinds_round_trip_flagged_nested(kind: Any, value: Any, expected: Any) -> None:
    schema = Schema({9: ("N", kind)})
    wire = encode_attrs(schema, [("N", value)])
    (length, number) = struct.unpack_from("=HH", wire)
    assert number == 9 | NLA_F_NESTED and length == len(wire)  # the kernel's strict parsing wants the flag
    if isinstance(kind, tuple):  # every entry of an array is a nested attribute too
        entries = []
        off = 4
        while off < len(wire):
            entry_len, entry_type = struct.unpack_from("=HH", wire, off)
            entries.append(entry_type)
            off += (entry_len + 3) & ~3
        assert all(t & NLA_F_NESTED for t in entries) and len(entries) == len(value)
    assert plain(decode_attrs(schema, wire).get_attr("N")) == expected


def test_several_attributes_keep_their_order_and_alignment() -> None:
    """Payloads of 1, 3, 6 and 8 bytes: each attribute starts on a 4-byte boundary; repeated names are
    all kept, in order; a number not in the schema is skipped."""
    schema = Schema({1: ("U8", "u8"), 2: ("S", "str"), 3: ("MAC", "mac"), 4: ("U64", "u64")})
    attrs = [("U8", 3), ("S", "ab"), ("MAC", "02:00:00:00:00:01"), ("U64", 7), ("S", "c")]
    wire = encode_attrs(schema, attrs) + attr(99, b"unknown") + encode_attrs(schema, [("U8", 4)])
    decoded = decode_attrs(schema, wire)
    assert decoded.attrs == [*attrs, ("U8", 4)]
    assert decoded.get_attrs("S") == ["ab", "c"] and decoded.get_attr("U8") == 3
    assert decoded.get_attr("missing", "default") == "default"


def test_a_name_outside_the_schema_cannot_be_encoded() -> None:
    with pytest.raises(KeyError):
        encode_attrs(INNER, [("C", 1)])


# ---- our requests, read by pyroute2 ---------------------------------------------------------------------


def test_newlink_veth_with_its_peer_born_in_a_netns() -> None:
    sent = sent_by(lambda ipr: ipr.add_link("liqo.host", "veth", mtu=1340, peer_name="liqo.gateway",
                                            peer_netns_fd=9))
    assert sent[0] == rtnl.RTM_NEWLINK and sent[2] == NLM_F_CREATE | NLM_F_EXCL
    msg = parsed(ifinfmsg, sent)
    assert (msg["family"], msg["index"], msg["flags"], msg["change"]) == (0, 0, 0, 0)
    assert msg.get_attr("IFLA_IFNAME") == "liqo.host" and msg.get_attr("IFLA_MTU") == 1340
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer["index"] == 0
    assert peer.get_attr("IFLA_IFNAME") == "liqo.gateway"
    assert peer.get_attr("IFLA_MTU") == 1340
    assert peer.get_attr("IFLA_NET_NS_FD") == 9


def test_newlink_wireguard() -> None:
    sent = sent_by(lambda ipr: ipr.add_link("liqo.tunnel", "wireguard"))
    assert sent[2] == NLM_F_CREATE | NLM_F_EXCL
    msg = parsed(ifinfmsg, sent)
    assert msg.get_attr("IFLA_IFNAME") == "liqo.tunnel"
    assert msg.get_attr("IFLA_MTU") is None  # not given: the kernel's default
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "wireguard" and info.get_attr("IFLA_INFO_DATA") is None


def test_a_veth_needs_its_peer_name() -> None:
    with pytest.raises(ValueError, match="peer"):
        sent_by(lambda ipr: ipr.add_link("liqo.host", "veth"))


@pytest.mark.parametrize(("kwargs", "flags", "change", "attrs"), [
    ({"mtu": 1340, "up": True}, IFF_UP, IFF_UP, {"IFLA_MTU": 1340}),
    ({"up": False}, 0, IFF_UP, {}),
    ({"arp": False, "up": True}, IFF_UP | IFF_NOARP, IFF_UP | IFF_NOARP, {}),
    ({"arp": True}, 0, IFF_NOARP, {}),
    ({"netns_fd": 5}, 0, 0, {"IFLA_NET_NS_FD": 5}),
    ({"mtu": 9000}, 0, 0, {"IFLA_MTU": 9000}),
])
def test_setlink_changes_only_what_it_names(kwargs: dict[str, Any], flags: int, change: int,
                                            attrs: dict[str, int]) -> None:
    sent = sent_by(lambda ipr: ipr.set_link(7, **kwargs))
    assert sent[0] == rtnl.RTM_NEWLINK and sent[2] == 0  # no CREATE: a missing link is an error
    msg = parsed(ifinfmsg, sent)
    assert (msg["index"], msg["flags"], msg["change"]) == (7, flags, change)
    assert {name: value for name, value in msg["attrs"]} == attrs


def test_dellink_and_newaddr() -> None:
    sent = sent_by(lambda ipr: ipr.del_link(7))
    assert sent[0] == rtnl.RTM_DELLINK and parsed(ifinfmsg, sent)["index"] == 7
    sent = sent_by(lambda ipr: ipr.add_addr(7, "169.254.0.1", 32))
    assert sent[0] == RTM_NEWADDR and sent[2] == NLM_F_CREATE | NLM_F_EXCL
    msg = parsed(ifaddrmsg, sent)
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (socket.AF_INET, 32, 7)
    assert msg.get_attr("IFA_LOCAL") == msg.get_attr("IFA_ADDRESS") == "169.254.0.1"


@pytest.mark.parametrize(("table", "header_table"), [
    (254, 254), (255, 255),  # main and local fit in the header's byte
    (256, 0), (LIQO_TABLE, 0),  # above: the header says RT_TABLE_UNSPEC, RTA_TABLE holds the id
])
def test_newroute_table_travels_as_rta_table(table: int, header_table: int) -> None:
    sent = sent_by(lambda ipr: ipr.route("replace", dst="10.60.0.0/16", table=table, oif=3,
                                         gateway="169.254.100.2", scope=0, proto=4, priority=100))
    assert sent[0] == RTM_NEWROUTE and sent[2] == NLM_F_CREATE | NLM_F_REPLACE
    msg = parsed(rtmsg, sent)
    assert msg["table"] == header_table
    assert msg.get_attr("RTA_TABLE") == table
    assert (msg["family"], msg["dst_len"], msg["proto"], msg["scope"], msg["type"]) == \
        (socket.AF_INET, 16, 4, 0, 1)
    assert msg.get_attr("RTA_DST") == "10.60.0.0" and msg.get_attr("RTA_OIF") == 3
    assert msg.get_attr("RTA_GATEWAY") == "169.254.100.2" and msg.get_attr("RTA_PRIORITY") == 100


def test_delroute_of_a_link_route() -> None:
    sent = sent_by(lambda ipr: ipr.route("del", dst="169.254.100.2", table=LIQO_TABLE, oif=4, scope=253))
    assert sent[0] == RTM_DELROUTE and sent[2] == 0
    msg = parsed(rtmsg, sent)
    assert (msg["table"], msg.get_attr("RTA_TABLE"), msg["dst_len"], msg["scope"]) == (0, LIQO_TABLE, 32, 253)
    assert msg.get_attr("RTA_GATEWAY") is None and msg.get_attr("RTA_PRIORITY") is None


@pytest.mark.parametrize(("op", "kind", "flags"), [("add", RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL),
                                                   ("del", RTM_DELRULE, 0)])
def test_rule(op: str, kind: int, flags: int) -> None:
    sent = sent_by(lambda ipr: ipr.rule(op, table=LIQO_TABLE, priority=1000, action=1, src="10.60.0.0",
                                        src_len=16, iifname="liqo.gateway", fwmark=0x40))
    assert sent[0] == kind and sent[2] == flags
    msg = parsed(fibmsg, sent)
    assert (msg["family"], msg["table"], msg["src_len"], msg["dst_len"], msg["action"]) == \
        (socket.AF_INET, 0, 16, 0, 1)
    assert msg.get_attr("FRA_TABLE") == LIQO_TABLE and msg.get_attr("FRA_PRIORITY") == 1000
    assert msg.get_attr("FRA_SRC") == "10.60.0.0" and msg.get_attr("FRA_DST") is None
    assert msg.get_attr("FRA_IIFNAME") == "liqo.gateway" and msg.get_attr("FRA_FWMARK") == 0x40


def test_rule_of_a_small_table_and_an_output_interface() -> None:
    msg = parsed(fibmsg, sent_by(lambda ipr: ipr.rule("add", table=254, priority=5, action=1,
                                                      dst="192.0.2.0", dst_len=24, oifname="eth0")))
    assert (msg["table"], msg.get_attr("FRA_TABLE"), msg["dst_len"]) == (254, 254, 24)
    assert msg.get_attr("FRA_DST") == "192.0.2.0" and msg.get_attr("FRA_OIFNAME") == "eth0"
    assert msg.get_attr("FRA_IIFNAME") is None and msg.get_attr("FRA_FWMARK") is None


def test_newneigh() -> None:
    sent = sent_by(lambda ipr: ipr.replace_neighbour(4, "169.254.100.2", "02:00:5e:10:00:ff", 0x80))
    assert sent[0] == RTM_NEWNEIGH and sent[2] == NLM_F_CREATE | NLM_F_REPLACE
    msg = parsed(ndmsg, sent)
    assert (msg["family"], msg["ifindex"], msg["state"]) == (socket.AF_INET, 4, 0x80)
    assert msg.get_attr("NDA_DST") == "169.254.100.2" and msg.get_attr("NDA_LLADDR") == "02:00:5e:10:00:ff"


def test_wg_set_device() -> None:
    """Device settings and every peer change in one WG_CMD_SET_DEVICE with one WGDEVICE_A_PEERS."""
    kernel = Kernel()
    RecordingWireGuard(kernel).set("liqo.tunnel", private_key=PRIV, listen_port=5871, peers=[
        {"public_key": OTHER, "remove": True},
        {"public_key": PEER, "endpoint_addr": "192.0.2.10", "endpoint_port": 5871, "persistent_keepalive": 25,
         "allowed_ips": ["10.60.0.0/16", "fd00::/64", "192.0.2.1"], "replace_allowed_ips": True},
        {"public_key": OTHER, "endpoint_addr": "fd00::1", "endpoint_port": 51820},
    ])
    ((kind, body, flags),) = kernel.sent
    assert kind == WG_FAMILY and flags == 0
    msg = parsed(wgmsg, (kind, body, flags))
    assert (msg["cmd"], msg["version"]) == (wgnl.WG_CMD_SET_DEVICE, wgnl.WG_GENL_VERSION)
    assert msg.get_attr("WGDEVICE_A_IFNAME") == "liqo.tunnel"
    assert msg.get_attr("WGDEVICE_A_PRIVATE_KEY") == PRIV.encode()
    assert msg.get_attr("WGDEVICE_A_LISTEN_PORT") == 5871
    (peers,) = msg.get_attrs("WGDEVICE_A_PEERS")
    assert [p.get_attr("WGPEER_A_PUBLIC_KEY") for p in peers] == \
        [OTHER.encode(), PEER.encode(), OTHER.encode()]
    assert [p.get_attr("WGPEER_A_FLAGS") for p in peers] == \
        [wgnl.WGPEER_F_REMOVE_ME, wgnl.WGPEER_F_REPLACE_ALLOWEDIPS, 0]
    assert [name for name, _ in peers[0]["attrs"]] == ["WGPEER_A_PUBLIC_KEY", "WGPEER_A_FLAGS"]
    endpoint = peers[1].get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["family"], endpoint["addr"], endpoint["port"]) == (socket.AF_INET, "192.0.2.10", 5871)
    assert peers[1].get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert [a["addr"] for a in peers[1].get_attr("WGPEER_A_ALLOWEDIPS")] == \
        ["10.60.0.0/16", "fd00::/64", "192.0.2.1/32"]  # no length: a host route
    endpoint = peers[2].get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["family"], endpoint["addr"], endpoint["port"]) == (socket.AF_INET6, "fd00::1", 51820)
    assert peers[2].get_attr("WGPEER_A_ALLOWEDIPS") is None


def test_wg_set_device_without_changes_names_only_the_device() -> None:
    msg = parsed(wgmsg, (WG_FAMILY, encode_set_device("liqo.tunnel"), 0))
    assert [name for name, _ in msg["attrs"]] == ["WGDEVICE_A_IFNAME"]


def test_wg_get_device_request() -> None:
    kernel = Kernel()
    assert RecordingWireGuard(kernel).info("liqo.tunnel") == []
    ((kind, body, flags),) = kernel.sent
    assert kind == WG_FAMILY and flags == NLM_F_DUMP
    msg = parsed(wgmsg, (kind, body, flags))
    assert (msg["cmd"], msg.get_attr("WGDEVICE_A_IFNAME")) == (wgnl.WG_CMD_GET_DEVICE, "liqo.tunnel")


# ---- pyroute2's messages, read by ours ------------------------------------------------------------------


def test_a_link_from_pyroute2() -> None:
    m: Any = ifinfmsg()
    m["index"], m["flags"], m["ifi_type"] = 12, IFF_UP | IFF_NOARP, 1
    m["attrs"] = [("IFLA_IFNAME", "liqo.host"), ("IFLA_MTU", 1340), ("IFLA_ADDRESS", "02:00:5e:10:00:ff"),
                  ("IFLA_LINK", 3), ("IFLA_LINK_NETNSID", 0),
                  ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
                  ("IFLA_TXQLEN", 1000)]  # not in our schema: skipped
    kernel = Kernel()
    kernel.replies = [raw_of(m, rtnl.RTM_NEWLINK)]
    ipr = RecordingRtNetlink(kernel)
    (link,) = ipr.links()
    assert (link["index"], link["flags"], link["ifi_type"]) == (12, IFF_UP | IFF_NOARP, 1)
    assert link.header["type"] == rtnl.RTM_NEWLINK
    assert plain(link) == [("IFLA_IFNAME", "liqo.host"), ("IFLA_MTU", 1340),
                           ("IFLA_ADDRESS", "02:00:5e:10:00:ff"), ("IFLA_LINK", 3), ("IFLA_LINK_NETNSID", 0),
                           ("IFLA_LINKINFO", [("IFLA_INFO_KIND", "veth")])]
    assert kernel.sent[0][0] == 18 and kernel.sent[0][2] == NLM_F_DUMP  # RTM_GETLINK, a dump
    kernel.replies = [raw_of(m, rtnl.RTM_NEWLINK)]
    assert ipr.link_lookup("liqo.host") == [12]
    assert decode_attrs(rtnl.LINK_SCHEMA, kernel.sent[-1][1][rtnl.IFINFOMSG.size:]).get_attr("IFLA_IFNAME") \
        == "liqo.host"


def test_a_missing_link_is_none() -> None:
    class NoDevice(Kernel):
        def request(self, kind: int, body: bytes, flags: int = 0) -> list[Raw]:
            raise NetlinkError(errno.ENODEV, "No such device")

    ipr = RecordingRtNetlink(NoDevice())
    assert ipr.link_by_name("liqo.tunnel") is None and ipr.link_lookup("liqo.tunnel") == []


def test_routes_from_pyroute2_with_their_table() -> None:
    big: Any = rtmsg()
    big["family"], big["dst_len"], big["table"], big["scope"], big["type"] = socket.AF_INET, 16, 0, 0, 1
    big["attrs"] = [("RTA_TABLE", LIQO_TABLE), ("RTA_DST", "10.60.0.0"), ("RTA_OIF", 4),
                    ("RTA_GATEWAY", "169.254.100.2"), ("RTA_PRIORITY", 100), ("RTA_PREFSRC", "10.0.0.5")]
    main: Any = rtmsg()
    main["family"], main["dst_len"], main["table"] = socket.AF_INET, 24, 254
    main["attrs"] = [("RTA_DST", "192.0.2.0"), ("RTA_OIF", 2)]  # no RTA_TABLE: the header's table
    v6: Any = rtmsg()
    v6["family"], v6["dst_len"], v6["table"] = socket.AF_INET6, 64, 254
    v6["attrs"] = [("RTA_DST", "fd00::")]
    kernel = Kernel()
    kernel.replies = [raw_of(big, RTM_NEWROUTE), raw_of(main, RTM_NEWROUTE), raw_of(v6, RTM_NEWROUTE)]
    routes = RecordingRtNetlink(kernel).routes()
    assert [table_of(r) for r in routes] == [LIQO_TABLE, 254]  # IPv4 only
    first = routes[0]
    assert (first["dst_len"], first["table"], first["type"]) == (16, 0, 1)
    assert plain(first) == [("RTA_TABLE", LIQO_TABLE), ("RTA_DST", "10.60.0.0"), ("RTA_OIF", 4),
                            ("RTA_GATEWAY", "169.254.100.2"), ("RTA_PRIORITY", 100),
                            ("RTA_PREFSRC", "10.0.0.5")]
    assert plain(routes[1]) == [("RTA_DST", "192.0.2.0"), ("RTA_OIF", 2)]


def test_rules_from_pyroute2_with_their_table() -> None:
    rule: Any = fibmsg()
    rule["family"], rule["table"], rule["src_len"], rule["action"] = socket.AF_INET, 0, 16, 1
    rule["attrs"] = [("FRA_TABLE", LIQO_TABLE), ("FRA_PRIORITY", 1000), ("FRA_SRC", "10.60.0.0"),
                     ("FRA_IIFNAME", "liqo.gateway"), ("FRA_FWMARK", 0x40), ("FRA_FWMASK", 0xFF),
                     ("FRA_OIFNAME", "eth0")]
    small: Any = fibmsg()
    small["family"], small["table"], small["action"] = socket.AF_INET, 253, 1
    small["attrs"] = [("FRA_PRIORITY", 32767)]
    kernel = Kernel()
    kernel.replies = [raw_of(rule, RTM_NEWRULE), raw_of(small, RTM_NEWRULE)]
    first, second = RecordingRtNetlink(kernel).rules()
    assert (table_of(first), table_of(second)) == (LIQO_TABLE, 253)
    assert (first["src_len"], first["action"], first["table"]) == (16, 1, 0)
    assert plain(first) == [("FRA_TABLE", LIQO_TABLE), ("FRA_PRIORITY", 1000), ("FRA_SRC", "10.60.0.0"),
                            ("FRA_IIFNAME", "liqo.gateway"), ("FRA_FWMARK", 0x40), ("FRA_FWMASK", 0xFF),
                            ("FRA_OIFNAME", "eth0")]


def test_addresses_and_neighbours_from_pyroute2() -> None:
    def addr(index: int, family: int, address: str, prefixlen: int) -> Raw:
        m: Any = ifaddrmsg()
        m["family"], m["index"], m["prefixlen"] = family, index, prefixlen
        m["attrs"] = [("IFA_ADDRESS", address), ("IFA_LOCAL", address), ("IFA_LABEL", "x")]
        return raw_of(m, RTM_NEWADDR)

    def neigh(ifindex: int, dst: str, lladdr: str, state: int) -> Raw:
        m: Any = ndmsg()
        m["family"], m["ifindex"], m["state"] = socket.AF_INET, ifindex, state
        m["attrs"] = [("NDA_DST", dst), ("NDA_LLADDR", lladdr)]
        return raw_of(m, RTM_NEWNEIGH)

    kernel = Kernel()
    ipr = RecordingRtNetlink(kernel)
    kernel.replies = [addr(7, socket.AF_INET, "169.254.0.1", 32), addr(8, socket.AF_INET, "10.0.0.1", 24),
                      addr(7, socket.AF_INET6, "fe80::1", 64)]
    (found,) = ipr.addrs(7)
    assert (found["index"], found["prefixlen"]) == (7, 32)
    assert plain(found) == [("IFA_ADDRESS", "169.254.0.1"), ("IFA_LOCAL", "169.254.0.1"), ("IFA_LABEL", "x")]
    kernel.replies = [neigh(4, "169.254.100.2", "02:00:5e:10:00:ff", 0x80),
                      neigh(5, "10.0.0.9", "02:aa:00:00:00:01", 2)]
    (n,) = ipr.neighbours(4)
    assert (n["ifindex"], n["state"], n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")) == \
        (4, 0x80, "169.254.100.2", "02:00:5e:10:00:ff")


def wg_dump(peers: Sequence[list[list[Any]]], *, private_key: str | None = PRIV) -> Any:
    """A WG_CMD_GET_DEVICE reply as pyroute2 encodes it (the kernel's layout)."""
    m: Any = wgmsg()
    m["cmd"], m["version"] = wgnl.WG_CMD_GET_DEVICE, wgnl.WG_GENL_VERSION
    m["attrs"] = [["WGDEVICE_A_IFINDEX", 7], ["WGDEVICE_A_IFNAME", "liqo.tunnel"]]
    if private_key is not None:
        m["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", private_key])
    m["attrs"] += [["WGDEVICE_A_PUBLIC_KEY", OTHER], ["WGDEVICE_A_LISTEN_PORT", 5871],
                   ["WGDEVICE_A_FWMARK", 0], ["WGDEVICE_A_PEERS", [{"attrs": p} for p in peers]]]
    return m


def allowed(family: int, address: str, mask: int) -> dict[str, Any]:
    return {"attrs": [["WGALLOWEDIP_A_FAMILY", family],
                      ["WGALLOWEDIP_A_IPADDR", socket.inet_pton(family, address)],
                      ["WGALLOWEDIP_A_CIDR_MASK", mask]]}


PEER_FULL: list[list[Any]] = [
    ["WGPEER_A_PUBLIC_KEY", PEER],
    ["WGPEER_A_FLAGS", 0],
    ["WGPEER_A_ENDPOINT", {"addr": "192.0.2.10", "port": 5871}],
    ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
    ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 500000000}],
    ["WGPEER_A_RX_BYTES", (1 << 40) + 3],
    ["WGPEER_A_TX_BYTES", 20],
    ["WGPEER_A_ALLOWEDIPS", [allowed(socket.AF_INET, "10.60.0.0", 16),
                             allowed(socket.AF_INET6, "fd00::", 64)]],
    ["WGPEER_A_PROTOCOL_VERSION", 1],  # not in our schema: skipped
]
PEER_V6: list[list[Any]] = [
    ["WGPEER_A_PUBLIC_KEY", OTHER],
    ["WGPEER_A_ENDPOINT", {"addr": "fd00::1", "port": 51820}],
]


def test_a_wireguard_device_dump_from_pyroute2() -> None:
    kernel = Kernel()
    kernel.replies = [raw_of(wg_dump([PEER_FULL, PEER_V6]), WG_FAMILY)]
    (device,) = RecordingWireGuard(kernel).info("liqo.tunnel")
    assert plain(device) == [
        ("WGDEVICE_A_IFINDEX", 7), ("WGDEVICE_A_IFNAME", "liqo.tunnel"), ("WGDEVICE_A_PUBLIC_KEY", OTHER),
        ("WGDEVICE_A_LISTEN_PORT", 5871),
        ("WGDEVICE_A_PEERS", [
            [("WGPEER_A_PUBLIC_KEY", PEER), ("WGPEER_A_FLAGS", 0),
             ("WGPEER_A_ENDPOINT", {"addr": "192.0.2.10", "port": 5871}),
             ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25),
             ("WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 500000000}),
             ("WGPEER_A_RX_BYTES", (1 << 40) + 3), ("WGPEER_A_TX_BYTES", 20),
             ("WGPEER_A_ALLOWEDIPS", [
                 [("WGALLOWEDIP_A_FAMILY", socket.AF_INET), ("WGALLOWEDIP_A_IPADDR", "10.60.0.0"),
                  ("WGALLOWEDIP_A_CIDR_MASK", 16)],
                 [("WGALLOWEDIP_A_FAMILY", socket.AF_INET6), ("WGALLOWEDIP_A_IPADDR", "fd00::"),
                  ("WGALLOWEDIP_A_CIDR_MASK", 64)],
             ])],
            [("WGPEER_A_PUBLIC_KEY", OTHER), ("WGPEER_A_ENDPOINT", {"addr": "fd00::1", "port": 51820})],
        ]),
    ]


def test_our_wireguard_encoding_decodes_back() -> None:
    """encode_set_device and decode_device agree on every attribute they share."""
    body = encode_set_device("liqo.tunnel", listen_port=5871, peers=[
        {"public_key": PEER, "endpoint_addr": "192.0.2.10", "endpoint_port": 5871, "persistent_keepalive": 0,
         "allowed_ips": ["10.60.0.0/16"], "replace_allowed_ips": True}])
    assert plain(decode_device(body)) == [
        ("WGDEVICE_A_IFNAME", "liqo.tunnel"), ("WGDEVICE_A_LISTEN_PORT", 5871),
        ("WGDEVICE_A_PEERS", [[
            ("WGPEER_A_PUBLIC_KEY", PEER), ("WGPEER_A_FLAGS", wgnl.WGPEER_F_REPLACE_ALLOWEDIPS),
            ("WGPEER_A_ENDPOINT", {"addr": "192.0.2.10", "port": 5871}),
            ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0),
            ("WGPEER_A_ALLOWEDIPS", [[("WGALLOWEDIP_A_FAMILY", socket.AF_INET),
                                      ("WGALLOWEDIP_A_IPADDR", "10.60.0.0"),
                                      ("WGALLOWEDIP_A_CIDR_MASK", 16)]]),
        ]]),
    ]


# ---- the private key is never read back -----------------------------------------------------------------


def values_in(value: Any) -> list[Any]:
    """Every value a decoded message holds, at any depth (names and fields included)."""
    if isinstance(value, Message):
        out: list[Any] = [value.fields, value.header]
        for name, v in value.attrs:
            out += [name, *values_in(v)]
        return out
    if isinstance(value, dict):
        return [value] + [x for k, v in value.items() for x in (k, *values_in(v))]
    if isinstance(value, (list, tuple)):
        return [value] + [x for v in value for x in values_in(v)]
    return [value]


def key_forms(key_b64: str) -> set[str | bytes]:
    """The key as text (base64, hex) and as bytes (raw, base64)."""
    raw = base64.b64decode(key_b64)
    return {key_b64, key_b64.encode(), raw, raw.hex(), raw.hex().encode()}


@pytest.mark.parametrize("peers", [[], [PEER_FULL], [PEER_FULL, PEER_V6]])
def test_a_device_dump_never_yields_its_private_key(peers: list[list[list[Any]]]) -> None:
    """A security property: the kernel's dump carries the device's private key (attribute 3), and our
    decode drops it unread, so the netagent never holds (nor logs) it."""
    raw = raw_of(wg_dump(peers), WG_FAMILY)
    assert base64.b64decode(PRIV) in raw.body  # the key is on the wire
    kernel = Kernel()
    kernel.replies = [raw]
    for device in (decode_device(raw.body), *RecordingWireGuard(kernel).info("liqo.tunnel")):
        assert device.get_attr("WGDEVICE_A_PUBLIC_KEY") == OTHER  # the rest is decoded
        assert len(device.get_attr("WGDEVICE_A_PEERS")) == len(peers)
        assert device.get_attr("WGDEVICE_A_PRIVATE_KEY") is None
        forms = key_forms(PRIV)
        found = [v for v in values_in(device) if isinstance(v, (str, bytes, bytearray, memoryview))
                 and (v if isinstance(v, str) else bytes(v)) in forms]
        assert found == []
        assert PRIV not in repr(device) and base64.b64decode(PRIV).hex() not in repr(device)


def test_our_own_set_device_message_does_not_decode_its_private_key() -> None:
    """Even a message that carries it by our own encoding (WG_CMD_SET_DEVICE) decodes without it."""
    device = decode_device(encode_set_device("liqo.tunnel", private_key=PRIV, listen_port=1))
    assert plain(device) == [("WGDEVICE_A_IFNAME", "liqo.tunnel"), ("WGDEVICE_A_LISTEN_PORT", 1)]


# ---- NLMSG_ERROR ----------------------------------------------------------------------------------------


def nlmsg_error(code: int, *, flags: int = 0, text: str | None = None,
                request_body: bytes = bytes(16)) -> Raw:
    """What the kernel answers a request: -errno, the request's header (its body too, unless capped),
    then extended-ack attributes."""
    echoed = encode_message(rtnl.RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1, request_body)
    echoed = echoed[:HEADER.size] if flags & NLM_F_CAPPED else echoed + bytes(-len(echoed) % 4)  # aligned
    body = struct.pack("=i", -code) + echoed
    if text is not None:
        body += attr(NLMSGERR_ATTR_MSG, text.encode() + b"\0") + attr(4, struct.pack("=I", 20))  # + OFFS
    (raw,) = split_messages(encode_message(NLMSG_ERROR, flags, 1, body))
    return raw


def test_an_ack_is_no_error() -> None:
    assert error_of(nlmsg_error(0)) is None
    assert error_of(nlmsg_error(0, flags=NLM_F_CAPPED)) is None


def test_an_errno_becomes_netlink_error() -> None:
    error = error_of(nlmsg_error(errno.ENODEV))
    assert isinstance(error, NetlinkError) and isinstance(error, OSError)
    assert error.code == error.errno == 19
    assert "No such device" in str(error)


@pytest.mark.parametrize(("flags", "request_body"), [
    (NLM_F_CAPPED | NLM_F_ACK_TLVS, bytes(16)),  # the request echoed as its header only
    (NLM_F_ACK_TLVS, bytes(16)),  # echoed whole
    (NLM_F_ACK_TLVS, bytes(17)),  # echoed whole, of a length not a multiple of 4
], ids=case_id)
def test_the_extended_ack_text_is_in_the_message(flags: int, request_body: bytes) -> None:
    text = "Unknown device type"
    error = error_of(nlmsg_error(errno.EOPNOTSUPP, flags=flags, text=text, request_body=request_body))
    assert isinstance(error, NetlinkError) and error.code == errno.EOPNOTSUPP
    assert text in str(error) and "Operation not supported" in str(error)


def test_no_text_without_ack_tlvs() -> None:
    error = error_of(nlmsg_error(errno.EEXIST, flags=NLM_F_CAPPED, text="ignored"))
    assert error is not None and error.code == errno.EEXIST and "ignored" not in str(error)


# ---- hostile input: a walk stops, never raises ----------------------------------------------------------


ONE = encode_message(16, 0, 1, bytes(16))  # a whole message: header and a 16-byte body


@pytest.mark.parametrize(("data", "count"), [
    (b"", 0),
    (ONE[:15], 0),  # shorter than a header
    (ONE[:-1], 0),  # length says more than there is
    (struct.pack("=IHHII", 0, 16, 0, 1, 0) + bytes(16), 0),  # length 0: no endless loop
    (struct.pack("=IHHII", 15, 16, 0, 1, 0) + bytes(16), 0),  # length below a header's
    (struct.pack("=IHHII", 2**32 - 1, 16, 0, 1, 0), 0),  # length far beyond the datagram
    (ONE, 1),
    (ONE + ONE[:20], 1),  # a truncated second message: dropped
    (ONE + bytes(7), 1),  # trailing garbage shorter than a header
    (ONE + ONE, 2),
    (encode_message(3, 0, 1, b"") * 3, 3),  # empty bodies (NLMSG_DONE without its errno)
], ids=case_id)
def test_split_messages_stops_cleanly(data: bytes, count: int) -> None:
    messages = list(split_messages(data))
    assert len(messages) == count
    assert all(len(m.body) == 16 for m in messages if m.kind == 16)


LINK_MTU = attr(4, struct.pack("=I", 1420))


@pytest.mark.parametrize(("data", "attrs"), [
    (b"", []),
    (b"\x00", []),
    (b"\x00\x00\x00", []),
    (LINK_MTU + struct.pack("=HH", 0, 3), [("IFLA_MTU", 1420)]),  # length 0: no endless loop
    (LINK_MTU + struct.pack("=HH", 3, 3) + b"\0\0\0\0", [("IFLA_MTU", 1420)]),  # below a header's length
    (LINK_MTU + struct.pack("=HH", 200, 3) + b"abc\0", [("IFLA_MTU", 1420)]),  # beyond the data
    (LINK_MTU + struct.pack("=HH", 0xFFFF, 3), [("IFLA_MTU", 1420)]),
    (LINK_MTU + attr(3, b"eth0\0")[:-4], [("IFLA_MTU", 1420)]),  # cut inside the last attribute
    (attr(3, b""), [("IFLA_IFNAME", "")]),  # a string of no bytes at all
    (attr(18, b"") + LINK_MTU, [("IFLA_LINKINFO", []), ("IFLA_MTU", 1420)]),  # an empty nest
    (attr(18, struct.pack("=HH", 40, 1) + b"veth") + LINK_MTU,  # a nest whose content lies
     [("IFLA_LINKINFO", []), ("IFLA_MTU", 1420)]),
    (LINK_MTU + bytes(2), [("IFLA_MTU", 1420)]),  # trailing bytes shorter than a header
], ids=case_id)
def test_decode_attrs_stops_cleanly(data: bytes, attrs: list[tuple[str, Any]]) -> None:
    assert plain(decode_attrs(rtnl.LINK_SCHEMA, data)) == attrs


SCHEMAS = {
    "link": rtnl.LINK_SCHEMA, "addr": rtnl.ADDR_SCHEMA, "route": rtnl.ROUTE_SCHEMA, "rule": rtnl.RULE_SCHEMA,
    "neigh": rtnl.NEIGH_SCHEMA, "nsid": rtnl.NSID_SCHEMA, "wg-device": wgnl.DEVICE_SCHEMA,
    "wg-peer": wgnl.PEER_SCHEMA, "wg-allowedip": wgnl.ALLOWEDIP_SCHEMA, "genl-ctrl": wgnl.CTRL_SCHEMA,
}


@pytest.mark.parametrize(("kind", "wrong_sizes"), [
    ("u8", [0]), ("u16", [0, 1]), ("u32", [0, 3]), ("u64", [0, 7]), ("s32", [0, 3]), ("s64", [0, 7]),
    ("be16", [0, 1]), ("ip", [0, 3, 5]), ("sockaddr", [0, 15]), ("timespec", [0, 15]),
])
def test_a_fixed_size_attribute_too_short_does_not_raise(kind: str, wrong_sizes: list[int]) -> None:
    """An attribute whose payload is shorter than its kind (a zero-length one, say; or an address of
    neither family's size) is malformed: decoding must not raise, and the attributes around it that
    are well formed are still read. Every schema has such kinds (IFLA_MTU, RTA_DST, WGDEVICE_A_...)."""
    schema = Schema({1: ("NAME", "str"), 2: ("X", kind)})
    for size in wrong_sizes:
        data = attr(1, b"before\0") + attr(2, b"\x01" * size) + attr(1, b"after\0")
        try:
            decoded = decode_attrs(schema, data)
        except Exception as e:  # any exception is the failure
            pytest.fail(f"a {kind} attribute of {size} bytes raised {e!r}")
        assert decoded.get_attrs("NAME")[0] == "before"


def _attr_bytes(number: int, payload: bytes, nested: bool, cut: int) -> bytes:
    return attr(number, payload, nested=nested)[:cut] if cut >= 0 else attr(number, payload, nested=nested)


@st.composite
def attribute_soup(draw: st.DrawFn, schema: Schema) -> bytes:
    """Attribute-shaped bytes: numbers the schema knows (and some it does not), payloads of any length
    (nested ones made of attributes again, to a small depth), some lengths that lie, garbage tails."""
    numbers = st.one_of(st.sampled_from(sorted(schema.attrs)), st.integers(0, 0xFFFF))

    def one(depth: int) -> st.SearchStrategy[bytes]:
        payload = st.binary(max_size=40) if depth == 0 else st.one_of(
            st.binary(max_size=40), st.lists(one(depth - 1), max_size=4).map(b"".join))
        return st.builds(_attr_bytes, numbers, payload, st.booleans(), st.integers(-1, 44))

    parts = draw(st.lists(one(2), max_size=8))
    lies = draw(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), max_size=2))
    return b"".join(parts) + b"".join(struct.pack("=HH", n, t) for n, t in lies) + draw(st.binary(max_size=8))


@pytest.mark.parametrize("schema_name", ["link", "route", "wg-device"])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_decode_attrs_never_raises(schema_name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[schema_name]
    soup = data.draw(st.one_of(st.binary(max_size=300), attribute_soup(schema)))
    decode_attrs(schema, soup)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=400),
    st.lists(st.builds(encode_message, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                       st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=4).map(b"".join),
), st.integers(0, 400))
def test_split_messages_never_raises(data: bytes, cut: int) -> None:
    for raw in split_messages(data[:cut] if cut else data):
        assert HEADER.size + len(raw.body) <= len(data)
