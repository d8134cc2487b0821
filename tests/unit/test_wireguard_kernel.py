"""The WireGuard backends at their boundaries, without a kernel module: the kernel backend's exact
netlink calls (rtnetlink + the "wireguard" generic netlink family, mocked), the UAPI protocol text
of the userspace backend, backend selection and key handling."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any
from unittest.mock import ANY, MagicMock, call

import pytest
from pyroute2.netlink.generic.wireguard import wgmsg

from services.common.keys import InvalidKey, b64_to_hex, generate, hex_to_b64, public_key_of
from services.netagent.config import AgentConfig
from services.netagent.kernel import netns as kernel_netns
from services.netagent.kernel.netlink.codec import Message, Raw, encode_attrs, encode_message, split_messages
from services.netagent.kernel.netlink.nlsocket import NLM_F_ACK
from services.netagent.kernel.netlink.rtnl import (
    ADDR_SCHEMA,
    IFADDRMSG,
    IFF_UP,
    IFINFOMSG,
    LINK_SCHEMA,
    RTM_NEWLINK,
    _decode,
    decode_link,
)
from services.netagent.kernel.netlink.wireguard import (
    WG_CMD_SET_DEVICE,
    WG_GENL_VERSION,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    decode_device,
    encode_set_device,
)
from services.netagent.kernel.wireguard import (
    DeviceError,
    KernelDevice,
    PeerConfig,
    PeerState,
    UserspaceDevice,
    choose_implementation,
)
from services.netagent.kernel.wireguard import kernel as k
from services.netagent.kernel.wireguard.kernel import kernel_module_available
from services.netagent.kernel.wireguard.uapi import (
    UapiError,
    encode_device_set,
    encode_peer_remove,
    encode_peer_reset,
    encode_peer_set,
    encode_remove_all_peers,
    parse_get,
)

CFG = AgentConfig(wireguard_implementation="kernel")
PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="  # a fixed example key
PUB = public_key_of(PRIV)
PEER = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
ALLOWED = (IPv4Network("10.60.0.0/16"), IPv4Network("10.70.0.0/16"))
WG_FAMILY = 0x15  # a generic netlink family id, as the kernel would have assigned to "wireguard"


# ---- what the kernel answers, as the codec decodes it --------------------------------------------------


def link_message(name: str, kind: str, index: int, mtu: int, up: bool) -> Message:
    """What RtNetlink.link_by_name returns for such a link: the bytes a kernel sends, decoded."""
    body = IFINFOMSG.pack({"index": index, "flags": IFF_UP if up else 0}) + encode_attrs(LINK_SCHEMA, [
        ("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_LINKINFO", [("IFLA_INFO_KIND", kind)]),
    ])
    return decode_link(Raw(RTM_NEWLINK, 0, 1, 0, body))


def addr_message(index: int, address: str, prefixlen: int) -> Message:
    """One entry of RtNetlink.addrs: an IPv4 address, decoded as `addrs` decodes it."""
    body = IFADDRMSG.pack({"family": socket.AF_INET, "prefixlen": prefixlen, "index": index})
    attrs = encode_attrs(ADDR_SCHEMA, [("IFA_LOCAL", address), ("IFA_ADDRESS", address)])
    return _decode(Raw(20, 0, 1, 0, body + attrs), IFADDRMSG, ADDR_SCHEMA)


def _allowed_ip(cidr: str) -> dict[str, Any]:
    addr, _, mask = cidr.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return {"attrs": [["WGALLOWEDIP_A_FAMILY", family],
                      ["WGALLOWEDIP_A_IPADDR", socket.inet_pton(family, addr)],
                      ["WGALLOWEDIP_A_CIDR_MASK", int(mask)]]}


def device_dump(*, listen_port: int | None = None, public_key: str | None = None,
                peers: Sequence[list[list[Any]]] = ()) -> Message:
    """One message of a WG_CMD_GET_DEVICE dump, as decode_device reads it (the bytes are built by
    pyroute2's wgmsg, an implementation independent of ours). A peer: its pyroute2 attributes, with
    WGPEER_A_ALLOWEDIPS given as CIDR strings."""
    msg: Any = wgmsg()
    msg["cmd"], msg["version"], msg["header"]["type"] = 0, WG_GENL_VERSION, WG_FAMILY
    msg["attrs"] = [["WGDEVICE_A_IFINDEX", 7], ["WGDEVICE_A_IFNAME", CFG.wg_device]]
    if listen_port is not None:
        msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", listen_port])
    if public_key is not None:
        msg["attrs"].append(["WGDEVICE_A_PUBLIC_KEY", public_key])
    if peers:
        entries = [{"attrs": [[n, [_allowed_ip(c) for c in v] if n == "WGPEER_A_ALLOWEDIPS" else v]
                              for n, v in p]} for p in peers]
        msg["attrs"].append(["WGDEVICE_A_PEERS", entries])
    msg.encode()
    (raw,) = split_messages(bytes(msg.data))
    return decode_device(raw.body)


# ---- one network namespace's links, behind a recording mock of RtNetlink -------------------------------


@dataclass
class Link:
    kind: str
    index: int
    mtu: int = 1420
    up: bool = False


class Space:
    """One network namespace's links and addresses, behind a MagicMock RtNetlink whose calls are
    recorded. A link moved with set_link(netns_fd=) lands in the space "netns"; the namespace file the
    fd was opened on is kept in `moved_via`."""

    def __init__(self, name: str, spaces: dict[str, Space]) -> None:
        self.name, self.spaces = name, spaces
        self.links: dict[str, Link] = {}
        self.addresses: list[Message] = []
        self.moved_via: list[tuple[int, str]] = []
        spaces[name] = self
        self.ipr = MagicMock(name=f"ipr-{name}")
        self.ipr.__enter__.return_value = self.ipr
        self.ipr.link_by_name.side_effect = self.link_by_name
        self.ipr.link_lookup.side_effect = lambda ifname: [link.index for n, link in self.links.items()
                                                           if n == ifname]
        self.ipr.add_link.side_effect = lambda name, kind, **kw: self.add(name, kind, 7)
        self.ipr.set_link.side_effect = self.set_link
        self.ipr.del_link.side_effect = lambda index: self.links.pop(self._name_of(index))
        self.ipr.addrs.side_effect = lambda index=None: [a for a in self.addresses
                                                         if index in (None, a["index"])]
        self.ipr.add_addr.side_effect = lambda index, address, prefixlen: None

    def add(self, name: str, kind: str, index: int, mtu: int = 1420, up: bool = False) -> None:
        self.links[name] = Link(kind, index, mtu, up)

    def link_by_name(self, name: str) -> Message | None:
        link = self.links.get(name)
        return link_message(name, link.kind, link.index, link.mtu, link.up) if link is not None else None

    def _name_of(self, index: int) -> str:
        return next(n for n, link in self.links.items() if link.index == index)

    def set_link(self, index: int, *, mtu: int | None = None, up: bool | None = None,
                 arp: bool | None = None, netns_fd: int | None = None) -> None:
        name = self._name_of(index)
        if netns_fd is not None:  # the kernel brings a moved link down
            self.moved_via.append((netns_fd, os.readlink(f"/proc/self/fd/{netns_fd}")))
            self.spaces["netns"].links[name] = moved = self.links.pop(name)
            moved.up = False
        if mtu is not None:
            self.links[name].mtu = mtu
        if up is not None:
            self.links[name].up = up


Kernel = tuple[KernelDevice, Space, Space, MagicMock]


@pytest.fixture
def netns_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """What /run/netns/liqo-netns is to the code that moves the link (a plain file here)."""
    path = tmp_path / CFG.netns_name
    path.write_text("")
    monkeypatch.setattr(kernel_netns, "netns_path", lambda name: str(tmp_path / name))  # netns_fd's
    return str(path)


@pytest.fixture
def kernel(netns_file: str) -> Kernel:
    spaces: dict[str, Space] = {}
    host, gw = Space("host", spaces), Space("netns", spaces)
    wg = MagicMock(name="wireguard-genl")
    wg.__enter__.return_value = wg
    wg.info.return_value = [device_dump(listen_port=0)]
    dev = KernelDevice(CFG, host=lambda: host.ipr, gw=lambda: gw.ipr, wg=lambda: wg)
    return dev, host, gw, wg


def mutations(ipr: MagicMock) -> list[Any]:
    return [c for c in ipr.mock_calls if c[0] in ("add_link", "set_link", "del_link", "add_addr")]


def test_kernel_ensure_creates_in_host_moves_then_configures(kernel: Kernel, netns_file: str) -> None:
    dev, host, gw, wg = kernel
    assert dev.ensure(PRIV, 5871, 1340) is True
    assert mutations(host.ipr) == [
        call.add_link("liqo.tunnel", "wireguard"),  # born in the host: UDP socket stays there
        call.set_link(7, mtu=1340, up=True),
        call.set_link(7, netns_fd=ANY),
    ]
    ((fd, target),) = host.moved_via
    assert target == netns_file  # moved into liqo-netns, named by its file
    assert not os.path.exists(f"/proc/self/fd/{fd}") or os.readlink(f"/proc/self/fd/{fd}") != netns_file
    assert mutations(gw.ipr) == [
        call.set_link(7, up=True),  # MTU survived the move, the up state did not
        call.add_addr(7, "169.254.0.1", 32),
    ]
    assert wg.set.call_args_list == [call("liqo.tunnel", private_key=PRIV, listen_port=5871)]
    assert dev.implementation == "kernel"


def test_kernel_ensure_adopts_a_configured_device_writing_nothing(kernel: Kernel) -> None:
    dev, host, gw, wg = kernel
    gw.add("liqo.tunnel", "wireguard", 7, mtu=1340, up=True)
    gw.addresses = [addr_message(7, "169.254.0.1", 32)]
    wg.info.return_value = [device_dump(listen_port=5871, public_key=PUB)]
    assert dev.ensure(PRIV, 5871, 1340) is False
    assert dev.ensure(None, 5871, 1340) is False
    assert mutations(host.ipr) == mutations(gw.ipr) == []
    wg.set.assert_not_called()
    assert dev.public_key() == PUB


def test_kernel_ensure_fixes_only_what_differs(kernel: Kernel) -> None:
    dev, _, gw, wg = kernel
    gw.add("liqo.tunnel", "wireguard", 9, mtu=1420, up=True)
    gw.addresses = [addr_message(9, "169.254.0.1", 32)]
    wg.info.return_value = [device_dump(listen_port=5871, public_key=PUB)]
    assert dev.ensure(PRIV, 6000, 1340) is True
    assert mutations(gw.ipr) == [call.set_link(9, mtu=1340)]
    # key unchanged: not rewritten (None: the message carries no WGDEVICE_A_PRIVATE_KEY)
    assert wg.set.call_args_list == [call("liqo.tunnel", private_key=None, listen_port=6000)]
    sent: Any = wgmsg(encode_message(WG_FAMILY, NLM_F_ACK, 1, encode_set_device(
        *wg.set.call_args.args, **wg.set.call_args.kwargs)))
    sent.decode()
    assert [name for name, _ in sent["attrs"]] == ["WGDEVICE_A_IFNAME", "WGDEVICE_A_LISTEN_PORT"]
    assert sent.get_attr("WGDEVICE_A_LISTEN_PORT") == 6000


def test_kernel_ensure_adds_the_address_only_when_missing(kernel: Kernel) -> None:
    """An address on another link, or of another length, is not the tunnel address."""
    dev, _, gw, wg = kernel
    gw.add("liqo.tunnel", "wireguard", 9, mtu=1340, up=True)
    gw.addresses = [addr_message(9, "169.254.0.1", 24), addr_message(3, "169.254.0.1", 32)]
    wg.info.return_value = [device_dump(listen_port=5871, public_key=PUB)]
    assert dev.ensure(PRIV, 5871, 1340) is True
    assert mutations(gw.ipr) == [call.add_addr(9, "169.254.0.1", 32)]
    wg.set.assert_not_called()


def test_kernel_ensure_replaces_a_userspace_tun(kernel: Kernel) -> None:
    dev, host, gw, _ = kernel
    gw.add("liqo.tunnel", "tun", 4)
    dev.ensure(None, 5871, 1340)
    assert mutations(gw.ipr)[0] == call.del_link(4)
    assert call.add_link("liqo.tunnel", "wireguard") in host.ipr.mock_calls


def test_kernel_rejects_a_bad_key_before_any_call(kernel: Kernel) -> None:
    dev, host, gw, wg = kernel
    with pytest.raises(InvalidKey) as e:
        dev.ensure("c2hvcnQ=", 5871, 1340)
    assert "c2hvcnQ" not in str(e.value)
    assert host.ipr.mock_calls == gw.ipr.mock_calls == wg.mock_calls == []


def test_kernel_peer_messages(kernel: Kernel) -> None:
    dev, _, _, wg = kernel
    dev.set_peer(PeerConfig(PEER, IPv4Address("192.0.2.10"), 5871, ALLOWED, 25))
    assert wg.set.call_args_list[-1] == call("liqo.tunnel", peers=[{
        "public_key": PEER, "endpoint_addr": "192.0.2.10", "endpoint_port": 5871,
        "persistent_keepalive": 25, "allowed_ips": ["10.60.0.0/16", "10.70.0.0/16"],
        "replace_allowed_ips": True,
    }])
    peer_nla: list[list[Any]] = [
        ["WGPEER_A_PUBLIC_KEY", PEER],
        ["WGPEER_A_ENDPOINT", {"addr": "192.0.2.10", "port": 5871}],
        ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
        ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 500000000}],
        ["WGPEER_A_RX_BYTES", 10], ["WGPEER_A_TX_BYTES", 20],
        ["WGPEER_A_ALLOWEDIPS", ["10.60.0.0/16", "10.70.0.0/16", "fd00::/64"]],
    ]
    wg.info.return_value = [device_dump(peers=[peer_nla])]
    (state,) = dev.peers()
    assert state == PeerState(PEER, IPv4Address("192.0.2.10"), 5871, ALLOWED, 25, 1700000000.5, 10, 20)
    assert PeerConfig(PEER, IPv4Address("192.0.2.10"), 5871, ALLOWED[::-1], 25).matches(state)
    assert not PeerConfig(PEER, IPv4Address("192.0.2.11"), 5871, ALLOWED, 25).matches(state)

    assert dev.remove_peer(PEER) is True
    assert wg.set.call_args_list[-1] == call("liqo.tunnel", peers=[{"public_key": PEER, "remove": True}])
    wg.info.return_value = [device_dump()]
    n = wg.set.call_count
    assert dev.remove_peer(PEER) is False and wg.set.call_count == n  # absent: nothing sent


def test_kernel_peers_span_dump_messages_and_skip_ipv6_endpoints(kernel: Kernel) -> None:
    """A large peer list comes in several messages; a peer with an IPv6 endpoint and no handshake yet
    has no endpoint and no last handshake for the agent (which is IPv4 only)."""
    dev, _, _, wg = kernel
    other = generate().public_key
    wg.info.return_value = [
        device_dump(listen_port=5871, peers=[[["WGPEER_A_PUBLIC_KEY", PEER]]]),
        device_dump(peers=[[["WGPEER_A_PUBLIC_KEY", other],
                            ["WGPEER_A_ENDPOINT", {"addr": "fd00::1", "port": 5871}],
                            ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}]]]),
    ]
    assert dev.peers() == [PeerState(PEER, None, None, (), 0, None, 0, 0),
                           PeerState(other, None, None, (), 0, None, 0, 0)]


def test_kernel_remove_all_peers_is_one_message(kernel: Kernel) -> None:
    dev, _, _, wg = kernel
    other = generate().public_key
    wg.info.return_value = [device_dump(peers=[[["WGPEER_A_PUBLIC_KEY", key]] for key in (PEER, other)])]
    dev.remove_all_peers()
    assert wg.set.call_args_list == [call("liqo.tunnel", peers=[
        {"public_key": PEER, "remove": True}, {"public_key": other, "remove": True}])]
    wg.info.return_value = [device_dump()]
    dev.remove_all_peers()
    assert wg.set.call_count == 1  # none left: nothing sent


def test_kernel_reset_peer_is_one_message_with_one_peer_list(kernel: Kernel) -> None:
    """Remove and re-add travel in one WG_CMD_SET_DEVICE, in one WGDEVICE_A_PEERS list (the kernel
    keeps only the last attribute of a type: two lists would lose the removal). The message our codec
    builds is read back by pyroute2's wgmsg, an independent implementation."""
    dev, _, _, wg = kernel
    peer = PeerConfig(PEER, IPv4Address("192.0.2.10"), 5871, ALLOWED, 0)
    dev.reset_peer(peer)
    (sent,) = wg.set.call_args_list
    kwargs = sent.kwargs
    assert sent.args == ("liqo.tunnel",) and kwargs["peers"][0] == {"public_key": PEER, "remove": True}
    assert kwargs.keys() == {"peers"}

    body = encode_set_device("liqo.tunnel", peers=kwargs["peers"])
    decoded: Any = wgmsg(encode_message(WG_FAMILY, NLM_F_ACK, 1, body))
    decoded.decode()
    assert (decoded["cmd"], decoded["version"]) == (WG_CMD_SET_DEVICE, WG_GENL_VERSION)
    assert decoded.get_attr("WGDEVICE_A_IFNAME") == "liqo.tunnel"
    (peers,) = decoded.get_attrs("WGDEVICE_A_PEERS")
    assert [p.get_attr("WGPEER_A_FLAGS") for p in peers] == [WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS]
    assert [p.get_attr("WGPEER_A_PUBLIC_KEY") for p in peers] == [PEER.encode()] * 2
    assert peers[0].get_attr("WGPEER_A_ALLOWEDIPS") is None  # a removal carries nothing else
    assert peers[0].get_attr("WGPEER_A_ENDPOINT") is None
    assert [a["addr"] for a in peers[1].get_attr("WGPEER_A_ALLOWEDIPS")] == ["10.60.0.0/16", "10.70.0.0/16"]
    endpoint = peers[1].get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["family"], endpoint["addr"], endpoint["port"]) == (socket.AF_INET, "192.0.2.10", 5871)
    assert peers[1].get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 0


def test_kernel_genl_socket_is_born_in_the_netns_without_forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyroute2's `WireGuard(netns=...)` forked a child per call to open its socket: inside the
    threaded gRPC server those children died of SIGSEGV. The socket comes from `netns_socket` (a
    thread enters the netns) and the generic netlink client only gets it."""
    sockets: list[tuple[Any, ...]] = []
    made: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_socket(*args: Any) -> str:
        sockets.append(args)
        return "genl-socket"

    def fake_wireguard(*args: Any, **kw: Any) -> MagicMock:
        made.append((args, kw))
        return MagicMock()

    def no_fork() -> int:
        raise AssertionError("forked")

    monkeypatch.setattr(k, "netns_socket", fake_socket)
    monkeypatch.setattr(k, "WireGuard", fake_wireguard)
    monkeypatch.setattr(os, "fork", no_fork)
    KernelDevice(CFG)._wg()
    # NETLINK_GENERIC, close-on-exec (no child process inherits it)
    assert sockets == [("liqo-netns", socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 16)]
    assert made == [(("genl-socket",), {})]


# ---- backend choice -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "existing", "module", "chosen"),
    [
        ("auto", None, True, "kernel"),
        ("auto", None, False, "userspace"),
        ("auto", "tun", True, "userspace"),  # adopt the running userspace dataplane
        ("auto", "wireguard", True, "kernel"),
        ("userspace", None, True, "userspace"),  # forced: never the module, even when loaded
        ("userspace", "wireguard", True, "userspace"),
        ("kernel", None, True, "kernel"),
        ("kernel", "tun", True, "kernel"),
    ],
)
def test_choose_implementation(requested: str, existing: str | None, module: bool, chosen: str) -> None:
    assert choose_implementation(requested, existing, module) == chosen


def test_choose_implementation_errors() -> None:
    with pytest.raises(DeviceError, match="module is not available"):
        choose_implementation("kernel", None, False)
    with pytest.raises(ValueError, match="not in"):
        choose_implementation("boringtun", None, True)


def test_forced_userspace_never_creates_a_kernel_link(tmp_path: Path) -> None:
    """Even with a kernel link present, the userspace backend only deletes it and starts wireguard-go."""
    spaces: dict[str, Space] = {}
    host, gw = Space("host", spaces), Space("netns", spaces)
    gw.add("liqo.tunnel", "wireguard", 3)
    dev = UserspaceDevice(AgentConfig(wireguard_implementation="userspace"), binary="true",
                          socket_dir=str(tmp_path), start_timeout=0.2,
                          host=lambda: host.ipr, gw=lambda: gw.ipr)
    with pytest.raises(DeviceError, match="did not answer"):
        dev.ensure(None, 5871, 1340)
    assert mutations(gw.ipr) == [call.del_link(3)]
    assert not [c for c in host.ipr.mock_calls + gw.ipr.mock_calls
                if c[0] == "add_link" and "wireguard" in (*c.args, *c.kwargs.values())]


def test_kernel_module_detection(tmp_path: Path) -> None:
    sys_root, lib = tmp_path / "sys", tmp_path / "lib"
    (lib / "6.1").mkdir(parents=True)
    assert not kernel_module_available(str(sys_root), str(lib), "6.1")
    (lib / "6.1" / "modules.dep").write_text("kernel/drivers/net/wireguard/wireguard.ko.xz: x.ko\n")
    assert kernel_module_available(str(sys_root), str(lib), "6.1")
    (lib / "6.1" / "modules.dep").write_text("kernel/net/ipv4/udp_tunnel.ko:\n")
    (lib / "6.1" / "modules.builtin").write_text("kernel/drivers/net/wireguard/wireguard.ko\n")
    assert kernel_module_available(str(sys_root), str(lib), "6.1")
    (lib / "6.1" / "modules.builtin").write_text("")
    (sys_root / "module" / "wireguard").mkdir(parents=True)
    assert kernel_module_available(str(sys_root), str(lib), "6.1")


# ---- UAPI text ----------------------------------------------------------------------------------------


def test_uapi_requests() -> None:
    assert encode_device_set(PRIV, 5871) == f"set=1\nprivate_key={b64_to_hex(PRIV)}\nlisten_port=5871\n\n"
    assert encode_device_set(None, 6000) == "set=1\nlisten_port=6000\n\n"
    assert encode_peer_set(PeerConfig(PEER, IPv4Address("192.0.2.10"), 5871, ALLOWED, 0)) == (
        f"set=1\npublic_key={b64_to_hex(PEER)}\nreplace_allowed_ips=true\nendpoint=192.0.2.10:5871\n"
        "persistent_keepalive_interval=0\nallowed_ip=10.60.0.0/16\nallowed_ip=10.70.0.0/16\n\n"
    )
    assert encode_peer_remove(PEER) == f"set=1\npublic_key={b64_to_hex(PEER)}\nremove=true\n\n"
    assert encode_peer_reset(PeerConfig(PEER, IPv4Address("192.0.2.10"), 5871, ALLOWED[:1], 0)) == (
        f"set=1\npublic_key={b64_to_hex(PEER)}\nremove=true\npublic_key={b64_to_hex(PEER)}\n"
        "replace_allowed_ips=true\nendpoint=192.0.2.10:5871\npersistent_keepalive_interval=0\n"
        "allowed_ip=10.60.0.0/16\n\n"
    )
    assert encode_remove_all_peers() == "set=1\nreplace_peers=true\n\n"


def test_uapi_get_reply_is_parsed_and_the_private_key_dropped() -> None:
    reply = (
        f"private_key={b64_to_hex(PRIV)}\nlisten_port=5871\n"
        f"public_key={b64_to_hex(PEER)}\nprotocol_version=1\nendpoint=192.0.2.10:5871\n"
        "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=250000000\n"
        "tx_bytes=404\nrx_bytes=348\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.60.0.0/16\nallowed_ip=10.70.0.0/16\nallowed_ip=fd00::/64\n"
        f"public_key={b64_to_hex(PUB)}\nendpoint=[fd00::1]:5871\nlast_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"
        "errno=0\n\n"
    )
    info = parse_get(reply)
    assert info.public_key == PUB and info.listen_port == 5871
    assert info.peers == (
        PeerState(PEER, IPv4Address("192.0.2.10"), 5871, ALLOWED, 25, 1700000000.25, 348, 404),
        PeerState(PUB, None, None, (), 0, None, 0, 0),
    )
    assert PRIV not in repr(info) and b64_to_hex(PRIV) not in repr(info)
    assert parse_get("listen_port=0\nerrno=0\n\n").public_key is None  # no key set yet


@pytest.mark.parametrize(("reply", "error"), [
    ("errno=22\n\n", UapiError),
    ("listen_port=1\n\n", DeviceError),
    ("garbage\nerrno=0\n\n", DeviceError),
])
def test_uapi_bad_replies(reply: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_get(reply)


def test_uapi_set_over_a_real_socket(tmp_path: Path) -> None:
    """The client's framing against a tiny server speaking the protocol."""
    import threading

    path = str(tmp_path / "wg0.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            buf = b""
            while not buf.endswith(b"\n\n"):
                buf += conn.recv(4096)
            got.append(buf)
            conn.sendall(b"errno=17\n\n")

    t = threading.Thread(target=serve)
    t.start()
    from services.netagent.kernel.wireguard.uapi import UapiClient

    with pytest.raises(UapiError, match="errno=17"):
        UapiClient(path, timeout=2).set(encode_remove_all_peers(), "remove all peers")
    t.join(2)
    srv.close()
    assert got == [b"set=1\nreplace_peers=true\n\n"]


# RFC 7748 section 6.1's X25519 key pairs (Alice's, Bob's), in the RFC's hex; `wg pubkey` derives the
# same public keys from these private keys written in base64.
RFC7748_PAIRS = [
    ("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
     "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
    ("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
     "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"),
]


@pytest.mark.parametrize(("private_hex", "public_hex"), RFC7748_PAIRS)
def test_public_key_of_known_answers(private_hex: str, public_hex: str) -> None:
    assert b64_to_hex(public_key_of(hex_to_b64(private_hex))) == public_hex


def test_public_key_of_known_answer_in_base64() -> None:
    # RFC 7748's Alice, as `wg genkey`/`wg pubkey` write keys.
    assert public_key_of("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=") == (
        "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=")


def test_keys() -> None:
    k = generate().private_key
    assert hex_to_b64(b64_to_hex(k)) == k
    assert public_key_of(PRIV) == PUB and len(PUB) == 44
    for bad in ("", "abc", "c2hvcnQ="):
        with pytest.raises(InvalidKey):
            b64_to_hex(bad)
