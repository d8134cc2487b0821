"""HTTP to one API server: a urllib3 pool with the `Connection`'s TLS settings and bearer token.

It does what the official client's ApiClient did for KubeClient (the pool, TLS, client
certificates, the token header) without its models. urllib3's own retries are off: the runtime
owns retries, with backoff, and silent ones would hide an outage.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import ssl
import tempfile
import threading
import time
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from services.common.kube.kubeconfig import Connection

__all__ = ["TOKEN_TTL", "Transport"]

TOKEN_TTL = 60.0  # seconds a token file is trusted before it is read again (the kubelet rotates it)
USER_AGENT = "liqo-gateway"


class Transport:
    """Thread-safe (urllib3's pool is). `close()` drops the pool and any key material written out."""

    def __init__(self, conn: Connection, *, maxsize: int | None = None) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._token: str | None = conn.token
        self._token_read = float("-inf")
        self._tmpdir: str | None = None
        # As many connections as the official client keeps: every watch holds one.
        pool: dict[str, Any] = {"maxsize": maxsize or (os.cpu_count() or 1) * 5, "retries": False}
        if conn.server.startswith("https:"):
            pool["cert_reqs"] = ssl.CERT_REQUIRED if conn.verify else ssl.CERT_NONE
            pool["ca_certs"] = conn.ca_file
            pool["ca_cert_data"] = conn.ca_data.decode() if conn.ca_data else None
            pool["cert_file"] = conn.cert_file or self._write("client.crt", conn.cert_data)
            pool["key_file"] = conn.key_file or self._write("client.key", conn.key_data)
            if not conn.verify:
                pool["assert_hostname"] = False
            if conn.tls_server_name:
                pool["server_hostname"] = conn.tls_server_name
        self.pool = urllib3.PoolManager(**pool)

    def _write(self, name: str, data: bytes | None) -> str | None:
        """urllib3 loads client certificates from files (at every new connection): key material
        given inline lives in a private directory until close() or exit."""
        if data is None:
            return None
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="liqo-kube-")  # mode 0700
            atexit.register(shutil.rmtree, self._tmpdir, True)
        path = os.path.join(self._tmpdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def authorization(self) -> str | None:
        """The `Authorization` header value, the token file re-read once it is TOKEN_TTL old."""
        conn = self.conn
        if conn.refresh is not None:
            return conn.refresh()
        if conn.token_file:
            with self._lock:
                now = time.monotonic()
                if now - self._token_read >= TOKEN_TTL:
                    with open(conn.token_file) as f:
                        self._token = f.read().strip()
                    self._token_read = now
        return f"Bearer {self._token}" if self._token else None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | tuple[float, float],
    ) -> urllib3.BaseHTTPResponse:
        """Sends one request; the answer's body is not read yet (a watch streams it). Raises
        urllib3's HTTPError or OSError when the server cannot be reached."""
        url = self.conn.server + path
        if query:
            url += "?" + urlencode([(k, str(v)) for k, v in query], quote_via=quote)
        hdrs = {"User-Agent": USER_AGENT, **dict(self.conn.headers), **(headers or {})}
        auth = self.authorization()
        if auth:
            hdrs["Authorization"] = auth
        t = (urllib3.Timeout(connect=timeout[0], read=timeout[1]) if isinstance(timeout, tuple)
             else urllib3.Timeout(total=timeout))
        return self.pool.request(method, url, body=body, headers=hdrs, timeout=t, preload_content=False,
                                 redirect=False, retries=False)

    def close(self) -> None:
        self.pool.clear()
        if self._tmpdir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._tmpdir)
