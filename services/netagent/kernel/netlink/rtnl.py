"""rtnetlink: the links, addresses, routes, policy rules, neighbours and netns ids the netagent
reads and writes, and nothing else (no traffic control, no bridges, no IPv6 routing)."""

from __future__ import annotations

import errno
import socket
from typing import Literal

from services.netagent.kernel.netlink.codec import (
    Attr,
    Message,
    NetlinkError,
    Raw,
    Schema,
    Struct,
    attr,
    decode_attrs,
    encode_attrs,
)
from services.netagent.kernel.netlink.nlsocket import (
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NetlinkSocket,
)

__all__ = [
    "IFF_NOARP",
    "IFF_UP",
    "LINK_SCHEMA",
    "RTMGRP_LINK",
    "RTM_DELLINK",
    "RTM_NEWLINK",
    "RtNetlink",
    "decode_link",
    "table_of",
]

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_GETNSID = 90
IFF_UP, IFF_NOARP = 0x1, 0x80
VETH_INFO_PEER = 1
RT_TABLE_MAX_HEADER = 255  # a table id above this travels only as an attribute

IFINFOMSG = Struct("BxHiII", ("family", "ifi_type", "index", "flags", "change"))
IFADDRMSG = Struct("BBBBI", ("family", "prefixlen", "flags", "scope", "index"))
RTMSG = Struct("BBBBBBBBI", ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type",
                             "flags"))
FIB_RULE_HDR = Struct("BBBBBBBBI", ("family", "dst_len", "src_len", "tos", "table", None, None, "action",
                                    "flags"))
NDMSG = Struct("BxxxiHBB", ("family", "ifindex", "state", "flags", "ndm_type"))
RTGENMSG = Struct("Bxxx", ("family",))

LINKINFO_SCHEMA = Schema({1: ("IFLA_INFO_KIND", "str"), 2: ("IFLA_INFO_DATA", "bytes")})
LINK_SCHEMA = Schema({
    1: ("IFLA_ADDRESS", "mac"), 3: ("IFLA_IFNAME", "str"), 4: ("IFLA_MTU", "u32"),
    5: ("IFLA_LINK", "s32"), 18: ("IFLA_LINKINFO", LINKINFO_SCHEMA), 28: ("IFLA_NET_NS_FD", "u32"),
    37: ("IFLA_LINK_NETNSID", "s32"),
})
ADDR_SCHEMA = Schema({1: ("IFA_ADDRESS", "ip"), 2: ("IFA_LOCAL", "ip"), 3: ("IFA_LABEL", "str")})
ROUTE_SCHEMA = Schema({
    1: ("RTA_DST", "ip"), 2: ("RTA_SRC", "ip"), 4: ("RTA_OIF", "u32"), 5: ("RTA_GATEWAY", "ip"),
    6: ("RTA_PRIORITY", "u32"), 7: ("RTA_PREFSRC", "ip"), 15: ("RTA_TABLE", "u32"),
})
RULE_SCHEMA = Schema({
    1: ("FRA_DST", "ip"), 2: ("FRA_SRC", "ip"), 3: ("FRA_IIFNAME", "str"), 6: ("FRA_PRIORITY", "u32"),
    10: ("FRA_FWMARK", "u32"), 15: ("FRA_TABLE", "u32"), 16: ("FRA_FWMASK", "u32"),
    17: ("FRA_OIFNAME", "str"),
})
NEIGH_SCHEMA = Schema({1: ("NDA_DST", "ip"), 2: ("NDA_LLADDR", "mac")})
NSID_SCHEMA = Schema({1: ("NETNSA_NSID", "s32"), 3: ("NETNSA_FD", "u32")})


def _decode(raw: Raw, header: Struct, schema: Schema) -> Message:
    msg = decode_attrs(schema, memoryview(raw.body)[header.size:])
    msg.fields = header.unpack(raw.body)
    msg.header = {"type": raw.kind, "flags": raw.flags, "seq": raw.seq}
    return msg


def decode_link(raw: Raw) -> Message:
    """An RTM_NEWLINK/RTM_DELLINK message (a dump's, or an event's)."""
    return _decode(raw, IFINFOMSG, LINK_SCHEMA)


def _table_attr(table: int) -> tuple[int, list[Attr]]:
    """(the header's table byte, the attribute): ids above 255 exist only as the attribute."""
    return (table if table <= RT_TABLE_MAX_HEADER else 0), [("RTA_TABLE", table)]


class RtNetlink(NetlinkSocket):
    """rtnetlink on one socket: the current network namespace's, or `use_socket` (born in another)."""

    def __init__(self, use_socket: socket.socket | None = None) -> None:
        super().__init__(NETLINK_ROUTE, use_socket)

    # ---- links ----

    def links(self) -> list[Message]:
        body = IFINFOMSG.pack({"family": socket.AF_UNSPEC})
        return [decode_link(r) for r in self.request(RTM_GETLINK, body, NLM_F_DUMP)]

    def link_by_name(self, name: str) -> Message | None:
        body = IFINFOMSG.pack({}) + encode_attrs(LINK_SCHEMA, [("IFLA_IFNAME", name)])
        try:
            replies = self.request(RTM_GETLINK, body)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return decode_link(replies[0]) if replies else None

    def link_lookup(self, ifname: str) -> list[int]:
        """[the index] of the link named `ifname` here, or []."""
        msg = self.link_by_name(ifname)
        return [msg["index"]] if msg is not None else []

    def set_link(self, index: int, *, mtu: int | None = None, up: bool | None = None,
                 arp: bool | None = None, netns_fd: int | None = None) -> None:
        flags = change = 0
        if up is not None:
            change |= IFF_UP
            flags |= IFF_UP if up else 0
        if arp is not None:
            change |= IFF_NOARP
            flags |= 0 if arp else IFF_NOARP
        attrs: list[Attr] = []
        if mtu is not None:
            attrs.append(("IFLA_MTU", mtu))
        if netns_fd is not None:
            attrs.append(("IFLA_NET_NS_FD", netns_fd))
        body = IFINFOMSG.pack({"index": index, "flags": flags, "change": change})
        self.request(RTM_NEWLINK, body + encode_attrs(LINK_SCHEMA, attrs))

    def add_link(self, name: str, kind: Literal["veth", "wireguard"], *, mtu: int | None = None,
                 peer_name: str | None = None, peer_netns_fd: int | None = None) -> None:
        """Creates a link (EEXIST when the name is taken); a veth's peer end is born in the
        namespace `peer_netns_fd` names, when given."""
        data = b""
        if kind == "veth":
            if peer_name is None:
                raise ValueError("a veth needs its peer's name")
            peer: list[Attr] = [("IFLA_IFNAME", peer_name)]
            if mtu is not None:
                peer.append(("IFLA_MTU", mtu))
            if peer_netns_fd is not None:
                peer.append(("IFLA_NET_NS_FD", peer_netns_fd))
            data = attr(VETH_INFO_PEER, IFINFOMSG.pack({}) + encode_attrs(LINK_SCHEMA, peer), nested=True)
        info: list[Attr] = [("IFLA_INFO_KIND", kind)]
        if data:
            info.append(("IFLA_INFO_DATA", data))
        attrs: list[Attr] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", info)]
        if mtu is not None:
            attrs.append(("IFLA_MTU", mtu))
        body = IFINFOMSG.pack({}) + encode_attrs(LINK_SCHEMA, attrs)
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def del_link(self, index: int) -> None:
        self.request(RTM_DELLINK, IFINFOMSG.pack({"index": index}))

    def get_netnsid(self, fd: int) -> int | None:
        """The id under which this namespace knows the namespace `fd` (None: it has none)."""
        body = RTGENMSG.pack({"family": socket.AF_UNSPEC}) + encode_attrs(NSID_SCHEMA, [("NETNSA_FD", fd)])
        for raw in self.request(RTM_GETNSID, body):
            nsid = _decode(raw, RTGENMSG, NSID_SCHEMA).get_attr("NETNSA_NSID")
            return None if nsid is None or nsid < 0 else int(nsid)
        return None

    # ---- addresses ----

    def addrs(self, index: int | None = None) -> list[Message]:
        """The IPv4 addresses (of link `index` only, when given)."""
        body = IFADDRMSG.pack({"family": socket.AF_INET})
        msgs = [_decode(r, IFADDRMSG, ADDR_SCHEMA) for r in self.request(RTM_GETADDR, body, NLM_F_DUMP)]
        return [m for m in msgs if m["family"] == socket.AF_INET and index in (None, m["index"])]

    def add_addr(self, index: int, address: str, prefixlen: int) -> None:
        body = IFADDRMSG.pack({"family": socket.AF_INET, "prefixlen": prefixlen, "index": index})
        attrs = encode_attrs(ADDR_SCHEMA, [("IFA_LOCAL", address), ("IFA_ADDRESS", address)])
        self.request(RTM_NEWADDR, body + attrs, NLM_F_CREATE | NLM_F_EXCL)

    # ---- routes ----

    def routes(self) -> list[Message]:
        """Every IPv4 route of every table (a route's table: `table_of`)."""
        body = RTMSG.pack({"family": socket.AF_INET})
        msgs = [_decode(r, RTMSG, ROUTE_SCHEMA) for r in self.request(RTM_GETROUTE, body, NLM_F_DUMP)]
        return [m for m in msgs if m["family"] == socket.AF_INET]

    def route(self, op: Literal["replace", "del"], *, dst: str, table: int, oif: int | None = None,
              gateway: str | None = None, scope: int = 0, proto: int = 0, type: int = 1,
              flags: int = 0, tos: int = 0, priority: int = 0) -> None:
        """Replaces (creating it if missing) or deletes one IPv4 route; `dst` is "a.b.c.d/len"."""
        address, _, length = dst.partition("/")
        header_table, attrs = _table_attr(table)
        attrs.append(("RTA_DST", address))
        if oif is not None:
            attrs.append(("RTA_OIF", oif))
        if gateway is not None:
            attrs.append(("RTA_GATEWAY", gateway))
        if priority:
            attrs.append(("RTA_PRIORITY", priority))
        body = RTMSG.pack({"family": socket.AF_INET, "dst_len": int(length or 32), "tos": tos,
                           "table": header_table, "proto": proto, "scope": scope, "type": type,
                           "flags": flags})
        kind, request_flags = (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE) if op == "replace" \
            else (RTM_DELROUTE, 0)
        self.request(kind, body + encode_attrs(ROUTE_SCHEMA, attrs), request_flags)

    # ---- policy rules ----

    def rules(self) -> list[Message]:
        body = FIB_RULE_HDR.pack({"family": socket.AF_INET})
        return [_decode(r, FIB_RULE_HDR, RULE_SCHEMA) for r in self.request(RTM_GETRULE, body, NLM_F_DUMP)]

    def rule(self, op: Literal["add", "del"], *, table: int, priority: int, action: int,
             src: str | None = None, src_len: int = 0, dst: str | None = None, dst_len: int = 0,
             iifname: str | None = None, oifname: str | None = None, fwmark: int | None = None) -> None:
        """Adds (EEXIST when the same rule exists) or deletes (ENOENT when none matches) an IPv4 rule."""
        attrs: list[Attr] = [("FRA_TABLE", table), ("FRA_PRIORITY", priority)]
        if src is not None:
            attrs.append(("FRA_SRC", src))
        if dst is not None:
            attrs.append(("FRA_DST", dst))
        if iifname:
            attrs.append(("FRA_IIFNAME", iifname))
        if oifname:
            attrs.append(("FRA_OIFNAME", oifname))
        if fwmark is not None:
            attrs.append(("FRA_FWMARK", fwmark))
        body = FIB_RULE_HDR.pack({"family": socket.AF_INET, "src_len": src_len, "dst_len": dst_len,
                                  "table": table if table <= RT_TABLE_MAX_HEADER else 0,
                                  "action": action})
        kind, request_flags = (RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL) if op == "add" else (RTM_DELRULE, 0)
        self.request(kind, body + encode_attrs(RULE_SCHEMA, attrs), request_flags)

    # ---- neighbours ----

    def neighbours(self, ifindex: int) -> list[Message]:
        body = NDMSG.pack({"family": socket.AF_INET})
        msgs = [_decode(r, NDMSG, NEIGH_SCHEMA) for r in self.request(RTM_GETNEIGH, body, NLM_F_DUMP)]
        return [m for m in msgs if m["ifindex"] == ifindex]

    def replace_neighbour(self, ifindex: int, dst: str, lladdr: str, state: int) -> None:
        body = NDMSG.pack({"family": socket.AF_INET, "ifindex": ifindex, "state": state})
        attrs = encode_attrs(NEIGH_SCHEMA, [("NDA_DST", dst), ("NDA_LLADDR", lladdr)])
        self.request(RTM_NEWNEIGH, body + attrs, NLM_F_CREATE | NLM_F_REPLACE)


def table_of(msg: Message) -> int:
    """A route's or a rule's table: the attribute when present (ids above 255), else the header's."""
    value = msg.get_attr("RTA_TABLE") or msg.get_attr("FRA_TABLE") or msg["table"]
    return int(value)
