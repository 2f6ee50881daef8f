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

import numpy as np
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

    PAIR_CHANNEL = b"secure_fed/v2/pair-channel"  # share keys and confirmation key of a pair
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


_P = 2**255 - 19
_U_MASK = (1 << 255) - 1
# u-coordinates (canonical, < p) of the Curve25519 points of order 1, 2, 4 and 8 (the list
# libsodium blocks). Written by hand because `cryptography` (OpenSSL) parses every 32-byte
# string as a public key and refuses a low-order one only inside ``exchange`` (its result
# is all zeros); a client must refuse such a key when it is *advertised*, before it sends
# any encrypted share, and the masking key s_pk is not used in an exchange until then.
# tests/test_crypto_primitives.py checks that OpenSSL's exchange refuses every one of them.
LOW_ORDER_U: frozenset[int] = frozenset({
    0, 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P - 1,
})


def canonical_public(public: bytes) -> bytes:
    """The canonical encoding of an X25519 public key: the high bit cleared and the
    u-coordinate reduced mod p (RFC 7748 section 5 masks the bit; OpenSSL reduces). Two
    encodings with the same canonical form give the same shared secrets."""
    if len(public) != KEY_BYTES:
        raise CryptoError("public key must be 32 bytes")
    return ((int.from_bytes(public, "little") & _U_MASK) % _P).to_bytes(KEY_BYTES, "little")


def check_public_key(public: bytes) -> None:
    """Refuse an X25519 public key that is not canonically encoded (high bit set, or
    u >= p) or is of low order (every agreement with it is predictable); raises
    :class:`CryptoError` without saying which."""
    if len(public) != KEY_BYTES:
        raise CryptoError("invalid public key")
    u = int.from_bytes(public, "little")
    if u >= _P or u in LOW_ORDER_U:  # u >= p covers the high bit (2^255 > p)
        raise CryptoError("invalid public key")


def canonical_publics(keys: np.ndarray) -> np.ndarray:
    """:func:`canonical_public` of each row of an (m, 32) uint8 array (a copy).

    Vectorized for the duplicate-key check over n advertised keys: clears the high bit of
    every key, then reduces the rare rows still >= p one by one."""
    out = np.array(keys, dtype=np.uint8, copy=True).reshape(-1, KEY_BYTES)
    out[:, 31] &= 0x7F
    big = (out[:, 31] == 0x7F) & np.all(out[:, 1:31] == 0xFF, axis=1) & (out[:, 0] >= 0xED)
    for i in np.flatnonzero(big):
        out[i] = np.frombuffer(canonical_public(out[i].tobytes()), dtype=np.uint8)
    return out


class PublicKeyCache:
    """X25519 public keys parsed once each (server side).

    Parsing a raw public key costs about a fifth of an agreement; when the server removes
    the pairwise masks of many dropped clients, each survivor's key takes part in one
    agreement per dropped neighbour, so it is parsed once here and reused. Public data
    only: no private key is ever cached.
    """

    __slots__ = ("_parsed",)

    def __init__(self) -> None:
        self._parsed: dict[bytes, X25519PublicKey] = {}

    def get(self, raw: bytes) -> X25519PublicKey:
        """The parsed key; raises :class:`CryptoError` if ``raw`` is not 32 bytes."""
        key = self._parsed.get(raw)
        if key is None:
            if len(raw) != KEY_BYTES:
                raise CryptoError("key agreement failed")
            key = self._parsed[bytes(raw)] = X25519PublicKey.from_public_bytes(raw)
        return key

    def __len__(self) -> int:
        return len(self._parsed)


class KeyMismatch(CryptoError):
    """A private key does not belong to the public key it was expected to match."""


def shared_secrets(private: bytes, peer_publics: Sequence[bytes], *,
                   expected_public: bytes | None = None,
                   cache: PublicKeyCache | None = None) -> list[bytes]:
    """Raw X25519(private, peer) for many peers, parsing the private key once.

    Equals ``[shared_secret(private, p) for p in peer_publics]``, refusals included, at
    about half the cost: parsing a private key costs as much as one exchange.
    ``expected_public``: first check that ``private`` belongs to this public key (raises
    :class:`KeyMismatch`), with the same single parse -- the server checks a
    reconstructed key against its advertisement this way. ``cache``: parse each peer key
    once across calls.
    """
    if len(private) != KEY_BYTES or any(len(p) != KEY_BYTES for p in peer_publics):
        raise CryptoError("key agreement failed")
    try:
        sk = X25519PrivateKey.from_private_bytes(private)
        if expected_public is not None and (
                sk.public_key().public_bytes_raw() != bytes(expected_public)):
            raise KeyMismatch("a private key does not match its public key")
        parse = X25519PublicKey.from_public_bytes if cache is None else cache.get
        exchange = sk.exchange
        out = [exchange(parse(p)) for p in peer_publics]
    except ValueError:
        raise CryptoError("key agreement failed") from None
    zero = bytes(KEY_BYTES)
    if any(s == zero for s in out):
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
    return derive_keys([secret], label, [context], length)[0]


_SHA256 = hashes.SHA256()  # stateless algorithm descriptor, shared by every derivation


def derive_keys(secrets: Sequence[bytes], label: Label, contexts: Sequence[bytes],
                length: int = 32) -> list[bytes]:
    """``[derive_key(s, label, c, length) for s, c in zip(secrets, contexts)]``, with the
    label and argument checks done once (the server derives ~10^4 mask seeds a round)."""
    if not isinstance(label, Label):
        raise ConfigError(f"derive_key: label must be a Label, got {label!r}")
    if len(secrets) != len(contexts):
        raise ConfigError("derive_keys: need one context per secret")
    if not 0 < length <= _MAX_HKDF_BYTES:
        raise ConfigError(f"HKDF length must be in 1..{_MAX_HKDF_BYTES} bytes, got {length}")
    prefix = label.value
    # the 4-byte big-endian length prefix makes (label, context) pairs unambiguous
    return [HKDF(algorithm=_SHA256, length=length, salt=None,
                 info=prefix + len(c).to_bytes(4, "big") + bytes(c)).derive(s)
            for s, c in zip(secrets, contexts, strict=True)]
