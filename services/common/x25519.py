"""X25519 public keys from OpenSSL's libcrypto, the copy the interpreter's `ssl` module already has
mapped (every gateway process loads `ssl`: urllib3, http.server, asyncio import it).

`cryptography` computes the same with its own statically linked OpenSSL, which costs ~7 MB of RSS
per process for one call at start-up. This is OpenSSL's implementation through its public EVP API
(`EVP_PKEY_new_raw_private_key`, `EVP_PKEY_get_raw_public_key`, both OpenSSL >= 1.1.1), not a
re-implementation; `cryptography` remains the fallback where those symbols cannot be found.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

__all__ = ["public_key"]

KEY_LEN = 32
NID_X25519 = 1034  # OpenSSL's EVP_PKEY_X25519


def _openssl() -> Callable[[bytes], bytes] | None:
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # dlsym on it searches its dependencies: libcrypto
        new = lib.EVP_PKEY_new_raw_private_key
        get = lib.EVP_PKEY_get_raw_public_key
        free = lib.EVP_PKEY_free
    except (ImportError, OSError, AttributeError):
        return None
    new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    new.restype = ctypes.c_void_p
    get.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
    get.restype = ctypes.c_int
    free.argtypes = [ctypes.c_void_p]
    free.restype = None

    def public(private: bytes) -> bytes:
        pkey = new(NID_X25519, None, private, len(private))
        if not pkey:
            raise ValueError("OpenSSL refused the X25519 private key")
        try:
            out = ctypes.create_string_buffer(KEY_LEN)
            size = ctypes.c_size_t(KEY_LEN)
            if get(pkey, out, ctypes.byref(size)) != 1 or size.value != KEY_LEN:
                raise ValueError("OpenSSL could not derive the X25519 public key")
            return out.raw
        finally:
            free(pkey)

    return public


def _cryptography(private: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = X25519PrivateKey.from_private_bytes(private).public_key()
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


_public = _openssl() or _cryptography


def public_key(private: bytes) -> bytes:
    """The X25519 public key (32 bytes) of a 32-byte private key; X25519 does the clamping."""
    if len(private) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes")
    return _public(private)
