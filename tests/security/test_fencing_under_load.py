"""Fencing is never delayed and nothing starves (issue 8's attacks 4 and 5): a real netagent in a node
with a realistic uplink (sandbox/testkit/uplink.py), with an EnsureTunnel stuck in a resolver that
never answers, and either large NAT maps being written or floods of streams on every controller's
socket, still demotes at once.

- SetRole(STANDBY) answers in < 100 ms and the peers are gone when it returns.
- An ACTIVE grant that lapses removes the peers within 0.5 s of its expiry.
- Under 32 idle WatchRole streams and 4 WatchTunnelStatus streams at min_interval 1 ns on each role
  socket, the streams over the per-socket bound get RESOURCE_EXHAUSTED, SetRole and GetInfo answer
  within 100 ms on every socket, and the agent stays nearly idle (its CPU from /proc/<pid>/stat).

The node's /etc/resolv.conf (bind-mounted in its private mount namespace only) points at a UDP
"DNS server" inside the node that reads queries and never replies.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sandbox.testkit.hosts import Node, dies_with_us
from sandbox.testkit.netagent import ROLES, NetAgent, activate
from sandbox.testkit.resources import SAMPLE_OWNER, SAMPLE_TUNNEL
from sandbox.testkit.uplink import PROTECTED_ARGS, agent_pid, cpu_seconds, uplink
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.keys import generate
from services.common.tunnel_pb import spec_to_pb
from services.common.tunnelspec import TunnelSpec
from services.netagent.server import MAX_STREAMS

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

SILENT_DNS = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.1', 53))\n"
    "while True:\n"
    "    s.recv(4096)\n"
)
HANGING_NAME = "gw.never-answers.test"
STANDBY_REFUSAL = "agent is standby"  # what a mutation sent while standby is told
NAT_ENTRIES = 40000
DEMOTIONS = 7
FLOOD_WATCH_ROLE = 32  # idle WatchRole streams per role socket
FLOOD_STATUS = 4  # WatchTunnelStatus streams at min_interval 1 ns per role socket


def ttl(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def tunnel(cid: str, n: int, endpoint: str) -> pb.Tunnel:
    spec = dict(SAMPLE_TUNNEL)
    spec.update(
        cluster_id=cid,
        remote_nat_pod_cidr=f"10.{60 + n}.0.0/16",
        remote_nat_external_cidr=f"10.{80 + n}.0.0/16",
        endpoint=endpoint,
        public_key=generate().public_key,
    )
    return spec_to_pb(TunnelSpec.parse(**spec))


def nat_map(shift: int) -> dict[str, str]:
    """NAT_ENTRIES mappings into 10.201.0.0/16 (the sample's external CIDR), moved by `shift`."""
    probe = TunnelSpec.parse(**SAMPLE_TUNNEL).local_probe_address
    base = int(IPv4Address("10.201.1.0"))
    out: dict[str, str] = {}
    i = 0
    while len(out) < NAT_ENTRIES:
        new = IPv4Address(base + shift + i)
        i += 1
        if new == probe:
            continue
        out[str(IPv4Address(int(IPv4Address("10.0.1.0")) + len(out)))] = str(new)
    return out


@dataclass
class Lab:
    node: Node
    agent: NetAgent

    def peers(self) -> list[str]:
        out = self.node.exec_in_netns("liqo-netns", ["wg", "show", "all", "peers"]).stdout
        return [line for line in out.splitlines() if line.strip()]


@pytest.fixture
def lab(tmp_path: Path, node_factory: Callable[[str], Node]) -> Iterator[Lab]:
    node = node_factory("fence")
    uplink(node)
    node.popen(dies_with_us([sys.executable, "-c", SILENT_DNS]))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:2\n")
    # Only inside the node's private mount namespace; `-n`: no utab bookkeeping in the host's /run.
    node.run("mount", "-n", "--bind", str(resolv), "/etc/resolv.conf")
    agent = NetAgent(node, tmp_path / "agent", args=(*PROTECTED_ARGS, "--resync-interval", "60"))
    try:
        agent.start()
        yield Lab(node, agent)
    finally:
        agent.close()


class Background:
    """Calls that keep the agent busy: one EnsureTunnel stuck in DNS (sent on `socket`, by default the
    operator's), and NAT maps rewritten in a loop when `nat_tunnel` is given."""

    def __init__(self, lab: Lab, nat_tunnel: pb.Tunnel | None, socket: Path | None = None) -> None:
        self.lab = lab
        self.nat_tunnel = nat_tunnel
        self.socket = socket or lab.agent.socket
        self.stop = threading.Event()
        self.hang_result: list[str] = []
        self.nat_calls = 0
        self.threads = [threading.Thread(target=self._hang, daemon=True)]
        if nat_tunnel is not None:
            self.threads.append(threading.Thread(target=self._nat, daemon=True))

    def __enter__(self) -> Background:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _hang(self) -> None:
        """Keeps an EnsureTunnel stuck in DNS at all times: each gives up after the agent's resolution
        timeout (UNAVAILABLE) and is sent again at once, as a controller retrying would."""
        req = pb.EnsureTunnelRequest(tunnel=tunnel("dns-hang", 9, HANGING_NAME), owner="tenant-c/tep-c")
        channel = grpc.insecure_channel(f"unix:{self.socket}")
        stub = pb_grpc.NetAgentServiceStub(channel)
        while not self.stop.is_set():
            try:
                stub.EnsureTunnel(req, timeout=45)
                self.hang_result.append("OK")
            except grpc.RpcError as e:
                self.hang_result.append(f"{e.code().name}: {e.details()}")
                if "being resolved already" in (e.details() or ""):
                    time.sleep(0.5)  # every resolver thread is stuck: the agent refused at once
                elif e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    time.sleep(0.05)  # standby (demoted or lapsed by the test): refused at once
        channel.close()

    def _nat(self) -> None:
        # Serialized once, sent as bytes on a channel of their own: building or serializing a
        # 40 000-entry message takes this process's GIL for tens of ms, which would show up as
        # client-side latency of the SetRole being measured.
        assert self.nat_tunnel is not None
        cid = self.nat_tunnel.cluster_id
        reqs = [
            pb.SetNatMappingsRequest(cluster_id=cid, mappings=nat_map(k)).SerializeToString() for k in (0, 7)
        ]
        channel = grpc.insecure_channel(f"unix:{self.lab.agent.socket}")
        send = channel.unary_unary("/liqo.netagent.v1.NetAgentService/SetNatMappings")
        while not self.stop.is_set():
            try:
                send(reqs[self.nat_calls % 2], timeout=30)
            except grpc.RpcError:
                time.sleep(0.05)  # standby meanwhile
            self.nat_calls += 1
        channel.close()

    def assert_hang_gave_up(self, since: float) -> None:
        """The stuck call gave up after the agent's bounded wait, never succeeded, and was re-sent.
        A call sent while the test holds the agent standby is refused at once, as it must be."""
        waited = time.monotonic() - since
        assert self.hang_result, f"no stuck call gave up in {waited:.1f} s"
        assert all(r.startswith("UNAVAILABLE") or r.startswith(f"FAILED_PRECONDITION: {STANDBY_REFUSAL}")
                   for r in self.hang_result), self.hang_result
        assert any("no DNS answer" in r for r in self.hang_result), self.hang_result


def three_tunnels(lab: Lab) -> list[pb.Tunnel]:
    """ACTIVE (epoch 1) with three tunnels, their peers programmed."""
    activate(lab.agent, generate().private_key, epoch=1, ttl=600)
    tunnels = [tunnel(f"cluster-{n}", n, f"192.0.2.{10 + n}") for n in range(3)]
    for t in tunnels:
        lab.agent.api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=t, owner=SAMPLE_OWNER))
    assert len(lab.peers()) == 3
    return tunnels


def demote_repeatedly(lab: Lab, settle: Callable[[], None], stub: pb_grpc.NetAgentServiceStub) -> list[float]:
    """DEMOTIONS times: SetRole(STANDBY) timed (the peers must be gone when it returns), then ACTIVE
    again (epoch 1); ends STANDBY. Returns the latencies in seconds."""
    latencies = []
    for _ in range(DEMOTIONS):
        wait_for("peers programmed", lambda: len(lab.peers()) == 3, 5)
        settle()
        t0 = time.perf_counter()
        resp = stub.SetRole(pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=1, reason="test"), timeout=5)
        latencies.append(time.perf_counter() - t0)
        assert resp.role == pb.ROLE_STANDBY
        assert lab.peers() == [], "peers left after SetRole(STANDBY) returned"
        stub.SetRole(pb.SetRoleRequest(role=pb.ROLE_ACTIVE, epoch=1, ttl=ttl(600)), timeout=5)
    stub.SetRole(pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=1, reason="test"), timeout=5)
    return latencies


def lapse_after(lab: Lab, stub: pb_grpc.NetAgentServiceStub, during: Callable[[], None] = lambda: None
                ) -> float:
    """Grants ACTIVE (epoch 2) for 3 s and returns how long after the grant's expiry the peers were
    gone (asserted within 0.5 s, and not early); `during` runs between polls."""
    granted = stub.SetRole(pb.SetRoleRequest(role=pb.ROLE_ACTIVE, epoch=2, ttl=ttl(3.0), reason="short"),
                           timeout=5)
    wait_for("peers back while ACTIVE", lambda: len(lab.peers()) == 3, 2.5)
    expires = granted.expires_at.ToNanoseconds() / 1e9
    gone_at = None
    while time.time() < expires + 3:
        if not lab.peers():  # the first poll that sees them gone: removed before this moment
            gone_at = time.time()
            break
        during()
        time.sleep(0.02)
    assert gone_at is not None, "peers still programmed 3 s after the grant lapsed"
    lapse = gone_at - expires
    assert lapse < 0.5, f"peers removed {lapse:.3f} s after the TTL lapsed"
    assert lapse > -0.05, f"peers removed {-lapse:.3f} s before the TTL lapsed"
    return lapse


def test_demotion_and_expiry_are_not_delayed_by_dns_or_iptables(lab: Lab) -> None:
    api = lab.agent.api
    tunnels = three_tunnels(lab)

    with Background(lab, tunnels[0]) as bg:
        wait_for("NAT writes under way", lambda: bg.nat_calls >= 2, 60)
        assert "OK" not in bg.hang_result
        hang_started = time.monotonic()

        # 1. SetRole(STANDBY) while DNS hangs and iptables is being written, a few times.
        latencies = demote_repeatedly(lab, lambda: time.sleep(0.2), api)  # let a NAT write get under way
        worst, median = max(latencies), sorted(latencies)[DEMOTIONS // 2]
        # The target is the median; one slow answer on a shared 2-core machine is scheduling, not
        # waiting: a demotion that waited for the stuck call would take the 5 s DNS timeout.
        assert median < 0.1, f"SetRole(STANDBY) median {median * 1000:.0f} ms: {latencies}"
        assert worst < 1.0, f"SetRole(STANDBY) took up to {worst * 1000:.0f} ms: {latencies}"

        # 2. A short grant lapses: peers gone within 0.5 s of the expiry, whatever is in flight.
        calls_before = bg.nat_calls
        lapse = lapse_after(lab, api)
        assert bg.nat_calls > calls_before, "NAT writes should have been in flight during the grant"
        bg.assert_hang_gave_up(hang_started)
        print(
            f"SetRole(STANDBY) median {median * 1000:.1f} ms, "
            f"max {worst * 1000:.1f} ms over {DEMOTIONS}; peers gone {lapse * 1000:.0f} ms after "
            f"the TTL lapsed; {bg.nat_calls} NAT writes of {NAT_ENTRIES} entries meanwhile"
        )
    info = api.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert info.role == pb.ROLE_STANDBY and info.epoch == 2


class Flood:
    """On each role socket (what a compromised controller holds): FLOOD_STATUS WatchTunnelStatus
    streams at min_interval 1 ns, then FLOOD_WATCH_ROLE idle WatchRole streams, none read further.
    `admitted[role]`, `exhausted[role]` count the WatchRole streams served and refused."""

    def __init__(self, agent: NetAgent, clusters: set[str]) -> None:
        self.agent = agent
        self.clusters = clusters
        self.channels: list[grpc.Channel] = []
        self.calls: list[Any] = []
        self.admitted: dict[str, int] = {}
        self.exhausted: dict[str, int] = {}

    def __enter__(self) -> Flood:
        try:
            for role in ROLES:
                ch = grpc.insecure_channel(f"unix:{self.agent.role_socket(role)}")
                self.channels.append(ch)
                stub = pb_grpc.NetAgentServiceStub(ch)
                fast = pb.WatchTunnelStatusRequest(min_interval=Duration(nanos=1))
                for _ in range(FLOOD_STATUS):
                    call = stub.WatchTunnelStatus(fast)
                    self.calls.append(call)
                    assert next(call).status.cluster_id in self.clusters
                self.admitted[role] = self.exhausted[role] = 0
                for _ in range(FLOOD_WATCH_ROLE):
                    call = stub.WatchRole(pb.WatchRoleRequest())
                    self.calls.append(call)
                    try:
                        assert next(call).role == pb.ROLE_ACTIVE
                        self.admitted[role] += 1
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                        self.exhausted[role] += 1
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for c in self.calls:
            c.cancel()
        for ch in self.channels:
            ch.close()


def test_fencing_and_starvation_under_load(lab: Lab) -> None:
    """A DNS-stuck EnsureTunnel in flight and stream floods on every role socket, together: the
    flood is bounded per socket, unary calls answer within 100 ms on every socket, the agent's CPU
    stays low, SetRole(STANDBY) answers in < 100 ms (median) and a lapsed grant's peers go within
    0.5 s."""
    tunnels = three_tunnels(lab)
    pid = agent_pid(lab.agent)
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(2)
    idle = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)

    channels = {role: grpc.insecure_channel(f"unix:{lab.agent.role_socket(role)}") for role in ROLES}
    stubs = {role: pb_grpc.NetAgentServiceStub(ch) for role, ch in channels.items()}
    labeler = stubs["labeler"]
    worst: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        s = time.perf_counter()
        r = fn()
        worst[name] = max(worst.get(name, 0.0), time.perf_counter() - s)
        return r

    renew = pb.SetRoleRequest(role=pb.ROLE_ACTIVE, epoch=1, ttl=Duration(seconds=600), reason="renew")

    def unary_round(active: bool) -> None:
        r = timed("SetRole", lambda: labeler.SetRole(renew, timeout=2)) if active else None
        assert r is None or r.role == pb.ROLE_ACTIVE  # the role never lapses while renewed
        for role, stub in stubs.items():
            info = timed(f"GetInfo ({role} socket)",
                         lambda stub=stub: stub.GetInfo(pb.GetInfoRequest(), timeout=2))
            assert info.role in (pb.ROLE_ACTIVE, pb.ROLE_STANDBY)

    try:
        with Background(lab, None, socket=lab.agent.role_socket("tunnel")) as bg, \
                Flood(lab.agent, {t.cluster_id for t in tunnels}) as flood:
            hang_started = time.monotonic()
            bound = MAX_STREAMS - FLOOD_STATUS
            for role in ROLES:
                got = (flood.admitted[role], flood.exhausted[role])
                assert got == (bound, FLOOD_WATCH_ROLE - bound), role

            # 1. Three seconds of renewals and reads under the flood: all fast, the agent nearly idle.
            t1, c1 = time.monotonic(), cpu_seconds(pid)
            for _ in range(15):
                unary_round(active=True)
                time.sleep(0.2)
            quiet = (cpu_seconds(pid) - c1) / (time.monotonic() - t1)
            # 76 % with 4 fast streams before the floor and the stream bound; three sockets flooded
            # here measured 7-12 %.
            assert quiet < 0.25, f"agent CPU {quiet:.1%} under the flood (idle {idle:.1%})"

            # 2. SetRole(STANDBY), several times, reads between.
            latencies = demote_repeatedly(lab, lambda: unary_round(active=False), labeler)
            slowest, median = max(latencies), sorted(latencies)[DEMOTIONS // 2]
            assert median < 0.1, f"SetRole(STANDBY) median {median * 1000:.0f} ms: {latencies}"
            assert slowest < 1.0, f"SetRole(STANDBY) took up to {slowest * 1000:.0f} ms: {latencies}"

            # 3. A short grant lapses, reads answering meanwhile.
            lapse = lapse_after(lab, labeler, lambda: unary_round(active=False))
            whole = (cpu_seconds(pid) - c1) / (time.monotonic() - t1)
            bg.assert_hang_gave_up(hang_started)
            assert "OK" not in bg.hang_result
            for role, stub in stubs.items():  # SetRole and GetInfo still answer
                assert stub.GetInfo(pb.GetInfoRequest(), timeout=2).role == pb.ROLE_STANDBY, role
            assert labeler.SetRole(pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=2), timeout=2).epoch == 2
            assert all(v < 0.25 for v in worst.values()), worst  # never starved, whatever was going on
        print(
            f"\nunder the flood ({sum(flood.admitted.values())} WatchRole streams served, "
            f"{sum(flood.exhausted.values())} refused) and a DNS-stuck EnsureTunnel: "
            f"SetRole(STANDBY) median {median * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms over "
            f"{DEMOTIONS}; peers gone {lapse * 1000:.0f} ms after the TTL lapsed; worst "
            + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in worst.items())
            + f"; agent CPU idle {idle:.1%}, flood + renewals {quiet:.1%}, whole window {whole:.1%}",
            file=sys.stderr,
        )
    finally:
        for ch in channels.values():
            ch.close()
