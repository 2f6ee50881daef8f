"""``simulate``: a seeded, self-checking protocol run (inputs, dropouts and keys reproducible).

Draws uniform inputs in Z_{2^bits} per client, a random dropout schedule at one stage,
runs one round (all messages as bytes) and compares the server's unmasked sum with the
plaintext sum of the summed clients' inputs mod 2^bits. Everything a client holds is a
function of (seed, client id), so a client can be built wherever it runs
(:func:`simulation_client`): in this process, or in a pool of other processes given to
:func:`simulate` as ``pool_factory``. Inputs are produced lazily, one client at a time, and
the plaintext check recomputes them after the round, so no step holds all n inputs.
Seeded randomness is for simulation only; production rounds use the OS CSPRNG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np

from crypto.prg import dtype_for_bits
from crypto.rng import KeystreamRNG
from crypto.signing import SigningKeyPair
from protocol.client import SecAggClient
from protocol.config import ProtocolConfig
from protocol.dropout import DropoutSchedule
from protocol.identities import make_identities
from protocol.params import RoundParams, round_params
from protocol.policy import ClientPolicy
from protocol.runner import (
    ClientPool,
    LocalClientPool,
    Progress,
    RoundResult,
    run_round,
)
from protocol.vectors import reduce_in_place

PoolFactory = Callable[[ProtocolConfig, int], tuple[ClientPool, Mapping[int, bytes] | None]]
"""(config, seed) -> a pool holding the cohort's :func:`simulation_client` s, and the
clients' identity public keys (None when unauthenticated)."""


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """The round's result and the plaintext sum it must equal."""

    result: RoundResult
    expected: np.ndarray
    params: RoundParams | None = None  # the (k, t) choice, when simulate made it

    @property
    def ok(self) -> bool:
        return bool(np.array_equal(self.result.total, self.expected))


def simulated_input(u: int, length: int, bits: int, seed: int) -> np.ndarray:
    """Client u's uniform vector in Z_{2^bits}, from a seeded KeystreamRNG (client side)."""
    rng = KeystreamRNG.from_seed(seed, "simulate/inputs").spawn(f"input/{u}")
    raw = rng.uint32(length) if bits <= 32 else rng.uint64(length)
    return reduce_in_place(raw.astype(dtype_for_bits(bits)), bits)


def simulated_inputs(ids: tuple[int, ...], length: int, bits: int, seed: int
                     ) -> dict[int, np.ndarray]:
    """:func:`simulated_input` for every id (small cohorts and tests)."""
    return {u: simulated_input(u, length, bits, seed) for u in ids}


def simulation_identities(ids: tuple[int, ...], seed: int) -> dict[int, SigningKeyPair]:
    """Simulated clients' long-term Ed25519 keys (client side), a function of (seed, id)."""
    return make_identities(ids, KeystreamRNG.from_seed(seed, "keys"))


def simulation_client(config: ProtocolConfig, seed: int, u: int,
                      identity: SigningKeyPair | None,
                      identity_keys: Mapping[int, bytes] | None,
                      policy: ClientPolicy | None = None) -> SecAggClient:
    """Simulated client u of ``config`` (client side): its input is produced lazily.
    ``policy`` None: :meth:`ClientPolicy.permissive` (a simulation runs the config its
    caller chose, unauthenticated ones included)."""
    rng = KeystreamRNG.from_seed(seed, "keys").spawn(f"client/{u}")
    return SecAggClient(u, config, partial(simulated_input, u, config.length, config.bits, seed),
                        identity, identity_keys, rng,
                        policy=ClientPolicy.permissive() if policy is None else policy)


def local_pool(config: ProtocolConfig, seed: int
               ) -> tuple[LocalClientPool, Mapping[int, bytes] | None]:
    """The default :data:`PoolFactory`: every simulated client in this process."""
    ident = simulation_identities(config.cohort, seed) if config.authenticated else {}
    pub = {u: k.public for u, k in ident.items()} if config.authenticated else None
    clients = {u: simulation_client(config, seed, u, ident.get(u), pub) for u in config.cohort}
    return LocalClientPool(clients), pub


def default_threshold(k: int) -> int:
    """The smallest valid threshold for k neighbours: a strict majority of the k + 1 holders."""
    return (k + 1) // 2 + 1


def simulate(n_clients: int, length: int, bits: int = 32, graph: str = "complete",
             neighbors: int | None = None, threshold: int | None = None, dropout: float = 0.0,
             dropout_stage: str = "masked", seed: int = 0, authenticated: bool = True,
             round_id: int = 0, progress: Progress | None = None,
             trace_memory: bool = False, pool_factory: PoolFactory | None = None,
             server_workers: int = 1, max_colluders: int | None = None,
             halting_bits: float = 20.0) -> SimulationResult:
    """Simulate one round of ``n_clients`` (ids 0..n-1) and check it against plaintext.

    ``dropout``: probability that each client drops just before ``dropout_stage``.
    ``threshold`` None takes :func:`default_threshold` of the graph degree.
    ``pool_factory``: where the clients run (default: in this process).
    ``server_workers``: the server's unmasking processes (1: this process only).
    ``max_colluders``: when given, or when a Harary graph has no ``neighbors``, (k, t)
    come from :func:`protocol.params.round_params` (c = ``max_colluders`` or 0, the
    ``dropout`` and ``halting_bits`` targets) and are returned in ``params``; an explicit
    ``threshold`` below what c needs is refused.
    """
    ids = tuple(range(n_clients))
    params = None
    if max_colluders is not None or (graph != "complete" and neighbors is None):
        c = max_colluders or 0
        params = round_params(n_clients, dropout, c, authenticated, graph=graph,
                              neighbors=neighbors, halting_bits=halting_bits,
                              threshold=threshold)
        graph, neighbors = params.graph, (None if params.graph == "complete" else params.k)
    k = n_clients - 1 if graph == "complete" else neighbors
    t = threshold if threshold is not None else (
        params.t if params is not None else default_threshold(k or 0))
    config = ProtocolConfig(round_id, ids, length, bits, t, graph,
                            neighbors if graph != "complete" else None, authenticated)
    drops = DropoutSchedule.random(ids, dropout, (dropout_stage,),
                                   KeystreamRNG.from_seed(seed, "simulate/dropout"))
    pool, pub = (pool_factory or local_pool)(config, seed)
    result = run_round(pool, config, drops, pub, progress=progress, trace_memory=trace_memory,
                       server_workers=server_workers)
    expected = np.zeros(length, dtype=dtype_for_bits(bits))
    for u in result.summed:  # the harness's check, one input at a time
        np.add(expected, simulated_input(u, length, bits, seed), out=expected)
    return SimulationResult(result, reduce_in_place(expected, bits), params)
