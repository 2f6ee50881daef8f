"""Round runner: the server side driving one round against a pool of clients, over bytes.

:func:`run_round` creates one :class:`SecAggServer` (which only ever receives encoded
messages) and drives each stage: it hands the stage's server messages (recipient -> bytes)
to a :class:`ClientPool`, feeds every reply into the server as it arrives, applies a
:class:`DropoutSchedule`, and accounts bytes (up = client -> server, down = server ->
client) and seconds per stage: each client's own compute time and the server's time, plus
an estimate of the server's peak memory.

A pool is anything with an ``exchange(stage, messages)`` method yielding
:class:`ClientReply` objects (duck-typed, see :class:`ClientPool`): where the clients run
(in this process, in other processes, on other machines) is the pool's business.
:class:`LocalClientPool` holds them in process; :func:`run_secure_round` is the in-process
round over it. Replies are consumed one at a time, so the server never holds more than
one masked vector plus its running sum.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Protocol

import numpy as np

from crypto.rng import KeystreamRNG
from crypto.signing import SigningKeyPair
from protocol.client import SecAggClient
from protocol.config import ProtocolConfig
from protocol.dropout import STAGES, DropoutSchedule
from protocol.errors import AuthenticationFailure, ProtocolAbort
from protocol.identities import make_identities
from protocol.policy import ClientPolicy
from protocol.server import SecAggServer

Inputs = Mapping[int, np.ndarray] | Callable[[int], np.ndarray]
Progress = Callable[[str, int, int], None]  # (stage, clients done, clients in stage)


@dataclass(frozen=True, slots=True)
class StageStats:
    """Accounting of one stage. Seconds are wall-clock; bytes are encoded message sizes."""

    stage: str
    survivors: int
    client_seconds: Mapping[int, float]
    server_seconds: float
    bytes_up: Mapping[int, int]
    bytes_down: Mapping[int, int]
    server_peak_bytes: int

    @property
    def client_median_seconds(self) -> float:
        return statistics.median(self.client_seconds.values()) if self.client_seconds else 0.0

    @property
    def total_up(self) -> int:
        return sum(self.bytes_up.values())

    @property
    def total_down(self) -> int:
        return sum(self.bytes_down.values())


@dataclass(frozen=True, slots=True)
class RoundResult:
    """Outcome of one round: the unmasked sum mod 2^bits of the survivors' inputs."""

    total: np.ndarray
    survivors: Mapping[str, tuple[int, ...]]  # stage -> ids whose message the server took
    dropped: tuple[int, ...]  # cohort members whose input is not in the sum
    stages: tuple[StageStats, ...]
    session_id: bytes
    refused: tuple[int, ...] = ()  # clients that stopped on their own (too few live holders)

    def stage(self, name: str) -> StageStats:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)

    @property
    def summed(self) -> tuple[int, ...]:
        """Ids whose inputs are in ``total`` (the masked-input survivors)."""
        return self.survivors["masked"]


class ClientReply(NamedTuple):
    """One client's answer to one server message (client side produced, server consumed).

    ``data`` is the encoded reply, or None when the client refused to continue on its own
    (ProtocolAbort: fewer than t live share holders); ``seconds`` is its compute time.
    """

    client_id: int
    data: bytes | None
    seconds: float


class ClientPool(Protocol):
    """Where the round's clients live. ``exchange`` delivers each message of ``messages``
    (client id -> bytes, or None for the first stage, which has no server message) to its
    client and yields the replies in any order, each as soon as it is available. A client
    that raises a ProtocolError other than ProtocolAbort stops the round: the error
    propagates (forged or tampered data is never papered over)."""

    def exchange(self, stage: str, messages: Mapping[int, bytes | None]) -> Iterable[ClientReply]:
        ...


def exchange_with(clients: Mapping[int, SecAggClient], stage: str,
                  messages: Mapping[int, bytes | None]) -> Iterator[ClientReply]:
    """Deliver ``messages`` to in-process ``clients`` in id order, one reply at a time.

    Client side. A lazily given input is produced before the masking step's clock starts,
    so stage seconds count protocol work only.
    """
    for u in sorted(messages):
        client, down = clients[u], messages[u]
        if down is not None and client.needs_input:
            client.load_input()
        t0 = time.perf_counter()
        try:
            data = client.start() if down is None else client.receive(down)
        except AuthenticationFailure:
            raise  # forged or tampered data: never papered over
        except ProtocolAbort:  # an honest client that cannot continue safely goes silent
            yield ClientReply(u, None, time.perf_counter() - t0)
            continue
        yield ClientReply(u, data, time.perf_counter() - t0)


class LocalClientPool:
    """Clients in this process (client side state; the server still sees bytes only)."""

    def __init__(self, clients: Mapping[int, SecAggClient]) -> None:
        self.clients = clients

    def exchange(self, stage: str, messages: Mapping[int, bytes | None]) -> Iterator[ClientReply]:
        return exchange_with(self.clients, stage, messages)


class _Meter:
    """Times the server and estimates its peak memory (resident state + transient peak).

    The server's resident state only grows while a stage collects messages, so it is read
    at the stage's end (:meth:`settle`), not per message (reading it walks all relayed data).
    With ``trace`` each call's transient allocations are measured with tracemalloc, on
    top of the resident state read before the call.
    """

    def __init__(self, server: SecAggServer, trace: bool) -> None:
        self.server, self.trace = server, trace
        self.seconds, self.peak = 0.0, 0

    def run(self, fn: Callable[[], object]) -> object:
        if self.trace:
            resident = self.server.resident_bytes()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        out = fn()
        self.seconds += time.perf_counter() - t0
        if self.trace:
            transient = tracemalloc.get_traced_memory()[1] - base
            self.peak = max(self.peak, resident + transient)
        return out

    def settle(self) -> None:
        """Account the server's resident state now (call before and after finishing)."""
        self.peak = max(self.peak, self.server.resident_bytes())


def _input_of(inputs: Inputs, u: int) -> np.ndarray:
    return inputs(u) if callable(inputs) else inputs[u]


def run_secure_round(
    inputs: Inputs,
    config: ProtocolConfig,
    dropouts: DropoutSchedule | None = None,
    identities: Mapping[int, SigningKeyPair] | None = None,
    rng: KeystreamRNG | None = None,
    progress: Progress | None = None,
    trace_memory: bool = False,
    server_workers: int = 1,
    policy: ClientPolicy | None = None,
) -> RoundResult:
    """Run one SecAgg/SecAgg+ round in process; every message travels as bytes.

    ``inputs``: per-client vectors in Z_{2^bits} (length ``config.length``), or a callable
    client id -> vector, called lazily (only for clients that reach the masking step, just
    before they mask); each is handed to that client only. ``identities``: long-term
    Ed25519 keys (authenticated mode; generated if None). ``rng``: None for the OS CSPRNG,
    or a seeded KeystreamRNG for a reproducible simulation. Raises ProtocolAbort if fewer
    than t clients survive a stage. A client that refuses to continue with ProtocolAbort
    (it has fewer than t live share holders) is treated as dropped and listed in
    ``RoundResult.refused``; any other ProtocolError propagates. ``server_workers``: the
    server's unmasking processes (:class:`SecAggServer`'s ``workers``). ``policy``: the
    clients' :class:`ClientPolicy`; None means :meth:`ClientPolicy.permissive`, because
    here the caller writes the config *and* runs the clients (a simulation or an
    in-process round), so there is no one else's config for them to refuse.
    """
    pol = ClientPolicy.permissive() if policy is None else policy
    if config.authenticated and identities is None:
        identities = make_identities(config.cohort, rng)
    ident = dict(identities or {})
    pub = {u: k.public for u, k in ident.items()}
    clients = {u: SecAggClient(u, config, partial(_input_of, inputs, u), ident.get(u), pub,
                               rng.spawn(f"client/{u}") if rng is not None else None,
                               policy=pol)
               for u in config.cohort}
    return run_round(LocalClientPool(clients), config, dropouts,
                     pub if config.authenticated else None, progress, trace_memory, server_workers)


def run_round(
    pool: ClientPool,
    config: ProtocolConfig,
    dropouts: DropoutSchedule | None = None,
    identity_keys: Mapping[int, bytes] | None = None,
    progress: Progress | None = None,
    trace_memory: bool = False,
    server_workers: int = 1,
) -> RoundResult:
    """Server side of one round against ``pool`` (see :func:`run_secure_round`).

    ``identity_keys``: the clients' long-term Ed25519 public keys (authenticated mode).
    The dropout schedule is applied here: a client silent at a stage is sent nothing.
    """
    dropouts = dropouts or DropoutSchedule.none()
    server = SecAggServer(config, identity_keys if config.authenticated else None, workers=server_workers)
    stages = [s for s in STAGES if config.authenticated or s != "consistency"]
    tracing = trace_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    try:
        pending: Mapping[int, bytes | None] = dict.fromkeys(config.cohort)
        stats = []
        refused: set[int] = set()
        for stage in stages:
            pending, st = _run_stage(stage, pool, server, pending, dropouts, progress,
                                     trace_memory, refused)
            stats.append(st)
    finally:
        if tracing:
            tracemalloc.stop()
    assert server.total is not None
    summed = set(server.survivors["masked"])
    return RoundResult(server.total, dict(server.survivors),
                       tuple(u for u in config.cohort if u not in summed), tuple(stats),
                       server.session, tuple(sorted(refused)))


def _run_stage(stage: str, pool: ClientPool, server: SecAggServer,
               pending: Mapping[int, bytes | None], dropouts: DropoutSchedule,
               progress: Progress | None, trace: bool, refused: set[int]
               ) -> tuple[dict[int, bytes], StageStats]:
    meter = _Meter(server, trace)
    gone = dropouts.dropped_by(stage)
    active = {u: pending[u] for u in sorted(pending) if u not in gone}
    seconds: dict[int, float] = {}
    up: dict[int, int] = {}
    for i, (u, data, secs) in enumerate(pool.exchange(stage, active)):
        if progress is not None:
            progress(stage, i + 1, len(active))
        if data is None:
            refused.add(u)
            continue
        seconds[u] = secs
        up[u] = len(data)
        meter.run(lambda data=data: server.receive(data))  # type: ignore[misc]
    meter.settle()
    out = meter.run(server.finish_stage)
    meter.settle()
    assert isinstance(out, dict)
    survivors = len(server.survivors.get(stage, ()))
    st = StageStats(stage, survivors, seconds, meter.seconds, up,
                    {v: len(d) for v, d in out.items()}, meter.peak)
    return out, st
