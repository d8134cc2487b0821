"""Reads and writes the election Lease: optimistic concurrency on resourceVersion, a short timeout
on every request (a hung call must not eat the renew deadline), failures sorted by `classify`."""

from __future__ import annotations

from services.common.kube import LEASES, KubeClient, KubeError
from services.common.leaderelection import (
    Failure,
    LeaseRecord,
    Write,
    classify,
    lease_body,
    record_from_lease,
)


class LockFailed(Exception):
    def __init__(self, kind: Failure, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


class LeaseLock:
    def __init__(self, client: KubeClient, name: str, namespace: str, *, timeout: float) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.timeout = timeout

    def read(self) -> tuple[LeaseRecord, str] | None:
        """The Lease and its resourceVersion; None when it does not exist."""
        try:
            obj = self.client.request("GET", LEASES.path(self.namespace, self.name), timeout=self.timeout)
        except KubeError as e:
            if e.not_found:
                return None
            raise LockFailed(classify(e.status), str(e)) from e
        return record_from_lease(obj), str((obj.get("metadata") or {}).get("resourceVersion", ""))

    def write(self, w: Write) -> tuple[LeaseRecord, str]:
        """Creates (409 when someone else just did) or replaces (409 on a stale resourceVersion)."""
        body = lease_body(self.name, self.namespace, w.record, w.resource_version)
        try:
            if w.resource_version is None:
                path = LEASES.path(self.namespace)
                obj = self.client.request("POST", path, body=body, timeout=self.timeout)
            else:
                obj = self.client.request(
                    "PUT", LEASES.path(self.namespace, self.name), body=body, timeout=self.timeout
                )
        except KubeError as e:
            raise LockFailed(classify(e.status), str(e)) from e
        return record_from_lease(obj), str((obj.get("metadata") or {}).get("resourceVersion", ""))
