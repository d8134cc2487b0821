"""A real netagent's sockets: one per controller role plus the operator's, each serving only its
methods; floods of idle streams and 1 ns status intervals cannot starve SetRole or GetInfo nor burn
CPU; a state directory others could write into is refused."""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sandbox.testkit.hosts import Node
from sandbox.testkit.netagent import ROLES, NetAgent, activate
from sandbox.testkit.resources import SAMPLE_OWNER
from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.keys import generate
from services.netagent.server import MAX_STREAMS

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

CLUSTER = "c0ffee00-0000-4000-8000-000000000002"
TICKS = os.sysconf("SC_CLK_TCK")


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


def _agent_pid(agent: NetAgent) -> int:
    assert agent.proc is not None
    pid = agent.proc.pid  # nsenter and setpriv exec: the agent itself
    assert b"services.netagent.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return pid


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


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


def test_stream_floods_starve_nothing(agent: NetAgent) -> None:
    """32 idle WatchRole streams and 4 WatchTunnelStatus streams at min_interval 1 ns on the labeler's
    socket: the streams over the bound get RESOURCE_EXHAUSTED, SetRole and GetInfo answer within
    100 ms, the role never lapses and the agent stays nearly idle."""
    bound = MAX_STREAMS
    ch, stub = _stub(agent.role_socket("labeler"))
    tch, tstub = _stub(agent.role_socket("tunnel"))
    calls: list[Any] = []
    try:
        pid = _agent_pid(agent)
        t0, c0 = time.monotonic(), _cpu_seconds(pid)
        time.sleep(3)
        idle = (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)

        fast = pb.WatchTunnelStatusRequest(min_interval=Duration(nanos=1))
        for _ in range(4):
            call = stub.WatchTunnelStatus(fast)
            assert next(call).status.cluster_id == CLUSTER
            calls.append(call)
        admitted = exhausted = 0
        for _ in range(32):
            call = stub.WatchRole(pb.WatchRoleRequest())
            calls.append(call)
            try:
                assert next(call).role == pb.ROLE_ACTIVE
                admitted += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e  # type: ignore[attr-defined]
                exhausted += 1
        assert (admitted, exhausted) == (bound - 4, 32 - (bound - 4))

        t0, c0 = time.monotonic(), _cpu_seconds(pid)
        worst: dict[str, float] = {"SetRole": 0.0, "GetInfo": 0.0, "GetInfo (tunnel socket)": 0.0}
        renew = pb.SetRoleRequest(role=pb.ROLE_ACTIVE, epoch=1, ttl=Duration(seconds=600), reason="renew")
        calls_to_time: list[tuple[str, Callable[[], Any]]] = [
            ("SetRole", lambda: stub.SetRole(renew, timeout=2)),
            ("GetInfo", lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=2)),
            ("GetInfo (tunnel socket)", lambda: tstub.GetInfo(pb.GetInfoRequest(), timeout=2)),
        ]
        for _ in range(15):
            for name, fn in calls_to_time:
                s = time.perf_counter()
                r = fn()
                worst[name] = max(worst[name], time.perf_counter() - s)
                assert r.role == pb.ROLE_ACTIVE
            time.sleep(0.2)
        flood = (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        print("\nworst latency under the flood: "
              + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in worst.items())
              + f"; agent CPU idle {idle:.1%}, under the flood {flood:.1%}", file=sys.stderr)
        assert all(v < 0.1 for v in worst.values()), worst
        assert flood < 0.15, f"agent CPU {flood:.1%} under the flood (idle {idle:.1%})"
    finally:
        for c in calls:
            c.cancel()
        ch.close()
        tch.close()


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
