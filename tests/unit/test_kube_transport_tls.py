"""KubeClient over TLS as a real cluster serves it: the server's certificate checked against the
kubeconfig's CA (data or file), a client certificate presented (data or files), the bearer token
sent; a wrong CA or a missing client certificate is an unreachable server (KubeError status 0),
never an unverified answer. The server is a local HTTPS server on 127.0.0.1 requiring client
certificates; certificates are made here with `cryptography`."""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common.kube import KubeClient, KubeError
from services.common.vocabulary import NAMESPACES


@dataclass
class Pem:
    cert: bytes
    key: bytes


def issue(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *,
          ca: bool = False, server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Pem]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer[0].subject if issuer else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=1))
         .not_valid_after(now + datetime.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    pem = Pem(cert.public_bytes(serialization.Encoding.PEM),
              key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    return cert, key, pem


@dataclass
class Server:
    url: str
    ca: Pem
    client: Pem
    seen: list[dict[str, Any]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    ca_cert, ca_key, ca = issue("test-ca", None, ca=True)
    _, _, srv = issue("127.0.0.1", (ca_cert, ca_key), server=True)
    _, _, client = issue("liqo-tunnel-controller", (ca_cert, ca_key))
    (tmp_path / "srv.crt").write_bytes(srv.cert)
    (tmp_path / "srv.key").write_bytes(srv.key)
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    seen: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            seen.append({"auth": self.headers.get("Authorization"), "peer": peer})
            body = json.dumps({"kind": "Namespace", "metadata": {"name": "liqo"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    ctx.load_verify_locations(tmp_path / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield Server(f"https://127.0.0.1:{httpd.server_address[1]}", ca, client, seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def kubeconfig(tmp: Path, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": user}],
           "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_inline_ca_client_certificate_and_token(server: Server, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"server": server.url, "certificate-authority-data": b64(server.ca.cert)},
                      {"client-certificate-data": b64(server.client.cert),
                       "client-key-data": b64(server.client.key), "token": "s3cret"})
    client = KubeClient.from_kubeconfig(path, timeout=5)
    try:
        assert client.get(NAMESPACES, "liqo")["metadata"]["name"] == "liqo"
    finally:
        client.close()
    (seen,) = server.seen
    assert seen["auth"] == "Bearer s3cret"
    assert dict(x[0] for x in seen["peer"]["subject"])["commonName"] == "liqo-tunnel-controller"


def test_ca_and_client_certificate_files(server: Server, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(server.ca.cert)
    (tmp_path / "c.crt").write_bytes(server.client.cert)
    (tmp_path / "c.key").write_bytes(server.client.key)
    (tmp_path / "token").write_text("from-file\n")
    path = kubeconfig(tmp_path, {"server": server.url, "certificate-authority": "ca.pem"},
                      {"client-certificate": "c.crt", "client-key": "c.key", "tokenFile": "token"})
    client = KubeClient.from_kubeconfig(path, timeout=5)
    try:
        client.get(NAMESPACES, "liqo")
    finally:
        client.close()
    assert server.seen[0]["auth"] == "Bearer from-file"


def test_a_server_signed_by_another_ca_is_refused(server: Server, tmp_path: Path) -> None:
    _, _, other = issue("other-ca", None, ca=True)
    path = kubeconfig(tmp_path, {"server": server.url, "certificate-authority-data": b64(other.cert)},
                      {"client-certificate-data": b64(server.client.cert),
                       "client-key-data": b64(server.client.key)})
    assert_refused(path, server)


def assert_refused(kubeconfig_path: Path, server: Server) -> None:
    """The TLS handshake fails: an unreachable-server error, and the server saw no request."""
    client = KubeClient.from_kubeconfig(kubeconfig_path, timeout=5)
    try:
        with pytest.raises(KubeError) as e:
            client.get(NAMESPACES, "liqo")
    finally:
        client.close()
    assert e.value.unreachable and server.seen == []


def test_no_client_certificate_is_refused_by_the_server(server: Server, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"server": server.url, "certificate-authority-data": b64(server.ca.cert)},
                      {"token": "t"})
    assert_refused(path, server)
