"""Client hosts: the client side of one worker (a Ray actor), holding a shard of clients.

A :class:`ClientHost` keeps its clients' long-term identities across rounds, a directory of
the identity public keys of the run's clients (learnt once each), and, during a round,
its clients' :class:`protocol.client.SecAggClient` state machines. The server reaches them
only through :meth:`ClientHost.exchange`: a batch of server messages in, the clients'
encoded replies out. What a client *is* (its input, its randomness) comes from a role:
:class:`SimulationRole` (the seeded ``simulate`` clients) or the training role in
:mod:`secure_fed.executor.training` (data shard, model and local training).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from typing import Any, Protocol

from crypto.signing import SigningKeyPair
from protocol.client import SecAggClient
from protocol.config import ProtocolConfig
from protocol.runner import exchange_with
from protocol.simulator import simulation_client, simulation_identities

Reply = tuple[int, bytes | None, float]  # protocol.runner.ClientReply as a plain tuple


class HostRole(Protocol):
    """What the clients of a host are: identities, and a round's SecAggClient objects."""

    def identity(self, u: int) -> SigningKeyPair:
        ...

    def client(self, config: ProtocolConfig, u: int, identity: SigningKeyPair | None,
               identity_keys: Mapping[int, bytes] | None, extra: Any) -> SecAggClient:
        ...


class SimulationRole:
    """The seeded clients of ``simulate``: everything is a function of (seed, client id)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def identity(self, u: int) -> SigningKeyPair:
        return simulation_identities((u,), self.seed)[u]

    def client(self, config: ProtocolConfig, u: int, identity: SigningKeyPair | None,
               identity_keys: Mapping[int, bytes] | None, extra: Any) -> SecAggClient:
        return simulation_client(config, self.seed, u, identity, identity_keys)


class ClientHost:
    """One worker's clients (client side). Wrapped as a Ray actor by the ray executor."""

    def __init__(self, role: HostRole) -> None:
        self.role = role
        self.identities: dict[int, SigningKeyPair] = {}
        self.directory: dict[int, bytes] = {}  # identity public keys of the run's clients
        self.clients: dict[int, SecAggClient] = {}

    def ready(self) -> int:
        """The worker's process id (also a barrier: the host is constructed)."""
        return os.getpid()

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of this worker process so far (bytes; Linux reports KiB)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def cpu_seconds(self) -> float:
        """User + system CPU seconds this worker process has used so far."""
        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime

    def register(self, ids: list[int]) -> dict[int, bytes]:
        """Identity public keys of ``ids`` (each client keeps its private key here). The
        driver's pool calls it once per client and run (see RayClientPool.register)."""
        for u in ids:
            if u not in self.identities:
                self.identities[u] = self.role.identity(u)
        return {u: self.identities[u].public for u in ids}

    def open_round(self, config: ProtocolConfig, ids: list[int],
                   new_keys: Mapping[int, bytes] | None, extra: Any = None) -> int:
        """Build this host's clients of the round ``config`` (``ids``, a part of the cohort).

        ``new_keys``: identity public keys registered since the last round (None: none);
        the clients verify their neighbours against the directory of all keys learnt so
        far, which holds at least the cohort's (a client only looks up its neighbours).
        """
        self.directory.update(new_keys or {})
        keys = self.directory if config.authenticated else None
        self.clients = {u: self.role.client(config, u, self.identities.get(u) if keys else None,
                                            keys, extra) for u in ids}
        return len(self.clients)

    def exchange(self, stage: str, ids: list[int], own: Mapping[int, bytes],
                 shared: bytes | None) -> list[Reply]:
        """Deliver one batch: client u gets ``own[u]`` if present, else ``shared`` (one
        message many clients receive, such as the key broadcast, travels once)."""
        messages = {u: own.get(u, shared) for u in ids}
        return [tuple(r) for r in exchange_with(self.clients, stage, messages)]  # type: ignore[misc]

    def close_round(self) -> Any:
        """Forget the round's client states; returns the role's per-round outputs."""
        self.clients = {}
        finish = getattr(self.role, "finish_round", None)
        return finish() if finish is not None else None

    def call(self, method: str, *args: Any) -> Any:
        """Run a role method (role-specific steps, such as the training round's setup)."""
        return getattr(self.role, method)(*args)
