"""Test hooks: fault injection, watch cuts, latency, outages, and the request log."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sandbox.kubeapi import errors

if TYPE_CHECKING:
    from sandbox.kubeapi.server import KubeAPIServer


@dataclass
class RequestRecord:
    """One HTTP request as the server saw it. ``code`` is set when the response status is sent."""

    time: float
    method: str
    path: str
    query: dict[str, str]
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection, or "" (non-resource)
    group: str
    resource: str  # plural, "" for non-resource paths
    subresource: str
    namespace: str | None
    name: str | None
    user_agent: str
    code: int | None = None


@dataclass
class _Injection:
    verb: str
    resource: str
    code: int
    remaining: int
    namespace: str | None
    name: str | None
    message: str | None
    reason: str | None

    def matches(self, rec: RequestRecord) -> bool:
        resources = {
            rec.resource,
            f"{rec.resource}/{rec.subresource}" if rec.subresource else rec.resource,
            f"{rec.resource}.{rec.group}" if rec.group else rec.resource,
        }
        return (
            (self.verb == "*" or self.verb == rec.verb)
            and (self.resource == "*" or self.resource in resources)
            and (self.namespace is None or self.namespace == rec.namespace)
            and (self.name is None or self.name == rec.name)
        )


@dataclass
class Hooks:
    """Handles for tests; every method is thread-safe. Obtain it as ``KubeAPIServer.hooks``."""

    server: KubeAPIServer
    latency: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _injections: list[_Injection] = field(default_factory=list)
    _log: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=100_000))

    def inject_error(
        self,
        verb: str = "*",
        resource: str = "*",
        code: int = 500,
        count: int = 1,
        *,
        namespace: str | None = None,
        name: str | None = None,
        message: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests matching ``verb`` and ``resource`` with a ``code`` Status.

        ``verb``: get, list, watch, create, update, patch, delete, deletecollection or ``*``.
        ``resource``: plural (``leases``), ``plural/status``, ``plural.group`` or ``*``.
        """
        with self._lock:
            self._injections.append(_Injection(verb, resource, code, count, namespace, name, message, reason))

    def clear_errors(self) -> None:
        with self._lock:
            self._injections.clear()

    def set_latency(self, seconds: float) -> None:
        """Delay every request by ``seconds`` before it is handled (0 to stop)."""
        self.latency = max(0.0, seconds)

    def close_watches(self, *, abort: bool = False, resource: str | None = None) -> int:
        """End every open watch (or those of one ``group/plural`` key, e.g. ``"/pods"``).

        ``abort=False`` ends each stream cleanly after the events already queued; ``abort=True`` cuts
        the TCP connection. Returns how many watches were closed.
        """
        return self.server.store.close_watches(abort=abort, key=resource)

    def pause(self, seconds: float, *, wait: bool = False) -> None:
        """Simulate an outage: cut every connection and refuse new ones for ``seconds``."""
        self.server.pause(seconds)
        if wait:
            time.sleep(seconds)
            self.server.wait_listening(timeout=5.0)

    def compact(self) -> int:
        """Expire the event log, so that any watch from an older resourceVersion gets 410 Gone."""
        return self.server.store.compact()

    def set_bookmark_interval(self, seconds: float) -> None:
        self.server.bookmark_interval = seconds

    def watcher_count(self) -> int:
        return self.server.store.watcher_count()

    @property
    def request_log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def clear_request_log(self) -> None:
        with self._lock:
            self._log.clear()

    # --- used by the server -------------------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._log.append(rec)

    def take_injected(self, rec: RequestRecord) -> errors.APIError | None:
        with self._lock:
            for inj in self._injections:
                if inj.remaining > 0 and inj.matches(rec):
                    inj.remaining -= 1
                    if inj.remaining == 0:
                        self._injections.remove(inj)
                    return errors.injected(inj.code, inj.message, inj.reason)
        return None
