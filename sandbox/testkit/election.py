"""Test doubles for the labeler's election tests: a fake netagent and a fake Lease store.

`RecordingNetAgent` is a FAKE netagent gRPC servicer: it serves GetInfo and SetRole only, on a Unix
socket, through the real fencing grant of the netagent (services.netagent.plan.role.Fence: same epoch and
TTL rules), and records every SetRole with the monotonic time it was served. It stands in for the
privileged netagent because the subject under test is the election and fencing logic, and it lets one
process host both replicas' agents on one clock, so "two ACTIVE roles at once" can be decided exactly
from the recorded grants as well as sampled.

`MemoryLeaseStore` is a FAKE Lease store with the API server's optimistic concurrency (resourceVersion,
409) and per-client reachability (an outage, or one replica partitioned away), for fast loop tests;
the subprocess tests use the in-memory API server instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc

from services.api.netagent.v1 import netagent_pb2 as pb
from services.api.netagent.v1 import netagent_pb2_grpc as pb_grpc
from services.common.leaderelection import Failure, LeaseRecord, Write
from services.labeler.lease_lock import LockFailed
from services.netagent.plan.role import Fence, Role, StaleEpoch


@dataclass(frozen=True)
class RoleCall:
    at: float  # monotonic, when served
    active: bool
    epoch: int
    ttl: float
    reason: str


class RecordingNetAgent(pb_grpc.NetAgentServiceServicer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.fence = Fence()
        self.calls: list[RoleCall] = []
        self._lock = threading.Lock()
        self.refuse_active = False  # as an agent whose device is not configured
        self.device_configured = True  # what GetInfo says

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        g = self.fence.current()
        role = pb.ROLE_ACTIVE if g.role is Role.ACTIVE else pb.ROLE_STANDBY
        return pb.GetInfoResponse(version="fake", role=role, epoch=g.epoch,
                                  device_configured=self.device_configured)

    def SetRole(self, request: pb.SetRoleRequest, context: grpc.ServicerContext) -> pb.SetRoleResponse:
        if request.role not in (pb.ROLE_ACTIVE, pb.ROLE_STANDBY):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "role: must be ROLE_ACTIVE or ROLE_STANDBY")
        active = request.role == pb.ROLE_ACTIVE
        if active and self.refuse_active:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "device not configured")
        ttl = request.ttl.ToNanoseconds() / 1e9 if active else 0.0
        error: tuple[grpc.StatusCode, str] | None = None
        with self._lock:
            try:
                role = Role.ACTIVE if active else Role.STANDBY
                g = self.fence.set(role, request.epoch, ttl, request.reason)
                self.calls.append(RoleCall(time.monotonic(), active, request.epoch, ttl, request.reason))
            except StaleEpoch as e:
                error = (grpc.StatusCode.FAILED_PRECONDITION, str(e))
            except ValueError as e:
                error = (grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if error is not None:
            context.abort(*error)
        return pb.SetRoleResponse(role=request.role, epoch=g.epoch)

    def restarted(self) -> None:
        """As an agent restarted after its last grant lapsed: STANDBY, nothing granted."""
        with self._lock:
            self.fence = Fence()

    def active(self) -> bool:
        with self._lock:
            return self.fence.current().active_at(time.monotonic())

    def active_intervals(self) -> list[tuple[float, float]]:
        """When the agent held an unexpired ACTIVE role, from the recorded calls: each call replaces
        the previous grant."""
        with self._lock:
            calls = list(self.calls)
        out: list[tuple[float, float]] = []
        for i, c in enumerate(calls):
            if not c.active:
                continue
            end = c.at + c.ttl
            if i + 1 < len(calls):
                end = min(end, calls[i + 1].at)
            if out and abs(out[-1][1] - c.at) < 1e-9:
                out[-1] = (out[-1][0], end)
            else:
                out.append((c.at, end))
        return out

    def became_active_at(self, after: float = 0.0) -> float | None:
        with self._lock:
            return next((c.at for c in self.calls if c.active and c.at >= after), None)


def serve(agent: RecordingNetAgent, socket_path: str) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_NetAgentServiceServicer_to_server(agent, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    return server


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total time both interval lists cover."""
    total = 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


class MemoryLeaseStore:
    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.rv = 0
        self.down = False  # the whole API server is unreachable
        self._lock = threading.Lock()
        self.watchers: list[Callable[[LeaseRecord, str], None]] = []

    def lock_for(self, timeout: float = 0.2) -> MemoryLock:
        return MemoryLock(self, timeout)

    def force(self, record: LeaseRecord) -> None:
        """Another writer (not one of the electors) overwrites the Lease."""
        with self._lock:
            self.record = record
            self.rv += 1


class MemoryLock:
    def __init__(self, store: MemoryLeaseStore, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self.cut = False  # this client alone cannot reach the store (partition)

    def _reachable(self) -> None:
        if self.cut or self.store.down:
            time.sleep(self.timeout)  # as a connect timeout would
            raise LockFailed(Failure.UNREACHABLE, "timed out")

    def read(self) -> tuple[LeaseRecord, str] | None:
        self._reachable()
        with self.store._lock:
            if self.store.record is None:
                return None
            return self.store.record, str(self.store.rv)

    def write(self, w: Write) -> tuple[LeaseRecord, str]:
        self._reachable()
        with self.store._lock:
            s = self.store
            if w.resource_version is None and s.record is not None:
                raise LockFailed(Failure.CONFLICT, "already exists")
            if w.resource_version is not None and w.resource_version != str(s.rv):
                raise LockFailed(Failure.CONFLICT, "stale resourceVersion")
            s.record = w.record
            s.rv += 1
            out = (s.record, str(s.rv))
            watchers = list(s.watchers)
        for notify in watchers:
            notify(*out)
        return out
