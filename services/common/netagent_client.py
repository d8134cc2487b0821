"""A small typed client for the netagent's gRPC API over its Unix socket.

Unary calls retry UNAVAILABLE (the netagent restarting, a transient kernel failure) with capped
exponential backoff within a deadline; every other code is raised at once as `NetAgentError`, whose
`code` says what to do (INVALID_ARGUMENT: fix the input; FAILED_PRECONDITION: the netagent's state
does not allow it yet: standby, device not configured, no tunnel for the cluster, a stale epoch, or
another TunnelEndpoint owns the cluster: `not_owner`; RESOURCE_EXHAUSTED: a bound, retry with backoff).
`RoleWatcher` follows the WatchRole stream in the background and reconnects when the netagent goes
away; while disconnected the role is reported as not active, which is the safe answer: a controller
that cannot reach its netagent cannot mutate anything anyway.

The private key passed to `configure_device` is never logged nor put in an error message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.kube.backoff import Backoff
from services.common.tunnel_pb import duration

__all__ = ["NetAgentClient", "NetAgentError", "RoleWatcher", "duration", "follow_stream"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class NetAgentError(Exception):
    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"netagent {method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details

    @property
    def precondition(self) -> bool:
        """FAILED_PRECONDITION, whatever the reason: standby, device not configured, no tunnel for
        the cluster yet, or a stale epoch (the details say which)."""
        return self.code == grpc.StatusCode.FAILED_PRECONDITION

    @property
    def stale_epoch(self) -> bool:
        """A SetRole refused because a higher epoch was already seen (the caller is a stale leader)."""
        return self.precondition and "epoch" in self.details.lower()

    @property
    def not_owner(self) -> bool:
        """FAILED_PRECONDITION because another TunnelEndpoint owns the cluster id (or the public key's
        cluster): the details name it. Not worth retrying until that owner goes away."""
        return self.precondition and "owned by TunnelEndpoint" in self.details

    @property
    def owner(self) -> str:
        """The owning TunnelEndpoint ("namespace/name") a `not_owner` refusal names; "" otherwise."""
        if not self.not_owner:
            return ""
        return self.details.rpartition("owned by TunnelEndpoint ")[2].split()[0] if self.details else ""

    @property
    def exhausted(self) -> bool:
        """RESOURCE_EXHAUSTED: a bound of the netagent (tunnels, NAT entries); retry with backoff."""
        return self.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def invalid(self) -> bool:
        return self.code == grpc.StatusCode.INVALID_ARGUMENT

    @property
    def unavailable(self) -> bool:
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class NetAgentClient:
    def __init__(
        self,
        socket_path: str,
        *,
        timeout: float = 10.0,
        retry_deadline: float = 15.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.retry_deadline = retry_deadline
        self.backoff = backoff or Backoff(base=0.1, cap=2.0)
        # A restarted netagent (its container restarting) must be reached again within a fraction
        # of a second: gRPC's default reconnect backoff (1 s, growing to 120 s) would keep the role
        # ungranted and the device unconfigured for seconds after it answers. A Unix socket costs
        # nothing to retry.
        self.channel = grpc.insecure_channel(f"unix://{socket_path}", options=RECONNECT_OPTIONS)
        self.stub = pb_grpc.NetAgentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(
        self,
        method: str,
        fn: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        retry_deadline: float | None = None,
    ) -> Resp:
        deadline = time.monotonic() + (self.retry_deadline if retry_deadline is None else retry_deadline)
        attempt = 0
        while True:
            try:
                return fn(request, timeout=self.timeout, wait_for_ready=False)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                details = (e.details() if hasattr(e, "details") else "") or ""
                err = NetAgentError(method, code, details)
                if not err.unavailable:
                    raise err from None
                delay = self.backoff.delay(attempt)
                attempt += 1
                if time.monotonic() + delay > deadline:
                    raise err from None
                time.sleep(delay)

    # --- unary RPCs ------------------------------------------------------------------------------

    def get_info(self, *, retry_deadline: float | None = None) -> pb.GetInfoResponse:
        return self._call("GetInfo", self.stub.GetInfo, pb.GetInfoRequest(), retry_deadline=retry_deadline)

    def configure_device(
        self, private_key: str, *, listen_port: int = 0, mtu: int = 0
    ) -> pb.ConfigureDeviceResponse:
        req = pb.ConfigureDeviceRequest(private_key=private_key, listen_port=listen_port, mtu=mtu)
        return self._call("ConfigureDevice", self.stub.ConfigureDevice, req)

    def set_role(
        self, role: pb.Role.ValueType, epoch: int, ttl: float, reason: str = ""
    ) -> pb.SetRoleResponse:
        req = pb.SetRoleRequest(role=role, epoch=epoch, ttl=duration(ttl), reason=reason)
        return self._call("SetRole", self.stub.SetRole, req)

    def ensure_tunnel(self, tunnel: pb.Tunnel, owner: str) -> pb.EnsureTunnelResponse:
        """`owner`: the claiming TunnelEndpoint as "namespace/name"."""
        req = pb.EnsureTunnelRequest(tunnel=tunnel, owner=owner)
        return self._call("EnsureTunnel", self.stub.EnsureTunnel, req)

    def delete_tunnel(self, cluster_id: str, owner: str) -> pb.DeleteTunnelResponse:
        req = pb.DeleteTunnelRequest(cluster_id=cluster_id, owner=owner)
        return self._call("DeleteTunnel", self.stub.DeleteTunnel, req)

    def list_tunnels(self) -> list[pb.TunnelEntry]:
        return list(self._call("ListTunnels", self.stub.ListTunnels, pb.ListTunnelsRequest()).tunnels)

    def set_nat_mappings(self, cluster_id: str, mappings: dict[str, str]) -> pb.SetNatMappingsResponse:
        req = pb.SetNatMappingsRequest(cluster_id=cluster_id, mappings=mappings)
        return self._call("SetNatMappings", self.stub.SetNatMappings, req)

    def delete_nat_mappings(self, cluster_id: str) -> pb.DeleteNatMappingsResponse:
        req = pb.DeleteNatMappingsRequest(cluster_id=cluster_id)
        return self._call("DeleteNatMappings", self.stub.DeleteNatMappings, req)

    # --- streams ---------------------------------------------------------------------------------

    def watch_role(self) -> grpc.CallIterator[pb.WatchRoleResponse]:
        """The raw stream; `.cancel()` it from another thread to stop."""
        return self.stub.WatchRole(pb.WatchRoleRequest())

    def watch_tunnel_status(
        self, *, cluster_id: str = "", min_interval: float = 5.0
    ) -> grpc.CallIterator[pb.WatchTunnelStatusResponse]:
        req = pb.WatchTunnelStatusRequest(cluster_id=cluster_id, min_interval=duration(min_interval))
        return self.stub.WatchTunnelStatus(req)


def follow_stream(
    name: str,
    open_stream: Callable[[], grpc.CallIterator[Resp]],
    on_message: Callable[[Resp], None],
    stop: threading.Event,
    *,
    on_disconnect: Callable[[], None] | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Consumes a server stream until `stop` is set, reopening it with backoff whenever it ends or
    fails. `on_disconnect` runs each time the stream is lost."""
    backoff = backoff or Backoff(base=0.2, cap=5.0)
    failures = 0
    while not stop.is_set():
        call = open_stream()
        cancel_on_stop = threading.Thread(target=_cancel_when, args=(stop, call), daemon=True)
        cancel_on_stop.start()
        got_any = False
        try:
            for msg in _iterate(call):
                got_any = True
                failures = 0
                on_message(msg)
        except grpc.RpcError as e:
            if stop.is_set():
                break
            code = e.code() if hasattr(e, "code") else None
            log.info("netagent stream lost", extra={"stream": name, "code": getattr(code, "name", str(code))})
        finally:
            call.cancel()  # type: ignore[no-untyped-call]
        if stop.is_set():
            break
        if on_disconnect:
            on_disconnect()
        if not got_any:
            failures += 1
        stop.wait(backoff.delay(failures))


def _iterate(call: grpc.CallIterator[Resp]) -> Iterator[Resp]:
    yield from call


def _cancel_when(stop: threading.Event, call: grpc.CallIterator[Resp]) -> None:
    while not stop.wait(0.5):
        if not call.is_active():
            return
    call.cancel()  # type: ignore[no-untyped-call]


class RoleWatcher:
    """Tracks the netagent's role from WatchRole. `on_change(active)` is called on every transition
    (and with False whenever the stream is lost); `on_message(m)` with every message (it also says
    whether the device holds its key: the tunnel controller's device keeper reacts to it)."""

    def __init__(self, netagent: NetAgentClient, on_change: Callable[[bool], None] | None = None,
                 on_message: Callable[[pb.WatchRoleResponse], None] | None = None) -> None:
        self.netagent = netagent
        self.on_change = on_change
        self.on_message = on_message  # every message, after the role was updated (device state)
        self._active = False
        self.epoch = 0
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)

    @property
    def active(self) -> bool:
        return self._active

    def wait_for(self, active: bool, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self._active == active, timeout)

    def _set(self, active: bool, epoch: int | None = None) -> None:
        with self.changed:
            was = self._active
            self._active = active
            if epoch is not None:
                self.epoch = epoch
            self.changed.notify_all()
        if was != active:
            log.info("netagent role changed", extra={"active": active, "epoch": self.epoch})
            if self.on_change:
                self.on_change(active)

    def run(self, stop: threading.Event) -> None:
        def on_msg(m: pb.WatchRoleResponse) -> None:
            self._set(m.role == pb.ROLE_ACTIVE, m.epoch)
            if self.on_message:
                self.on_message(m)

        follow_stream(
            "WatchRole", self.netagent.watch_role, on_msg, stop, on_disconnect=lambda: self._set(False)
        )
