"""Ed25519 signatures over unambiguous, length-prefixed encodings of byte fields.

Clients sign their advertised public keys and the survivor set (authenticated mode);
clients and the server verify. :func:`sign`/:func:`verify` always sign
:func:`encode_fields` of the fields, so ``("ab", "c")`` and ``("a", "bc")`` never collide.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from crypto.errors import ConfigError, SignatureError
from crypto.rng import random_bytes

KEY_BYTES = 32  # raw Ed25519 private seed and public key (bytes)
SIGNATURE_BYTES = 64
_MAX_FIELD = (1 << 32) - 1
_BYTES_LIKE = (bytes, bytearray, memoryview)


@dataclass(frozen=True, slots=True)
class SigningKeyPair:
    """A raw Ed25519 key pair: 32-byte private seed and 32-byte public key."""

    private: bytes
    public: bytes

    def __post_init__(self) -> None:
        if len(self.private) != KEY_BYTES or len(self.public) != KEY_BYTES:
            raise ConfigError("SigningKeyPair: private and public keys must be 32 bytes each")

    def __repr__(self) -> str:  # never print the private key
        return f"SigningKeyPair(public={self.public.hex()})"


def generate_signing_keypair(private: bytes | None = None) -> SigningKeyPair:
    """An Ed25519 key pair; ``private`` (32-byte seed) pins it, None draws it from the OS."""
    raw = random_bytes(KEY_BYTES) if private is None else bytes(private)
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"Ed25519 private key must be {KEY_BYTES} bytes, got {len(raw)}")
    public = Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    return SigningKeyPair(private=raw, public=public)


def encode_fields(*fields: bytes) -> bytes:
    """Concatenate fields, each as a 4-byte big-endian length then the bytes."""
    parts: list[bytes | bytearray | memoryview] = []
    for f in fields:
        if not isinstance(f, _BYTES_LIKE):
            raise ConfigError(f"encode_fields: fields must be bytes, got {type(f).__name__}")
        n = len(f)
        if n > _MAX_FIELD:
            raise ConfigError("encode_fields: a field is longer than 2^32 - 1 bytes")
        parts.append(n.to_bytes(4, "big"))
        parts.append(f)  # join copies bytes-like fields itself
    return b"".join(parts)


def sign_raw(private: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of a raw message (RFC 8032 PureEdDSA)."""
    if len(private) != KEY_BYTES:
        raise ConfigError(f"Ed25519 private key must be {KEY_BYTES} bytes, got {len(private)}")
    return Ed25519PrivateKey.from_private_bytes(bytes(private)).sign(bytes(message))


def verify_raw(public: bytes, signature: bytes, message: bytes) -> None:
    """Verify an Ed25519 signature of a raw message; raises :class:`SignatureError`."""
    if len(public) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise SignatureError("signature did not verify")
    try:
        pk = Ed25519PublicKey.from_public_bytes(bytes(public))
        pk.verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        raise SignatureError("signature did not verify") from None


def sign(private: bytes, *fields: bytes) -> bytes:
    """Ed25519 signature of :func:`encode_fields` of ``fields``."""
    return sign_raw(private, encode_fields(*fields))


def verify(public: bytes, signature: bytes, *fields: bytes) -> None:
    """Verify a :func:`sign` signature; raises :class:`SignatureError`."""
    verify_raw(public, signature, encode_fields(*fields))
