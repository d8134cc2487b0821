"""WireGuard keys: generation, the public key of a private key, the encodings (base64 as `wg` and
the API use them, hex as wireguard-go's UAPI does), and the shared key pair's Secret body.

No function here puts key material in an exception message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Any

from services.common import x25519
from services.common.vocabulary import KEY_LABEL, KEY_LABEL_VALUE

__all__ = [
    "KEY_LEN",
    "InvalidKey",
    "KeyPair",
    "KeySecretError",
    "b64_to_hex",
    "decode_b64",
    "generate",
    "hex_to_b64",
    "parse_secret",
    "public_key_of",
    "secret_body",
]

KEY_LEN = 32


class InvalidKey(ValueError):
    """A malformed key; the message never contains the key itself."""


class KeySecretError(Exception):
    """A Secret that does not hold a usable key pair (never carries key material)."""


@dataclass(frozen=True)
class KeyPair:
    private_key: str
    public_key: str

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return f"KeyPair(public_key={self.public_key!r})"

    __str__ = __repr__


def decode_b64(key_b64: str) -> bytes:
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("key is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise InvalidKey(f"key must be {KEY_LEN} bytes, got {len(raw)}")
    return raw


def b64_to_hex(key_b64: str) -> str:
    return decode_b64(key_b64).hex()


def hex_to_b64(key_hex: str) -> str:
    try:
        raw = bytes.fromhex(key_hex)
    except ValueError:
        raise InvalidKey("key is not valid hex") from None
    if len(raw) != KEY_LEN:
        raise InvalidKey(f"key must be {KEY_LEN} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode()


def public_key_of(private_b64: str) -> str:
    """The X25519 public key of a private key (what `wg pubkey` prints); X25519 does the clamping."""
    return base64.b64encode(x25519.public_key(decode_b64(private_b64))).decode()


def generate() -> KeyPair:
    """A fresh key pair, as `wg genkey` makes it: 32 random bytes, clamped."""
    raw = bytearray(os.urandom(KEY_LEN))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    private = base64.b64encode(bytes(raw)).decode()
    return KeyPair(private, public_key_of(private))


def secret_body(name: str, pair: KeyPair) -> dict[str, Any]:
    """The key pair's Secret: data keys `privateKey` and `publicKey` hold the base64 text `wg`
    prints, base64-encoded once more as Secret data (Liqo's layout)."""
    return {
        "metadata": {"name": name, "labels": {KEY_LABEL: KEY_LABEL_VALUE}},
        "type": "Opaque",
        "data": {
            "privateKey": base64.b64encode(pair.private_key.encode()).decode(),
            "publicKey": base64.b64encode(pair.public_key.encode()).decode(),
        },
    }


def parse_secret(secret: dict[str, Any]) -> KeyPair:
    """The key pair in a Secret; KeySecretError when it is missing, malformed or inconsistent."""
    data = secret.get("data") or {}
    if not isinstance(data, dict):
        raise KeySecretError("data is not a map")
    try:
        private = base64.b64decode(str(data["privateKey"]), validate=True).decode()
        public = base64.b64decode(str(data["publicKey"]), validate=True).decode()
        derived = public_key_of(private)
    except KeyError as e:
        raise KeySecretError(f"data key {e.args[0]} missing") from None
    except (ValueError, UnicodeDecodeError):
        raise KeySecretError("privateKey or publicKey is not a base64 WireGuard key") from None
    if derived != public:
        raise KeySecretError("publicKey does not match privateKey")
    return KeyPair(private, public)
