"""The netagent on kernel WireGuard (runs in the kernel guest only: tests/kernel/conftest.py).

Two emulated nodes with the same pod CIDR (10.0.0.0/16): K forces `--wireguard-implementation
kernel`, U forces `userspace` (wireguard-go), so every test here is also a mixed peering. K sees U's
pods as 10.60.0.0/16, U sees K's as 10.80.0.0/16. The kernel-to-kernel path, fencing, SIGKILL
restarts and removal run on the same guest from tests/integration (the default "auto" picks the
kernel there, which `test_auto_picks_the_kernel_module` proves).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from sandbox.testkit.hosts import Node, Pod, link_nodes
from sandbox.testkit.netagent import NetAgent, activate
from sandbox.testkit.nodes import NodeFactory
from sandbox.testkit.resources import SAMPLE_OWNER, overlapping_tunnel
from sandbox.testkit.traffic import ping_ok
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import generate, public_key_of

pytestmark = pytest.mark.root

ID_K, ID_U = "aaaaaaaa-1111-4111-8111-00000000000a", "bbbbbbbb-2222-4222-8222-00000000000b"
UNDERLAY_K, UNDERLAY_U = "192.0.2.1", "192.0.2.2"
K_SEES_U, U_SEES_K = "10.60.2.7", "10.80.1.5"  # each pod as the other cluster reaches it


def test_the_guest_has_the_wireguard_module() -> None:
    assert Path("/sys/module/wireguard").is_dir(), "the guest must load the wireguard module"


def test_auto_picks_the_kernel_module(node_factory: Callable[[str], Node], tmp_path: Path) -> None:
    node = node_factory("auto")
    with NetAgent(node, tmp_path) as agent:
        activate(agent, generate().private_key)
        info = agent.api.GetInfo(pb.GetInfoRequest())
        assert info.wireguard_implementation == pb.WIREGUARD_IMPLEMENTATION_KERNEL
        link = node.exec_in_netns("liqo-netns", ["ip", "-d", "link", "show", "liqo.tunnel"]).stdout
        assert "wireguard" in link.split("\n", 2)[-1], link
        assert node.pids("wireguard-go") == [], "no wireguard-go beside the kernel device"


@dataclass
class Side:
    node: Node
    agent: NetAgent
    pod: Pod
    key: str
    implementation: int

    @property
    def pub(self) -> str:
        return public_key_of(self.key)

    def wg(self, *what: str) -> str:
        return self.node.exec_in_netns("liqo-netns", ["wg", "show", "liqo.tunnel", *what]).stdout


@dataclass
class Mixed:
    k: Side
    u: Side

    def ensure(self) -> None:
        self.k.agent.api.EnsureTunnel(pb.EnsureTunnelRequest(
            tunnel=overlapping_tunnel(cluster_id=ID_U, endpoint=UNDERLAY_U, public_key=self.u.pub,
                                      seen_as=80, sees=60), owner=SAMPLE_OWNER))
        self.u.agent.api.EnsureTunnel(pb.EnsureTunnelRequest(
            tunnel=overlapping_tunnel(cluster_id=ID_K, endpoint=UNDERLAY_K, public_key=self.k.pub,
                                      seen_as=60, sees=80), owner=SAMPLE_OWNER))

    def status(self, side: Side) -> pb.TunnelStatus:
        (entry,) = side.agent.api.ListTunnels(pb.ListTunnelsRequest()).tunnels
        return entry.status


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    work = tmp_path_factory.mktemp("mixed")
    with NodeFactory() as nodes:
        nk, nu = nodes.make("k"), nodes.make("u")
        link_nodes(nk, UNDERLAY_K, nu, UNDERLAY_U)
        sides: list[Side] = []
        try:
            for node, pod_ip, impl, flag in (
                (nk, "10.0.1.5", pb.WIREGUARD_IMPLEMENTATION_KERNEL, "kernel"),
                (nu, "10.0.2.7", pb.WIREGUARD_IMPLEMENTATION_USERSPACE, "userspace"),
            ):
                pod = node.add_pod("web", f"{pod_ip}/16", "10.0.255.254")
                agent = NetAgent(node, work / node.name, args=(
                    "--wireguard-implementation", flag, "--resync-interval", "1"))
                sides.append(Side(node, agent, pod, generate().private_key, impl))
                agent.start()
                activate(agent, sides[-1].key)
                assert agent.api.GetInfo(pb.GetInfoRequest()).wireguard_implementation == impl
            m = Mixed(*sides)
            m.ensure()
            yield m
        finally:
            for s in sides:
                s.agent.close()


def refence(m: Mixed) -> None:
    """Both sides lose their peers (standby) and get them back: the next packet starts a new handshake."""
    for side in (m.k, m.u):
        epoch = side.agent.api.GetInfo(pb.GetInfoRequest()).epoch
        side.agent.api.SetRole(pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=epoch, reason="test"))
        assert side.wg("peers").strip() == ""
        activate(side.agent, side.key, epoch=epoch + 1)


@pytest.mark.parametrize("first", ["kernel", "wireguard-go"])
def test_kernel_and_wireguard_go_peer_both_ways(mixed: Mixed, first: str) -> None:
    """Whichever side sends first (and so initiates the handshake), pods with the same CIDR reach
    each other through the remapped addresses, in both directions."""
    refence(mixed)
    src, dst, target = ((mixed.k, mixed.u, K_SEES_U) if first == "kernel" else (mixed.u, mixed.k, U_SEES_K))
    wait_for(f"{first} side's pod reaches the other", lambda: ping_ok(src.pod, target, count=2), 20)
    back = U_SEES_K if src is mixed.k else K_SEES_U
    assert ping_ok(dst.pod, back, count=3), "the reverse direction"
    assert mixed.k.wg("latest-handshakes").split()[1] != "0", "the kernel peer has a handshake"


def test_status_is_read_through_netlink(mixed: Mixed) -> None:
    """Handshake age and byte counters of a kernel peer come from the generic netlink family and
    agree with what `wg` (the same family) reports."""
    wait_for("tunnel up", lambda: ping_ok(mixed.k.pod, K_SEES_U, count=2), 20)
    wait_for("Connected", lambda: mixed.status(mixed.k).state == pb.TUNNEL_STATE_CONNECTED, 20)
    before, read_at = mixed.status(mixed.k), time.time()
    (_, rx, tx) = mixed.k.wg("transfer").split()
    handshake = int(mixed.k.wg("latest-handshakes").split()[1])
    assert ping_ok(mixed.k.pod, K_SEES_U, count=3)
    after = mixed.status(mixed.k)
    assert before.HasField("handshake_age") and 0 <= before.handshake_age.ToSeconds() < 180
    # `wg` prints whole seconds; the age is as of the listing.
    assert abs((read_at - before.handshake_age.ToNanoseconds() / 1e9) - handshake) < 2
    assert 0 < before.rx_bytes <= int(rx) < after.rx_bytes and 0 < before.tx_bytes <= int(tx) < after.tx_bytes
    assert before.endpoint_ip == UNDERLAY_U and list(before.allowed_ips) == ["10.60.0.0/16", "10.70.0.0/16"]


def test_key_change_rekeys_the_kernel_device(mixed: Mixed) -> None:
    old_pub = mixed.k.pub
    mixed.k.key = generate().private_key
    r = mixed.k.agent.api.ConfigureDevice(pb.ConfigureDeviceRequest(private_key=mixed.k.key))
    assert r.public_key == mixed.k.pub != old_pub
    assert mixed.k.wg("public-key").strip() == mixed.k.pub, "the kernel device holds the new key"
    assert not ping_ok(mixed.k.pod, K_SEES_U, count=2), "the peer still expects the old key"
    mixed.ensure()  # U learns K's new public key (what the tunnel controller does)
    wait_for("traffic with the new key", lambda: ping_ok(mixed.k.pod, K_SEES_U, count=2), 20)
    assert ping_ok(mixed.u.pod, U_SEES_K, count=2)


def test_peer_change_replaces_the_kernel_peer(mixed: Mixed) -> None:
    """U's key changes: K's kernel device drops the old peer and holds the new one, nothing else."""
    old_pub = mixed.u.pub
    mixed.u.key = generate().private_key
    mixed.u.agent.api.ConfigureDevice(pb.ConfigureDeviceRequest(private_key=mixed.u.key))
    mixed.ensure()
    assert mixed.k.wg("peers").split() == [mixed.u.pub] != [old_pub]
    wait_for("traffic to the new peer", lambda: ping_ok(mixed.k.pod, K_SEES_U, count=2), 20)
    assert ping_ok(mixed.u.pod, U_SEES_K, count=2)


def test_concurrent_calls_never_fail_and_the_agent_never_forks(mixed: Mixed) -> None:
    """GetInfo, ListTunnels and EnsureTunnel from six threads, 40 calls each, with resyncs every
    second: no call fails and every listing sees the handshake and the bytes. (pyroute2's `netns=`
    forked a child per netlink call; inside the threaded server they died of SIGSEGV, and a few
    seconds of such polling always showed it.)"""
    wait_for("tunnel up", lambda: ping_ok(mixed.k.pod, K_SEES_U, count=2), 20)
    api = mixed.k.agent.api
    errors: list[str] = []
    listings: list[pb.TunnelStatus] = []

    def poll(call: Callable[[], object]) -> None:
        for _ in range(40):
            try:
                call()
            except grpc.RpcError as e:
                errors.append(f"{e.code().name}: {e.details()}")

    def listing() -> None:
        listings.append(api.ListTunnels(pb.ListTunnelsRequest()).tunnels[0].status)

    calls = [lambda: api.GetInfo(pb.GetInfoRequest()), listing, mixed.ensure]
    threads = [threading.Thread(target=poll, args=(c,)) for c in calls * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(listings) == 80
    assert all(s.HasField("handshake_age") and s.rx_bytes > 0 for s in listings), "a listing lost the peer"
    log = mixed.k.agent.log_tail(10**7)
    assert "child process" not in log and "stopping" not in log, log[-2000:]
    assert mixed.k.agent.running


def test_a_peer_without_handshake_is_reset_in_one_message(mixed: Mixed) -> None:
    """A tunnel to an endpoint nobody answers: the agent re-programs the fresh peer at 0.5, 1, 2 and
    4 s (removal and re-addition in one netlink message), and a reader polling the kernel
    throughout never sees it missing."""
    dead = pb.Tunnel(cluster_id="dead-peer", local_pod_cidr="10.0.0.0/16",
                     local_external_cidr="10.201.0.0/16",
                     remote_pod_cidr="10.99.0.0/16", remote_external_cidr="10.202.0.0/16",
                     endpoint="192.0.2.99", endpoint_port=5871, public_key=generate().public_key)
    api = mixed.k.agent.api
    nudges_before = mixed.k.agent.log_tail(10**7).count("peer re-programmed")
    reader = mixed.k.node.popen(["ip", "netns", "exec", "liqo-netns", "sh", "-c",
                                 "while :; do wg show liqo.tunnel peers | grep -c . ; done"],
                                stdout=subprocess.PIPE, text=True)
    try:
        api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=dead, owner=SAMPLE_OWNER))
        time.sleep(5)
    finally:
        reader.kill()
        counts, _ = reader.communicate(timeout=10)
        api.DeleteTunnel(pb.DeleteTunnelRequest(cluster_id="dead-peer", owner=SAMPLE_OWNER))
    seen = counts.split()
    assert len(seen) > 20 and set(seen[seen.index("2"):]) == {"2"}, counts  # from its creation on
    assert mixed.k.agent.log_tail(10**7).count("peer re-programmed") - nudges_before >= 3
