"""Issue 8's reproduced attacks, replayed against a real netagent on a node with a realistic uplink
(192.168.77.10/24, default via .1, a CNI route 10.0.1.0/24): every one is refused with
INVALID_ARGUMENT and changes nothing; the node's traffic never resolves into table 18952; poison-pill
names survive resync (no drift repair) and a restart; odd bytes others left in Liqo's chains are
repaired, never a crash, and `cleanup` works whatever the kernel holds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import LIQO_NETNS, NetAgent, activate, kernel_snapshot
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import generate

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

CLEANUP = (sys.executable, "-m", "services.netagent.main", "cleanup")
ARGS = ("--pod-cidr", "10.0.0.0/16", "--external-cidr", "10.201.0.0/16", "--service-cidr", "10.96.0.0/12",
        "--resync-interval", "0.3")
# What must never resolve into Liqo's table: the gateway, a same-subnet host, a public address, the
# metadata service, a service IP, a pod behind the CNI route, Liqo's own next hop.
NODE_DESTINATIONS = ("192.168.77.1", "192.168.77.50", "8.8.8.8", "169.254.169.254", "10.96.0.10",
                     "10.0.1.5", "169.254.100.2")
DRIFT = "repaired drift"
RESYNC_FAILED = "resync failed"


def uplink(node: Node) -> None:
    for scope in ("all", "default"):  # no IPv6 link-local routes appearing while we compare snapshots
        node.sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", "1")
    node.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    for dev in ("eth0", "eth0-peer"):
        node.run("ip", "link", "set", dev, "up")
    node.run("ip", "addr", "add", "192.168.77.10/24", "dev", "eth0")
    node.run("ip", "route", "add", "default", "via", "192.168.77.1")
    node.run("ip", "route", "add", "10.0.1.0/24", "via", "192.168.77.20")


def snapshot(node: Node) -> dict[str, list[str]]:
    """The kernel snapshot, order-insensitive (WireGuard lists peers in no stable order), without the
    IPv6 link-local routes the kernel adds on its own once a link is up."""
    def ipv6_auto(part: str, line: str) -> bool:
        return "routes" in part and ("fe80::" in line or "ff00::" in line)

    return {
        part: sorted(line for line in text.splitlines() if not ipv6_auto(part, line))
        for part, text in kernel_snapshot(node).items()
    }


def tunnel(**over: Any) -> pb.Tunnel:
    args: dict[str, Any] = dict(
        cluster_id="rome",
        cluster_name="rome",
        local_pod_cidr="10.0.0.0/16",
        local_external_cidr="10.201.0.0/16",
        remote_pod_cidr="10.0.0.0/16",
        remote_nat_pod_cidr="10.60.0.0/16",
        remote_external_cidr="10.201.0.0/16",
        remote_nat_external_cidr="10.70.0.0/16",
        endpoint="172.31.0.2",
        endpoint_port=5871,
        public_key=generate().public_key,
    )
    args.update(over)
    return pb.Tunnel(**args)


def ensure_request(**over: Any) -> pb.EnsureTunnelRequest:
    """EnsureTunnel of `tunnel(**over)`, claimed by a TunnelEndpoint of its own cluster's tenant."""
    t = tunnel(**over)
    return pb.EnsureTunnelRequest(tunnel=t, owner=f"liqo-tenant-{t.cluster_id}/tep")


@pytest.fixture
def agent(tmp_path: Path, node_factory: Callable[[str], Node]) -> Iterator[NetAgent]:
    node = node_factory("protect")
    uplink(node)
    a = NetAgent(node, tmp_path, args=ARGS)
    try:
        a.start()
        activate(a, generate().private_key)
        yield a
    finally:
        a.close()


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    return str(e.value.details())


def in_liqo_table(node: Node) -> list[str]:
    out = []
    for dst in NODE_DESTINATIONS:
        got = node.run("ip", "route", "get", dst, check=False)
        if "18952" in got.stdout:
            out.append(f"{dst}: {got.stdout.strip()}")
    return out


ATTACK_TUNNELS: list[tuple[dict[str, Any], str]] = [
    ({"local_pod_cidr": "100.64.0.0/16", "local_external_cidr": "100.65.0.0/16",
      "remote_nat_pod_cidr": "8.0.0.0/5", "remote_nat_external_cidr": "128.0.0.0/2"}, "local_pod_cidr"),
    ({"remote_nat_pod_cidr": "192.0.0.0/3", "remote_nat_external_cidr": "32.0.0.0/3"}, "remote_nat_pod_cidr"),
    ({"remote_nat_pod_cidr": "169.254.169.254/32"}, "remote_nat_pod_cidr"),
    ({"remote_nat_pod_cidr": "169.254.100.2/32"}, "remote_nat_pod_cidr"),
    ({"remote_nat_external_cidr": "0.0.0.0/8"}, "remote_nat_external_cidr"),
    ({"remote_nat_pod_cidr": "192.168.77.0/24"}, "remote_nat_pod_cidr"),
    ({"remote_nat_pod_cidr": "10.96.0.0/16"}, "remote_nat_pod_cidr"),
    ({"local_pod_cidr": "10.9.0.0/16", "remote_nat_pod_cidr": ""}, "local_pod_cidr"),  # our pods as remote
    ({"endpoint": "127.0.0.1"}, "endpoint"),
    ({"endpoint": "localhost"}, "endpoint"),  # a name resolving to loopback
    ({"endpoint": "169.254.169.254"}, "endpoint"),
    ({"endpoint": "0.0.0.0"}, "endpoint"),
    ({"endpoint": "255.255.255.255"}, "endpoint"),
    ({"endpoint": "192.168.77.10"}, "endpoint"),  # the node itself
    ({"cluster_id": "abc\n"}, "cluster_id"),
    ({"cluster_name": "a\x0bb"}, "cluster_name"),
    ({"cluster_name": "a\x1cb"}, "cluster_name"),
    ({"cluster_name": "a\u2028b"}, "cluster_name"),
]


def test_attacks_are_refused_and_change_nothing(agent: NetAgent) -> None:
    node = agent.node
    assert in_liqo_table(node) == []
    before = snapshot(node)
    for over, field in ATTACK_TUNNELS:
        request = ensure_request(**over)
        details = refused(lambda request=request: agent.api.EnsureTunnel(request))
        assert field in details, (over, details)
    refused(lambda: agent.api.ConfigureDevice(pb.ConfigureDeviceRequest(private_key=generate().private_key,
                                                                         listen_port=53)))
    assert snapshot(node) == before
    assert in_liqo_table(node) == []
    assert agent.api.ListTunnels(pb.ListTunnelsRequest()).tunnels == []

    # A legitimate tunnel still works, and its NAT map may not DNAT outside this cluster.
    agent.api.EnsureTunnel(ensure_request())
    agent.api.EnsureTunnel(ensure_request(
        cluster_id="oslo", cluster_name="oslo", remote_nat_pod_cidr="10.80.0.0/16",
        remote_nat_external_cidr="10.90.0.0/16", endpoint="172.31.0.3"))
    assert in_liqo_table(node) == []
    before = snapshot(node)
    for target in ("169.254.169.254", "192.168.77.10", "169.254.0.1", "127.0.0.1", "10.80.0.5"):
        details = refused(lambda target=target: agent.api.SetNatMappings(pb.SetNatMappingsRequest(
            cluster_id="rome", mappings={"10.0.0.5": "10.201.0.5", target: "10.201.0.6"})))
        assert f"mappings['{target}']" in details, details
    assert snapshot(node) == before
    agent.api.SetNatMappings(pb.SetNatMappingsRequest(
        cluster_id="rome", mappings={"10.0.0.5": "10.201.0.5", "169.254.0.1": "10.201.0.1"}))  # Liqo's own
    assert DRIFT not in agent.log_tail(100_000)


POISON_NAMES = ("\U0001f600" * 63, "東京 ☃ \u200d", "x" * 63, "")


def test_poison_pill_names_survive_resync_and_restart(agent: NetAgent) -> None:
    node = agent.node
    for i, name in enumerate(POISON_NAMES):
        agent.api.EnsureTunnel(ensure_request(
            cluster_id=f"c{i}", cluster_name=name, remote_nat_pod_cidr=f"10.{60 + i}.0.0/16",
            remote_nat_external_cidr=f"10.{70 + i}.0.0/16", endpoint=f"172.31.0.{10 + i}"))
    before = snapshot(node)
    assert all(line.isascii() for line in before["iptables"])
    time.sleep(1.5)  # several resyncs
    log = agent.log_tail(100_000)
    assert DRIFT not in log and RESYNC_FAILED not in log, log
    assert snapshot(node) == before

    agent.stop()
    agent.start()
    time.sleep(1.0)
    log = agent.log_tail(100_000)
    assert DRIFT not in log and RESYNC_FAILED not in log, log
    assert snapshot(node) == before
    names = {t.tunnel.cluster_id: t.tunnel.cluster_name
             for t in agent.api.ListTunnels(pb.ListTunnelsRequest()).tunnels}
    assert names == {f"c{i}": name for i, name in enumerate(POISON_NAMES)}


def test_odd_bytes_left_by_others_are_repaired_and_cleanup_works(agent: NetAgent) -> None:
    node = agent.node
    agent.api.EnsureTunnel(ensure_request())
    good = snapshot(node)

    def ipt(*argv: str) -> None:
        node.exec_in_netns(LIQO_NETNS, ["iptables-legacy", *argv])

    cut = "x" + "\U0001f600" * 64  # 257 bytes: iptables cuts it inside a character
    ipt("-t", "filter", "-I", "LIQO-FORWARD", "1", "-m", "comment", "--comment", cut, "-j", "DROP")
    ipt("-t", "nat", "-A", "LIQO-POSTROUTING", "-m", "comment", "--comment", 'q"u\\o\x0bte', "-j", "RETURN")
    ipt("-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment", 'a "b"\x1c', "-j", "LIQO-PREROUTING")
    saved = subprocess.run(["nsenter", "-t", str(node.pid), "-n", "-m", "ip", "netns", "exec", LIQO_NETNS,
                            "iptables-legacy-save"], capture_output=True, check=True).stdout
    with pytest.raises(UnicodeDecodeError):
        saved.decode()  # the kernel now holds bytes that are not UTF-8

    def repaired() -> bool:
        try:
            return snapshot(node) == good
        except UnicodeDecodeError:  # still poisoned: the kit's tools read text
            return False

    deadline = time.monotonic() + 10
    while not repaired() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert repaired(), agent.log_tail()
    log = agent.log_tail(100_000)
    assert DRIFT in log and RESYNC_FAILED not in log, log

    # Poison again, then a restart adopts and repairs it, and cleanup removes everything.
    ipt("-t", "filter", "-I", "LIQO-FORWARD", "1", "-m", "comment", "--comment", cut, "-j", "DROP")
    ipt("-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment", 'a "b"\x1c', "-j", "LIQO-PREROUTING")
    agent.stop()
    agent.start()
    assert repaired()
    ipt("-t", "filter", "-I", "LIQO-FORWARD", "1", "-m", "comment", "--comment", cut, "-j", "DROP")
    agent.stop()
    node.run(*CLEANUP, "--socket", agent.socket_path, "--state-path", agent.state_path)
    assert LIQO_NETNS not in node.run("ip", "netns", "list").stdout
    assert "18952" not in node.run("ip", "rule", "show").stdout
