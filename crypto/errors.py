"""The project's one exception tree.

The root lives here, in the lowest layer, so that every layer (``crypto``, ``dp``,
``protocol``, ``secure_fed``) raises into the same tree without importing upward.
``secure_fed.errors`` re-exports the whole tree for users.

Messages say what to change; errors raised on secret-dependent checks (AEAD tags, share
consistency, signatures) never say which check failed.
"""

from __future__ import annotations


class SecureFedError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(SecureFedError, ValueError):
    """A configuration or argument value is invalid; the message names it and what to change."""


class EncodingOverflow(SecureFedError):
    """A fixed-point encoding or a cohort sum would leave the ring Z_{2^b}."""


class CryptoError(SecureFedError):
    """A cryptographic operation failed. Deliberately uninformative about *why*."""


class DecryptionError(CryptoError):
    """AEAD open failed: wrong key, nonce, associated data or a tampered ciphertext."""


class SignatureError(CryptoError):
    """A signature or a MAC tag did not verify."""


class SharingError(CryptoError):
    """Secret sharing misuse: too few shares, duplicate or out-of-range share indices."""
