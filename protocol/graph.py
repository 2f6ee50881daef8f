"""Masking graphs: who shares keys with whom (both sides build the same graph).

``complete``: every pair of clients (SecAgg, Bonawitz et al. 2017). ``harary``: the
Harary graph H(k, n) -- client at position i joins positions i +- 1..k/2 (mod n) and, for
odd k, the opposite position i + n/2 -- over a random ordering of the cohort (SecAgg+,
Bell et al. 2020). The ordering comes from *public* randomness: a KeystreamRNG keyed by a
hash of the round's public config, so every client can recompute it and nobody, the
server included, can pick it. No numpy RNG is involved.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from crypto.rng import KeystreamRNG
from protocol.config import ProtocolConfig


class Graph:
    """Undirected neighbour sets over the cohort; ``neighbors_of(u)`` excludes u itself.

    ``order``: the cohort in ring order, the public random ordering the Harary graph was
    built on (the ids in cohort order for the complete graph). Kept so that the server,
    which reconstructs secrets in ring order, reuses it instead of drawing it again.
    """

    __slots__ = ("kind", "ids", "order", "_sets")

    def __init__(self, kind: str, ids: tuple[int, ...], sets: dict[int, frozenset[int]] | None,
                 order: tuple[int, ...] | None = None):
        self.kind = kind
        self.ids = ids
        self.order = ids if order is None else order
        self._sets = sets

    def neighbors_of(self, u: int) -> frozenset[int]:
        """The neighbours of client ``u`` (not including u)."""
        if self._sets is None:
            return frozenset(self.ids) - {u}
        return self._sets[u]

    def degree(self, u: int) -> int:
        return len(self.ids) - 1 if self._sets is None else len(self._sets[u])


def graph_seed(config: ProtocolConfig) -> bytes:
    """Public 32-byte seed of the graph's random ordering (a hash of the public config)."""
    return hashlib.sha256(b"secure_fed/graph-seed/v1" + config.digest()).digest()


def random_order(ids: tuple[int, ...], seed: bytes) -> list[int]:
    """A uniformly random ordering of ``ids`` from public randomness.

    Sorts by independent uniform 64-bit keys from ``KeystreamRNG.from_seed(seed)``; a tie
    (probability below n^2 / 2^65) falls back to id order, which stays deterministic.
    """
    keys = KeystreamRNG.from_seed(seed, "harary-order").uint64(len(ids))
    order = np.lexsort((np.asarray(ids, dtype=np.int64), keys))
    return [ids[i] for i in order]


def harary_sets(order: list[int], k: int) -> dict[int, frozenset[int]]:
    """Neighbour sets of the Harary graph H(k, n) on the cycle ``order`` (k-regular)."""
    n = len(order)
    offsets = list(range(1, k // 2 + 1))
    sets: dict[int, set[int]] = {u: set() for u in order}
    for i, u in enumerate(order):
        for d in offsets:
            v = order[(i + d) % n]
            sets[u].add(v)
            sets[v].add(u)
        if k % 2 == 1:
            sets[u].add(order[(i + n // 2) % n])
    return {u: frozenset(s) for u, s in sets.items()}


def _build(kind: str, ids: tuple[int, ...], k: int, seed: bytes) -> Graph:
    if kind == "complete" or k >= len(ids) - 1:
        return Graph("complete", ids, None)
    order = random_order(ids, seed)
    return Graph(kind, ids, harary_sets(order, k), tuple(order))


_GRAPHS: OrderedDict[bytes, Graph] = OrderedDict()
_GRAPHS_KEPT = 8


def build_graph(config: ProtocolConfig) -> Graph:
    """The round's masking graph (deterministic in the public config; cached).

    Cached on the config's digest (computed once per config, and covering the cohort), not
    on the cohort tuple: every client of a round asks, and hashing and comparing a tuple of
    n ids per call made the lookups quadratic over a large cohort.
    """
    key = config.digest()
    graph = _GRAPHS.get(key)
    if graph is None:
        graph = _build(config.graph, config.cohort, config.degree, graph_seed(config))
        _GRAPHS[key] = graph
        while len(_GRAPHS) > _GRAPHS_KEPT:
            _GRAPHS.popitem(last=False)
    else:
        _GRAPHS.move_to_end(key)
    return graph
