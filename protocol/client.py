"""Client side facade: holds the client's input and current round state; speaks bytes.

Usage (client side): ``c = SecAggClient(...)``; ``up = c.start()`` (AdvertiseKeys bytes);
then ``up = c.receive(down)`` for each server message. A message that is malformed,
addressed elsewhere, replayed, or not valid in the current state raises a
:class:`ProtocolError` subclass and leaves the client in the state it was in.

The input may be given lazily, as a callable producing it: it is then produced only when
the client is about to mask it (:meth:`SecAggClient.load_input`, called at the latest by
the masked-input step), and it is released as soon as the masked vector is sent, so a
host running many clients never holds more inputs than it is masking at that moment.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from crypto.errors import ConfigError
from crypto.prg import dtype_for_bits
from crypto.rng import KeystreamRNG
from crypto.signing import SigningKeyPair
from protocol.client_states import (
    AdvertiseKeysState,
    ClientContext,
    ClientState,
    MaskedInputState,
    ShareKeysState,
)
from protocol.config import ProtocolConfig
from protocol.errors import ProtocolError
from protocol.messages import decode
from protocol.policy import DEFAULT_POLICY, ClientPolicy


def _check_input(value: np.ndarray, config: ProtocolConfig) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (config.length,) or arr.dtype.kind not in "ui":
        raise ConfigError(f"client input must be an integer vector of length {config.length}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 1 << config.bits):
        raise ConfigError(f"client input entries must lie in 0..2^{config.bits}-1 (encode first)")
    return np.ascontiguousarray(arr, dtype=dtype_for_bits(config.bits))


InputSource = Callable[[], np.ndarray]
"""Produces a client's input (client side), called at most once, when it is masked."""


_EMPTY = (np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.uint64))  # no input held


class SecAggClient:
    """One client of one round (client side). Its input never leaves it unmasked."""

    __slots__ = ("_ctx", "_state", "_started", "_source", "policy")

    def __init__(
        self,
        client_id: int,
        config: ProtocolConfig,
        value: np.ndarray | InputSource,
        identity: SigningKeyPair | None = None,
        identity_keys: Mapping[int, bytes] | None = None,
        rng: KeystreamRNG | None = None,
        *,
        policy: ClientPolicy | None = None,
    ) -> None:
        """``policy``: the weakest config this client accepts, checked in :meth:`start`
        (None: :data:`protocol.policy.DEFAULT_POLICY`, authenticated rounds only)."""
        pos = bisect.bisect_left(config.cohort, client_id)  # the cohort is sorted
        if pos == config.n or config.cohort[pos] != client_id:
            raise ConfigError(f"client {client_id} is not in the round's cohort")
        if config.authenticated and (identity is None or identity_keys is None):
            raise ConfigError("authenticated mode needs identity and identity_keys")
        self._source: InputSource | None = value if callable(value) else None
        initial = _EMPTY[config.bits > 32] if callable(value) else _check_input(value, config)
        # identity_keys is shared read-only by every client of a host (not copied per client)
        keys = identity_keys if identity_keys is not None else {}
        self._ctx = ClientContext(client_id, config, None, initial, identity, keys, rng)
        self._state: ClientState = AdvertiseKeysState()
        self._started = False
        self.policy = DEFAULT_POLICY if policy is None else policy

    @property
    def client_id(self) -> int:
        return self._ctx.client_id

    @property
    def state(self) -> ClientState:
        """The current round state (read-only view, for tests and logs)."""
        return self._state

    @property
    def needs_input(self) -> bool:
        """True when the next server message is the one the input is masked for and a
        lazily given input has not been produced yet."""
        return self._source is not None and isinstance(self._state, MaskedInputState)

    def load_input(self) -> None:
        """Produce a lazily given input now (client side; a no-op if already present)."""
        if self._source is not None:
            value = _check_input(self._source(), self._ctx.config)
            self._ctx = dataclasses.replace(self._ctx, value=value)
            self._source = None

    def start(self) -> bytes:
        """Round 0: check the config against the client's policy (PolicyViolation, before
        any key exists), generate key pairs; returns the encoded AdvertiseKeys message."""
        state = self._state
        if self._started or not isinstance(state, AdvertiseKeysState):
            raise ProtocolError("the client has already advertised its keys")
        self.policy.check(self._ctx.config)
        nxt, reply = state.start(self._ctx)
        self._state, self._started = nxt, True
        return reply.encode()

    def receive(self, data: bytes) -> bytes:
        """Handle one server message; returns the encoded reply (check, then commit)."""
        msg = decode(data)
        state = self._state
        if not isinstance(msg, state.accepts):
            raise ProtocolError(f"{type(msg).__name__} is not valid in client state {state.name}")
        masking = isinstance(state, MaskedInputState)
        if masking:
            self.load_input()
        nxt, reply = state.advance(self._ctx, msg)
        encoded = reply.encode()
        self._state = nxt
        if isinstance(nxt, ShareKeysState):  # the reveals fixed the graph: now part of ctx
            self._ctx = dataclasses.replace(self._ctx, graph=nxt.graph)
        if masking:  # the input is in the masked vector now; nothing needs it any more
            self._ctx = dataclasses.replace(self._ctx, value=_EMPTY[self._ctx.config.bits > 32])
        return encoded
