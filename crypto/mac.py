"""Message authentication between two parties that share a key: HMAC-SHA256 over
:func:`crypto.signing.encode_fields` of byte fields.

Clients confirm the survivor set to each neighbour with it (authenticated mode): the key
is one only the two clients hold (derived from their X25519 channel agreement, whose
public keys are Ed25519-signed), so a tag convinces the recipient, and nobody else, that
the sender confirmed those fields.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from crypto.errors import ConfigError, SignatureError
from crypto.signing import encode_fields

MAC_KEY_BYTES = 32
TAG_BYTES = 32  # full HMAC-SHA256 output
_SHA256 = hashes.SHA256()


def _hmac(key: bytes, fields: tuple[bytes, ...]) -> HMAC:
    if len(key) != MAC_KEY_BYTES:
        raise ConfigError(f"MAC key must be {MAC_KEY_BYTES} bytes, got {len(key)}")
    h = HMAC(bytes(key), _SHA256)
    h.update(encode_fields(*fields))
    return h


def mac(key: bytes, *fields: bytes) -> bytes:
    """HMAC-SHA256(key, encode_fields(*fields)): a 32-byte tag."""
    return _hmac(key, fields).finalize()


def verify_mac(key: bytes, tag: bytes, *fields: bytes) -> None:
    """Check a :func:`mac` tag (constant-time comparison); raises :class:`SignatureError`."""
    h = _hmac(key, fields)
    if len(tag) != TAG_BYTES:
        raise SignatureError("tag did not verify")
    try:
        h.verify(bytes(tag))
    except InvalidSignature:
        raise SignatureError("tag did not verify") from None
