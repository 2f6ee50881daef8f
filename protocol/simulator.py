"""``simulate``: a seeded, self-checking protocol run (inputs, dropouts and keys reproducible).

Draws uniform inputs in Z_{2^bits} per client, a random dropout schedule at one stage,
runs :func:`protocol.runner.run_secure_round` (all messages as bytes) and compares the
server's unmasked sum with the plaintext sum of the summed clients' inputs mod 2^bits.
Seeded randomness is for simulation only; production rounds use the OS CSPRNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crypto.prg import dtype_for_bits
from crypto.rng import KeystreamRNG
from protocol.config import ProtocolConfig
from protocol.dropout import DropoutSchedule
from protocol.runner import Progress, RoundResult, run_secure_round
from protocol.vectors import reduce_in_place


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """The round's result and the plaintext sum it must equal."""

    result: RoundResult
    expected: np.ndarray

    @property
    def ok(self) -> bool:
        return bool(np.array_equal(self.result.total, self.expected))


def simulated_inputs(ids: tuple[int, ...], length: int, bits: int, seed: int
                     ) -> dict[int, np.ndarray]:
    """Uniform per-client vectors in Z_{2^bits} from a seeded KeystreamRNG."""
    base = KeystreamRNG.from_seed(seed, "simulate/inputs")
    out = {}
    for u in ids:
        rng = base.spawn(f"input/{u}")
        raw = rng.uint32(length) if bits <= 32 else rng.uint64(length)
        out[u] = reduce_in_place(raw.astype(dtype_for_bits(bits)), bits)
    return out


def default_threshold(k: int) -> int:
    """The smallest valid threshold for k neighbours: a strict majority of the k + 1 holders."""
    return (k + 1) // 2 + 1


def simulate(n_clients: int, length: int, bits: int = 32, graph: str = "complete",
             neighbors: int | None = None, threshold: int | None = None, dropout: float = 0.0,
             dropout_stage: str = "masked", seed: int = 0, authenticated: bool = True,
             round_id: int = 0, progress: Progress | None = None,
             trace_memory: bool = False) -> SimulationResult:
    """Simulate one round of ``n_clients`` (ids 0..n-1) and check it against plaintext.

    ``dropout``: probability that each client drops just before ``dropout_stage``.
    ``threshold`` None takes :func:`default_threshold` of the graph degree.
    """
    ids = tuple(range(n_clients))
    k = n_clients - 1 if graph == "complete" else neighbors
    t = threshold if threshold is not None else default_threshold(k or 0)
    config = ProtocolConfig(round_id, ids, length, bits, t, graph,
                            neighbors if graph != "complete" else None, authenticated)
    inputs = simulated_inputs(ids, length, bits, seed)
    drops = DropoutSchedule.random(ids, dropout, (dropout_stage,),
                                   KeystreamRNG.from_seed(seed, "simulate/dropout"))
    result = run_secure_round(inputs, config, drops, rng=KeystreamRNG.from_seed(seed, "keys"),
                              progress=progress, trace_memory=trace_memory)
    expected = np.zeros(length, dtype=dtype_for_bits(bits))
    for u in result.summed:
        np.add(expected, inputs[u], out=expected)
    return SimulationResult(result, reduce_in_place(expected, bits))
