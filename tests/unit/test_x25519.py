"""Public keys through OpenSSL's libcrypto (services.common.x25519) equal what `cryptography` and
`wg pubkey` compute, for clamped and unclamped private keys; generated keys are clamped as `wg
genkey` clamps them."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.common import keys, x25519

# RFC 7748 section 6.1: Alice's private key and public key.
RFC_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def reference(private: bytes) -> bytes:
    public = X25519PrivateKey.from_private_bytes(private).public_key()
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_openssl_is_used_here() -> None:
    assert x25519._openssl() is not None  # else this module only tests the fallback


def test_rfc7748_vector() -> None:
    assert x25519.public_key(RFC_PRIVATE) == RFC_PUBLIC


@pytest.mark.parametrize("seed", range(200))
def test_equals_cryptography_for_random_keys(seed: int) -> None:
    private = os.urandom(32)  # unclamped on purpose: X25519 clamps
    assert x25519.public_key(private) == reference(private)


def test_generated_keys_are_clamped_and_consistent() -> None:
    for _ in range(50):
        pair = keys.generate()
        raw = base64.b64decode(pair.private_key)
        assert raw[0] & 7 == 0 and raw[31] & 128 == 0 and raw[31] & 64 == 64
        assert base64.b64decode(pair.public_key) == reference(raw)


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_equals_wg_pubkey() -> None:
    pair = keys.generate()
    out = subprocess.run(["wg", "pubkey"], input=pair.private_key, capture_output=True, text=True,
                         check=True, timeout=10).stdout.strip()
    assert out == pair.public_key


def test_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError):
        x25519.public_key(b"\x01" * 31)
