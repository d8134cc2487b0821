"""A thin JSON-over-HTTP client for a generic controller runtime.

No typed models: every object is a plain `dict` as the API server sends it, every call has a request
timeout (so a half-open connection cannot hang a controller), and failures are one exception type,
`KubeError`, whose `status` is the HTTP code (0 when the server could not be reached). The transport
is our own urllib3 pool (`transport`, settings from `kubeconfig`): the official client's package
loads every model and API class on import, about 35 MB per process for the few calls we make.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import urllib3

from services.common.kube.kubeconfig import from_official, load_incluster, load_kubeconfig
from services.common.kube.transport import Transport
from services.common.vocabulary import ResourceRef

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class KubeError(Exception):
    """A failed API call. `status` is the HTTP status, 0 when the server was unreachable or timed
    out; `reason` is the Status object's reason ("NotFound", "Conflict", "AlreadyExists", "Expired",
    "Invalid", ...) when the server sent one."""

    def __init__(self, status: int, reason: str, message: str, body: JSON | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: AlreadyExists on create, Conflict on a stale resourceVersion."""
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def retriable(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500

    @staticmethod
    def from_status(status_obj: JSON, default_code: int = 0) -> KubeError:
        return KubeError(
            int(status_obj.get("code") or default_code),
            str(status_obj.get("reason") or ""),
            str(status_obj.get("message") or ""),
            status_obj,
        )


def load_transport(kubeconfig: str | None, context: str | None = None) -> Transport:
    """The transport to the API server of a kubeconfig file, or of the in-cluster service account
    when `kubeconfig` is None. KubeConfigError (a ValueError) or OSError when it cannot be loaded."""
    return Transport(load_kubeconfig(kubeconfig, context) if kubeconfig else load_incluster())


class KubeClient:
    """JSON client with per-request timeouts. Thread-safe (urllib3's pool is).

    `api` is a Transport, or an official `kubernetes.client.ApiClient` (tests and tools that hold
    one), whose configuration and default headers (its User-Agent) are used."""

    def __init__(self, api: Any, *, timeout: float = 10.0) -> None:
        self._official = None if isinstance(api, Transport) else api
        self.transport = api if isinstance(api, Transport) else Transport(
            from_official(api.configuration, dict(getattr(api, "default_headers", {}))))
        self.timeout = timeout

    @staticmethod
    def from_kubeconfig(kubeconfig: str | None, *, timeout: float = 10.0) -> KubeClient:
        return KubeClient(load_transport(kubeconfig), timeout=timeout)

    def close(self) -> None:
        self.transport.close()
        if self._official is not None:
            self._official.close()

    # --- transport -------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | tuple[float, float] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            payload = json.dumps(body).encode()
        q = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items()
             if v is not None]
        try:
            raw = self.transport.request(method, path, query=q, headers=headers, body=payload,
                                         timeout=timeout if timeout is not None else self.timeout)
        except (urllib3.exceptions.HTTPError, OSError) as e:  # SSL errors included
            raise KubeError(0, "Unreachable", f"{method} {path}: {e}") from e
        if not 200 <= raw.status <= 299:
            try:
                data = raw.data
            except (urllib3.exceptions.HTTPError, OSError):
                data = b""
            finally:
                raw.release_conn()
            try:
                status_obj = json.loads(data)
            except ValueError:
                status_obj = {"code": raw.status, "reason": raw.reason or "", "message": data[:200].decode(
                    "utf-8", "replace")}
            if not isinstance(status_obj, dict):
                status_obj = {"code": raw.status, "message": str(status_obj)[:200]}
            raise KubeError.from_status(status_obj, raw.status)
        return raw

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> JSON:
        raw = self._send(method, path, query=query, body=body, content_type=content_type, timeout=timeout)
        try:
            data = raw.data
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeError(0, "Unreachable", f"{method} {path}: reading the answer: {e}") from e
        finally:
            raw.release_conn()
        if not data:
            return {}
        out = json.loads(data)
        return out if isinstance(out, dict) else {"items": out}

    def stream_lines(
        self, path: str, *, query: dict[str, Any], connect_timeout: float, read_timeout: float
    ) -> tuple[urllib3.BaseHTTPResponse, Iterator[str]]:
        """Opens a streaming GET (a watch); returns the response (close it to abort the stream from
        another thread) and an iterator over its non-empty lines. `read_timeout` bounds the silence
        between two chunks, so a half-open connection ends the iteration with KubeError(0)."""
        raw = self._send("GET", path, query=query, timeout=(connect_timeout, read_timeout))

        def lines() -> Iterator[str]:
            buf = bytearray()
            try:
                for chunk in raw.stream(amt=None, decode_content=False):
                    buf.extend(chunk)
                    while (nl := buf.find(b"\n")) != -1:
                        line = buf[:nl].decode("utf-8", "replace").strip()
                        del buf[: nl + 1]
                        if line:
                            yield line
            except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError) as e:
                # AttributeError/ValueError: the response was closed under us (shutdown).
                raise KubeError(0, "StreamBroken", f"watch {path}: {e}") from e
            finally:
                raw.release_conn()

        return raw, lines()

    # --- verbs -----------------------------------------------------------------------------------

    def get(self, ref: ResourceRef, name: str, namespace: str | None = None) -> JSON:
        return self.request("GET", ref.path(namespace, name))

    def list(
        self,
        ref: ResourceRef,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout: float | None = None,
    ) -> JSON:
        return self.request(
            "GET",
            ref.path(namespace),
            query={"labelSelector": label_selector or None, "fieldSelector": field_selector or None},
            timeout=timeout,
        )

    def create(self, ref: ResourceRef, obj: JSON, namespace: str | None = None) -> JSON:
        body = {"apiVersion": ref.api_version, "kind": ref.kind, **obj}
        return self.request("POST", ref.path(namespace), body=body)

    def replace(self, ref: ResourceRef, obj: JSON, namespace: str | None = None) -> JSON:
        return self.request("PUT", ref.path(namespace, obj["metadata"]["name"]), body=obj)

    def patch(
        self,
        ref: ResourceRef,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> JSON:
        return self.request(
            "PATCH", ref.path(namespace, name, subresource), body=patch, content_type=content_type
        )

    def delete(self, ref: ResourceRef, name: str, namespace: str | None = None) -> JSON:
        return self.request("DELETE", ref.path(namespace, name))


def object_key(obj: JSON) -> str:
    """client-go's key: "namespace/name", or "name" for cluster-scoped objects."""
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return f"{ns}/{md['name']}" if ns else str(md["name"])


def split_key(key: str) -> tuple[str | None, str]:
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, key)
