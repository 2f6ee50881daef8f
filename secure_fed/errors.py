"""The whole exception tree, re-exported for users of :mod:`secure_fed`.

SecureFedError
 +-- ConfigError (also a ValueError)
 +-- EncodingOverflow
 +-- CryptoError > DecryptionError, SignatureError, SharingError
 +-- PrivacyBudgetExceeded, AccountingError
 +-- ProtocolError > ProtocolAbort, MalformedMessage, ConsistencyViolation, ReplayError
 +-- AuditFailed (an empirical privacy audit contradicted the claimed guarantee)
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


class AuditFailed(SecureFedError):
    """An empirical privacy audit found evidence against the claimed guarantee.

    Raised, for instance, when the one-run audit's epsilon lower bound exceeds the epsilon
    the accountant claims for the audited mechanism: a noise or sensitivity bug. The audit
    writes its results before raising, so the evidence is kept.
    """


__all__ = [
    "AuditFailed",
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
