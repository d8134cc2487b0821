"""A real netagent's sockets: one per controller role plus the operator's, each serving only its
methods; a state directory others could write into is refused. (Stream floods starving nothing:
tests/security/test_fencing_under_load.py.)"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import ROLES, NetAgent, activate
from sandbox.testkit.resources import SAMPLE_OWNER
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
