"""List-then-watch cache of one resource kind, kept current through outages.

Loop: LIST (remember the list's resourceVersion, diff against the cache so deletions missed while
disconnected are seen) -> WATCH from that resourceVersion with allowWatchBookmarks and a server-side
timeoutSeconds -> on a normal end, watch again from the last seen resourceVersion (bookmarks keep it
fresh); on 410 Gone (or an ERROR event) re-list; on connection errors retry with capped backoff.
Every request has a client-side timeout; the watch's read timeout exceeds the server timeout, so a
half-open connection ends in at most `watch_timeout + read_margin` seconds.

Handlers get `(event_type, obj, old)` with event_type ADDED, MODIFIED or DELETED; they run on the
informer's thread and must be quick (controllers only enqueue keys).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3

from services.common.kube.backoff import Backoff
from services.common.kube.client import JSON, KubeClient, KubeError, object_key
from services.common.vocabulary import ResourceRef

Handler = Callable[[str, JSON, JSON | None], None]

log = logging.getLogger(__name__)


class Informer:
    def __init__(
        self,
        client: KubeClient,
        ref: ResourceRef,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = 300,
        read_margin: float = 15.0,
        backoff: Backoff | None = None,
        name: str | None = None,
    ) -> None:
        self.client = client
        self.ref = ref
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.read_margin = read_margin
        self.backoff = backoff or Backoff(base=0.5, cap=5.0)
        self.name = name or ref.plural
        self._handlers: list[Handler] = []
        self._cache: dict[str, JSON] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._thread: threading.Thread | None = None
        self.resource_version = ""
        # Counters for tests and metrics.
        self.lists = 0
        self.watches = 0
        self.connected = False

    # --- public ----------------------------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> JSON | None:
        with self._lock:
            return self._cache.get(key)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    def items(self) -> list[JSON]:
        with self._lock:
            return list(self._cache.values())

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            # Closing the socket wakes the thread blocked reading the watch stream.
            with contextlib.suppress(AttributeError, OSError):
                resp.shutdown()
            with contextlib.suppress(OSError):
                resp.close()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                started = time.monotonic()
                self._watch()
                failures = 0
                if time.monotonic() - started < 1.0:
                    # A watch that ends at once (a misbehaving server) must not become a hot loop.
                    self._stop.wait(0.5)
            except KubeError as e:
                if self._stop.is_set():
                    break
                self.connected = False
                if e.gone:
                    log.info("watch expired, re-listing", extra={"resource": self.name})
                    need_list = True
                    failures = 0
                    continue
                delay = self.backoff.delay(failures)
                failures += 1
                log.warning(
                    "list/watch failed, retrying",
                    extra={"resource": self.name, "error": str(e), "retry_in": round(delay, 2)},
                )
                # After an error the resourceVersion may be stale; an expired one answers 410 and
                # we re-list then, so only errors that are not plain disconnects force a re-list.
                if not e.unreachable:
                    need_list = True
                self._stop.wait(delay)
            except Exception:
                if self._stop.is_set():
                    break
                log.exception("informer loop error", extra={"resource": self.name})
                need_list = True
                self._stop.wait(self.backoff.delay(failures))
                failures += 1

    def _list(self) -> None:
        out = self.client.list(
            self.ref,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
        )
        self.lists += 1
        items: list[JSON] = out.get("items") or []
        fresh = {}
        for it in items:
            # List items carry no apiVersion/kind; add them so handlers see whole objects.
            it.setdefault("apiVersion", self.ref.api_version)
            it.setdefault("kind", self.ref.kind)
            fresh[object_key(it)] = it
        with self._lock:
            old = self._cache
            self._cache = dict(fresh)
        self.resource_version = str((out.get("metadata") or {}).get("resourceVersion") or "")
        self.connected = True
        for key, obj in old.items():
            if key not in fresh:
                self._dispatch("DELETED", obj, None)
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                self._dispatch("ADDED", obj, None)
            elif _rv(prev) != _rv(obj):
                self._dispatch("MODIFIED", obj, prev)
        self._synced.set()

    def _watch(self) -> None:
        # Spread the server timeout so many watchers do not reconnect in lockstep.
        server_timeout = int(self.watch_timeout * random.uniform(0.9, 1.0)) or 1
        query: dict[str, Any] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version or None,
            "timeoutSeconds": server_timeout,
            "labelSelector": self.label_selector or None,
            "fieldSelector": self.field_selector or None,
        }
        resp, lines = self.client.stream_lines(
            self.ref.path(self.namespace),
            query=query,
            connect_timeout=self.client.timeout,
            read_timeout=server_timeout + self.read_margin,
        )
        self._resp = resp
        self.watches += 1
        self.connected = True
        try:
            if self._stop.is_set():
                return
            for line in lines:
                if self._stop.is_set():
                    return
                self._on_line(line)
        finally:
            self._resp = None
            resp.close()

    def _on_line(self, line: str) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            raise KubeError(0, "BadWatchEvent", f"undecodable watch line {line[:80]!r}") from None
        etype = ev.get("type")
        obj = ev.get("object") or {}
        if etype == "ERROR":
            raise KubeError.from_status(obj, 500)
        rv = _rv(obj)
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key = object_key(obj)
        with self._lock:
            prev = self._cache.get(key)
            if etype == "DELETED":
                self._cache.pop(key, None)
            else:
                self._cache[key] = obj
        if rv:
            self.resource_version = rv
        self._dispatch(etype, obj, prev)

    def _dispatch(self, etype: str, obj: JSON, old: JSON | None) -> None:
        for h in self._handlers:
            try:
                h(etype, obj, old)
            except Exception:
                log.exception("informer handler failed", extra={"resource": self.name})


def _rv(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
