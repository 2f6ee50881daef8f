"""Errors of the differential-privacy layer (part of the one tree rooted in crypto.errors)."""

from __future__ import annotations

from crypto.errors import ConfigError, SecureFedError


class PrivacyBudgetExceeded(SecureFedError):
    """The next step would spend more than the target epsilon; nothing was computed."""


class AccountingError(SecureFedError):
    """An accountant could not produce a finite bound for the requested events."""


__all__ = ["AccountingError", "ConfigError", "PrivacyBudgetExceeded", "SecureFedError"]
