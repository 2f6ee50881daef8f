"""Key agreement: X25519 key pairs, raw shared secrets and HKDF-SHA256 key derivation.

Both sides run this code: a client makes its key pairs and derives pairwise keys; the
server never holds a private key of a client. Every derived key is domain-separated by a
:class:`Label` (one per use) and bound to a caller-given session ``context`` (for example a
hash of protocol version, round id, client ids and public keys), so a key derived for one
purpose or session is never valid for another.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import ConfigError, CryptoError
from crypto.rng import random_bytes

KEY_BYTES = 32  # X25519 private and public keys, raw encoding (bytes)
_MAX_HKDF_BYTES = 255 * 32


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A raw X25519 key pair (32 bytes each)."""

    private: bytes
    public: bytes

    def __post_init__(self) -> None:
        if len(self.private) != KEY_BYTES or len(self.public) != KEY_BYTES:
            raise ConfigError("KeyPair: private and public keys must be 32 bytes each")

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(public={self.public.hex()})"


class Label(enum.Enum):
    """HKDF ``info`` prefixes: one label per use of a derived key."""

    SHARE_ENCRYPTION = b"secure_fed/v1/share-encryption"
    PAIRWISE_MASK = b"secure_fed/v1/pairwise-mask"
    SELF_MASK = b"secure_fed/v1/self-mask"
    SESSION = b"secure_fed/v1/session"


def generate_keypair(private: bytes | None = None) -> KeyPair:
    """An X25519 key pair; ``private`` (32 bytes) pins it, None draws it from the OS CSPRNG."""
    raw = random_bytes(KEY_BYTES) if private is None else bytes(private)
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(raw)}")
    public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    return KeyPair(private=raw, public=public)


def shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """Raw X25519(private, peer_public), 32 bytes.

    Raises :class:`CryptoError` for malformed keys or an all-zero output (a low-order
    peer key), without saying which.
    """
    if len(private) != KEY_BYTES or len(peer_public) != KEY_BYTES:
        raise CryptoError("key agreement failed")
    try:
        sk = X25519PrivateKey.from_private_bytes(private)
        out = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # cryptography rejects an all-zero result itself
        raise CryptoError("key agreement failed") from None
    if out == bytes(KEY_BYTES):
        raise CryptoError("key agreement failed")
    return out


def shared_secrets(private: bytes, peer_publics: Sequence[bytes]) -> list[bytes]:
    """Raw X25519(private, peer) for many peers, parsing the private key once.

    Equals ``[shared_secret(private, p) for p in peer_publics]``, refusals included, at
    about half the cost: parsing a private key costs as much as one exchange.
    """
    if len(private) != KEY_BYTES or any(len(p) != KEY_BYTES for p in peer_publics):
        raise CryptoError("key agreement failed")
    try:
        sk = X25519PrivateKey.from_private_bytes(private)
        out = [sk.exchange(X25519PublicKey.from_public_bytes(p)) for p in peer_publics]
    except ValueError:
        raise CryptoError("key agreement failed") from None
    if any(s == bytes(KEY_BYTES) for s in out):
        raise CryptoError("key agreement failed")
    return out


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) extract-and-expand; ``length`` in bytes (1..8160)."""
    if not 0 < length <= _MAX_HKDF_BYTES:
        raise ConfigError(f"HKDF length must be in 1..{_MAX_HKDF_BYTES} bytes, got {length}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_key(secret: bytes, label: Label, context: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256(ikm=secret, salt=None, info=label || len32(context) || context).

    ``length`` is in bytes (32 for AES-256 keys and mask seeds). The 4-byte big-endian
    length prefix makes (label, context) pairs unambiguous.
    """
    if not isinstance(label, Label):
        raise ConfigError(f"derive_key: label must be a Label, got {label!r}")
    info = label.value + len(context).to_bytes(4, "big") + bytes(context)
    return hkdf_sha256(secret, None, info, length)
