"""The WireGuard key pair all gateway replicas share, in a Secret compatible with Liqo's.

Secret `wireguard-pubkey` (by default) in POD_NAMESPACE, label `net.liqo.io/key=wireguard`, data keys
`publicKey` and `privateKey` (the base64 text `wg` prints, base64-encoded again as Secret data).
Created race-safely: every replica tries to create it; the losers of the race (409) read the
winner's. The private key is never logged nor put in an exception message.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from services.common.kube.client import SECRETS, KubeClient, KubeError

log = logging.getLogger(__name__)

DEFAULT_SECRET_NAME = "wireguard-pubkey"
KEY_LABEL = "net.liqo.io/key"
KEY_LABEL_VALUE = "wireguard"


class KeySecretError(Exception):
    """The Secret exists but does not hold a usable key pair (never carries key material)."""


@dataclass(frozen=True)
class KeyPair:
    private_key: str
    public_key: str

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return f"KeyPair(public_key={self.public_key!r})"

    __str__ = __repr__


def generate() -> KeyPair:
    priv = X25519PrivateKey.generate()
    raw = priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyPair(base64.b64encode(raw).decode(), base64.b64encode(pub).decode())


def public_of(private_key: str) -> str:
    raw = base64.b64decode(private_key, validate=True)
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(pub).decode()


def secret_body(name: str, pair: KeyPair) -> dict[str, object]:
    return {
        "metadata": {"name": name, "labels": {KEY_LABEL: KEY_LABEL_VALUE}},
        "type": "Opaque",
        "data": {
            "privateKey": base64.b64encode(pair.private_key.encode()).decode(),
            "publicKey": base64.b64encode(pair.public_key.encode()).decode(),
        },
    }


def parse_secret(secret: dict[str, object]) -> KeyPair:
    data = secret.get("data") or {}
    if not isinstance(data, dict):
        raise KeySecretError("data is not a map")
    try:
        priv = base64.b64decode(str(data["privateKey"]), validate=True).decode()
        pub = base64.b64decode(str(data["publicKey"]), validate=True).decode()
        derived = public_of(priv)
    except KeyError as e:
        raise KeySecretError(f"data key {e.args[0]} missing") from None
    except (ValueError, UnicodeDecodeError):
        raise KeySecretError("privateKey or publicKey is not a base64 WireGuard key") from None
    if derived != pub:
        raise KeySecretError("publicKey does not match privateKey")
    return KeyPair(priv, pub)


def ensure_key_secret(client: KubeClient, namespace: str, name: str = DEFAULT_SECRET_NAME) -> KeyPair:
    """Reads the shared key pair, creating it first if absent. Raises KubeError on API failures
    (retry) and KeySecretError when an existing Secret is unusable (an operator must fix it)."""
    try:
        return parse_secret(client.get(SECRETS, name, namespace))
    except KubeError as e:
        if not e.not_found:
            raise
    pair = generate()
    try:
        client.create(SECRETS, secret_body(name, pair), namespace)
        log.info("created the WireGuard key Secret", extra={"secret": f"{namespace}/{name}",
                                                           "public_key": pair.public_key})
        return pair
    except KubeError as e:
        if not e.conflict:
            raise
    # Another replica won the race: use its key pair, so all replicas share one.
    return parse_secret(client.get(SECRETS, name, namespace))
