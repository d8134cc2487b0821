"""Core v1 Events, so that `kubectl describe` shows what a controller did and why it failed."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime

from services.common.kube.client import JSON, KubeClient, KubeError
from services.common.vocabulary import EVENTS

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Emits Events about objects. The same (object, type, reason, message) repeated within
    `dedup_window` seconds is sent once (as client-go's correlator would aggregate it), so a retry
    loop cannot flood the API server. Failures to emit are logged, never raised: an Event is a
    courtesy, not part of reconciliation."""

    def __init__(
        self, client: KubeClient, component: str, host: str = "", *, dedup_window: float = 60.0
    ) -> None:
        self.client = client
        self.component = component
        self.host = host
        self.dedup_window = dedup_window
        self._recent: dict[tuple[str, str, str, str], float] = {}
        self._lock = threading.Lock()
        self.sent = 0

    def event(self, obj: JSON, type_: str, reason: str, message: str) -> None:
        md = obj.get("metadata") or {}
        ident = (str(md.get("uid") or md.get("name")), type_, reason, message)
        now = time.monotonic()
        with self._lock:
            last = self._recent.get(ident)
            if last is not None and now - last < self.dedup_window:
                return
            self._recent[ident] = now
            if len(self._recent) > 4096:
                cutoff = now - self.dedup_window
                self._recent = {k: t for k, t in self._recent.items() if t >= cutoff}
        # Events of cluster-scoped objects go to "default", as kubectl looks for them there.
        namespace = md.get("namespace") or "default"
        ts = _now()
        body: JSON = {
            "metadata": {
                "name": f"{md.get('name', 'object')}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", ""),
                "kind": obj.get("kind", ""),
                "name": md.get("name", ""),
                "namespace": md.get("namespace", ""),
                "uid": md.get("uid", ""),
                "resourceVersion": md.get("resourceVersion", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        try:
            self.client.create(EVENTS, body, namespace)
            self.sent += 1
        except KubeError as e:
            log.warning("could not emit event", extra={"reason": reason, "error": str(e)})

    def normal(self, obj: JSON, reason: str, message: str) -> None:
        self.event(obj, NORMAL, reason, message)

    def warning(self, obj: JSON, reason: str, message: str) -> None:
        self.event(obj, WARNING, reason, message)
