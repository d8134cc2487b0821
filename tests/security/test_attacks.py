"""Issue 8's attacks, replayed as one table against a real netagent on a node with a realistic uplink
(sandbox/testkit/uplink.py: 192.168.77.10/24, default via .1, a CNI route 10.0.1.0/24; the agent
knows the cluster's pod, external and service CIDRs and runs with --max-tunnels 3 and
--max-nat-entries 4), each from the socket the compromised controller would hold.

For every row: the gRPC code (INVALID_ARGUMENT and FAILED_PRECONDITION name the field or the owner);
`ip route get` of the node's gateway, a same-subnet host, a public address, the metadata service, a
service IP and a pod behind the CNI route identical to before; the node's own links, rules and
main-table routes unchanged; for a refused call, the whole kernel snapshot, ListTunnels and the state
file unchanged; and the legitimate tenant's tunnel still listed and still updatable. The module ends
with a clean restart (the tunnels adopted, no drift repaired) and `cleanup` leaving the node as it
was before the agent. Fencing delayed and stream starvation are test_fencing_under_load.py's.

Below the table: poison-pill names surviving resync and restart, and odd bytes others left in Liqo's
chains repaired, never a crash.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import LIQO_NETNS
from sandbox.testkit.nodes import NodeFactory
from sandbox.testkit.uplink import (
    DRIFT,
    LEGIT_OWNER,
    NODE_ADDRESS,
    RESYNC_FAILED,
    Secure,
    node_baseline,
    non_liqo_state,
    peers,
    route_gets,
    run_cleanup,
    snapshot,
    start_secure,
    tunnel,
)
from services.api.netagent.v1 import netagent_pb2 as pb
from services.common.keys import generate
from services.common.tunnel_pb import spec_from_pb

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

MAX_TUNNELS = 3
MAX_NAT_ENTRIES = 4
ARGS = ("--resync-interval", "0.3", "--max-tunnels", str(MAX_TUNNELS),
        "--max-nat-entries", str(MAX_NAT_ENTRIES))
OSLO_OWNER = "liqo-tenant-oslo/tep-oslo"
EVIL_OWNER = "liqo-tenant-evil/tep-evil"
EMOJI_NAME = "\U0001f600" * 63
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def target(module_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    """One agent for the whole table: the legitimate tenant "rome", and a second tenant "oslo"."""
    s = start_secure(module_nodes.make, tmp_path_factory.mktemp("attacks"), "attacks", ARGS)
    try:
        s.agent.api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=oslo(), owner=OSLO_OWNER), timeout=30)
        yield s
    finally:
        s.close()


def oslo() -> pb.Tunnel:
    return tunnel(cluster_id="oslo", cluster_name="oslo", remote_nat_pod_cidr="10.80.0.0/16",
                  remote_nat_external_cidr="10.90.0.0/16", endpoint="172.31.0.3")


# ---- the calls ---------------------------------------------------------------------------------------


def ensure(owner: str = EVIL_OWNER, **over: Any) -> Callable[[Secure], object]:
    """EnsureTunnel from the tunnel controller's socket; cluster "evil" unless overridden."""
    def call(s: Secure) -> object:
        fields = {"cluster_id": "evil", "cluster_name": "evil", "remote_nat_pod_cidr": "10.66.0.0/16",
                  "remote_nat_external_cidr": "10.76.0.0/16", **over}
        if fields.pop("legit_key", False):
            fields["public_key"] = s.legit.public_key
        return s.stub("tunnel").EnsureTunnel(pb.EnsureTunnelRequest(tunnel=tunnel(**fields), owner=owner),
                                             timeout=30)
    return call


def delete(cluster_id: str, owner: str, socket: str = "tunnel") -> Callable[[Secure], object]:
    return lambda s: s.stub(socket).DeleteTunnel(pb.DeleteTunnelRequest(cluster_id=cluster_id, owner=owner),
                                                   timeout=30)


def nat(cluster_id: str, mappings: dict[str, str], role: str = "natmap") -> Callable[[Secure], object]:
    return lambda s: s.stub(role).SetNatMappings(pb.SetNatMappingsRequest(cluster_id=cluster_id,
                                                                          mappings=mappings), timeout=30)


def dnat(target_ip: str) -> Callable[[Secure], object]:
    """A NAT map of the legitimate tenant's cluster that DNATs to `target_ip`."""
    return nat("rome", {"10.0.0.5": "10.201.0.5", target_ip: "10.201.0.6"})


def set_role(role: int, epoch: int, ttl: int = 0, socket: str = "labeler") -> Callable[[Secure], object]:
    def call(s: Secure) -> object:
        req = pb.SetRoleRequest(role=role, epoch=epoch, reason="attack")  # type: ignore[arg-type]
        if ttl:
            req.ttl.CopyFrom(Duration(seconds=ttl))
        return s.stub(socket).SetRole(req, timeout=10)
    return call


def configure(listen_port: int = 0, socket: str = "tunnel") -> Callable[[Secure], object]:
    return lambda s: s.stub(socket).ConfigureDevice(
        pb.ConfigureDeviceRequest(private_key=generate().private_key, listen_port=listen_port), timeout=30)


# ---- what some rows prepare, undo or check besides -----------------------------------------------


FILLERS: list[str] = []


def fill_tunnels(s: Secure) -> None:
    """Legitimate tunnels up to --max-tunnels (each accepted)."""
    for n in range(MAX_TUNNELS - len(s.listed())):
        cid = f"filler-{n}"
        s.stub("tunnel").EnsureTunnel(pb.EnsureTunnelRequest(tunnel=tunnel(
            cluster_id=cid, cluster_name=cid, remote_nat_pod_cidr=f"10.{40 + n}.0.0/16",
            remote_nat_external_cidr=f"10.{50 + n}.0.0/16", endpoint=f"172.31.0.{20 + n}"),
            owner=f"liqo-tenant-{cid}/tep"), timeout=30)
        FILLERS.append(cid)
    assert len(s.listed()) == MAX_TUNNELS


def drop_fillers(s: Secure) -> None:
    while FILLERS:
        cid = FILLERS.pop()
        s.stub("tunnel").DeleteTunnel(pb.DeleteTunnelRequest(cluster_id=cid, owner=f"liqo-tenant-{cid}/tep"),
                                      timeout=30)


def one_rome_entry(s: Secure) -> None:
    s.stub("natmap").SetNatMappings(pb.SetNatMappingsRequest(cluster_id="rome",
                                                             mappings={"10.0.0.5": "10.201.0.5"}), timeout=30)


def drop_nat_maps(s: Secure) -> None:
    for cid in ("rome", "oslo"):
        s.stub("natmap").DeleteNatMappings(pb.DeleteNatMappingsRequest(cluster_id=cid), timeout=30)


def reactivate(s: Secure) -> None:
    set_role(pb.ROLE_ACTIVE, 1, 600)(s)
    want = {t.tunnel.public_key for t in s.listed()}
    deadline = time.monotonic() + 5
    while set(peers(s.node)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(peers(s.node)) == want


def survives_resync(s: Secure) -> None:
    """The accepted poison-pill name: listed byte-exactly, and resyncs repair nothing."""
    names = {t.tunnel.cluster_id: t.tunnel.cluster_name for t in s.listed()}
    assert names["emoji"] == EMOJI_NAME
    before = snapshot(s.node)
    assert all(line.isascii() for line in before["iptables"])
    log_at = len(s.agent.log_tail(10**7))
    time.sleep(1.2)  # four resyncs
    log = s.agent.log_tail(10**7)[log_at:]
    assert DRIFT not in log and RESYNC_FAILED not in log, log
    assert snapshot(s.node) == before


def demoted(s: Secure) -> None:
    assert peers(s.node) == [], "peers left after a demotion"
    info = s.agent.api.GetInfo(pb.GetInfoRequest(), timeout=5)
    # a demotion never lowers the epoch, nor adopts an out-of-range one
    assert info.role == pb.ROLE_STANDBY and info.epoch == 1


def nat_counts(**want: int) -> Callable[[Secure], None]:
    def check(s: Secure) -> None:
        got = {t.tunnel.cluster_id: t.nat_mapping_count for t in s.listed()}
        assert {k: got[k] for k in want} == want
    return check


@dataclass(frozen=True)
class Row:
    id: str
    attack: Callable[[Secure], object]
    code: grpc.StatusCode
    names: str = ""  # what the error's details must name (the field, the owner, the flag, the socket)
    setup: Callable[[Secure], None] | None = None
    check: Callable[[Secure], None] | None = None  # after the call, before `undo`
    undo: Callable[[Secure], None] | None = None


ROWS = [
    # (1) traffic capture
    Row("capture-8.0.0.0/5+128.0.0.0/2", ensure(remote_pod_cidr="8.0.0.0/5", remote_nat_pod_cidr="",
                                              remote_external_cidr="128.0.0.0/2",
                                              remote_nat_external_cidr=""),
        INVALID, "remote_pod_cidr"),
    Row("capture-remapped-8.0.0.0/5+128.0.0.0/2", ensure(remote_nat_pod_cidr="8.0.0.0/5",
                                                       remote_nat_external_cidr="128.0.0.0/2"),
        INVALID, "remote_nat_pod_cidr"),
    Row("capture-made-up-local-cidrs+8.0.0.0/5", ensure(
        local_pod_cidr="100.64.0.0/16", local_external_cidr="100.65.0.0/16",
        remote_nat_pod_cidr="8.0.0.0/5", remote_nat_external_cidr="128.0.0.0/2"), INVALID, "local_pod_cidr"),
    Row("capture-192.0.0.0/3+32.0.0.0/3", ensure(remote_nat_pod_cidr="192.0.0.0/3",
                                               remote_nat_external_cidr="32.0.0.0/3"),
        INVALID, "remote_nat_pod_cidr"),
    Row("capture-metadata-169.254.169.254/32", ensure(remote_nat_pod_cidr="169.254.169.254/32"),
        INVALID, "remote_nat_pod_cidr"),
    Row("capture-own-pod-cidr-as-remote", ensure(local_pod_cidr="10.9.0.0/16", remote_pod_cidr="10.0.0.0/16",
                                                 remote_nat_pod_cidr=""), INVALID, "local_pod_cidr"),
    Row("capture-own-pod-cidr-remapped-as-remote", ensure(remote_nat_pod_cidr="10.0.0.0/16"),
        INVALID, "remote_nat_pod_cidr"),
    Row("capture-node-subnet", ensure(remote_nat_pod_cidr="192.168.77.0/24"), INVALID, "remote_nat_pod_cidr"),
    Row("capture-service-cidr", ensure(remote_nat_pod_cidr="10.96.0.0/16"), INVALID, "remote_nat_pod_cidr"),
    Row("capture-cni-route", ensure(remote_nat_pod_cidr="10.0.1.0/24"), INVALID, "remote_nat_pod_cidr"),
    # (2) poison pills
    Row("poison-name-63-emoji-accepted", ensure(
        owner="liqo-tenant-emoji/tep", cluster_id="emoji", cluster_name=EMOJI_NAME,
        remote_nat_pod_cidr="10.61.0.0/16", remote_nat_external_cidr="10.71.0.0/16", endpoint="172.31.0.4"),
        OK, check=survives_resync),
    Row("poison-name-\\x0b", ensure(cluster_name="a\x0bb"), INVALID, "cluster_name"),
    Row("poison-name-\\x1c", ensure(cluster_name="a\x1cb"), INVALID, "cluster_name"),
    Row("poison-name-\\u2028", ensure(cluster_name="a\u2028b"), INVALID, "cluster_name"),
    Row("poison-remote-external-0.0.0.0/8",
        ensure(remote_external_cidr="0.0.0.0/8", remote_nat_external_cidr=""),
        INVALID, "remote_external_cidr"),
    Row("poison-remote-nat-external-0.0.0.0/8", ensure(remote_nat_external_cidr="0.0.0.0/8"),
        INVALID, "remote_nat_external_cidr"),
    # (3) cross-tenant takeover
    Row("takeover-cluster-id-by-another-owner", ensure(cluster_id="rome", cluster_name="rome"),
        PRECONDITION, LEGIT_OWNER),
    Row("takeover-public-key-reused", ensure(legit_key=True, remote_nat_pod_cidr="10.62.0.0/16",
                                             remote_nat_external_cidr="10.72.0.0/16"),
        PRECONDITION, LEGIT_OWNER),
    Row("takeover-other-tenant-remote-cidr", ensure(remote_nat_pod_cidr="10.60.0.0/16"), INVALID,
        "remote_nat_pod_cidr"),
    Row("takeover-delete-by-non-owner", delete("rome", EVIL_OWNER), PRECONDITION, LEGIT_OWNER),
    # (6) DNAT outside the cluster
    Row("dnat-metadata-169.254.169.254", dnat("169.254.169.254"), INVALID, "mappings['169.254.169.254']"),
    Row("dnat-node-address", dnat(NODE_ADDRESS), INVALID, f"mappings['{NODE_ADDRESS}']"),
    Row("dnat-169.254.0.1", dnat("169.254.0.1"), INVALID, "mappings['169.254.0.1']"),
    Row("dnat-loopback", dnat("127.0.0.1"), INVALID, "mappings['127.0.0.1']"),
    Row("dnat-other-tenant-remote-cidr", dnat("10.80.0.5"), INVALID, "mappings['10.80.0.5']"),
    Row("dnat-control-liqo-probe-entry-accepted",
        nat("rome", {"10.0.0.5": "10.201.0.5", "169.254.0.1": "10.201.0.1"}), OK,
        check=nat_counts(rome=1), undo=drop_nat_maps),
    # (7) caps
    Row("caps-tunnel-over-max-tunnels", ensure(remote_nat_pod_cidr="10.63.0.0/16",
                                               remote_nat_external_cidr="10.73.0.0/16"),
        EXHAUSTED, "--max-tunnels", setup=fill_tunnels, undo=drop_fillers),
    Row("caps-nat-entries-over-max", nat("oslo", {f"10.0.1.{i}": f"10.201.1.{i}" for i in range(1, 5)}),
        EXHAUSTED, "--max-nat-entries", setup=one_rome_entry, check=nat_counts(rome=1, oslo=0),
        undo=drop_nat_maps),
    Row("caps-control-nat-entries-within-max",
        nat("oslo", {f"10.0.1.{i}": f"10.201.1.{i}" for i in range(1, 4)}),
        OK, setup=one_rome_entry, check=nat_counts(rome=1, oslo=3), undo=drop_nat_maps),
    # (8) fencing and roles
    Row("fencing-epoch-2^64-1", set_role(pb.ROLE_ACTIVE, 2**64 - 1, 3600), INVALID, "epoch"),
    Row("fencing-epoch-2^31", set_role(pb.ROLE_ACTIVE, 2**31, 3600), INVALID, "epoch"),
    Row("fencing-demotion-lower-epoch-accepted", set_role(pb.ROLE_STANDBY, 0), OK, check=demoted,
        undo=reactivate),
    Row("fencing-demotion-epoch-2^64-1-accepted", set_role(pb.ROLE_STANDBY, 2**64 - 1), OK, check=demoted,
        undo=reactivate),
    Row("roles-natmap-socket-SetRole", set_role(pb.ROLE_STANDBY, 1, socket="natmap"), DENIED,
        "natmap socket"),
    Row("roles-natmap-socket-ConfigureDevice", configure(socket="natmap"), DENIED, "natmap socket"),
    Row("roles-tunnel-socket-SetRole", set_role(pb.ROLE_STANDBY, 1, socket="tunnel"), DENIED,
        "tunnel socket"),
    Row("roles-labeler-socket-DeleteTunnel", delete("rome", LEGIT_OWNER, socket="labeler"), DENIED,
        "labeler socket"),
    # (10) the rest
    Row("listen-port-53", configure(listen_port=53), INVALID, "listen_port"),
    Row("endpoint-127.0.0.1", ensure(endpoint="127.0.0.1"), INVALID, "endpoint"),
    Row("endpoint-localhost-resolves-to-loopback", ensure(endpoint="localhost"), INVALID, "endpoint"),
    Row("endpoint-169.254.169.254", ensure(endpoint="169.254.169.254"), INVALID, "endpoint"),
    Row("endpoint-0.0.0.0", ensure(endpoint="0.0.0.0"), INVALID, "endpoint"),
    Row("endpoint-255.255.255.255", ensure(endpoint="255.255.255.255"), INVALID, "endpoint"),
    Row("endpoint-node-own-address", ensure(endpoint=NODE_ADDRESS), INVALID, "endpoint"),
    Row("endpoint-subnet-broadcast-192.168.77.255", ensure(endpoint="192.168.77.255"), INVALID,
        "endpoint: 192.168.77.255 is the broadcast address of the node's subnet"),
    Row("endpoint-subnet-network-192.168.77.0", ensure(endpoint="192.168.77.0"), INVALID,
        "endpoint: 192.168.77.0 is the network address of the node's subnet"),
    Row("cluster-id-trailing-newline", ensure(cluster_id="abc\n"), INVALID, "cluster_id"),
    Row("remote-cidr-liqo-next-hop-169.254.100.2/32", ensure(remote_nat_pod_cidr="169.254.100.2/32"),
        INVALID, "remote_nat_pod_cidr"),
]


def _listing(s: Secure) -> list[tuple[bytes, str, int]]:
    return sorted((t.tunnel.SerializeToString(deterministic=True), t.owner, t.nat_mapping_count)
                  for t in s.listed())


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_attack(target: Secure, row: Row) -> None:
    s = target
    routes, own = route_gets(s.node), non_liqo_state(s.node)
    assert not any("table 18952" in r for r in routes.values()), routes
    try:
        if row.setup:
            row.setup(s)
        kernel, listing, state = snapshot(s.node), _listing(s), s.state_bytes()
        try:
            row.attack(s)
            code, details = OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), str(e.details())
        assert code == row.code, details
        assert row.names in details, details
        assert route_gets(s.node) == routes
        assert non_liqo_state(s.node) == own
        if code != OK:
            assert snapshot(s.node) == kernel
            assert _listing(s) == listing
            assert s.state_bytes() == state
        if row.check:
            row.check(s)
    finally:
        if row.undo:
            row.undo(s)
    assert route_gets(s.node) == routes
    assert non_liqo_state(s.node) == own
    # The legitimate tenant's tunnel is still there, and still its owner's to change.
    entry = {t.tunnel.cluster_id: t for t in s.listed()}["rome"]
    assert entry.owner == LEGIT_OWNER and spec_from_pb(entry.tunnel) == spec_from_pb(s.legit)
    keepalive = 25 if s.legit.persistent_keepalive.seconds != 25 else 10
    endpoint = "172.31.0.2" if s.legit.endpoint != "172.31.0.2" else "172.31.0.12"
    s.ensure_legit(persistent_keepalive=keepalive, endpoint=endpoint)
    entry = {t.tunnel.cluster_id: t for t in s.listed()}["rome"]
    assert entry.tunnel.persistent_keepalive.seconds == keepalive and entry.tunnel.endpoint == endpoint
    assert s.legit.public_key in peers(s.node)
    assert route_gets(s.node) == routes


def test_restart_adopts_and_cleanup_restores_the_node(target: Secure) -> None:
    """After the whole table: SIGTERM, start again (everything adopted, no drift repaired), then
    `cleanup` leaves the node exactly as before the agent."""
    s = target
    s.close_stubs()
    before, listing, routes = snapshot(s.node), _listing(s), route_gets(s.node)
    assert s.agent.stop() == 0
    assert snapshot(s.node) == before  # SIGTERM leaves the kernel alone
    log_at = len(s.agent.log_tail(10**7))
    s.agent.start()
    time.sleep(1.0)  # a few resyncs
    log = s.agent.log_tail(10**7)[log_at:]
    assert DRIFT not in log and RESYNC_FAILED not in log, log
    assert _listing(s) == listing
    assert snapshot(s.node) == before
    assert route_gets(s.node) == routes
    s.ensure_legit(persistent_keepalive=7)  # still its owner's, still updatable
    assert s.agent.stop() == 0
    run_cleanup(s.agent)
    assert node_baseline(s.node) == s.baseline


# ---- poison pills survive; odd bytes are repaired ------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path, node_factory: Callable[[str], Node]) -> Iterator[Secure]:
    s = start_secure(node_factory, tmp_path, "poison", ("--resync-interval", "0.3"))
    try:
        yield s
    finally:
        s.close()


POISON_NAMES = ("\U0001f600" * 63, "東京 ☃ \u200d", "x" * 63, "")


def test_poison_pill_names_survive_resync_and_restart(agent: Secure) -> None:
    node, a = agent.node, agent.agent
    for i, name in enumerate(POISON_NAMES):
        a.api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=tunnel(
            cluster_id=f"c{i}", cluster_name=name, remote_nat_pod_cidr=f"10.{60 + i + 1}.0.0/16",
            remote_nat_external_cidr=f"10.{70 + i + 1}.0.0/16", endpoint=f"172.31.0.{10 + i}"),
            owner=f"liqo-tenant-c{i}/tep"))
    before = snapshot(node)
    assert all(line.isascii() for line in before["iptables"])
    time.sleep(1.5)  # several resyncs
    log = a.log_tail(100_000)
    assert DRIFT not in log and RESYNC_FAILED not in log, log
    assert snapshot(node) == before

    a.stop()
    a.start()
    time.sleep(1.0)
    log = a.log_tail(100_000)
    assert DRIFT not in log and RESYNC_FAILED not in log, log
    assert snapshot(node) == before
    listed = a.api.ListTunnels(pb.ListTunnelsRequest()).tunnels
    names = {t.tunnel.cluster_id: t.tunnel.cluster_name for t in listed}
    assert names == {"rome": "rome", **{f"c{i}": name for i, name in enumerate(POISON_NAMES)}}


def test_odd_bytes_left_by_others_are_repaired_and_cleanup_works(agent: Secure) -> None:
    node, a = agent.node, agent.agent
    good = snapshot(node)

    def ipt(table: str, *argv: str) -> None:
        node.exec_in_netns(LIQO_NETNS, ["iptables-legacy", "-t", table, *argv])

    cut = "x" + "\U0001f600" * 64  # 257 bytes: iptables cuts it inside a character

    def poison() -> None:
        ipt("filter", "-I", "LIQO-FORWARD", "1", "-m", "comment", "--comment", cut, "-j", "DROP")
        ipt("nat", "-A", "LIQO-POSTROUTING", "-m", "comment", "--comment", 'q"u\\o\x0bte', "-j", "RETURN")
        ipt("nat", "-A", "PREROUTING", "-m", "comment", "--comment", 'a "b"\x1c', "-j", "LIQO-PREROUTING")
        saved = subprocess.run(["nsenter", "-t", str(node.pid), "-n", "-m", "ip", "netns", "exec", LIQO_NETNS,
                                "iptables-legacy-save"], capture_output=True, check=True).stdout
        with pytest.raises(UnicodeDecodeError):
            saved.decode()  # the kernel now holds bytes that are not UTF-8

    with a.paused():  # else a resync may repair the first rule before the check sees it
        poison()

    def repaired() -> bool:
        try:
            return snapshot(node) == good
        except UnicodeDecodeError:  # still poisoned: the kit's tools read text
            return False

    deadline = time.monotonic() + 10
    while not repaired() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert repaired(), a.log_tail()
    log = a.log_tail(100_000)
    assert DRIFT in log and RESYNC_FAILED not in log, log

    # Poison a stopped agent's state: a restart adopts and repairs it, and cleanup removes everything.
    a.stop()
    poison()
    a.start()
    assert repaired()
    a.stop()
    poison()
    run_cleanup(a)
    assert node_baseline(node) == agent.baseline
