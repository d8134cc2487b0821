"""A thin JSON-over-HTTP client on top of the official `kubernetes` client's ApiClient.

It reuses what the official client does well (kubeconfig and in-cluster loading, TLS, bearer-token
refresh, the urllib3 pool) and skips what gets in the way of a generic controller runtime: typed
models. Every object is a plain `dict` as the API server sends it, every call has a request timeout
(so a half-open connection cannot hang a controller), and failures are one exception type,
`KubeError`, whose `status` is the HTTP code (0 when the server could not be reached).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

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


def load_api_client(kubeconfig: str | None, context: str | None = None) -> k8s_client.ApiClient:
    """ApiClient from a kubeconfig file, or the in-cluster service account when `kubeconfig` is None."""
    cfg = k8s_client.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False
        )
    else:
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    # The runtime owns retries (with backoff); urllib3's silent ones would hide an outage.
    cfg.retries = False
    return k8s_client.ApiClient(configuration=cfg)


class KubeClient:
    """JSON client with per-request timeouts. Thread-safe (urllib3's pool is)."""

    def __init__(self, api: k8s_client.ApiClient, *, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout

    @staticmethod
    def from_kubeconfig(kubeconfig: str | None, *, timeout: float = 10.0) -> KubeClient:
        return KubeClient(load_api_client(kubeconfig), timeout=timeout)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

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
    ) -> urllib3.HTTPResponse:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        q = [(k, v) for k, v in (query or {}).items() if v is not None]
        m, url, hdrs, ser_body, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=q or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api.call_api(
                m, url, header_params=hdrs, body=ser_body, post_params=post,
                _request_timeout=timeout if timeout is not None else self.timeout,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeError(0, "Unreachable", f"{method} {path}: {e}") from e
        except k8s_client.ApiException as e:  # SSL errors are wrapped this way
            raise KubeError(int(e.status or 0), "Unreachable", f"{method} {path}: {e.reason}") from e
        raw: urllib3.HTTPResponse = resp.response
        if not 200 <= raw.status <= 299:
            try:
                data = raw.data
            except (urllib3.exceptions.HTTPError, OSError):
                data = b""
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
        if not data:
            return {}
        out = json.loads(data)
        return out if isinstance(out, dict) else {"items": out}

    def stream_lines(
        self, path: str, *, query: dict[str, Any], connect_timeout: float, read_timeout: float
    ) -> tuple[urllib3.HTTPResponse, Iterator[str]]:
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
