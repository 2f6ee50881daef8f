"""Shared builders for the protocol tests: a small round driven step by step."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crypto.rng import KeystreamRNG
from crypto.signing import SigningKeyPair
from protocol.client import SecAggClient
from protocol.config import ProtocolConfig
from protocol.policy import ClientPolicy
from protocol.runner import make_identities
from protocol.server import SecAggServer
from protocol.simulator import simulated_inputs


@dataclass
class Round:
    """Clients and server of one round, with the last messages each side produced."""

    config: ProtocolConfig
    clients: dict[int, SecAggClient]
    server: SecAggServer
    identities: dict[int, SigningKeyPair]
    inputs: dict[int, np.ndarray]
    down: dict[int, bytes] = field(default_factory=dict)  # server -> client, pending
    up: dict[int, bytes] = field(default_factory=dict)  # client -> server, last stage

    def step(self, skip: frozenset[int] = frozenset()) -> dict[int, bytes]:
        """One stage: clients answer (or start), the server takes all and finishes."""
        if not self.up and not self.down:
            self.up = {u: c.start() for u, c in self.clients.items() if u not in skip}
        else:
            self.up = {u: self.clients[u].receive(d) for u, d in self.down.items()
                       if u not in skip}
        for data in self.up.values():
            self.server.receive(data)
        self.down = self.server.finish_stage()
        return self.down


def make_round(n: int = 5, length: int = 8, bits: int = 16, t: int | None = None,
               graph: str = "complete", k: int | None = None, authenticated: bool = True,
               round_id: int = 7, seed: int = 1,
               identities: dict[int, SigningKeyPair] | None = None,
               inputs: dict[int, np.ndarray] | None = None,
               policy: ClientPolicy | None = None) -> Round:
    """A round of n clients (ids 0..n-1); ``policy`` None gives the clients a permissive
    policy (these tests exercise configs of every kind, unauthenticated ones included)."""
    ids = tuple(range(n))
    deg = n - 1 if graph == "complete" else (k or 2)
    threshold = t if t is not None else (deg + 1) // 2 + 1
    cfg = ProtocolConfig(round_id, ids, length, bits, threshold, graph, k, authenticated)
    rng = KeystreamRNG.from_seed(seed, "test-round")
    ident = identities or make_identities(ids, rng)
    pub = {u: s.public for u, s in ident.items()}
    inputs = inputs if inputs is not None else simulated_inputs(ids, length, bits, seed)
    pol = ClientPolicy.permissive() if policy is None else policy
    clients = {u: SecAggClient(u, cfg, inputs[u], ident[u], pub, rng.spawn(f"c{u}"), policy=pol)
               for u in ids}
    server = SecAggServer(cfg, pub if authenticated else None)
    return Round(cfg, clients, server, ident, inputs)
