"""Where the API server is and how to authenticate to it: a kubeconfig file or the in-cluster
service account, read into a `Connection`.

Our own reader, not the official client's: importing `kubernetes.config` runs the `kubernetes`
package's `__init__`, which loads every model and API class (~35 MB per controller). It reads what a
pod or a plain kubeconfig holds: server, certificate authority (file or data), client certificate
and key (file or data), bearer token (inline or file, re-read as the kubelet rotates it),
insecure-skip-tls-verify and tls-server-name. A user that authenticates through an exec plugin, an
auth provider or a username/password (an operator's laptop, never a gateway pod) is handed to the
official loader, imported only then.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["Connection", "KubeConfigError", "from_official", "load_incluster", "load_kubeconfig"]

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeConfigError(ValueError):
    """The kubeconfig or the in-cluster environment cannot be used (a usage problem)."""


@dataclass(frozen=True)
class Connection:
    """One API server and one identity. `*_data` fields are PEM bytes; `token_file` is re-read
    every `token_ttl` seconds; `refresh` (official-loader fallbacks only) returns a fresh
    `Authorization` header value."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    cert_data: bytes | None = None
    key_file: str | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    verify: bool = True
    tls_server_name: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    refresh: Callable[[], str | None] | None = None


def _named(items: Any, name: str, what: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            return body if isinstance(body, dict) else {}
    raise KubeConfigError(f"{what} {name!r} not found in the kubeconfig")


def _data(value: Any, field: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=False)
    except ValueError as e:
        raise KubeConfigError(f"{field} is not base64: {e}") from None


def load_kubeconfig(path: str, context: str | None = None) -> Connection:
    """The connection of `context` (default: the current context) of the kubeconfig at `path`."""
    try:
        with open(os.path.expanduser(path)) as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise KubeConfigError(f"{path}: not YAML: {e}") from None
    if not isinstance(doc, dict):
        raise KubeConfigError(f"{path}: not a kubeconfig")
    name = context or doc.get("current-context")
    if not name:
        raise KubeConfigError(f"{path}: no context given and no current-context")
    ctx = _named(doc.get("contexts"), str(name), "context")
    cluster = _named(doc.get("clusters"), str(ctx.get("cluster") or ""), "cluster")
    user = _named(doc.get("users"), str(ctx["user"]), "user") if ctx.get("user") else {}
    if any(user.get(k) for k in ("exec", "auth-provider", "username")):
        return _official(path, str(name))
    server = str(cluster.get("server") or "")
    if not server:
        raise KubeConfigError(f"{path}: cluster {ctx.get('cluster')!r} has no server")
    base = os.path.dirname(os.path.abspath(os.path.expanduser(path)))

    def rel(value: Any) -> str | None:
        return os.path.join(base, str(value)) if value else None

    return Connection(
        server=server.rstrip("/"),
        ca_file=rel(cluster.get("certificate-authority")),
        ca_data=_data(cluster.get("certificate-authority-data"), "certificate-authority-data"),
        cert_file=rel(user.get("client-certificate")),
        cert_data=_data(user.get("client-certificate-data"), "client-certificate-data"),
        key_file=rel(user.get("client-key")),
        key_data=_data(user.get("client-key-data"), "client-key-data"),
        token=str(user["token"]) if user.get("token") else None,
        token_file=rel(user.get("tokenFile")),
        verify=not cluster.get("insecure-skip-tls-verify", False),
        tls_server_name=str(cluster["tls-server-name"]) if cluster.get("tls-server-name") else None,
    )


def load_incluster(sa_dir: str = SA_DIR, env: dict[str, str] | None = None) -> Connection:
    """The pod's service account: KUBERNETES_SERVICE_HOST/PORT, its token (re-read as the kubelet
    rotates it) and CA."""
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set "
                              "(give --kubeconfig)")
    token_file, ca_file = os.path.join(sa_dir, "token"), os.path.join(sa_dir, "ca.crt")
    for f in (token_file, ca_file):
        if not os.path.isfile(f):
            raise KubeConfigError(f"in-cluster: {f} does not exist")
    host = f"[{host}]" if ":" in host else host
    return Connection(server=f"https://{host}:{port}", ca_file=ca_file, token_file=token_file)


def from_official(configuration: Any, headers: dict[str, str] | None = None) -> Connection:
    """The connection an official `kubernetes.client.Configuration` describes (read by attribute:
    this module never imports the official client). Its bearer token is re-read through
    `configuration.auth_settings()` on every request when it has a refresh hook."""
    api_key = dict(getattr(configuration, "api_key", None) or {})
    prefix = dict(getattr(configuration, "api_key_prefix", None) or {})
    token = api_key.get("authorization") or api_key.get("BearerToken")
    if token and prefix.get("authorization"):
        token = f"{prefix['authorization']} {token}"
    refresh = None
    if getattr(configuration, "refresh_api_key_hook", None) is not None:
        def refresh() -> str | None:
            setting = configuration.auth_settings().get("BearerToken") or {}
            value = setting.get("value")
            return str(value) if value else None
    return Connection(
        server=str(configuration.host).rstrip("/"),
        ca_file=configuration.ssl_ca_cert or None,
        ca_data=(configuration.ca_cert_data.encode() if isinstance(configuration.ca_cert_data, str)
                 else configuration.ca_cert_data) or None,
        cert_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        token=_bearer_value(str(token)) if token else None,
        verify=bool(configuration.verify_ssl),
        tls_server_name=getattr(configuration, "tls_server_name", None) or None,
        headers=tuple((headers or {}).items()),
        refresh=refresh,
    )


def _bearer_value(header: str) -> str:
    """The token of an `Authorization` value ("Bearer abc" -> "abc"; a bare token as is)."""
    scheme, sep, rest = header.partition(" ")
    return rest if sep and scheme.lower() == "bearer" else header


def _official(path: str, context: str) -> Connection:
    """The official loader, for what only it implements (exec plugins, auth providers)."""
    from kubernetes import client, config  # heavy: only for an operator's kubeconfig

    cfg = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, client_configuration=cfg,
                                persist_config=False)
    except config.ConfigException as e:
        raise KubeConfigError(f"{path}: {e}") from None
    return from_official(cfg)
