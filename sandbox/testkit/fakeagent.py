"""A FAKE netagent gRPC servicer for the controllers' tests: it records calls and keeps tunnels and NAT
mappings as data, programs nothing, and serves every method on one socket (no per-role check).

It stands in for the privileged netagent where the subject is a controller's Kubernetes side and its
use of the netagent API (tests/controllers/test_tunnel_natmap_controllers.py), or the API calls the
controllers make (tests/chart/test_rbac.py); the dataplane proofs use a real netagent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.keys import public_key_of
from services.common.netagent_client import duration

__all__ = ["FakeNetAgent", "serve"]


def serve(servicer: pb_grpc.NetAgentServiceServicer, socket_path: str, workers: int = 16) -> grpc.Server:
    """`servicer` served on the Unix socket `socket_path`, started. Stop it with `stop(0).wait()`
    and then remove the socket's directory: a stopping gRPC server unlinks its socket itself, so
    checking for the file and unlinking it would race with it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_NetAgentServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    return server


class FakeNetAgent(pb_grpc.NetAgentServiceServicer):
    """Records calls; keeps tunnels/mappings as data. A test double for the controllers' logic."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.role = pb.ROLE_STANDBY
        self.private_key = ""
        self.public_key = ""
        self.tunnels: dict[str, pb.Tunnel] = {}
        self.owners: dict[str, str] = {}  # clusterID -> the TunnelEndpoint that ensured it
        self.exhausted: set[str] = set()  # methods answering RESOURCE_EXHAUSTED (a netagent bound)
        self.states: dict[str, int] = {}
        self.nat: dict[str, dict[str, str]] = {}
        self.calls: list[str] = []
        self.version = 0  # bumped on every change, wakes the streams

    def _bump(self) -> None:
        self.version += 1
        self.lock.notify_all()

    def set_role(self, role: int) -> None:
        with self.lock:
            self.role = role  # type: ignore[assignment]
            self._bump()

    def lose_key(self) -> None:
        """What the netagent does when wireguard-go came back and it holds no key: the device has
        none, and WatchRole says so."""
        with self.lock:
            self.private_key = self.public_key = ""
            self._bump()

    def set_state(self, cid: str, state: int) -> None:
        with self.lock:
            self.states[cid] = state
            self._bump()

    def _need_active(self, ctx: grpc.ServicerContext) -> None:
        if self.role != pb.ROLE_ACTIVE:
            ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "agent is not ACTIVE")

    def GetInfo(self, req: Any, ctx: Any) -> pb.GetInfoResponse:
        return pb.GetInfoResponse(role=self.role, public_key=self.public_key,
                                  device_configured=bool(self.private_key))

    def ConfigureDevice(self, req: Any, ctx: Any) -> pb.ConfigureDeviceResponse:
        with self.lock:
            self.calls.append("ConfigureDevice")
            self.private_key = req.private_key
            self.public_key = public_key_of(req.private_key)
        return pb.ConfigureDeviceResponse(public_key=self.public_key, listen_port=5871, mtu=1340)

    def WatchRole(self, req: Any, ctx: Any) -> Iterator[pb.WatchRoleResponse]:
        last = None
        while ctx.is_active():
            with self.lock:
                now = (self.role, bool(self.private_key), self.version if not self.private_key else 0)
                if now != last:
                    last = now
                    msg = pb.WatchRoleResponse(role=self.role, epoch=1, reason="set",
                                               device_configured=bool(self.private_key))
                else:
                    self.lock.wait(0.2)
                    continue
            yield msg

    def EnsureTunnel(self, req: Any, ctx: Any) -> pb.EnsureTunnelResponse:
        with self.lock:
            self._need_active(ctx)
            self.calls.append(f"EnsureTunnel {req.tunnel.cluster_id}")
            assert req.owner, "EnsureTunnel without an owner"
            if "EnsureTunnel" in self.exhausted:
                ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "tunnels: 256 configured, at most 256")
            self.owners[req.tunnel.cluster_id] = req.owner
            changed = self.tunnels.get(req.tunnel.cluster_id) != req.tunnel
            self.tunnels[req.tunnel.cluster_id] = req.tunnel
            self.states.setdefault(req.tunnel.cluster_id, pb.TUNNEL_STATE_CONNECTING)
            self._bump()
            return pb.EnsureTunnelResponse(status=self._status(req.tunnel.cluster_id), changed=changed)

    def _status(self, cid: str) -> pb.TunnelStatus:
        t = self.tunnels[cid]
        s = pb.TunnelStatus(cluster_id=cid, state=self.states.get(cid, pb.TUNNEL_STATE_CONNECTING),  # type: ignore[arg-type]
                            endpoint_ip=t.endpoint, endpoint_port=t.endpoint_port, public_key=t.public_key,
                            allowed_ips=[t.remote_nat_pod_cidr if t.remote_nat_pod_cidr != "None"
                                         else t.remote_pod_cidr, t.remote_external_cidr])
        if s.state == pb.TUNNEL_STATE_CONNECTED:
            s.latency.CopyFrom(duration(0.0123))
        return s

    def DeleteTunnel(self, req: Any, ctx: Any) -> pb.DeleteTunnelResponse:
        with self.lock:
            self._need_active(ctx)
            self.calls.append(f"DeleteTunnel {req.cluster_id}")
            assert req.owner, "DeleteTunnel without an owner"
            self.owners.pop(req.cluster_id, None)
            existed = self.tunnels.pop(req.cluster_id, None) is not None
            self.nat.pop(req.cluster_id, None)
            self._bump()
            return pb.DeleteTunnelResponse(deleted=existed)

    def ListTunnels(self, req: Any, ctx: Any) -> pb.ListTunnelsResponse:
        with self.lock:
            return pb.ListTunnelsResponse(
                tunnels=[pb.TunnelEntry(tunnel=t, owner=self.owners.get(cid, ""))
                         for cid, t in self.tunnels.items()]
            )

    def WatchTunnelStatus(self, req: Any, ctx: Any) -> Iterator[pb.WatchTunnelStatusResponse]:
        seen = -1
        while ctx.is_active():
            with self.lock:
                if self.version == seen:
                    self.lock.wait(0.2)
                    continue
                seen = self.version
                msgs = [pb.WatchTunnelStatusResponse(status=self._status(c)) for c in self.tunnels]
            yield from msgs

    def SetNatMappings(self, req: Any, ctx: Any) -> pb.SetNatMappingsResponse:
        with self.lock:
            self._need_active(ctx)
            self.calls.append(f"SetNatMappings {req.cluster_id}")
            if "SetNatMappings" in self.exhausted:
                ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "mappings: exceed 65536 in total")
            if req.cluster_id not in self.tunnels:
                ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, f"no tunnel for cluster {req.cluster_id}")
            changed = self.nat.get(req.cluster_id) != dict(req.mappings)
            self.nat[req.cluster_id] = dict(req.mappings)
            return pb.SetNatMappingsResponse(count=len(req.mappings), changed=changed)

    def DeleteNatMappings(self, req: Any, ctx: Any) -> pb.DeleteNatMappingsResponse:
        with self.lock:
            self._need_active(ctx)
            self.calls.append(f"DeleteNatMappings {req.cluster_id}")
            return pb.DeleteNatMappingsResponse(deleted=self.nat.pop(req.cluster_id, None) is not None)
