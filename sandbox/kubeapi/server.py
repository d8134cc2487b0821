"""HTTP front end: Kubernetes REST paths, discovery, watch streaming, and the KubeAPIServer class."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from sandbox.kubeapi import errors, gnostic, openapi, openapi_v2, tables
from sandbox.kubeapi.hooks import Hooks, RequestRecord
from sandbox.kubeapi.resources import SERVER_VERSION, ResourceType
from sandbox.kubeapi.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from sandbox.kubeapi.store import CRD_KEY, Event, Store, Watcher

log = logging.getLogger("liqo.kubeapi")
Obj = dict[str, Any]
_TRUE = ("true", "1")
_IDLE: Any = object()  # a queue wait that timed out


@dataclass
class _Route:
    verb: str
    rt: ResourceType
    version: str
    namespace: str | None
    name: str | None
    subresource: str


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], api: KubeAPIServer) -> None:
        self.api = api
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def cut_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    _record: RequestRecord | None = None

    # --- plumbing -----------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes: without this, Nagle plus delayed ACKs cost 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send_response(self, code: int, message: str | None = None) -> None:
        if self._record is not None:
            self._record.code = code
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _send_json(self, code: int, body: Any, warnings: Iterable[str] = ()) -> None:
        self._send_bytes(code, json.dumps(body, separators=(",", ":")).encode(), "application/json", warnings)

    def _send_bytes(self, code: int, data: bytes, ctype: str, warnings: Iterable[str] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for w in warnings:
            self.send_header("Warning", f'299 - "{w}"')
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: errors.APIError) -> None:
        self._send_json(err.code, err.status())

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._read_chunked()
        else:
            raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if "json" not in ctype and "yaml" not in ctype:
            # Protobuf/CBOR bodies are not decoded (a documented limitation): say so as upstream would.
            raise errors.APIError(
                415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted "
                f"media types include: application/json, application/yaml (got {ctype})")
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"the request body is not valid JSON: {exc}") from None

    def _read_chunked(self) -> bytes:
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    # --- dispatch -----------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        rec = RequestRecord(
            time=time.time(),
            method=method,
            path=url.path,
            query=query,
            verb="",
            group="",
            resource="",
            subresource="",
            namespace=None,
            name=None,
            user_agent=self.headers.get("User-Agent", ""),
        )
        self._record = rec
        try:
            body = self._read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
            route = self._route(method, url.path, query)
            if route is not None:
                rec.verb, rec.group, rec.resource = route.verb, route.rt.group, route.rt.plural
                rec.subresource, rec.namespace, rec.name = route.subresource, route.namespace, route.name
            api.hooks.record(rec)
            if api.hooks.latency:
                time.sleep(api.hooks.latency)
            injected = api.hooks.take_injected(rec) if route is not None else None
            if injected is not None:
                raise injected
            if route is None:
                self._non_resource(method, url.path)
            else:
                self._resource(route, method, query, body)
        except errors.APIError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            log.exception("internal error on %s %s", method, self.path)
            self._send_error(errors.APIError(500, "InternalError", f"internal error: {exc}"))

    def _route(self, method: str, path: str, query: dict[str, str]) -> _Route | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        registry = self.server.api.store.registry
        with self.server.api.store.lock:
            namespace: str | None = None
            if rest[0] == "namespaces" and len(rest) >= 3:
                rt = registry.lookup(group, version, rest[2])
                if rt is not None and rt.namespaced:
                    namespace, rest = rest[1], rest[2:]
            rt = registry.lookup(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise errors.APIError(404, "NotFound", "the server could not find the requested resource")
        if rt.namespaced is False and namespace is not None:
            raise errors.APIError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if sub and (sub != "status" or not rt.has_status):
            raise errors.APIError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            verb = {
                "GET": "watch" if query.get("watch", "").lower() in _TRUE else "list",
                "POST": "create",
                "DELETE": "deletecollection",
            }.get(method)
        else:
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is None:
            raise errors.method_not_allowed()
        if rt.namespaced and namespace is None and verb in ("create", "deletecollection"):
            raise errors.method_not_allowed()
        if rt.namespaced and namespace is None and name is not None:
            raise errors.APIError(404, "NotFound", "the server could not find the requested resource")
        return _Route(verb, rt, version, namespace, name, sub)

    def _non_resource(self, method: str, path: str) -> None:
        api = self.server.api
        if method != "GET":
            raise errors.method_not_allowed()
        parts = [p for p in path.split("/") if p]
        registry = api.store.registry
        doc: Any = None
        ctype = "application/json"
        with api.store.lock:
            if not parts:
                doc = {
                    "paths": [
                        *("/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"),
                        *sorted(f"/apis/{g}" for g in registry.groups()),
                    ]
                }
            elif parts == ["api"]:
                doc = {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{api.host}:{api.port}"}
                    ],
                }
            elif parts == ["api", "v1"]:
                doc = registry.resource_list_doc("", "v1")
            elif parts == ["apis"]:
                doc = registry.group_list_doc()
            elif len(parts) == 2 and parts[0] == "apis":
                doc = registry.group_doc(parts[1])
            elif len(parts) == 3 and parts[0] == "apis":
                doc = registry.resource_list_doc(parts[1], parts[2])
            elif parts == ["version"]:
                doc = SERVER_VERSION
            elif parts == ["openapi", "v2"]:
                doc = openapi_v2.document(registry)
                # kubectl < 1.27 asks for gnostic's protobuf; anything else gets the JSON document.
                if gnostic.MEDIA_TYPE in (self.headers.get("Accept") or ""):
                    ctype = gnostic.MEDIA_TYPE
            elif parts == ["openapi", "v3"]:
                doc = openapi.root_document(registry)
            elif len(parts) >= 4 and parts[:2] == ["openapi", "v3"]:
                gv = parts[2:]
                if gv[0] == "api" and len(gv) == 2:
                    doc = openapi.gv_document(registry, "", gv[1])
                elif gv[0] == "apis" and len(gv) == 3:
                    doc = openapi.gv_document(registry, gv[1], gv[2])
        if parts and parts[0] in ("healthz", "readyz", "livez"):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if doc is None:
            raise errors.APIError(404, "NotFound", "the server could not find the requested resource")
        if ctype == gnostic.MEDIA_TYPE:
            # Upstream's Content-Type is what Go sniffs from the bytes: the media type asked for has
            # an "@", which Go's mime parser (hence client-go) rejects.
            self._send_bytes(200, gnostic.document(doc), "application/octet-stream")
        else:
            self._send_json(200, doc)

    # --- resources ----------------------------------------------------------------------------

    def _table_version(self) -> str | None:
        return tables.table_version(self.headers.get("Accept") or "")

    def _selectors(self, rt: ResourceType, query: dict[str, str]) -> tuple[LabelSelector, FieldSelector]:
        try:
            return (
                parse_label_selector(query.get("labelSelector")),
                parse_field_selector(query.get("fieldSelector"), rt.supports_field),
            )
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from None

    def _resource(self, r: _Route, method: str, query: dict[str, str], body: Any) -> None:
        store = self.server.api.store
        rt, version = r.rt, r.version
        dry_run = query.get("dryRun") == "All"
        strict = query.get("fieldValidation", "") == "Strict"
        warnings: list[str] = []
        if r.verb == "get":
            assert r.name is not None
            obj = _versioned(rt, version, store.get(rt, r.namespace, r.name))
            if table_version := self._table_version():
                self._send_json(
                    200,
                    tables.table(
                        rt,
                        version,
                        [obj],
                        time.time(),
                        resource_version=obj["metadata"].get("resourceVersion", ""),
                        include=query.get("includeObject", "PartialObjectMetadata"),
                        meta_version=table_version,
                    ),
                )
            else:
                self._send_json(200, obj)
        elif r.verb == "list":
            labels, fields = self._selectors(rt, query)
            try:
                limit = int(query.get("limit") or 0)
            except ValueError:
                raise errors.bad_request("limit must be an integer") from None
            items, rv, cont, remaining = store.list_objects(
                rt, r.namespace, labels, fields, limit, query.get("continue", "")
            )
            items = [_versioned(rt, version, o) for o in items]
            if table_version := self._table_version():
                self._send_json(
                    200,
                    tables.table(
                        rt,
                        version,
                        items,
                        time.time(),
                        resource_version=str(rv),
                        continue_token=cont,
                        include=query.get("includeObject", "PartialObjectMetadata"),
                        meta_version=table_version,
                    ),
                )
                return
            meta: Obj = {"resourceVersion": str(rv)}
            if cont:
                meta["continue"] = cont
                meta["remainingItemCount"] = remaining
            self._send_json(
                200,
                {
                    "kind": rt.list_kind,
                    "apiVersion": rt.api_version(version),
                    "metadata": meta,
                    "items": items,
                },
            )
        elif r.verb == "watch":
            self._watch(r, query)
        elif r.verb == "create":
            obj = store.create(
                rt, version, r.namespace, body, dry_run=dry_run, strict=strict, warnings=warnings
            )
            self._send_json(201, _versioned(rt, version, obj), warnings)
        elif r.verb == "update":
            assert r.name is not None
            obj = store.update(
                rt,
                version,
                r.namespace,
                r.name,
                body,
                subresource=r.subresource,
                dry_run=dry_run,
                strict=strict,
                warnings=warnings,
            )
            self._send_json(200, _versioned(rt, version, obj), warnings)
        elif r.verb == "patch":
            assert r.name is not None
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if body is None:
                raise errors.bad_request("the patch body is empty")
            obj = store.patch(
                rt,
                version,
                r.namespace,
                r.name,
                ctype,
                body,
                subresource=r.subresource,
                dry_run=dry_run,
                strict=strict,
                warnings=warnings,
            )
            self._send_json(200, _versioned(rt, version, obj), warnings)
        elif r.verb == "delete":
            assert r.name is not None
            options = body if isinstance(body, dict) else {}
            dry_run = dry_run or "All" in (options.get("dryRun") or ())
            obj = store.delete(rt, r.namespace, r.name, options, dry_run=dry_run)
            self._send_json(200, _versioned(rt, version, obj))
        elif r.verb == "deletecollection":
            labels, fields = self._selectors(rt, query)
            items = store.delete_collection(rt, r.namespace, labels, fields, dry_run=dry_run)
            self._send_json(
                200,
                {
                    "kind": rt.list_kind,
                    "apiVersion": rt.api_version(version),
                    "metadata": {"resourceVersion": str(store.resource_version)},
                    "items": [_versioned(rt, version, o) for o in items],
                },
            )

    # --- watch --------------------------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _watch(self, r: _Route, query: dict[str, str]) -> None:
        api = self.server.api
        store = api.store
        labels, fields = self._selectors(r.rt, query)
        send_initial = query.get("sendInitialEvents", "").lower() in _TRUE
        table = self._table_version()
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            raise errors.bad_request("timeoutSeconds must be a number") from None
        bookmarks = query.get("allowWatchBookmarks", "").lower() in _TRUE
        gone: errors.APIError | None = None
        w: Watcher | None = None
        try:
            w = store.watch(
                r.rt, r.namespace, labels, fields, query.get("resourceVersion"), send_initial=send_initial
            )
        except errors.APIError as err:
            if err.code != 410:
                raise
            gone = err
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if gone is not None or w is None:
            assert gone is not None
            self._write_chunk(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")
            self._write_chunk(b"")
            return
        encode = _Encoder(r.rt, r.version, table)
        try:
            self._stream(w, encode, timeout, bookmarks, send_initial)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
            return
        finally:
            store.unwatch(w)
        if w.abort:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        with contextlib.suppress(OSError):
            self._write_chunk(b"")

    def _stream(
        self, w: Watcher, encode: _Encoder, timeout: float | None, bookmarks: bool, send_initial: bool
    ) -> None:
        api = self.server.api
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        for i in range(0, len(w.initial), 500):
            self._write_chunk(b"".join(encode.line(k, ev) for k, ev in w.initial[i : i + 500]))
        w.initial = []
        if send_initial:
            rv = api.store.resource_version
            self._write_chunk(encode.bookmark(rv, initial_end=True))
        next_bookmark = time.monotonic() + api.bookmark_interval
        while not api.stopping.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = min(1.0, api.bookmark_interval if bookmarks else 1.0)
            if deadline is not None:
                wait = min(wait, deadline - now)
            if bookmarks:
                wait = max(0.0, min(wait, next_bookmark - now))
            try:
                item = w.queue.get(timeout=max(wait, 0.001))
            except queue.Empty:
                item = _IDLE
            if item is None or (w.closed.is_set() and (w.abort or w.overflowed)):
                return
            if item is not _IDLE:
                batch: list[tuple[str, Event]] = [item]
                stop = False
                while len(batch) < 500:
                    try:
                        more = w.queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
                self._write_chunk(b"".join(encode.line(k, ev) for k, ev in batch))
                if stop:
                    return
                continue
            if w.closed.is_set():
                return
            if self._client_gone():
                return
            if bookmarks and time.monotonic() >= next_bookmark:
                mark = api.store.bookmark_rv(w)
                if mark is not None:
                    self._write_chunk(encode.bookmark(mark))
                next_bookmark = time.monotonic() + api.bookmark_interval


class _Encoder:
    """Watch event lines for one watch (storage-version objects re-labelled if needed, or Tables)."""

    def __init__(self, rt: ResourceType, version: str, table: str | None) -> None:
        self.rt = rt
        self.version = version
        self.table = table
        self.same_version = rt.api_version(version) == rt.api_version()

    def line(self, kind: str, ev: Event) -> bytes:
        if self.table:
            obj = tables.table(
                self.rt,
                self.version,
                [_versioned(self.rt, self.version, ev.obj)],
                time.time(),
                resource_version=ev.obj["metadata"].get("resourceVersion", ""),
                meta_version=self.table,
            )
            raw = json.dumps(obj, separators=(",", ":")).encode()
        elif self.same_version:
            raw = ev.raw()
        else:
            raw = json.dumps(_versioned(self.rt, self.version, ev.obj), separators=(",", ":")).encode()
        return b'{"type":"%s","object":%s}\n' % (kind.encode(), raw)

    def bookmark(self, rv: int, *, initial_end: bool = False) -> bytes:
        meta: Obj = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": self.rt.kind, "apiVersion": self.rt.api_version(self.version), "metadata": meta}
        return json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n"


def _versioned(rt: ResourceType, version: str, obj: Obj) -> Obj:
    want = rt.api_version(version)
    if obj.get("apiVersion") == want:
        return obj
    return dict(obj, apiVersion=want)


def read_manifests(paths: Iterable[str | Path]) -> list[Obj]:
    """Every object in the YAML/JSON files (or directories of them), CRDs first."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml", ".json"))
        else:
            files.append(p)
    docs: list[Obj] = []
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "List":
                docs += [d for d in doc.get("items") or () if isinstance(d, dict)]
            elif isinstance(doc, dict):
                docs.append(doc)
    return sorted(docs, key=lambda d: d.get("kind") != "CustomResourceDefinition")


class KubeAPIServer:
    """An in-memory Kubernetes API server on ``host:port`` (port 0: an ephemeral one). A test double.

    Use as a context manager, or call ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        crd_dirs: Iterable[str | Path] = (),
        manifests: Iterable[str | Path] = (),
        event_log_size: int = 10_000,
        watch_queue_size: int = 10_000,
        bookmark_interval: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.store = Store(event_log_size=event_log_size, watch_queue_size=watch_queue_size)
        self.hooks = Hooks(self)
        self.bookmark_interval = bookmark_interval
        self.stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._serve_lock = threading.Lock()
        self._listening = threading.Event()
        self._resume_timer: threading.Timer | None = None
        self.store.load(read_manifests([*crd_dirs, *manifests]))

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> KubeAPIServer:
        with self._serve_lock:
            self._listen()
        return self

    def _listen(self) -> None:
        httpd = _HTTPServer((self.host, self.port), self)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"kubeapi-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._listening.set()

    def _unlisten(self) -> None:
        httpd, self._httpd = self._httpd, None
        self._listening.clear()
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self.store.close_watches(abort=True)
        httpd.cut_connections()

    def stop(self) -> None:
        self.stopping.set()
        with self._serve_lock:
            if self._resume_timer is not None:
                self._resume_timer.cancel()
            self._unlisten()
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (open connections and watches are cut)."""
        with self._serve_lock:
            self._unlisten()
            self._resume_timer = threading.Timer(seconds, self._resume)
            self._resume_timer.daemon = True
            self._resume_timer.start()

    def _resume(self) -> None:
        with self._serve_lock:
            if self.stopping.is_set() or self._httpd is not None:
                return
            for _ in range(50):
                try:
                    self._listen()
                    return
                except OSError:
                    time.sleep(0.1)
            log.error("could not re-bind %s:%d after a pause", self.host, self.port)

    def wait_listening(self, timeout: float = 5.0) -> bool:
        return self._listening.wait(timeout)

    # --- conveniences -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def request_log(self) -> list[RequestRecord]:
        return self.hooks.request_log

    def kubeconfig(self, *, context: str = "liqo-kubeapi", namespace: str = "default") -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": context,
            "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {}}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}
            ],
        }

    def write_kubeconfig(
        self, path: str | Path, *, context: str = "liqo-kubeapi", namespace: str = "default"
    ) -> Path:
        p = Path(path)
        p.write_text(yaml.safe_dump(self.kubeconfig(context=context, namespace=namespace)))
        p.chmod(0o600)
        return p

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` pointed at this server."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    def apply_manifests(self, *paths: str | Path) -> None:
        """Create every object in these files/directories (CRDs first), as if POSTed."""
        self.store.load(read_manifests(paths))

    def iter_crds(self) -> Iterator[Obj]:
        rt = self.store.registry.by_key(CRD_KEY)
        assert rt is not None
        items, _, _, _ = self.store.list_objects(rt, None, LabelSelector(), FieldSelector())
        yield from items
