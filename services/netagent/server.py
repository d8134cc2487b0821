"""gRPC front of the agent: translates messages to agent calls and agent errors to the documented codes."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.tunnel_pb import duration, spec_from_pb, spec_to_pb
from services.common.tunnelspec import SpecError, check_cluster_id
from services.netagent.access import SocketRole, allowed, split_method
from services.netagent.agent import VERSION, Agent, TunnelState, TunnelView
from services.netagent.errors import (
    NotActive,
    NotConfigured,
    NotOwner,
    NotReady,
    ResourceExhausted,
    Transient,
)
from services.netagent.plan.role import Grant, Role, StaleEpoch

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NetAgentService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a 65 536-entry NAT map is ~3 MiB
DEFAULT_STATUS_INTERVAL = 5.0
# WatchTunnelStatus's min_interval is raised to this: a 1 ns interval must not make a busy loop.
MIN_STATUS_INTERVAL = 0.1
# Each socket is its own grpc.Server with its own pool, so one role cannot starve another. Streams
# hold a thread for their whole life, so each pool is MAX_STREAMS threads for streams (the API's and
# health's Watch; RESOURCE_EXHAUSTED over it), MAX_REFLECTION_STREAMS for reflection (grpcurl keeps its
# reflection stream open for the whole call) and UNARY_RESERVED that only unary calls get, so SetRole
# and GetInfo always find a thread.
MAX_STREAMS = 12
MAX_REFLECTION_STREAMS = 4
UNARY_RESERVED = 4
SOCKET_MODE = 0o660  # sockets are born with it (umask at bind time); never chmod-ed afterwards
# How often streams re-check liveness of the client when nothing changes.
STREAM_POLL = 1.0

_ROLE_TO_PB = {Role.ACTIVE: pb.ROLE_ACTIVE, Role.STANDBY: pb.ROLE_STANDBY}
_STATE_TO_PB = {
    TunnelState.CONNECTING: pb.TUNNEL_STATE_CONNECTING,
    TunnelState.CONNECTED: pb.TUNNEL_STATE_CONNECTED,
    TunnelState.DISCONNECTED: pb.TUNNEL_STATE_DISCONNECTED,
    TunnelState.FENCED: pb.TUNNEL_STATE_FENCED,
}
_IMPL_TO_PB = {
    "kernel": pb.WIREGUARD_IMPLEMENTATION_KERNEL,
    "userspace": pb.WIREGUARD_IMPLEMENTATION_USERSPACE,
}
_ERROR_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotActive, grpc.StatusCode.FAILED_PRECONDITION),
    (NotConfigured, grpc.StatusCode.FAILED_PRECONDITION),
    (NotReady, grpc.StatusCode.FAILED_PRECONDITION),
    (StaleEpoch, grpc.StatusCode.FAILED_PRECONDITION),
    (NotOwner, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Transient, grpc.StatusCode.UNAVAILABLE),
]


def _timestamp(wall: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(wall * 1e9))
    return t


def status_to_pb(v: TunnelView) -> pb.TunnelStatus:
    st = pb.TunnelStatus(
        cluster_id=v.spec.cluster_id,
        state=_STATE_TO_PB[v.state],
        endpoint_ip=str(v.endpoint_ip or ""),
        endpoint_port=v.spec.endpoint_port,
        public_key=v.spec.public_key,
        allowed_ips=[str(c) for c in v.spec.allowed_ips],
        rx_bytes=v.rx_bytes,
        tx_bytes=v.tx_bytes,
        owner=v.owner,
    )
    st.state_since.CopyFrom(_timestamp(v.state_since))
    if v.latency is not None:
        st.latency.CopyFrom(duration(v.latency))
    if v.handshake_age is not None:
        st.handshake_age.CopyFrom(duration(v.handshake_age))
    return st


def _grant_to_pb(g: Grant) -> tuple[int, int, Timestamp | None]:
    return _ROLE_TO_PB[g.role], g.epoch, None if g.expires_wall is None else _timestamp(g.expires_wall)


class NetAgentServicer(pb_grpc.NetAgentServiceServicer):
    def __init__(self, agent: Agent, observe_rpc: Callable[[str, str, float], None] | None = None) -> None:
        self.agent = agent
        self._observe = observe_rpc or (lambda method, code, seconds: None)

    def _call(self, method: str, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        """Runs fn, mapping agent errors to their documented codes; INTERNAL for anything else."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return fn()
        except Exception as e:
            for kind, c in _ERROR_CODES:
                if isinstance(e, kind):
                    code = c
                    break
            else:
                code = grpc.StatusCode.INTERNAL
                log.exception("rpc failed", extra={"method": method})
            if code is not grpc.StatusCode.INTERNAL:
                log.info("rpc refused", extra={"method": method, "code": code.name, "error": str(e)})
            context.abort(code, str(e))
            raise  # unreachable: abort raises
        finally:
            self._observe(method, code.name, time.perf_counter() - start)

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        def run() -> pb.GetInfoResponse:
            a = self.agent
            role, epoch, _ = _grant_to_pb(a.role())
            key = a.device.public_key()
            return pb.GetInfoResponse(
                version=VERSION,
                wireguard_implementation=_IMPL_TO_PB[a.device.implementation],
                role=role,  # type: ignore[arg-type]
                epoch=epoch,
                uptime=duration(time.monotonic() - a.started_at),
                public_key=key or "",
                listen_port=a.listen_port,
                mtu=a.mtu,
                device_configured=key is not None,
                tunnel_count=a.tunnel_count(),
            )

        return self._call("GetInfo", context, run)

    def ConfigureDevice(
        self, request: pb.ConfigureDeviceRequest, context: grpc.ServicerContext
    ) -> pb.ConfigureDeviceResponse:
        def run() -> pb.ConfigureDeviceResponse:
            key = self.agent.configure_device(request.private_key, request.listen_port, request.mtu)
            return pb.ConfigureDeviceResponse(
                public_key=key, listen_port=self.agent.listen_port, mtu=self.agent.mtu
            )

        return self._call("ConfigureDevice", context, run)

    def SetRole(self, request: pb.SetRoleRequest, context: grpc.ServicerContext) -> pb.SetRoleResponse:
        def run() -> pb.SetRoleResponse:
            if request.role == pb.ROLE_ACTIVE:
                if not request.HasField("ttl"):
                    raise SpecError("ttl: required for ROLE_ACTIVE")
                role, ttl = Role.ACTIVE, request.ttl.ToNanoseconds() / 1e9
            elif request.role == pb.ROLE_STANDBY:
                role, ttl = Role.STANDBY, 0.0
            else:
                raise SpecError("role: must be ROLE_ACTIVE or ROLE_STANDBY")
            grant = self.agent.set_role(role, request.epoch, ttl, request.reason or "set")
            r, epoch, expires = _grant_to_pb(grant)
            resp = pb.SetRoleResponse(role=r, epoch=epoch)  # type: ignore[arg-type]
            if expires is not None:
                resp.expires_at.CopyFrom(expires)
            return resp

        return self._call("SetRole", context, run)

    def WatchRole(
        self, request: pb.WatchRoleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchRoleResponse]:
        last: tuple[int, int, float | None, bool, int] | None = None
        seen = -1
        while context.is_active() and not self.agent.stopping:
            g = self.agent.role()
            configured, generation = self.agent.device_configured, self.agent.device_generation
            key = (_ROLE_TO_PB[g.role], g.epoch, g.expires_wall, configured, generation)
            # Renewals move expires_at every retry period; stream them so watchers see liveness.
            if key != last:
                last = key
                r, epoch, expires = _grant_to_pb(g)
                msg = pb.WatchRoleResponse(role=r, epoch=epoch, reason=g.reason,  # type: ignore[arg-type]
                                           device_configured=configured, device_generation=generation)
                if expires is not None:
                    msg.expires_at.CopyFrom(expires)
                yield msg
            left = self.agent.role_seconds_left()
            timeout = STREAM_POLL if left is None else min(STREAM_POLL, left + 0.01)
            seen = self.agent.wait_for_change(seen, timeout)

    def EnsureTunnel(
        self, request: pb.EnsureTunnelRequest, context: grpc.ServicerContext
    ) -> pb.EnsureTunnelResponse:
        def run() -> pb.EnsureTunnelResponse:
            if not request.HasField("tunnel"):
                raise SpecError("tunnel: required")
            view, changed = self.agent.ensure_tunnel(spec_from_pb(request.tunnel), request.owner)
            return pb.EnsureTunnelResponse(status=status_to_pb(view), changed=changed)

        return self._call("EnsureTunnel", context, run)

    def DeleteTunnel(
        self, request: pb.DeleteTunnelRequest, context: grpc.ServicerContext
    ) -> pb.DeleteTunnelResponse:
        return self._call(
            "DeleteTunnel",
            context,
            lambda: pb.DeleteTunnelResponse(
                deleted=self.agent.delete_tunnel(request.cluster_id, request.owner)
            ),
        )

    def ListTunnels(
        self, request: pb.ListTunnelsRequest, context: grpc.ServicerContext
    ) -> pb.ListTunnelsResponse:
        def run() -> pb.ListTunnelsResponse:
            return pb.ListTunnelsResponse(
                tunnels=[
                    pb.TunnelEntry(
                        tunnel=spec_to_pb(v.spec),
                        status=status_to_pb(v),
                        nat_mapping_count=v.nat_mapping_count,
                        owner=v.owner,
                    )
                    for v in self.agent.list_tunnels()
                ]
            )

        return self._call("ListTunnels", context, run)

    def WatchTunnelStatus(
        self, request: pb.WatchTunnelStatusRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchTunnelStatusResponse]:
        only = request.cluster_id
        if only:
            self._call("WatchTunnelStatus", context, lambda: check_cluster_id(only))
        interval = status_interval(request)
        sent: dict[str, tuple[pb.TunnelStatus, float]] = {}
        seen = -1
        while context.is_active() and not self.agent.stopping:
            now = time.monotonic()
            current = {
                v.spec.cluster_id: v
                for v in self.agent.list_tunnels()
                if not only or v.spec.cluster_id == only
            }
            for cid in list(sent):
                if cid not in current:
                    del sent[cid]
                    yield pb.WatchTunnelStatusResponse(status=pb.TunnelStatus(cluster_id=cid), deleted=True)
            for cid, view in current.items():
                msg = status_to_pb(view)
                prev = sent.get(cid)
                if (
                    prev is None
                    or _significant(prev[0], msg)
                    or (now - prev[1] >= interval and _counters(prev[0], msg))
                ):
                    sent[cid] = (msg, now)
                    yield pb.WatchTunnelStatusResponse(status=msg)
            seen = self.agent.wait_for_change(seen, min(interval, STREAM_POLL))

    def SetNatMappings(
        self, request: pb.SetNatMappingsRequest, context: grpc.ServicerContext
    ) -> pb.SetNatMappingsResponse:
        def run() -> pb.SetNatMappingsResponse:
            count, changed = self.agent.set_nat_mappings(request.cluster_id, dict(request.mappings))
            return pb.SetNatMappingsResponse(count=count, changed=changed)

        return self._call("SetNatMappings", context, run)

    def DeleteNatMappings(
        self, request: pb.DeleteNatMappingsRequest, context: grpc.ServicerContext
    ) -> pb.DeleteNatMappingsResponse:
        return self._call(
            "DeleteNatMappings",
            context,
            lambda: pb.DeleteNatMappingsResponse(deleted=self.agent.delete_nat_mappings(request.cluster_id)),
        )


def status_interval(request: pb.WatchTunnelStatusRequest) -> float:
    """The request's min_interval in seconds: DEFAULT_STATUS_INTERVAL when unset or not positive,
    never below MIN_STATUS_INTERVAL."""
    if not request.HasField("min_interval") or request.min_interval.ToNanoseconds() <= 0:
        return DEFAULT_STATUS_INTERVAL
    return max(MIN_STATUS_INTERVAL, request.min_interval.ToNanoseconds() / 1e9)


def _significant(a: pb.TunnelStatus, b: pb.TunnelStatus) -> bool:
    """A change every watcher must see at once (state, endpoint, key, routes)."""
    return (a.state, a.endpoint_ip, a.endpoint_port, a.public_key, list(a.allowed_ips)) != (
        b.state,
        b.endpoint_ip,
        b.endpoint_port,
        b.public_key,
        list(b.allowed_ips),
    )


def _counters(a: pb.TunnelStatus, b: pb.TunnelStatus) -> bool:
    return (a.rx_bytes, a.tx_bytes, a.latency, a.handshake_age) != (
        b.rx_bytes,
        b.tx_bytes,
        b.latency,
        b.handshake_age,
    )


# ---- transport: one gRPC server per socket ----------------------------------------------------------


class SocketPathError(Exception):
    """A socket path the agent refuses to use (something that is not our socket is there)."""


@dataclass(frozen=True)
class SocketSpec:
    """One socket to serve: who it is for, where, and the group that may connect (None keeps the
    process's group). `private` sockets get a 0700 directory when it has to be created."""

    role: SocketRole
    path: str
    group: int | None = None
    private: bool = False


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class Gate(_Interceptor):
    """Serves only the methods of its socket's role (PERMISSION_DENIED otherwise) and at most
    `max_streams` concurrent streams plus `max_reflection` reflection streams (RESOURCE_EXHAUSTED for
    one more), so threads stay free for unary calls."""

    def __init__(
        self,
        role: SocketRole,
        max_streams: int = MAX_STREAMS,
        max_reflection: int = MAX_REFLECTION_STREAMS,
        observe_rpc: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.role = role
        self.max_streams = max_streams
        self.max_reflection = max_reflection
        self._streams = threading.BoundedSemaphore(max_streams)
        self._reflection = threading.BoundedSemaphore(max_reflection)
        self._observe = observe_rpc or (lambda method, code, seconds: None)

    @property
    def threads(self) -> int:
        """The pool size this gate needs: every admitted stream, plus UNARY_RESERVED."""
        return self.max_streams + self.max_reflection + UNARY_RESERVED

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: UNIMPLEMENTED, as without the gate
        full: str = handler_call_details.method
        if not allowed(self.role, full):
            return _same_kind(handler, self._deny(full))
        if handler.request_streaming or handler.response_streaming:
            return _same_kind(handler, self._bounded(full, handler))
        return handler

    def _refuse(self, full: str, context: grpc.ServicerContext, code: grpc.StatusCode, msg: str) -> None:
        method = split_method(full)[1] or full
        self._observe(method, code.name, 0.0)
        log.warning("rpc refused", extra={"method": method, "code": code.name, "socket": self.role.value})
        context.abort(code, msg)

    def _deny(self, full: str) -> Callable[..., Any]:
        method = split_method(full)[1] or full

        def deny(_request: Any, context: grpc.ServicerContext) -> Any:
            self._refuse(full, context, grpc.StatusCode.PERMISSION_DENIED,
                         f"{method} is not served on the {self.role.value} socket")

        return deny

    def _bounded(self, full: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
        behavior = _behavior(handler)
        reflection_stream = split_method(full)[0] in REFLECTION_SERVICES
        streams = self._reflection if reflection_stream else self._streams
        most = self.max_reflection if reflection_stream else self.max_streams
        what = "reflection streams" if reflection_stream else "streams"

        def admit(context: grpc.ServicerContext) -> None:
            if not streams.acquire(blocking=False):
                self._refuse(full, context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"too many {what} on the {self.role.value} socket (at most "
                             f"{most}): close one and retry with back off")

        if not handler.response_streaming:  # client-streaming: one response

            def unary_response(request: Any, context: grpc.ServicerContext) -> Any:
                admit(context)
                try:
                    return behavior(request, context)
                finally:
                    streams.release()

            return unary_response

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            admit(context)  # runs on the first next(), in the pool's thread
            try:
                yield from behavior(request, context)
            finally:
                streams.release()

        return stream


REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)


def _behavior(h: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
    fn = h.stream_stream or h.stream_unary or h.unary_stream or h.unary_unary
    assert fn is not None
    return fn


def _same_kind(h: grpc.RpcMethodHandler[Any, Any], fn: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler like `h` (same streaming shape and (de)serializers) that runs `fn`."""
    args = {"request_deserializer": h.request_deserializer, "response_serializer": h.response_serializer}
    if h.request_streaming and h.response_streaming:
        return grpc.stream_stream_rpc_method_handler(fn, **args)
    if h.request_streaming:
        return grpc.stream_unary_rpc_method_handler(fn, **args)
    if h.response_streaming:
        return grpc.unary_stream_rpc_method_handler(fn, **args)
    return grpc.unary_unary_rpc_method_handler(fn, **args)


def remove_stale_socket(path: str) -> None:
    """Unlinks `path` if it is a socket (a killed agent's); never follows a link. SocketPathError if
    something else is there: the agent replaces only what it created."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path}: exists and is not a socket; refusing to replace it")
    os.unlink(path)


FOREIGN_INFIX = ".foreign-"
BIND_ATTEMPTS = 3


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISREG, "file"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "object"


def clear_socket_path(path: str) -> str | None:
    """Frees `path` for a socket: a stale socket is unlinked; anything else found there (a directory,
    a symlink, a file, a hard link, a FIFO...) is renamed to `<path>.foreign-<ns>-<random>` next to it
    and logged; returns that name. A role socket's directory is writable by its controller, so a
    compromised one can plant anything there: refusing it would keep the netagent down for every role.
    Renamed, not deleted: rename(2) acts on the entry itself (a link is not followed, a FIFO or device
    not opened, a hard link's other names untouched) and a directory is never walked."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISSOCK(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return None
    # A name nobody can guess, so the rename never replaces something planted in advance.
    aside = f"{path}{FOREIGN_INFIX}{time.time_ns()}-{secrets.token_hex(6)}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    log.warning("moved a foreign object away from a socket path",
                extra={"socket": path, "kind": _kind(st.st_mode), "moved_to": aside, "uid": st.st_uid})
    return aside


def _bind(server: grpc.Server, spec: SocketSpec) -> None:
    """Binds `spec.path` born with SOCKET_MODE, then sets its group without following links."""
    directory = os.path.dirname(spec.path) or "."
    if not os.path.isdir(directory):
        # A role directory must be traversable by its controller; the operator's is private.
        os.makedirs(directory, mode=0o700 if spec.private else 0o755, exist_ok=True)
    for attempt in range(BIND_ATTEMPTS):  # something re-planted between the rename and the bind
        clear_socket_path(spec.path)
        old_umask = os.umask(0o777 & ~SOCKET_MODE)  # no window where the socket has another mode
        try:
            bound = server.add_insecure_port(f"unix:{spec.path}") != 0
        except RuntimeError:  # grpcio raises where older releases returned 0
            bound = False
        finally:
            os.umask(old_umask)
        if bound:
            break
        if attempt == BIND_ATTEMPTS - 1:
            raise SocketPathError(f"{spec.path}: cannot bind")
    if spec.group is None:
        return
    st = os.lstat(spec.path)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise SocketPathError(f"{spec.path}: replaced after bind; refusing to change its group")
    os.chown(spec.path, -1, spec.group, follow_symlinks=False)


def bind(
    agent: Agent,
    socket_path: str,
    socket_group: int | None = None,
    observe_rpc: Callable[[str, str, float], None] | None = None,
    max_streams: int = MAX_STREAMS,
    role: SocketRole = SocketRole.OPERATOR,
    *,
    private: bool = False,
    servicer: NetAgentServicer | None = None,
) -> tuple[grpc.Server, Callable[[], None]]:
    """One gRPC server on a Unix socket (mode 0660) for `role`, bound and listening but not serving
    until the returned start() is called, with reflection and grpc.health.v1, and its own pool: at
    most `max_streams` concurrent streams (and MAX_REFLECTION_STREAMS reflection streams),
    UNARY_RESERVED threads kept for unary calls."""
    spec = SocketSpec(role, socket_path, socket_group, private)
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    gate = Gate(role, max_streams, MAX_REFLECTION_STREAMS, observe_rpc)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=gate.threads, thread_name_prefix=f"grpc-{role.value}"),
        interceptors=[gate],
        options=options,
    )
    pb_grpc.add_NetAgentServiceServicer_to_server(servicer or NetAgentServicer(agent, observe_rpc), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        _bind(server, spec)
    except BaseException:
        server.stop(None)
        raise

    def start() -> None:
        server.start()
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving",
                 extra={"socket": socket_path, "role": role.value, "max_streams": gate.max_streams})

    return server, start


def serve(
    agent: Agent,
    socket_path: str,
    socket_group: int | None = None,
    observe_rpc: Callable[[str, str, float], None] | None = None,
    max_streams: int = MAX_STREAMS,
    role: SocketRole = SocketRole.OPERATOR,
    *,
    private: bool = False,
    servicer: NetAgentServicer | None = None,
) -> grpc.Server:
    """`bind` then start: one gRPC server serving `role` on a Unix socket."""
    server, start = bind(agent, socket_path, socket_group, observe_rpc, max_streams, role,
                         private=private, servicer=servicer)
    start()
    return server


class Servers:
    """The agent's servers, one per socket; `stop(grace)` stops them all."""

    def __init__(
        self, servers: Mapping[SocketRole, grpc.Server], starts: list[Callable[[], None]] | None = None
    ) -> None:
        self.servers = dict(servers)
        self._starts = list(starts or [])

    def start(self) -> None:
        """Serves every bound socket (serve_sockets(start=False) binds only)."""
        starts, self._starts = self._starts, []
        for start in starts:
            start()

    def stop(self, grace: float | None) -> threading.Event:
        events = [s.stop(grace) for s in self.servers.values()]
        done = threading.Event()

        def wait_all() -> None:
            for e in events:
                e.wait()
            done.set()

        threading.Thread(target=wait_all, name="grpc-stop", daemon=True).start()
        return done


def serve_sockets(
    agent: Agent,
    sockets: list[SocketSpec],
    observe_rpc: Callable[[str, str, float], None] | None = None,
    max_streams: int = MAX_STREAMS,
    *,
    start: bool = True,
) -> Servers:
    """One server per socket sharing one servicer; all or none (a failure stops those bound). With
    start=False every socket is bound and listening, and served from `Servers.start()`: the netagent
    binds before it touches the kernel, so a socket it cannot bind never leaves peers behind."""
    servicer = NetAgentServicer(agent, observe_rpc)
    bound: dict[SocketRole, grpc.Server] = {}
    starts: list[Callable[[], None]] = []
    try:
        for spec in sockets:
            if spec.role in bound:
                raise SocketPathError(f"{spec.path}: a second {spec.role.value} socket")
            bound[spec.role], go = bind(agent, spec.path, spec.group, observe_rpc, max_streams, spec.role,
                                        private=spec.private, servicer=servicer)
            starts.append(go)
    except BaseException:
        for s in bound.values():
            s.stop(None)
        raise
    servers = Servers(bound, starts)
    if start:
        servers.start()
    return servers


def group_id(name_or_id: str) -> int:
    return int(name_or_id) if name_or_id.isdigit() else grp.getgrnam(name_or_id).gr_gid
