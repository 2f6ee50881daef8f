"""In-process round runner: clients and one server exchanging bytes (simulation and trainer).

:func:`run_secure_round` builds one :class:`SecAggClient` per cohort member (each holds only
its own input) and one :class:`SecAggServer` (which only ever receives encoded messages),
delivers every message as bytes, applies a :class:`DropoutSchedule`, and accounts bytes
(up = client -> server, down = server -> client) and seconds per stage: each client's own
compute time and the server's time, plus an estimate of the server's peak memory.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from crypto.rng import KeystreamRNG, random_bytes
from crypto.signing import SigningKeyPair, generate_signing_keypair
from protocol.client import SecAggClient
from protocol.config import ProtocolConfig
from protocol.dropout import STAGES, DropoutSchedule
from protocol.errors import AuthenticationFailure, ProtocolAbort
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


def make_identities(ids: tuple[int, ...], rng: KeystreamRNG | None = None
                    ) -> dict[int, SigningKeyPair]:
    """Long-term Ed25519 identities (client side, kept across rounds); seeded only in tests."""
    draw = rng.spawn("identities").bytes if rng is not None else random_bytes
    return {u: generate_signing_keypair(draw(32)) for u in ids}


class _Meter:
    """Times the server and estimates its peak memory (resident state + transient peak)."""

    def __init__(self, server: SecAggServer, trace: bool) -> None:
        self.server, self.trace = server, trace
        self.seconds, self.peak = 0.0, 0

    def run(self, fn: Callable[[], object]) -> object:
        resident = self.server.resident_bytes()
        if self.trace:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        out = fn()
        self.seconds += time.perf_counter() - t0
        transient = tracemalloc.get_traced_memory()[1] - base if self.trace else 0
        self.peak = max(self.peak, resident + transient, self.server.resident_bytes())
        return out


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
) -> RoundResult:
    """Run one SecAgg/SecAgg+ round in process; every message travels as bytes.

    ``inputs``: per-client vectors in Z_{2^bits} (length ``config.length``), or a callable
    client id -> vector; each is handed to that client only. ``identities``: long-term
    Ed25519 keys (authenticated mode; generated if None). ``rng``: None for the OS CSPRNG,
    or a seeded KeystreamRNG for a reproducible simulation. Raises ProtocolAbort if fewer
    than t clients survive a stage. A client that refuses to continue with ProtocolAbort
    (it has fewer than t live share holders) is treated as dropped and listed in
    ``RoundResult.refused``; any other ProtocolError propagates.
    """
    dropouts = dropouts or DropoutSchedule.none()
    if config.authenticated and identities is None:
        identities = make_identities(config.cohort, rng)
    ident = dict(identities or {})
    pub = {u: k.public for u, k in ident.items()}
    server = SecAggServer(config, pub if config.authenticated else None)
    clients = {u: SecAggClient(u, config, _input_of(inputs, u), ident.get(u), pub,
                               rng.spawn(f"client/{u}") if rng is not None else None)
               for u in config.cohort}
    stages = [s for s in STAGES if config.authenticated or s != "consistency"]
    tracing = trace_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    try:
        pending: Mapping[int, bytes | None] = dict.fromkeys(config.cohort)
        stats = []
        refused: set[int] = set()
        for stage in stages:
            pending, st = _run_stage(stage, clients, server, pending, dropouts, progress,
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


def _run_stage(stage: str, clients: Mapping[int, SecAggClient], server: SecAggServer,
               pending: Mapping[int, bytes | None], dropouts: DropoutSchedule,
               progress: Progress | None, trace: bool, refused: set[int]
               ) -> tuple[dict[int, bytes], StageStats]:
    meter = _Meter(server, trace)
    gone = dropouts.dropped_by(stage)
    active = [u for u in sorted(pending) if u not in gone]
    seconds: dict[int, float] = {}
    up: dict[int, int] = {}
    for i, u in enumerate(active):
        t0 = time.perf_counter()
        down = pending[u]
        try:
            data = clients[u].start() if down is None else clients[u].receive(down)
        except AuthenticationFailure:
            raise  # forged or tampered data: never papered over
        except ProtocolAbort:
            refused.add(u)  # an honest client that cannot continue safely goes silent
            continue
        seconds[u] = time.perf_counter() - t0
        up[u] = len(data)
        meter.run(lambda data=data: server.receive(data))  # type: ignore[misc]
        if progress is not None:
            progress(stage, i + 1, len(active))
    out = meter.run(server.finish_stage)
    assert isinstance(out, dict)
    survivors = len(server.survivors.get(stage, ()))
    st = StageStats(stage, survivors, seconds, meter.seconds, up,
                    {v: len(d) for v, d in out.items()}, meter.peak)
    return out, st
