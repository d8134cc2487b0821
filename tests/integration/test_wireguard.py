"""The userspace WireGuard backend for real: two emulated nodes peered over a veth underlay, each with
netns + veth + wireguard-go set up by the kernel layer, checked with ping, `wg`, `ip` and `ss`."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from sandbox.testkit.hosts import Node, link_nodes
from sandbox.testkit.resources import SAMPLE_TUNNEL
from services.common.keys import generate, public_key_of
from services.common.tunnelspec import TunnelSpec
from services.netagent.config import AgentConfig
from services.netagent.kernel import netns, routes, veth
from services.netagent.kernel.wireguard import (
    DeviceError,
    PeerConfig,
    UserspaceDevice,
    open_device,
)

pytestmark = pytest.mark.root

NS = AgentConfig().netns_name


@dataclass
class Side:
    node: Node
    cfg: AgentConfig
    key: str
    underlay_ip: str
    local_ip: str  # an address inside this side's netns, in the range the other side routes to us

    @property
    def pub(self) -> str:
        return public_key_of(self.key)


def spec_towards(peer: Side, pod: str, ext: str) -> TunnelSpec:
    return TunnelSpec.parse(**{**SAMPLE_TUNNEL, "remote_pod_cidr": pod, "remote_nat_pod_cidr": "",
                               "remote_external_cidr": ext, "remote_nat_external_cidr": "",
                               "endpoint": peer.underlay_ip, "public_key": peer.pub,
                               "persistent_keepalive": 0})


def bring_up(cfg: AgentConfig, key: str | None, spec: TunnelSpec) -> tuple[str, bool, float]:
    """What the agent does at start and on EnsureTunnel; returns (implementation, changed, seconds)."""
    t = time.perf_counter()
    netns.ensure_netns(cfg.netns_name)
    veth.ensure_veth(cfg)
    dev = open_device(cfg)
    changed = dev.ensure(key, cfg.listen_port, cfg.mtu)
    peer = PeerConfig(spec.public_key, IPv4Address(spec.endpoint), spec.endpoint_port, spec.allowed_ips,
                      spec.persistent_keepalive)
    if not any(peer.matches(p) for p in dev.peers()):
        dev.set_peer(peer)
        changed = True
    changed |= routes.sync_netns_routes(cfg, [spec])
    changed |= routes.sync_host_routing(cfg, [spec])
    return dev.implementation, changed, time.perf_counter() - t


@dataclass
class Pair:
    a: Side
    b: Side
    spec_a: TunnelSpec  # on A, towards B
    spec_b: TunnelSpec
    setup_seconds: tuple[float, float]


@pytest.fixture
def pair(node_factory: Callable[[str], Node]) -> Iterator[Pair]:
    na, nb = node_factory("wga"), node_factory("wgb")
    link_nodes(na, "192.168.50.1", nb, "192.168.50.2")
    cfg = AgentConfig(wireguard_implementation="userspace")
    a = Side(na, dataclasses.replace(cfg, tunnel_ip=IPv4Address("169.254.0.1")), generate().private_key,
             "192.168.50.1", "10.101.0.1")
    b = Side(nb, dataclasses.replace(cfg, tunnel_ip=IPv4Address("169.254.0.1")), generate().private_key,
             "192.168.50.2", "10.102.0.1")
    spec_a = spec_towards(b, "10.102.0.0/16", "10.202.0.0/16")
    spec_b = spec_towards(a, "10.101.0.0/16", "10.211.0.0/16")
    impl_a, _, ta = na.call(bring_up, a.cfg, a.key, spec_a)
    impl_b, _, tb = nb.call(bring_up, b.cfg, b.key, spec_b)
    assert impl_a == impl_b == "userspace"
    for side in (a, b):
        side.node.exec_in_netns(NS, ["ip", "addr", "add", f"{side.local_ip}/32", "dev", "lo"])
    yield Pair(a, b, spec_a, spec_b, (ta, tb))


def ping(side: Side, target: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return side.node.exec_in_netns(
        NS, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", "-I", side.local_ip, target], check=False)


def wg_dump(side: Side) -> list[list[str]]:
    return [line.split("\t") for line in
            side.node.exec_in_netns(NS, ["wg", "show", side.cfg.wg_device, "dump"]).stdout.splitlines()]


def snapshot(side: Side) -> dict[str, str]:
    """Kernel and WireGuard state without counters and timers (which move with traffic)."""
    n = side.node

    def gw(*argv: str) -> str:
        return n.exec_in_netns(NS, list(argv)).stdout

    dump = wg_dump(side)
    peers = ["\t".join(p[:4] + p[7:]) for p in dump[1:]]  # drop handshake time and rx/tx bytes
    return {
        "host links": re.sub(r"\d+: lo.*", "", n.run("ip", "-d", "link").stdout),
        "host routes": n.run("ip", "-4", "route", "show", "table", "all").stdout,
        "host rules": n.run("ip", "rule").stdout,
        "gw links": gw("ip", "-d", "link"),
        "gw addrs": gw("ip", "-4", "addr"),
        "gw routes": gw("ip", "-4", "route", "show", "table", "all"),
        "wg device": "\t".join(dump[0][1:]),  # public key, port, fwmark (the private key is dropped)
        "wg peers": "\n".join(peers),
        "daemons": str(n.pids("wireguard-go")),
    }


def test_tunnel_carries_traffic_and_handshakes(pair: Pair) -> None:
    a, b = pair.a, pair.b
    out = ping(a, b.local_ip)
    assert out.returncode == 0 and " 0% packet loss" in out.stdout, out.stdout + out.stderr
    back = ping(b, a.local_ip)
    assert back.returncode == 0, back.stdout

    show = a.node.exec_in_netns(NS, ["wg", "show"]).stdout
    assert f"peer: {b.pub}" in show and "latest handshake" in show
    assert "endpoint: 192.168.50.2:5871" in show and "allowed ips: 10.102.0.0/16, 10.202.0.0/16" in show
    peers = a.node.call(lambda: open_device(a.cfg).peers())
    assert [p.public_key for p in peers] == [b.pub]
    assert peers[0].last_handshake and abs(time.time() - peers[0].last_handshake) < 60
    assert peers[0].rx_bytes > 0 and peers[0].tx_bytes > 0
    assert a.node.call(lambda: open_device(a.cfg).public_key()) == a.pub

    # The split: the cleartext device lives in the gateway netns, its UDP socket on the node.
    assert "liqo.tunnel" not in a.node.run("ip", "link").stdout
    gw_links = a.node.exec_in_netns(NS, ["ip", "link"]).stdout
    assert re.search(r"liqo\.tunnel: <[^>]*UP[^>]*> mtu 1340", gw_links)
    assert "169.254.0.1/32" in a.node.exec_in_netns(NS, ["ip", "addr", "show", "liqo.tunnel"]).stdout
    assert re.search(r"0\.0\.0\.0:5871 .*wireguard-go", a.node.run("ss", "-uanp").stdout)
    assert ":5871" not in a.node.exec_in_netns(NS, ["ss", "-uan"]).stdout
    # The remote side's routes went through liqo.tunnel, so it is the tunnel that carried the ping.
    assert "10.102.0.0/16 dev liqo.tunnel scope link" in a.node.exec_in_netns(NS, ["ip", "route"]).stdout


def test_a_second_ensure_changes_nothing(pair: Pair) -> None:
    a = pair.a
    assert ping(a, pair.b.local_ip).returncode == 0
    before = snapshot(a)
    impl, changed, seconds = a.node.call(bring_up, a.cfg, a.key, pair.spec_a)
    assert (impl, changed) == ("userspace", False)
    assert snapshot(a) == before
    print(f"setup (cold) {pair.setup_seconds[0]:.3f}s / {pair.setup_seconds[1]:.3f}s; "
          f"converged ensure {seconds:.3f}s")


def test_a_fresh_agent_adopts_the_running_daemon_without_dropping_traffic(pair: Pair) -> None:
    a, b = pair.a, pair.b
    assert ping(a, b.local_ip).returncode == 0
    daemons = a.node.pids("wireguard-go")
    assert len(daemons) == 1
    # Continuous traffic while a new "agent" (fresh process, fresh objects, no key given) adopts.
    pinger = a.node.popen(["ip", "netns", "exec", NS, "ping", "-i", "0.05", "-c", "60", "-W", "1",
                           "-I", a.local_ip, b.local_ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    time.sleep(0.5)
    auto = dataclasses.replace(a.cfg, wireguard_implementation="auto")
    impl, changed, _ = a.node.call(bring_up, auto, None, pair.spec_a)
    out, _ = pinger.communicate(timeout=30)
    assert (impl, changed) == ("userspace", False)
    assert a.node.pids("wireguard-go") == daemons  # same daemon, not restarted
    assert a.node.call(lambda: open_device(auto).public_key()) == a.pub  # key kept
    received = int(re.search(r"(\d+) received", out).group(1))  # type: ignore[union-attr]
    assert received >= 59, out


def test_peer_removal_and_full_teardown_leave_nothing(pair: Pair) -> None:
    a, b = pair.a, pair.b
    dev = a.cfg

    def remove_peer() -> tuple[bool, bool, int]:
        d = open_device(dev)
        return d.remove_peer(b.pub), d.remove_peer(b.pub), len(d.peers())

    assert a.node.call(remove_peer) == (True, False, 0)
    assert ping(a, b.local_ip, count=1).returncode != 0  # no peer: no traffic

    def teardown() -> None:
        routes.sync_netns_routes(dev, [])
        routes.remove_host_routing(dev)
        open_device(dev, create=False).delete()
        veth.delete_veth(dev)
        netns.delete_netns(dev.netns_name)

    a.node.call(teardown)
    n = a.node
    assert "liqo" not in n.run("ip", "link").stdout
    assert n.run("ip", "netns", "list").stdout == ""
    assert str(dev.table_id) not in n.run("ip", "rule").stdout
    assert n.run("ip", "route", "show", "table", str(dev.table_id)).stdout == ""
    assert n.pids("wireguard-go") == []
    assert n.run("ls", "-A", "/run/wireguard").stdout == ""
    with pytest.raises(FileNotFoundError):
        n.call(open_device, dev, False)


def test_remove_all_peers_keeps_device_and_key(pair: Pair) -> None:
    a = pair.a

    def fence() -> tuple[int, str | None, bool]:
        d = open_device(a.cfg)
        d.remove_all_peers()
        return len(d.peers()), d.public_key(), d.ensure(None, a.cfg.listen_port, a.cfg.mtu)

    assert a.node.call(fence) == (0, a.pub, False)
    assert "liqo.tunnel" in a.node.exec_in_netns(NS, ["ip", "link"]).stdout


def test_a_daemon_that_never_answers_is_a_clear_error(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("wgbad")
    cfg = AgentConfig(wireguard_implementation="userspace")

    def start() -> str:
        netns.ensure_netns(cfg.netns_name)
        dev = UserspaceDevice(cfg, binary="true", start_timeout=0.5)  # exits 0, never opens a socket
        try:
            dev.ensure(None, cfg.listen_port, cfg.mtu)
        except DeviceError as e:
            return str(e)
        return "no error"

    t = time.monotonic()
    msg = node.call(start)
    assert "/var/run/wireguard/liqo.tunnel.sock did not answer within 0.5s" in msg
    assert time.monotonic() - t < 10


def test_bad_key_is_rejected_before_anything_is_created(node_factory: Callable[[str], Node]) -> None:
    node = node_factory("wgkey")
    cfg = AgentConfig(wireguard_implementation="userspace")

    def ensure_bad() -> str:
        netns.ensure_netns(cfg.netns_name)
        try:
            open_device(cfg).ensure("not-a-key", cfg.listen_port, cfg.mtu)
        except ValueError as e:
            return str(e)
        return "accepted"

    msg = node.call(ensure_bad)
    assert "base64" in msg and "not-a-key" not in msg
    assert node.pids("wireguard-go") == []
    assert "liqo.tunnel" not in node.exec_in_netns(NS, ["ip", "link"]).stdout


def test_reset_peer_restarts_the_handshake_and_never_hides_the_peer(pair: Pair) -> None:
    """What the agent's handshake nudge does: remove and re-add in one request. A reader polling
    `wg` throughout never sees the peer missing; its handshake starts over and traffic comes back."""
    a, b = pair.a, pair.b
    assert ping(a, b.local_ip).returncode == 0
    spec = pair.spec_a
    peer = PeerConfig(spec.public_key, IPv4Address(spec.endpoint), spec.endpoint_port, spec.allowed_ips,
                      spec.persistent_keepalive)
    reader = a.node.popen(["ip", "netns", "exec", NS, "sh", "-c",
                           "while :; do wg show liqo.tunnel peers | grep -c . ; done"],
                          stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)

        def reset() -> float | None:
            d = open_device(a.cfg)
            for _ in range(30):
                d.reset_peer(peer)
            (state,) = d.peers()
            return state.last_handshake

        assert a.node.call(reset) is None, "the handshake state starts over"
        time.sleep(0.2)
    finally:
        reader.kill()
        counts, _ = reader.communicate(timeout=10)
    assert len(counts.split()) > 20 and set(counts.split()) == {"1"}, counts
    assert ping(a, b.local_ip).returncode == 0, "a new handshake"
