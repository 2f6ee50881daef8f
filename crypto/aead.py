"""Authenticated encryption: AES-GCM with a 12-byte nonce and associated data.

Clients seal Shamir shares for one another with it; the server only relays ciphertexts.
The nonce is an argument (the caller guarantees it never repeats under a key, e.g. one
key per (session, sender, receiver) and a counter nonce). A failed open raises one
:class:`DecryptionError` that never says which check failed.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.errors import ConfigError, DecryptionError

NONCE_BYTES = 12
TAG_BYTES = 16
_KEY_SIZES = (16, 32)


def _cipher(key: bytes, nonce: bytes) -> AESGCM:
    if len(key) not in _KEY_SIZES:
        raise ConfigError(f"AES-GCM key must be 16 or 32 bytes, got {len(key)}")
    if len(nonce) != NONCE_BYTES:
        raise ConfigError(f"AES-GCM nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    return AESGCM(bytes(key))


def seal(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-GCM encrypt: returns ciphertext || 16-byte tag."""
    return _cipher(key, nonce).encrypt(bytes(nonce), bytes(plaintext), bytes(associated_data))


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """AES-GCM decrypt and verify; any failure raises :class:`DecryptionError`."""
    if len(key) not in _KEY_SIZES or len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
        raise DecryptionError("decryption failed")
    try:
        return AESGCM(bytes(key)).decrypt(bytes(nonce), bytes(ciphertext), bytes(associated_data))
    except InvalidTag:
        raise DecryptionError("decryption failed") from None
