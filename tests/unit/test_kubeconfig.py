"""Our kubeconfig and service-account reader (services.common.kube.kubeconfig) and the token the
transport sends: what a pod and a plain kubeconfig hold, read as the official loader reads it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.kube.kubeconfig import KubeConfigError, load_incluster, load_kubeconfig
from services.common.kube.transport import Transport

CA = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(tmp: Path, clusters: dict[str, Any], users: dict[str, Any], current: str = "a") -> str:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in clusters],
    }
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_current_context_with_inline_data_and_token(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "a": {"server": "https://10.0.0.1:6443/", "certificate-authority-data": b64(CA),
              "tls-server-name": "kubernetes"},
        "b": {"server": "http://127.0.0.1:8080"},
    }, {"a": {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY), "token": "t0k"},
        "b": {}})
    c = load_kubeconfig(path)
    assert (c.server, c.ca_data, c.cert_data, c.key_data, c.token) == (
        "https://10.0.0.1:6443", CA, CERT, KEY, "t0k")
    assert c.verify and c.tls_server_name == "kubernetes"
    other = load_kubeconfig(path, "b")
    assert (other.server, other.token, other.ca_data) == ("http://127.0.0.1:8080", None, None)


def test_files_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    path = write(tmp_path, {"a": {"server": "https://x:6443", "certificate-authority": "ca.crt",
                                  "insecure-skip-tls-verify": True}},
                 {"a": {"client-certificate": "/abs/c.crt", "client-key": "k.key", "tokenFile": "tok"}})
    c = load_kubeconfig(path)
    assert c.ca_file == str(tmp_path / "ca.crt") and c.key_file == str(tmp_path / "k.key")
    assert c.cert_file == "/abs/c.crt" and c.token_file == str(tmp_path / "tok") and not c.verify


@pytest.mark.parametrize("context", ["missing", None])
def test_unknown_or_absent_context_is_a_usage_error(tmp_path: Path, context: str | None) -> None:
    path = write(tmp_path, {"a": {"server": "http://x"}}, {"a": {}}, current="" if context is None else "a")
    with pytest.raises(KubeConfigError):
        load_kubeconfig(path, context)


def test_client_key_material_is_written_privately_and_removed(tmp_path: Path) -> None:
    path = write(tmp_path, {"a": {"server": "https://10.0.0.1:6443"}},
                 {"a": {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)}})
    t = Transport(load_kubeconfig(path))
    kw = t.pool.connection_pool_kw
    key = Path(kw["key_file"])
    assert Path(kw["cert_file"]).read_bytes() == CERT and key.read_bytes() == KEY
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700
    t.close()
    assert not key.parent.exists()


def test_in_cluster_rereads_the_rotated_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "ca.crt").write_bytes(CA)
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    c = load_incluster(str(tmp_path), env)
    assert c.server == "https://[fd00::1]:443" and c.ca_file == str(tmp_path / "ca.crt")
    t = Transport(c)
    now = [1000.0]
    monkeypatch.setattr("services.common.kube.transport.time.monotonic", lambda: now[0])
    assert t.authorization() == "Bearer first"
    (tmp_path / "token").write_text("second\n")
    now[0] += 30
    assert t.authorization() == "Bearer first"  # trusted for TOKEN_TTL
    now[0] += 31
    assert t.authorization() == "Bearer second"
    t.close()


def test_in_cluster_without_the_environment_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        load_incluster(str(tmp_path), {})
