"""The whole exception tree, re-exported for users of :mod:`secure_fed`.

SecureFedError
 +-- ConfigError (also a ValueError)
 +-- EncodingOverflow
 +-- CryptoError > DecryptionError, SignatureError, SharingError
 +-- PrivacyBudgetExceeded, AccountingError
 +-- ProtocolError > ProtocolAbort, MalformedMessage, ConsistencyViolation, ReplayError
"""

from __future__ import annotations

from crypto.errors import (
    ConfigError,
    CryptoError,
    DecryptionError,
    EncodingOverflow,
    SecureFedError,
    SharingError,
    SignatureError,
)
from dp.errors import AccountingError, PrivacyBudgetExceeded
from protocol.errors import (
    ConsistencyViolation,
    MalformedMessage,
    ProtocolAbort,
    ProtocolError,
    ReplayError,
)

__all__ = [
    "AccountingError",
    "ConfigError",
    "ConsistencyViolation",
    "CryptoError",
    "DecryptionError",
    "EncodingOverflow",
    "MalformedMessage",
    "PrivacyBudgetExceeded",
    "ProtocolAbort",
    "ProtocolError",
    "ReplayError",
    "SecureFedError",
    "SharingError",
    "SignatureError",
]
