"""Masking graphs: who shares keys with whom (both sides build the same graph).

``complete``: every pair of clients (SecAgg, Bonawitz et al. 2017). ``harary``: the
Harary graph H(k, m) -- client at position i joins positions i +- 1..k/2 (mod m) and, for
odd k, the opposite position i + m/2 -- over a uniformly random ordering of the m clients
that committed in the round (SecAgg+, Bell et al. 2020). With odd k and an odd m (odd k
needs an even cohort, but clients may fail to advertise) every client gets k + 1
neighbours; any valid t still exceeds half of the k + 2 holders. No numpy RNG is involved.

Why the server cannot choose the ordering (the seed comes from :mod:`protocol.commitments`):

1. *Advertise.* Each client u sends its keys and C_u = H(config digest || u || r_u) for a
   fresh 16-byte r_u from its CSPRNG (signed with the keys in authenticated mode).
2. *Commit.* The server builds two Merkle trees over every client that advertised, in id
   order -- commitments (u, C_u) and keys (u, c_pk, s_pk, signature) -- and sends each
   client the round root R = H(m || both roots) with its own two O(log m) paths. The
   client checks its own entries are in R before it reveals anything.
3. *Reveal.* Each client sends r_u. Every committed client must reveal: one missing
   reveal aborts the round (:class:`protocol.errors.RevealMissing`). A round that is
   restarted is a fresh round with fresh keys and fresh r_u, so every grinding attempt
   costs the server a whole aborted round, visible to every client.
4. *Derive.* The server sends every client all (id, r_u) -- 20 bytes per committed client,
   the same message for all -- and then, per client, only its neighbours' key leaves and
   O(log m) paths. The client recomputes every C_u, rebuilds the commitment tree and
   refuses unless it matches the root it checked before revealing; then seed =
   H(committed ids || all r_u), the ring ordering follows from the seed, and the client
   verifies its neighbours' key leaves (and signatures) against R before it shares
   anything.

Argument. R fixes every commitment, the colluders' included, before any honest r_u is
known; C_u is hiding, so the colluders' choices are independent of the honest r_u, and
binding, so after R nothing can change but whether the round aborts. The honest r_u are
uniform, so the seed is unpredictable to the server and the colluders when they commit
(random-oracle model), and each client's neighbours are a uniformly random k-subset of
the committed set. Nothing else the server writes (round id, public seed, length, bits,
t) enters the seed: with the clients' randomness fixed, the graph does not move.
Re-drawing colluders' keys or commitments after seeing the honest ones (rushing) does
not help: no seed can be evaluated before the honest reveals. A server that shows
different clients different roots (a split view) cannot bias anyone either: each honest
client's seed contains its own r_u, unknown to the server when it fixed that client's
view, so that client's neighbourhood -- the only clients it gives shares to -- is uniform
in its own view; what else a split view can do is the consistency round's business.
What the server still controls is the committed set: it can claim that honest clients
never advertised, raising the colluders' fraction among the m committed clients (as it
could claim dropouts before); a client's policy should bound m from below.

Cost. The commit and key-distribution messages are O(log m) and O(k log m) per client.
The reveal list is O(m) at 20 bytes per client, one message shared by all: a client
cannot avoid it, because a seed it does not recompute from every reveal is one the
server could fake -- with only its k neighbours' data, a client cannot tell a real view
from one the server ground for it (the unverified entries would be the server's choice).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from crypto.rng import KeystreamRNG
from protocol.config import ProtocolConfig
from protocol.errors import ConsistencyViolation, ProtocolError


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


def random_order(ids: tuple[int, ...], seed: bytes) -> list[int]:
    """A uniformly random ordering of ``ids`` from public randomness.

    Sorts by independent uniform 64-bit keys from ``KeystreamRNG.from_seed(seed)``; a tie
    (probability below n^2 / 2^65) falls back to id order, which stays deterministic.
    """
    keys = KeystreamRNG.from_seed(seed, "harary-order").uint64(len(ids))
    order = np.lexsort((np.asarray(ids, dtype=np.int64), keys))
    return [ids[i] for i in order]


def harary_sets(order: list[int], k: int) -> dict[int, frozenset[int]]:
    """Neighbour sets of the Harary graph H(k, n) on the cycle ``order`` (k-regular for
    even k or even n; odd k on odd n: each client joins both positions n // 2 away, so
    k + 1 neighbours). Always symmetric: u is v's neighbour exactly when v is u's."""
    n = len(order)
    offsets = list(range(1, k // 2 + 1))
    sets: dict[int, set[int]] = {u: set() for u in order}
    for i, u in enumerate(order):
        for d in offsets:
            v = order[(i + d) % n]
            sets[u].add(v)
            sets[v].add(u)
        if k % 2 == 1:  # on odd n, i + n // 2 is not where i is reached from: add both ends
            v = order[(i + n // 2) % n]
            sets[u].add(v)
            sets[v].add(u)
    return {u: frozenset(s) for u, s in sets.items()}


def _build(kind: str, ids: tuple[int, ...], k: int, seed: bytes) -> Graph:
    if kind == "complete" or k >= len(ids) - 1:
        return Graph("complete", ids, None)
    order = random_order(ids, seed)
    return Graph(kind, ids, harary_sets(order, k), tuple(order))


_GRAPHS: OrderedDict[tuple[bytes, str, int, bytes, bytes], Graph] = OrderedDict()
_GRAPHS_KEPT = 8


def build_graph(config: ProtocolConfig, committed: tuple[int, ...] | bytes | None = None,
                seed: bytes = b"") -> Graph:
    """The round's masking graph over the committed ids (both sides; cached).

    ``committed``: the ids in the round's commitment tree, increasing, as a tuple or as
    4-byte big-endian bytes (default: the whole cohort); ids outside the cohort raise
    ConsistencyViolation. ``seed``: from :func:`protocol.commitments.graph_seed`, known
    only after every reveal; a Harary graph without one is refused (the complete graph
    needs none). Cached on the exact inputs (config digest, which covers the cohort, the
    seed and the id bytes): every client of a simulated round asks for the same graph,
    and a cache hit has passed the same checks on the same bytes.
    """
    if committed is None:
        committed = config.cohort
    key_ids = (committed if isinstance(committed, bytes)
               else np.asarray(committed, dtype=">u4").tobytes())
    key = (config.digest(), config.graph, config.degree, seed, key_ids)
    graph = _GRAPHS.get(key)
    if graph is not None:
        _GRAPHS.move_to_end(key)
        return graph
    ids = tuple(np.frombuffer(key_ids, dtype=">u4").astype(np.int64).tolist())
    cohort = np.asarray(config.cohort, dtype=np.int64)
    if ids and not bool(np.all(np.isin(np.asarray(ids, dtype=np.int64), cohort))):
        raise ConsistencyViolation("committed ids outside the round's cohort")
    if config.graph != "complete" and config.degree < len(ids) - 1 and len(seed) != 32:
        raise ProtocolError("a Harary graph needs the 32-byte seed of the round's reveals")
    graph = _build(config.graph, ids, config.degree, seed)
    _GRAPHS[key] = graph
    while len(_GRAPHS) > _GRAPHS_KEPT:
        _GRAPHS.popitem(last=False)
    return graph
