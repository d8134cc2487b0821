"""--wireguard-go-mode external without a kernel: the wait for the wireguard container's daemon
(bounded, a clear DeviceError naming the container), never a spawn or a delete; and the link events
that wake the agent when the device vanishes or comes back."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from services.netagent.config import AgentConfig
from services.netagent.kernel.netlink.codec import encode_attrs, encode_message
from services.netagent.kernel.netlink.rtnl import IFINFOMSG, LINK_SCHEMA, RTM_DELLINK, RTM_NEWLINK
from services.netagent.kernel.wireguard import DeviceError, UserspaceDevice
from services.netagent.kernel.wireguard import userspace as us
from services.netagent.kernel.wireguard.watch import LinkWatcher, link_events

CFG = AgentConfig(wireguard_go_mode="external")


class FakeUapi:
    def __init__(self, alive: Iterator[bool]) -> None:
        self._alive = alive

    def alive(self) -> bool:
        return next(self._alive)


def external(monkeypatch: pytest.MonkeyPatch, links: list[tuple[str | None, str | None]],
             alive: list[bool], timeout: float = 0.3) -> UserspaceDevice:
    seq = iter(links + [links[-1]] * 1000)
    monkeypatch.setattr(us.wglink, "find_link", lambda *_a: next(seq))
    monkeypatch.setattr(us.wglink, "delete_link", lambda *_a: pytest.fail("external mode deleted a link"))
    dev = UserspaceDevice(CFG, spawn=False, start_timeout=timeout, host=lambda: None, gw=lambda: None)
    monkeypatch.setattr(dev, "_start_daemon", lambda: pytest.fail("external mode started wireguard-go"))
    dev.uapi = FakeUapi(iter(alive + [alive[-1]] * 1000))  # type: ignore[assignment]
    return dev


def test_no_tun_and_no_socket_fails_at_once_naming_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = external(monkeypatch, [(None, None)], [False], timeout=30)
    with pytest.raises(DeviceError) as e:
        dev._wait_external()
    assert "wireguard container" in str(e.value) and "liqo-netagent wireguard" in str(e.value)


def test_a_tun_whose_socket_never_answers_fails_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = external(monkeypatch, [("host", "tun")], [False], timeout=0.2)
    with pytest.raises(DeviceError, match=r"its socket does not answer after 0\.2s"):
        dev._wait_external()


def test_a_daemon_coming_up_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = external(monkeypatch, [("host", "tun")], [False, False, False, True], timeout=5)
    dev._wait_external()  # returns once the socket answers


def test_a_kernel_device_is_refused_not_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = external(monkeypatch, [("netns", "wireguard")], [False])
    with pytest.raises(DeviceError, match="not the TUN of wireguard-go"):
        dev._wait_external()


def _msg(kind: int, name: str) -> bytes:
    """A link event as pyroute2 encodes it (an implementation independent of ours)."""
    m: Any = ifinfmsg()
    m["header"]["type"] = kind
    m["attrs"] = [("IFLA_IFNAME", name)]
    m.encode()
    return bytes(m.data)


def _event(kind: int, name: str | None, index: int = 7) -> bytes:
    """A link event as the kernel sends it: ifinfomsg, then the name among other attributes."""
    attrs: list[tuple[str, Any]] = [("IFLA_MTU", 1420), ("IFLA_ADDRESS", "02:00:00:00:00:07")]
    if name is not None:
        attrs.insert(0, ("IFLA_IFNAME", name))
    body = IFINFOMSG.pack({"index": index}) + encode_attrs(LINK_SCHEMA, attrs)
    return encode_message(kind, 0, 0, body)


def test_link_events_name_the_links() -> None:
    data = _msg(RTM_NEWLINK, "liqo.tunnel") + _msg(RTM_DELLINK, "eth0")
    assert link_events(data) == [(RTM_NEWLINK, "liqo.tunnel"), (RTM_DELLINK, "eth0")]


def test_link_events_skip_other_messages_and_nameless_links() -> None:
    new_addr = encode_message(20, 0, 0, bytes(24))  # RTM_NEWADDR: not a link event
    data = (_event(RTM_NEWLINK, "liqo.tunnel") + new_addr + _event(RTM_DELLINK, None)
            + _event(RTM_DELLINK, "liqo.tunnel", 9))
    assert link_events(data) == [(RTM_NEWLINK, "liqo.tunnel"), (RTM_DELLINK, "liqo.tunnel")]
    assert link_events(data[:-3]) == [(RTM_NEWLINK, "liqo.tunnel")]  # a truncated last message: dropped
    assert link_events(b"") == []


@pytest.mark.parametrize(("where", "events", "reason"), [
    ("host", [(RTM_NEWLINK, "liqo.tunnel")], "liqo.tunnel appeared in the host namespace"),
    ("host", [(RTM_DELLINK, "liqo.tunnel")], ""),  # leaving the host: the move into the netns
    ("netns", [(RTM_DELLINK, "liqo.tunnel")], "liqo.tunnel vanished from liqo-netns"),
    ("netns", [(RTM_NEWLINK, "liqo.tunnel")], ""),  # arriving in the netns: the agent's own move
    ("netns", [(RTM_DELLINK, "eth0"), (RTM_DELLINK, "liqo.tunnel")], "liqo.tunnel vanished from liqo-netns"),
    ("host", [(RTM_NEWLINK, "eth0")], ""),
])
def test_the_watcher_wakes_for_its_device_only(where: str, events: list[tuple[int, str]],
                                               reason: str) -> None:
    """What LinkWatcher reads off its socket (one datagram per event, as the kernel multicasts them)."""
    assert _read_from(KERNEL, where, events) == reason


@pytest.mark.parametrize("where", ["host", "netns"])
def test_the_watcher_ignores_events_not_from_the_kernel(where: str) -> None:
    """Another process with CAP_NET_ADMIN can write to the watcher's socket: only the kernel counts."""
    events = [(RTM_NEWLINK, "liqo.tunnel"), (RTM_DELLINK, "liqo.tunnel")]
    assert _read_from(KERNEL, where, events)  # the same datagrams from the kernel do wake it
    assert _read_from(4242, where, events) == ""


KERNEL = 0  # the netlink port id the kernel sends from


class _From:
    """A datagram socket whose `recvfrom` names `port` as the netlink sender."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock, self.port = sock, port

    def recvfrom(self, size: int, flags: int = 0) -> tuple[bytes, tuple[int, int]]:
        return self.sock.recv(size, flags), (self.port, 0)


def _read_from(port: int, where: str, events: list[tuple[int, str]]) -> str:
    watcher = LinkWatcher("liqo.tunnel", "liqo-netns", lambda _reason: None)
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        for kind, name in events:
            kernel.send(_event(kind, name))
        return watcher._read(_From(ours, port), where)  # type: ignore[arg-type]
