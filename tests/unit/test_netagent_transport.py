"""The netagent's transport: which socket serves which method (a table), the stream bound, sockets
born with their mode and never followed through links, the private state directory, the
min_interval floor. In-process servers on a fake agent: no root, no kernel."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.netagent import access
from services.netagent.access import SocketRole, allowed
from services.netagent.agent import Agent
from services.netagent.plan.role import Grant, Role
from services.netagent.privdir import UnsafeDirectory, ensure_private_dir
from services.netagent.server import (
    MIN_STATUS_INTERVAL,
    SocketPathError,
    SocketSpec,
    clear_socket_path,
    remove_stale_socket,
    serve,
    serve_sockets,
    status_interval,
)

SVC = access.NETAGENT_SERVICE
L, T, N, OP = SocketRole.LABELER, SocketRole.TUNNEL, SocketRole.NATMAP, SocketRole.OPERATOR

# ---- the table ------------------------------------------------------------------------------------

# method: (labeler, tunnel, natmap, operator)
TABLE: dict[str, tuple[bool, bool, bool, bool]] = {
    "GetInfo": (True, True, True, True),
    "WatchRole": (True, True, True, True),  # every controller's RoleGate follows it
    "ListTunnels": (True, True, True, True),
    "WatchTunnelStatus": (True, True, True, True),
    "SetRole": (True, False, False, True),
    "ConfigureDevice": (False, True, False, True),
    "EnsureTunnel": (False, True, False, True),
    "DeleteTunnel": (False, True, False, True),
    "SetNatMappings": (False, False, True, True),
    "DeleteNatMappings": (False, False, True, True),
}


@pytest.mark.parametrize(("method", "expected"), TABLE.items())
def test_method_role_table(method: str, expected: tuple[bool, bool, bool, bool]) -> None:
    assert tuple(allowed(role, f"/{SVC}/{method}") for role in (L, T, N, OP)) == expected


def test_the_table_covers_every_rpc_of_the_proto() -> None:
    rpcs = {m.name for m in pb.DESCRIPTOR.services_by_name["NetAgentService"].methods}
    assert set(TABLE) == rpcs == access.ALL_METHODS == access.METHODS[OP]


def test_every_write_has_exactly_one_controller_role() -> None:
    writes = access.ALL_METHODS - access.READS
    for method in writes:
        assert [r for r in (L, T, N) if method in access.METHODS[r]] != []
        assert len([r for r in (L, T, N) if method in access.METHODS[r]]) == 1, method


@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("/grpc.health.v1.Health/Check", True),
        ("/grpc.health.v1.Health/Watch", True),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True),
        (f"/{SVC}/NoSuchMethod", False),
        ("/other.Service/GetInfo", False),
        (f"{SVC}/GetInfo", False),  # no leading slash
        (f"/{SVC}/GetInfo/x", False),
        ("", False),
    ],
)
def test_always_served_and_malformed(path: str, served: bool) -> None:
    for role in SocketRole:
        assert allowed(role, path) is served, (role, path)


# ---- min_interval ---------------------------------------------------------------------------------


def _interval(ns: int | None) -> float:
    req = pb.WatchTunnelStatusRequest()
    if ns is not None:
        req.min_interval.CopyFrom(Duration(seconds=ns // 10**9, nanos=ns % 10**9))
    return status_interval(req)


@pytest.mark.parametrize(
    ("ns", "seconds"),
    [(None, 5.0), (0, 5.0), (1, MIN_STATUS_INTERVAL), (50_000_000, 0.1), (100_000_000, 0.1),
     (250_000_000, 0.25), (2 * 10**9, 2.0)],
)
def test_min_interval_is_floored(ns: int | None, seconds: float) -> None:
    assert MIN_STATUS_INTERVAL == 0.1
    assert _interval(ns) == pytest.approx(seconds)


# ---- servers on a fake agent ----------------------------------------------------------------------


class FakeDevice:
    implementation = "userspace"

    def public_key(self) -> str | None:
        return None


class FakeAgent:
    """What the servicer's GetInfo, SetRole and WatchRole use of an Agent."""

    def __init__(self) -> None:
        self.device = FakeDevice()
        self.started_at = time.monotonic()
        self.listen_port, self.mtu = 5871, 1340
        self.device_configured, self.device_generation = True, 0
        self._stop = threading.Event()
        self.set_roles: list[tuple[Role, int]] = []

    def role(self) -> Grant:
        return Grant(Role.STANDBY, 1, None, None, "start")

    def role_seconds_left(self) -> float | None:
        return None

    def set_role(self, role: Role, epoch: int, ttl: float, reason: str) -> Grant:
        self.set_roles.append((role, epoch))
        return Grant(role, epoch, None, None, reason)

    def tunnel_count(self) -> int:
        return 0

    def list_tunnels(self) -> list[Any]:
        return []

    def wait_for_change(self, seen: int, timeout: float) -> int:
        self._stop.wait(timeout)
        return 0

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def fake() -> Iterator[FakeAgent]:
    a = FakeAgent()
    yield a
    a.stop()


def _stub(path: Path) -> tuple[grpc.Channel, pb_grpc.NetAgentServiceStub]:
    ch = grpc.insecure_channel(f"unix:{path}")
    return ch, pb_grpc.NetAgentServiceStub(ch)


def _code(fn: Any, *args: Any, **kw: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kw)
    err = cast(grpc.Call, e.value)
    return err.code(), err.details() or ""


def test_each_socket_serves_only_its_role(tmp_path: Path, fake: FakeAgent) -> None:
    specs = [SocketSpec(OP, str(tmp_path / "op" / "netagent.sock"), private=True)]
    specs += [SocketSpec(r, str(tmp_path / r.value / "netagent.sock")) for r in (L, T, N)]
    servers = serve_sockets(cast(Agent, fake), specs, max_streams=2)
    channels = []
    try:
        stubs = {}
        for s in specs:
            ch, stubs[s.role] = _stub(Path(s.path))
            channels.append(ch)
        role = pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=2)
        code, msg = _code(stubs[N].SetRole, role, timeout=5)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "natmap socket" in msg and "SetRole" in msg
        code, msg = _code(stubs[T].SetRole, role, timeout=5)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "tunnel socket" in msg
        code, msg = _code(stubs[L].ConfigureDevice, pb.ConfigureDeviceRequest(private_key="x"), timeout=5)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "labeler socket" in msg
        code, _ = _code(stubs[L].SetNatMappings, pb.SetNatMappingsRequest(cluster_id="c"), timeout=5)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _ = _code(stubs[N].EnsureTunnel, pb.EnsureTunnelRequest(), timeout=5)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert fake.set_roles == []  # nothing reached the agent
        stubs[L].SetRole(role, timeout=5)
        stubs[OP].SetRole(role, timeout=5)
        assert fake.set_roles == [(Role.STANDBY, 2)] * 2
        for s in specs:  # reads, health and the role everywhere
            assert stubs[s.role].GetInfo(pb.GetInfoRequest(), timeout=5).listen_port == 5871
            assert stubs[s.role].ListTunnels(pb.ListTunnelsRequest(), timeout=5).tunnels == []
            first = next(iter(stubs[s.role].WatchRole(pb.WatchRoleRequest(), timeout=5)))
            assert first.role == pb.ROLE_STANDBY
            check = health_pb2_grpc.HealthStub(channels[specs.index(s)]).Check(
                health_pb2.HealthCheckRequest(service=SVC), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            mode = os.lstat(s.path).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660, oct(mode)
        assert stat.S_IMODE(os.stat(tmp_path / "op").st_mode) == 0o700  # the operator's is private
        assert stat.S_IMODE(os.stat(tmp_path / "natmap").st_mode) == 0o755
    finally:
        for ch in channels:
            ch.close()
        servers.stop(None).wait(10)


def test_streams_are_bounded_and_unary_calls_still_answer(tmp_path: Path, fake: FakeAgent) -> None:
    bound = 4
    path = tmp_path / "labeler.sock"
    server = serve(cast(Agent, fake), str(path), max_streams=bound, role=L)
    ch, stub = _stub(path)
    calls: list[Any] = []
    try:
        for _ in range(bound):
            call = stub.WatchRole(pb.WatchRoleRequest())
            assert next(call).role == pb.ROLE_STANDBY  # admitted and streaming
            calls.append(call)
        over = stub.WatchRole(pb.WatchRoleRequest(), timeout=5)
        code, msg = _code(next, over)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "labeler socket" in msg and str(bound) in msg
        # Health.Watch is a stream too: bounded by the same count.
        hw = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=5)
        assert _code(next, hw)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        for _ in range(20):
            t0 = time.monotonic()
            stub.GetInfo(pb.GetInfoRequest(), timeout=2)
            stub.SetRole(pb.SetRoleRequest(role=pb.ROLE_STANDBY, epoch=1), timeout=2)
            assert time.monotonic() - t0 < 0.2
        calls.pop().cancel()  # a slot frees when a stream ends
        deadline = time.monotonic() + 5
        while True:
            again = stub.WatchRole(pb.WatchRoleRequest())
            try:
                assert next(again).role == pb.ROLE_STANDBY
                calls.append(again)
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "the cancelled stream's slot never came back"
                time.sleep(0.1)
    finally:
        for c in calls:
            c.cancel()
        ch.close()
        fake.stop()
        server.stop(None).wait(10)


# ---- socket paths ---------------------------------------------------------------------------------


def test_stale_socket_removed_other_files_refused(tmp_path: Path) -> None:
    sock = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    remove_stale_socket(str(sock))
    assert not os.path.lexists(sock)
    remove_stale_socket(str(sock))  # absent: nothing to do

    plain = tmp_path / "plain"
    plain.write_text("keep me")
    with pytest.raises(SocketPathError, match="not a socket"):
        remove_stale_socket(str(plain))
    assert plain.read_text() == "keep me"

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "link.sock"
    link.symlink_to(victim)
    with pytest.raises(SocketPathError, match="not a socket"):
        remove_stale_socket(str(link))
    assert link.is_symlink() and victim.read_text() == "keep me"

    # A link to a socket is not our socket either: it is neither followed nor removed.
    target = tmp_path / "real.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(target))
    s.close()
    link2 = tmp_path / "link2.sock"
    link2.symlink_to(target)
    with pytest.raises(SocketPathError):
        remove_stale_socket(str(link2))
    assert link2.is_symlink() and stat.S_ISSOCK(os.lstat(target).st_mode)


def _plant(kind: str, path: Path, outside: Path) -> None:
    """What a controller can put at its socket path (its directory is writable by it)."""
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("keep me")
    if kind == "directory":
        path.mkdir()
        (path / "inner-link").symlink_to(victim)  # a walk that followed it would reach the victim
        (path / "file").write_text("x")
    elif kind == "symlink-to-file":
        path.symlink_to(victim)
    elif kind == "symlink-to-directory":
        path.symlink_to(outside)
    elif kind == "dangling-symlink":
        path.symlink_to(outside / "nothing")
    elif kind == "file":
        path.write_text("planted")
    elif kind == "hard-link":
        os.link(victim, path)
    elif kind == "fifo":
        os.mkfifo(path)  # opening it would block: it must never be opened
    else:
        raise AssertionError(kind)


PLANTS = ["directory", "symlink-to-file", "symlink-to-directory", "dangling-symlink", "file", "hard-link",
          "fifo"]


@pytest.mark.parametrize("kind", PLANTS)
def test_a_foreign_object_at_a_socket_path_is_moved_aside_untouched(tmp_path: Path, kind: str) -> None:
    path, outside = tmp_path / "sockdir" / "netagent.sock", tmp_path / "outside"
    path.parent.mkdir()
    _plant(kind, path, outside)
    before = os.lstat(path)
    aside = clear_socket_path(str(path))
    assert aside is not None and not os.path.lexists(path)
    assert os.path.dirname(aside) == str(path.parent) and os.path.basename(aside).startswith(
        "netagent.sock.foreign-")
    after = os.lstat(aside)  # the same entry, renamed: not followed, not opened, not walked
    assert (after.st_ino, after.st_mode, after.st_nlink) == (before.st_ino, before.st_mode, before.st_nlink)
    assert (outside / "victim").read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    if kind == "directory":
        assert sorted(os.listdir(aside)) == ["file", "inner-link"]


def test_a_stale_socket_is_unlinked_and_a_missing_path_is_fine(tmp_path: Path) -> None:
    sock = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    assert clear_socket_path(str(sock)) is None and not os.path.lexists(sock)
    assert clear_socket_path(str(sock)) is None
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", PLANTS)
def test_serve_moves_a_foreign_object_aside_and_serves(tmp_path: Path, fake: FakeAgent, kind: str) -> None:
    path, outside = tmp_path / "sockdir" / "netagent.sock", tmp_path / "outside"
    path.parent.mkdir()
    _plant(kind, path, outside)
    server = serve(cast(Agent, fake), str(path), role=T)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert (outside / "victim").read_text() == "keep me"
        assert len([p for p in path.parent.iterdir() if ".foreign-" in p.name]) == 1
        ch = grpc.insecure_channel(f"unix:{path}")
        try:
            pb_grpc.NetAgentServiceStub(ch).GetInfo(pb.GetInfoRequest(), timeout=10)
        finally:
            ch.close()
    finally:
        server.stop(None).wait(10)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_socket_group_is_set_and_the_mode_is_born_0660(tmp_path: Path, fake: FakeAgent) -> None:
    path = tmp_path / "tunnel.sock"
    old = os.umask(0)  # a permissive process umask must not leak into the socket's mode
    try:
        server = serve(cast(Agent, fake), str(path), socket_group=4242, role=T)
    finally:
        os.umask(old)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 4242
        assert os.umask(old) == old  # the umask was restored
    finally:
        server.stop(None).wait(10)


# ---- the private state directory ------------------------------------------------------------------


def test_private_dir_is_created_0700(tmp_path: Path) -> None:
    d = tmp_path / "a" / "netagent"
    old = os.umask(0o077)
    try:
        ensure_private_dir(str(d))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    ensure_private_dir(str(d))  # an existing private directory is fine


@pytest.mark.parametrize(("mode", "ok"), [(0o700, True), (0o755, True), (0o750, True), (0o770, False),
                                          (0o777, False), (0o1777, False), (0o702, False)])
def test_private_dir_modes(tmp_path: Path, mode: int, ok: bool) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, mode)
    if ok:
        ensure_private_dir(str(d))
    else:
        with pytest.raises(UnsafeDirectory, match="writable"):
            ensure_private_dir(str(d))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_private_dir_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, -1)
    with pytest.raises(UnsafeDirectory, match="not root"):
        ensure_private_dir(str(d))


def test_private_dir_link_is_judged_by_its_target(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    link = tmp_path / "state"
    link.symlink_to(shared)
    with pytest.raises(UnsafeDirectory, match="writable"):
        ensure_private_dir(str(link))
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        ensure_private_dir(str(f))
