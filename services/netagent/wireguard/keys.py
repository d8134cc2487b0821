"""WireGuard key encodings: base64 (as `wg` and the API use them) and hex (the UAPI's)."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["KEY_LEN", "InvalidKey", "b64_to_hex", "decode_b64", "generate_private_key", "hex_to_b64",
           "public_key_of"]

KEY_LEN = 32


class InvalidKey(ValueError):
    """A malformed key; the message never contains the key itself."""


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
    """The X25519 public key of a private key (what `wg pubkey` prints); clamping is done by X25519."""
    priv = X25519PrivateKey.from_private_bytes(decode_b64(private_b64))
    return base64.b64encode(priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def generate_private_key() -> str:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()
