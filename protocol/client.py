"""Client side facade: holds the client's input and current round state; speaks bytes.

Usage (client side): ``c = SecAggClient(...)``; ``up = c.start()`` (AdvertiseKeys bytes);
then ``up = c.receive(down)`` for each server message. A message that is malformed,
addressed elsewhere, replayed, or not valid in the current state raises a
:class:`ProtocolError` subclass and leaves the client in the state it was in.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from crypto.errors import ConfigError
from crypto.prg import dtype_for_bits
from crypto.rng import KeystreamRNG
from crypto.signing import SigningKeyPair
from protocol.client_states import AdvertiseKeysState, ClientContext, ClientState
from protocol.config import ProtocolConfig
from protocol.errors import ProtocolError
from protocol.graph import build_graph
from protocol.messages import decode


def _check_input(value: np.ndarray, config: ProtocolConfig) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (config.length,) or arr.dtype.kind not in "ui":
        raise ConfigError(f"client input must be an integer vector of length {config.length}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 1 << config.bits):
        raise ConfigError(f"client input entries must lie in 0..2^{config.bits}-1 (encode first)")
    return np.ascontiguousarray(arr, dtype=dtype_for_bits(config.bits))


class SecAggClient:
    """One client of one round (client side). Its input never leaves it unmasked."""

    __slots__ = ("_ctx", "_state", "_started")

    def __init__(
        self,
        client_id: int,
        config: ProtocolConfig,
        value: np.ndarray,
        identity: SigningKeyPair | None = None,
        identity_keys: Mapping[int, bytes] | None = None,
        rng: KeystreamRNG | None = None,
    ) -> None:
        if client_id not in config.cohort:
            raise ConfigError(f"client {client_id} is not in the round's cohort")
        if config.authenticated and (identity is None or identity_keys is None):
            raise ConfigError("authenticated mode needs identity and identity_keys")
        self._ctx = ClientContext(client_id, config, build_graph(config),
                                  _check_input(value, config), identity,
                                  dict(identity_keys or {}), rng)
        self._state: ClientState = AdvertiseKeysState()
        self._started = False

    @property
    def client_id(self) -> int:
        return self._ctx.client_id

    @property
    def state(self) -> ClientState:
        """The current round state (read-only view, for tests and logs)."""
        return self._state

    def start(self) -> bytes:
        """Round 0: generate key pairs; returns the encoded AdvertiseKeys message."""
        state = self._state
        if self._started or not isinstance(state, AdvertiseKeysState):
            raise ProtocolError("the client has already advertised its keys")
        nxt, reply = state.start(self._ctx)
        self._state, self._started = nxt, True
        return reply.encode()

    def receive(self, data: bytes) -> bytes:
        """Handle one server message; returns the encoded reply (check, then commit)."""
        msg = decode(data)
        state = self._state
        if not isinstance(msg, state.accepts):
            raise ProtocolError(f"{type(msg).__name__} is not valid in client state {state.name}")
        nxt, reply = state.advance(self._ctx, msg)
        encoded = reply.encode()
        self._state = nxt
        return encoded
