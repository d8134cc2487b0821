"""Fencing is never delayed by slow work: a real netagent in a node, with an EnsureTunnel stuck in a
resolver that never answers and large NAT maps being written, still demotes at once.

- SetRole(STANDBY) answers in < 100 ms and the peers are gone when it returns.
- An ACTIVE grant that lapses removes the peers within 0.5 s of its expiry.

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

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sandbox.testkit.hosts import Node, dies_with_us
from sandbox.testkit.netagent import NetAgent, activate
from sandbox.testkit.resources import SAMPLE_OWNER, SAMPLE_TUNNEL
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import generate
from services.common.tunnel_pb import spec_to_pb
from services.common.tunnelspec import TunnelSpec

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
NAT_ENTRIES = 40000
DEMOTIONS = 7


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
    node.run("ip", "link", "set", "lo", "up")
    node.popen(dies_with_us([sys.executable, "-c", SILENT_DNS]))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:2\n")
    # Only inside the node's private mount namespace; `-n`: no utab bookkeeping in the host's /run.
    node.run("mount", "-n", "--bind", str(resolv), "/etc/resolv.conf")
    agent = NetAgent(node, tmp_path / "agent", args=("--resync-interval", "60"))
    try:
        agent.start()
        yield Lab(node, agent)
    finally:
        agent.close()


class Background:
    """Calls that keep the agent busy: one EnsureTunnel stuck in DNS, NAT maps rewritten in a loop."""

    def __init__(self, lab: Lab, nat_tunnel: pb.Tunnel) -> None:
        self.lab = lab
        self.nat_tunnel = nat_tunnel
        self.stop = threading.Event()
        self.hang_result: list[str] = []
        self.nat_calls = 0
        self.threads = [
            threading.Thread(target=self._hang, daemon=True),
            threading.Thread(target=self._nat, daemon=True),
        ]

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
        while not self.stop.is_set():
            try:
                self.lab.agent.api.EnsureTunnel(req, timeout=45)
                self.hang_result.append("OK")
            except grpc.RpcError as e:
                self.hang_result.append(f"{e.code().name}: {e.details()}")
                if "being resolved already" in (e.details() or ""):
                    time.sleep(0.5)  # every resolver thread is stuck: the agent refused at once

    def _nat(self) -> None:
        # Serialized once, sent as bytes on a channel of their own: building or serializing a
        # 40 000-entry message takes this process's GIL for tens of ms, which would show up as
        # client-side latency of the SetRole being measured.
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


def test_demotion_and_expiry_are_not_delayed_by_dns_or_iptables(lab: Lab) -> None:
    api = lab.agent.api
    activate(lab.agent, generate().private_key, epoch=1, ttl=600)
    tunnels = [tunnel(f"cluster-{n}", n, f"192.0.2.{10 + n}") for n in range(3)]
    for t in tunnels:
        api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=t, owner=SAMPLE_OWNER))
    assert len(lab.peers()) == 3

    with Background(lab, tunnels[0]) as bg:
        wait_for("NAT writes under way", lambda: bg.nat_calls >= 2, 60)
        assert "OK" not in bg.hang_result
        hang_started = time.monotonic()

        # 1. SetRole(STANDBY) while DNS hangs and iptables is being written, a few times.
        latencies = []
        for _ in range(DEMOTIONS):
            wait_for("peers programmed", lambda: len(lab.peers()) == 3, 5)
            time.sleep(0.2)  # let a NAT write get under way
            t0 = time.perf_counter()
            resp = api.SetRole(pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=1, reason="test"), timeout=5)
            latencies.append(time.perf_counter() - t0)
            assert resp.role == pb.ROLE_STANDBY
            assert lab.peers() == [], "peers left after SetRole(STANDBY) returned"
            api.SetRole(pb.SetRoleRequest(role=pb.ROLE_ACTIVE, epoch=1, ttl=ttl(600)), timeout=5)
        api.SetRole(pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=1, reason="test"), timeout=5)
        worst = max(latencies)
        assert worst < 0.1, f"SetRole(STANDBY) took up to {worst * 1000:.0f} ms: {latencies}"

        # 2. A short grant lapses: peers gone within 0.5 s of the expiry, whatever is in flight.
        granted = api.SetRole(
            pb.SetRoleRequest(role=pb.ROLE_ACTIVE, epoch=2, ttl=ttl(3.0), reason="short"), timeout=5
        )
        wait_for("peers back while ACTIVE", lambda: len(lab.peers()) == 3, 2.5)
        calls_before = bg.nat_calls
        expires = granted.expires_at.ToNanoseconds() / 1e9
        gone_at = None
        while time.time() < expires + 3:
            if not lab.peers():
                gone_at = time.time()
                if gone_at >= expires - 0.05:
                    break
            time.sleep(0.02)
        assert gone_at is not None, "peers still programmed 3 s after the grant lapsed"
        lapse = gone_at - expires
        assert lapse < 0.5, f"peers removed {lapse:.3f} s after the TTL lapsed"
        assert lapse > -0.05, f"peers removed {-lapse:.3f} s before the TTL lapsed"
        assert bg.nat_calls > calls_before, "NAT writes should have been in flight during the grant"
        # The stuck call gave up after the agent's bounded wait, never succeeded, and was re-sent.
        waited = time.monotonic() - hang_started
        assert bg.hang_result, f"no stuck call gave up in {waited:.1f} s"
        assert all(r.startswith("UNAVAILABLE") for r in bg.hang_result), bg.hang_result
        assert any("no DNS answer" in r for r in bg.hang_result), bg.hang_result
        print(
            f"SetRole(STANDBY) median {sorted(latencies)[DEMOTIONS // 2] * 1000:.1f} ms, "
            f"max {worst * 1000:.1f} ms over {DEMOTIONS}; peers gone {lapse * 1000:.0f} ms after "
            f"the TTL lapsed; {bg.nat_calls} NAT writes of {NAT_ENTRIES} entries meanwhile"
        )
    info = api.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert info.role == pb.ROLE_STANDBY and info.epoch == 2
