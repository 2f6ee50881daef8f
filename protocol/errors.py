"""Errors of the secure-aggregation protocol (part of the one tree rooted in crypto.errors)."""

from __future__ import annotations

from crypto.errors import SecureFedError


class ProtocolError(SecureFedError):
    """A message is not valid in the current state, or a protocol rule was broken."""


class ProtocolAbort(ProtocolError):
    """The round cannot finish safely (e.g. fewer than t survivors); nothing is revealed."""


class MalformedMessage(ProtocolError):
    """Bytes that do not decode to a valid message of the expected kind and shape."""


class ConsistencyViolation(ProtocolError):
    """Clients were shown different survivor sets, or asked for both shares of one client."""


class ReplayError(ProtocolError):
    """A message bound to another round or session."""


class AuthenticationFailure(ProtocolAbort):
    """A signature or share ciphertext did not verify; deliberately says no more than that."""


class PolicyViolation(ProtocolError):
    """The round's config is below this client's policy; the client refused before any
    secret left it (change the config, or the client's :class:`protocol.policy.ClientPolicy`)."""


class InvalidPublicKey(AuthenticationFailure):
    """An advertised X25519 key is of low order or not canonically encoded; refused before
    any share is sent."""


class RevealMissing(ProtocolAbort):
    """A committed client did not reveal its graph randomness: the round aborts (a restart
    is a fresh round with fresh keys and commitments).

    ``committed``: the clients whose key commitments the server collected; ``missing``:
    those of them that did not reveal. A restart may run among ``committed`` minus
    ``missing`` (the clients still alive), with a fresh config and fresh keys."""

    def __init__(self, message: str, committed: tuple[int, ...] = (),
                 missing: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.committed = tuple(committed)
        self.missing = tuple(missing)
