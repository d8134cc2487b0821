"""A real netagent's sockets: one per controller role plus the operator's, each serving only its
methods; a state directory others could write into is refused; whatever a compromised controller
plants at its socket path is moved aside at the next start, and a start that cannot serve leaves no
peer behind. (Stream floods starving nothing: tests/security/test_fencing_under_load.py.)"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import ROLES, NetAgent, activate
from sandbox.testkit.resources import SAMPLE_OWNER
from sandbox.testkit.uplink import peers
from sandbox.testkit.wait import wait_for
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.keys import generate

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

CLUSTER = "c0ffee00-0000-4000-8000-000000000002"


def _tunnel(peer: str) -> pb.Tunnel:
    return pb.Tunnel(cluster_id=CLUSTER, cluster_name="peer", local_pod_cidr="10.0.0.0/16",
                     local_external_cidr="10.201.0.0/16", remote_pod_cidr="10.1.0.0/16",
                     remote_external_cidr="10.202.0.0/16", endpoint="192.0.2.50", endpoint_port=5871,
                     public_key=peer)


@pytest.fixture
def agent(tmp_path: Path, node_factory: Callable[[str], Node]) -> Iterator[NetAgent]:
    a = NetAgent(node_factory("sockets"), tmp_path / "agent")
    try:
        a.start()
        activate(a, generate().private_key, epoch=1, ttl=600)
        a.api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=_tunnel(generate().public_key), owner=SAMPLE_OWNER))
        yield a
    finally:
        a.close()


def _stub(path: Path) -> tuple[grpc.Channel, pb_grpc.NetAgentServiceStub]:
    ch = grpc.insecure_channel(f"unix:{path}")
    return ch, pb_grpc.NetAgentServiceStub(ch)


def test_role_sockets_serve_only_their_methods(agent: NetAgent) -> None:
    channels: list[grpc.Channel] = []
    try:
        stubs = {}
        for role in ROLES:
            st = os.lstat(agent.role_socket(role))
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
            ch, stubs[role] = _stub(agent.role_socket(role))
            channels.append(ch)
        standby = pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=1, reason="attack")
        for role in ("tunnel", "natmap"):
            with pytest.raises(grpc.RpcError) as e:
                stubs[role].SetRole(standby, timeout=5)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            assert f"{role} socket" in e.value.details()  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as e:
            stubs["natmap"].ConfigureDevice(pb.ConfigureDeviceRequest(private_key=generate().private_key),
                                            timeout=5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as e:
            stubs["labeler"].DeleteTunnel(pb.DeleteTunnelRequest(cluster_id=CLUSTER, owner=SAMPLE_OWNER),
                                          timeout=5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        # Nothing happened: still active, the tunnel still there.
        info = stubs["natmap"].GetInfo(pb.GetInfoRequest(), timeout=5)
        assert info.role == pb.ROLE_ACTIVE and info.tunnel_count == 1
        assert [t.tunnel.cluster_id for t in stubs["labeler"].ListTunnels(pb.ListTunnelsRequest()).tunnels] \
            == [CLUSTER]
        m = stubs["natmap"].SetNatMappings(
            pb.SetNatMappingsRequest(cluster_id=CLUSTER, mappings={"10.202.0.5": "10.201.0.5"}), timeout=10)
        assert m.count == 1
    finally:
        for ch in channels:
            ch.close()


def test_refuses_a_shared_state_directory(tmp_path: Path, node_factory: Callable[[str], Node]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    a = NetAgent(node_factory("shared"), tmp_path / "agent", state=shared / "state.json")
    try:
        with pytest.raises(Exception, match="exited 1"):
            a.start(timeout=20)
        lines = [line for line in a.log_tail().splitlines() if line.strip()]
        assert lines == [f"liqo-netagent: refusing to start: {shared}: mode 0777 is group- or world-writable;"
                         " it must be private to the netagent (chmod go-w, or mount a volume no controller"
                         " mounts)"], lines
        assert not (shared / "state.json").exists() and not a.socket.exists()
    finally:
        a.close()


def test_creates_a_missing_state_directory_0700(tmp_path: Path, node_factory: Callable[[str], Node]) -> None:
    state = tmp_path / "agent" / "private" / "state.json"
    a = NetAgent(node_factory("private"), tmp_path / "agent", state=state)
    try:
        a.start()
        assert stat.S_IMODE(os.stat(state.parent).st_mode) == 0o700
    finally:
        a.close()


def _role_dirs(base: Path) -> dict[str, Path]:
    """As the chart lays them out: each role's socket alone in its own directory (the controller's
    volume, which it mounts read-write)."""
    out = {}
    for role in ROLES:
        (base / role).mkdir(parents=True)
        os.chmod(base / role, 0o777)  # an emptyDir
        out[role] = base / role / "netagent.sock"
    return out


def _active_agent(node: Node, workdir: Path, role_sockets: dict[str, Path]) -> tuple[NetAgent, str]:
    """An ACTIVE agent with one tunnel whose peer is programmed, stopped once its grant is on disk (a
    container restart follows)."""
    a = NetAgent(node, workdir, role_sockets=role_sockets)
    a.start()
    activate(a, generate().private_key, epoch=1, ttl=600)
    key = generate().public_key
    a.api.EnsureTunnel(pb.EnsureTunnelRequest(tunnel=_tunnel(key), owner=SAMPLE_OWNER))
    wait_for("the peer programmed", lambda: peers(node) == [key], 20)
    wait_for("the ACTIVE grant persisted",
             lambda: json.loads(a.state.read_text()).get("active_until_wall") is not None, 20,
             retry_on=(FileNotFoundError, ValueError))
    assert a.stop() == 0
    assert peers(node) == [key], "a stopped agent leaves the kernel as it was"
    return a, key


# What a compromised controller can put at its own socket path, and the role it plants it for.
PLANTS = [("directory", "labeler"), ("symlink", "tunnel"), ("file", "natmap"), ("fifo", "labeler"),
          ("hard-link", "tunnel")]


@pytest.mark.parametrize(("kind", "role"), PLANTS, ids=[k for k, _ in PLANTS])
def test_a_planted_socket_path_is_moved_aside_and_the_agent_serves(
    tmp_path: Path, node_factory: Callable[[str], Node], kind: str, role: str
) -> None:
    node = node_factory("plant")
    sockets = _role_dirs(tmp_path / "run")
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    a, key = _active_agent(node, tmp_path / "agent", sockets)
    try:
        path = sockets[role]
        path.unlink(missing_ok=True)  # whatever the stopped agent left there
        if kind == "directory":
            path.mkdir()
            (path / "link").symlink_to(victim)
        elif kind == "symlink":
            path.symlink_to(victim)
        elif kind == "file":
            path.write_text("planted")
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            os.link(victim, path)
        planted = os.lstat(path)
        a.start(timeout=30)
        # Serving every role, the restored grant and its peer intact.
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        ch, stub = _stub(path)
        try:
            info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
            assert info.role == pb.ROLE_ACTIVE and info.tunnel_count == 1
        finally:
            ch.close()
        for r in ROLES:  # every role's socket serves its own methods
            c = a.client(r)
            try:
                if r == "labeler":
                    assert c.set_role(pb.ROLE_ACTIVE, 1, 600).role == pb.ROLE_ACTIVE
                elif r == "tunnel":
                    c.ensure_tunnel(_tunnel(key), owner=SAMPLE_OWNER)
                else:
                    c.set_nat_mappings(CLUSTER, {"10.202.0.5": "10.201.0.5"})
            finally:
                c.close()
        assert peers(node) == [key]
        # The planted object: renamed next to the socket, the same entry, never followed or opened.
        aside = [p for p in path.parent.iterdir() if p.name.startswith("netagent.sock.foreign-")]
        assert len(aside) == 1, list(path.parent.iterdir())
        st = os.lstat(aside[0])
        assert (st.st_ino, st.st_mode) == (planted.st_ino, planted.st_mode)
        assert victim.read_text() == "keep me" and victim.stat().st_nlink == (2 if kind == "hard-link" else 1)
        assert "moved a foreign object away from a socket path" in a.log_tail(10**6)
    finally:
        a.close()


def test_a_start_that_cannot_serve_leaves_no_peer(
    tmp_path: Path, node_factory: Callable[[str], Node]
) -> None:
    node = node_factory("noserve")
    sockets = _role_dirs(tmp_path / "run")
    a, _ = _active_agent(node, tmp_path / "agent", sockets)
    # The same agent restarted with a tunnel socket it cannot bind (longer than sun_path allows):
    # before, it restored the ACTIVE grant, re-programmed the peer, then exited leaving it there.
    unbindable = tmp_path / ("d" * 120) / "netagent.sock"
    broken = NetAgent(node, tmp_path / "agent", role_sockets={**sockets, "tunnel": unbindable})
    try:
        with pytest.raises(Exception, match="exited 1"):
            broken.start(timeout=30)
        log = broken.log_tail(10**6)
        assert f"refusing to start: {unbindable}: cannot bind" in log, log
        assert peers(node) == [], "peers left in the kernel with no agent to fence them"
        # Fixed, it starts again (the grant is restored; the labeler would renew it).
        a.start(timeout=30)
        assert a.api.GetInfo(pb.GetInfoRequest(), timeout=10).tunnel_count == 1
    finally:
        broken.close()
        a.close()
