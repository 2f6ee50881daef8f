"""Server side: the aggregation workflow of one round, fed with bytes only.

The server never receives a client's input: it relays public keys and sealed shares,
adds each masked vector into one running sum as it arrives (it never holds two masked
vectors at once), and at the end reconstructs exactly the secrets needed to remove the
masks: b_u for every survivor u, s_sk_d for every client d that dropped after sharing
its keys (for its pairwise masks with survivors). Usage: ``receive(data)`` for every
client message of the current stage, then ``finish_stage()`` to get the messages to send
(recipient -> bytes) and move on. A message not valid in the current stage raises a
:class:`ProtocolError` and changes nothing; too few survivors raise :class:`ProtocolAbort`.
"""

from __future__ import annotations

import atexit
import enum
import multiprocessing
import threading
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from crypto.agreement import check_public_key
from crypto.errors import ConfigError, CryptoError, SharingError, SignatureError
from crypto.mac import TAG_BYTES
from crypto.prg import dtype_for_bits, expand_sum_into
from crypto.shamir import Share, common_index_sets, interpolate_at_zero
from crypto.signing import verify
from protocol.commitments import (
    MerkleTree,
    commit_leaf,
    commitment,
    graph_seed,
    key_leaf,
    round_root,
)
from protocol.config import ProtocolConfig
from protocol.errors import (
    AuthenticationFailure,
    InvalidPublicKey,
    MalformedMessage,
    ProtocolAbort,
    ProtocolError,
    ReplayError,
    RevealMissing,
)
from protocol.graph import Graph, build_graph
from protocol.masking import (
    PairwiseJob,
    add_pairwise_masks,
    pairwise_mask_total,
    self_mask_seeds,
)
from protocol.messages import (
    CIPHERTEXT_BYTES,
    AdvertiseKeys,
    CommitProof,
    ConsistencyConfirm,
    ConsistencyRequest,
    GraphConfirm,
    MaskedInput,
    Message,
    NeighborKey,
    NeighborKeys,
    Reveal,
    RevealBroadcast,
    ShareKeys,
    ShareKeysBroadcast,
    UnmaskRequest,
    UnmaskShares,
    decode,
)
from protocol.session import advertise_fields, session_id
from protocol.vectors import reduce_in_place


class Stage(enum.Enum):
    """Server stages, in order; each collects one client message type."""

    ADVERTISE = "advertise"
    REVEAL = "reveal"
    GRAPH = "graph"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_EXPECTS: dict[Stage, type] = {
    Stage.ADVERTISE: AdvertiseKeys, Stage.REVEAL: Reveal, Stage.GRAPH: GraphConfirm,
    Stage.SHARE: ShareKeys, Stage.MASKED: MaskedInput,
    Stage.CONSISTENCY: ConsistencyConfirm, Stage.UNMASK: UnmaskShares,
}


def reconstruct_secrets(shares: Mapping[int, list[Share]], t: int) -> dict[int, bytes]:
    """One 32-byte secret per owner from t of its shares (server side); owners are taken
    in the mapping's order. See :func:`_reconstruct` (shares as index -> value tables)."""
    tables = {}
    for owner, lst in shares.items():
        table = {s.index: s.values[0] for s in lst}
        if len(table) != len(lst):
            raise ProtocolAbort("inconsistent shares; the round cannot finish")
        tables[owner] = table
    return _reconstruct(list(tables), tables, t)


def _reconstruct(order: Sequence[int], tables: Mapping[int, Mapping[int, int]], t: int
                 ) -> dict[int, bytes]:
    """Secrets of the owners in ``order``; ``tables[owner]``: holder index -> share value.

    secret = sum_i lambda_i * y_i mod p over t shares. Which t shares is free (any t
    interpolate to the same secret), so :func:`crypto.shamir.common_index_sets` picks them
    such that owners adjacent in ``order`` share one index set, and the Lagrange
    coefficients are computed once per set rather than once per owner. Raises
    ProtocolAbort if an owner has fewer than t shares or they do not interpolate to a
    32-byte value.
    """
    rows = [tables[o] for o in order]
    for owner, table in zip(order, rows, strict=True):
        if len(table) < t:
            raise ProtocolAbort(f"fewer than t shares survived for client {owner}")
    chosen = common_index_sets([r.keys() for r in rows], t)
    out: dict[int, bytes] = {}
    start = 0
    while start < len(order):
        idx = chosen[start]
        stop = start + 1
        while stop < len(order) and chosen[stop] == idx:
            stop += 1
        try:
            values = interpolate_at_zero(idx, [[rows[j][i] for i in idx]
                                               for j in range(start, stop)])
        except SharingError:
            raise ProtocolAbort("inconsistent shares; the round cannot finish") from None
        for owner, value in zip(order[start:stop], values, strict=True):
            if value >> 256:
                raise ProtocolAbort("inconsistent shares; the round cannot finish")
            out[owner] = value.to_bytes(32, "big")
        start = stop
    return out


MIN_PARALLEL_PAIRS = 1024
"""Pairwise masks below which ``workers > 1`` still runs in this process: shipping the
jobs and one partial sum to a worker costs more than it saves on fewer pairs."""

_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _worker_pool(processes: int) -> ProcessPoolExecutor:
    """A process pool kept for the life of this process (one per size, made on first use).

    Workers come from a ``forkserver`` (a clean single-threaded process that has imported
    the masking code once), never from a fork of a server that may run other threads.
    """
    with _POOL_LOCK:
        pool = _POOLS.get(processes)
        if pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["protocol.masking"])
            if not _POOLS:
                atexit.register(shutdown_worker_pools)
            pool = _POOLS[processes] = ProcessPoolExecutor(processes, mp_context=ctx)
        return pool


def _discard_pool(processes: int) -> None:
    """Forget a broken pool (a worker died); the next round starts a fresh one."""
    with _POOL_LOCK:
        pool = _POOLS.pop(processes, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def prepare_workers(workers: int) -> None:
    """Start the worker processes a server with ``workers`` will use, now rather than
    inside the first round's unmasking (call it at server start-up). Pools persist across
    rounds; a no-op for ``workers == 1``."""
    if workers > 1:
        pool = _worker_pool(workers - 1)
        for future in [pool.submit(int) for _ in range(workers - 1)]:
            future.result()


def shutdown_worker_pools() -> None:
    """Stop the worker processes of every server in this process (they restart on use)."""
    with _POOL_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _split_jobs(jobs: list[PairwiseJob], parts: int) -> list[list[PairwiseJob]]:
    """``jobs`` cut into ``parts`` contiguous runs of about equal pair counts."""
    total = sum(len(j[3]) for j in jobs)
    out: list[list[PairwiseJob]] = [[] for _ in range(parts)]
    done = 0
    for job in jobs:
        out[min(parts - 1, done * parts // max(total, 1))].append(job)
        done += len(job[3])
    return out


class SecAggServer:
    """Server of one SecAgg / SecAgg+ round (server side; holds bytes and one sum).

    ``workers``: processes that regenerate the pairwise masks of dropped clients when
    unmasking (one X25519 agreement, HKDF and PRG per dropped-survivor pair, independent
    of each other). 1 (the default) keeps all work in this process; ``w > 1`` sends all
    but this process's share of the pairs to ``w - 1`` worker processes (started from a
    forkserver on first use, or by :func:`prepare_workers`, and kept for later rounds),
    each returning one partial mask sum. The result is identical; the reconstructed keys
    s_sk_d of dropped clients travel to the workers over a local pipe and are dropped
    there after use. Worth it only with idle cores: on a machine whose cores are already
    busy the workers compete with everything else. Rounds with fewer than
    :data:`MIN_PARALLEL_PAIRS` pairs always run in this process.
    """

    def __init__(self, config: ProtocolConfig, identity_keys: Mapping[int, bytes] | None = None,
                 *, workers: int = 1):
        if config.authenticated and identity_keys is None:
            raise ProtocolError("authenticated mode needs the clients' Ed25519 public keys")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"SecAggServer: workers must be an integer >= 1 (1 = this "
                              f"process only), got {workers!r}")
        self.config = config
        self.workers = workers
        self.graph: Graph | None = None  # fixed by the reveals (see protocol.graph)
        self._ids = frozenset(config.cohort)
        self._identity_keys = dict(identity_keys or {})
        self.stage = Stage.ADVERTISE
        self.session = b""
        self._keys: dict[int, AdvertiseKeys] = {}
        self._committed: tuple[int, ...] = ()
        self._key_tree: MerkleTree | None = None
        self._root = b""
        self._reveals: dict[int, bytes] = {}
        self._seed = b""
        self._confirmed: set[int] = set()
        self._inbox: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self._u2: set[int] = set()
        self._peers: dict[int, frozenset[int]] = {}  # v -> senders in v's share broadcast
        self._sum = np.zeros(config.length, dtype=dtype_for_bits(config.bits))
        self._u3: set[int] = set()
        # sender -> recipient -> its survivor confirmation tag (relayed, never checked here:
        # only the two clients of a pair hold its key)
        self._confirms: dict[int, dict[int, bytes]] = {}
        # owner -> holder index -> share value (secret material: cleared once used)
        self._self_sh: dict[int, dict[int, int]] = defaultdict(dict)
        self._key_sh: dict[int, dict[int, int]] = defaultdict(dict)
        self._u5: set[int] = set()
        self.survivors: dict[str, tuple[int, ...]] = {}
        self.total: np.ndarray | None = None

    # -- receiving --------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Validate one client message of the current stage, then record it."""
        msg = decode(data)
        expected = _EXPECTS.get(self.stage)
        if expected is None or not isinstance(msg, expected):
            raise ProtocolError(f"{type(msg).__name__} is not valid in server stage "
                                f"{self.stage.value}")
        if isinstance(msg, AdvertiseKeys | Reveal | GraphConfirm):
            if msg.round_id != self.config.round_id:
                raise ReplayError("message from another round")
        elif getattr(msg, "session_id", None) != self.session:  # every other client message
            raise ReplayError("message bound to another session")
        handler = {Stage.ADVERTISE: self._on_advertise, Stage.REVEAL: self._on_reveal,
                   Stage.GRAPH: self._on_confirm, Stage.SHARE: self._on_share,
                   Stage.MASKED: self._on_masked, Stage.CONSISTENCY: self._on_survivor_confirm,
                   Stage.UNMASK: self._on_unmask}[self.stage]
        handler(msg)

    def _check_sender(self, sender: int, allowed: Collection[int],
                      seen: Collection[int]) -> None:
        if sender not in self._ids:
            raise ProtocolError(f"unknown client id {sender}")
        if sender not in allowed:
            raise ProtocolError(f"client {sender} is not a participant of this stage")
        if sender in seen:
            raise ProtocolError(f"duplicate message from client {sender}")

    def _on_advertise(self, msg: Message) -> None:
        assert isinstance(msg, AdvertiseKeys)
        self._check_sender(msg.sender, self._ids, self._keys)
        if self.config.authenticated:
            try:
                verify(self._identity_keys[msg.sender], msg.signature,
                       *advertise_fields(self.config, msg.sender, msg.c_pk, msg.s_pk,
                                         msg.commitment))
            except (SignatureError, KeyError):
                raise AuthenticationFailure("a key advertisement did not verify") from None
        try:
            check_public_key(msg.c_pk)
            check_public_key(msg.s_pk)
        except CryptoError:
            raise InvalidPublicKey(f"client {msg.sender} advertised a low-order or "
                                   "non-canonical X25519 key") from None
        self._keys[msg.sender] = msg

    def _on_reveal(self, msg: Message) -> None:
        assert isinstance(msg, Reveal)
        self._check_sender(msg.sender, self._keys, self._reveals)
        if commitment(self.config.digest(), msg.sender, msg.reveal) != \
                self._keys[msg.sender].commitment:
            raise AuthenticationFailure("a reveal does not open its commitment")
        self._reveals[msg.sender] = msg.reveal

    def _on_confirm(self, msg: Message) -> None:
        assert isinstance(msg, GraphConfirm)
        self._check_sender(msg.sender, self._keys, self._confirmed)
        if msg.seed != self._seed:
            raise ProtocolError(f"client {msg.sender} derived another graph seed: it was "
                                "shown another reveal list")
        self._confirmed.add(msg.sender)

    def _on_share(self, msg: Message) -> None:
        assert isinstance(msg, ShareKeys)
        assert self.graph is not None
        self._check_sender(msg.sender, self._confirmed, self._u2)
        expected = sorted(self.graph.neighbors_of(msg.sender))
        if [r for r, _ in msg.ciphertexts] != expected:
            raise ProtocolError("share recipients must be exactly the sender's live neighbours")
        for rcpt, ct in msg.ciphertexts:
            self._inbox[rcpt].append((msg.sender, ct))
        self._u2.add(msg.sender)

    def _on_masked(self, msg: Message) -> None:
        assert isinstance(msg, MaskedInput)
        self._check_sender(msg.sender, self._peers, self._u3)
        if msg.bits != self.config.bits or msg.length != self.config.length:
            raise MalformedMessage(f"masked vector must have length {self.config.length} and "
                                   f"{self.config.bits} bits")
        vec = msg.vector()
        np.add(self._sum, vec, out=self._sum)
        self._u3.add(msg.sender)

    def _on_survivor_confirm(self, msg: Message) -> None:
        assert isinstance(msg, ConsistencyConfirm) and self.graph is not None
        self._check_sender(msg.sender, self._u3, self._confirms)
        nb = self.graph.neighbors_of(msg.sender)
        if not all(v in nb and v in self._u3 for v, _ in msg.tags):
            raise ProtocolError(f"client {msg.sender} addressed survivor confirmations to "
                                "clients that are not its surviving neighbours")
        self._confirms[msg.sender] = dict(msg.tags)

    def _on_unmask(self, msg: Message) -> None:
        assert isinstance(msg, UnmaskShares)
        responders: Collection[int] = self._confirms if self.config.authenticated else self._u3
        self._check_sender(msg.sender, responders, self._u5)
        held = self._peers[msg.sender] | {msg.sender}
        u3 = self._u3
        if [o for o, _ in msg.self_shares] != sorted(held & u3) or [
                o for o, _ in msg.key_shares] != sorted(held - u3):
            raise ProtocolError("unmasking shares do not match the survivor set")
        index = msg.sender + 1
        indices = {s.index for _, s in msg.self_shares} | {s.index for _, s in msg.key_shares}
        if indices - {index}:
            raise ProtocolError("unmasking share carries another holder's index")
        self_sh, key_sh = self._self_sh, self._key_sh
        for owner, share in msg.self_shares:
            self_sh[owner][index] = share.values[0]
        for owner, share in msg.key_shares:
            key_sh[owner][index] = share.values[0]
        self._u5.add(msg.sender)

    # -- finishing stages -------------------------------------------------------------
    def _require(self, name: str, ids: Collection[int]) -> tuple[int, ...]:
        alive = tuple(sorted(ids))
        if len(alive) < self.config.threshold:
            self.stage = Stage.ABORTED
            raise ProtocolAbort(f"only {len(alive)} clients survived stage {name}, fewer than "
                                f"t={self.config.threshold}; nothing is revealed")
        self.survivors[name] = alive
        return alive

    def finish_stage(self) -> dict[int, bytes]:
        """Close the current stage; returns recipient id -> encoded message to deliver."""
        step = {Stage.ADVERTISE: self._finish_advertise, Stage.REVEAL: self._finish_reveal,
                Stage.GRAPH: self._finish_graph, Stage.SHARE: self._finish_share,
                Stage.MASKED: self._finish_masked, Stage.CONSISTENCY: self._finish_consistency,
                Stage.UNMASK: self._finish_unmask}.get(self.stage)
        if step is None:
            raise ProtocolError(f"nothing to finish in server stage {self.stage.value}")
        return step()

    def _finish_advertise(self) -> dict[int, bytes]:
        """Commit: Merkle trees over the commitments and the keys of every client that
        advertised (id order); each client gets the roots and its own two paths."""
        u1 = self._require("advertise", self._keys)
        keys = self._keys
        ctree = MerkleTree([commit_leaf(u, keys[u].commitment) for u in u1])
        ktree = MerkleTree([key_leaf(u, keys[u].c_pk, keys[u].s_pk, keys[u].signature)
                            for u in u1])
        self._committed, self._key_tree = u1, ktree
        self._root = round_root(ctree.root, ktree.root, len(u1))
        rid, m = self.config.round_id, len(u1)
        out = {u: CommitProof(rid, u, m, i, ctree.root, ktree.root, ctree.path(i),
                              ktree.path(i)).encode() for i, u in enumerate(u1)}
        self.stage = Stage.REVEAL
        return out

    def _finish_reveal(self) -> dict[int, bytes]:
        """Every committed client must have revealed (else abort: no subset of reveals may
        decide the graph); the seed and graph follow, and all reveals go to every client
        in one shared message."""
        missing = [u for u in self._committed if u not in self._reveals]
        if missing:
            self.stage = Stage.ABORTED
            raise RevealMissing(f"{len(missing)} committed clients did not reveal their graph "
                                "randomness; the round aborts (restart it as a fresh round)",
                                tuple(self._committed), tuple(missing))
        self.survivors["reveal"] = self._committed
        reveals = b"".join(self._reveals[u] for u in self._committed)
        ids = np.asarray(self._committed, dtype=">u4").tobytes()
        self._seed = graph_seed(ids, reveals)
        self.graph = build_graph(self.config, self._committed, self._seed)
        self.session = session_id(self.config, self._root + self._seed)
        data = RevealBroadcast(self.config.round_id, ids, reveals).encode()
        self.stage = Stage.GRAPH
        return dict.fromkeys(self._committed, data)

    def _finish_graph(self) -> dict[int, bytes]:
        """Each client that confirmed the seed gets its neighbours' key leaves and paths."""
        live = self._require("graph", self._confirmed)
        assert self.graph is not None and self._key_tree is not None
        keys, tree, rid = self._keys, self._key_tree, self.config.round_id
        records = {v: NeighborKeys.record(NeighborKey(v, keys[v].c_pk, keys[v].s_pk,
                                                      keys[v].signature, tree.path(i)))
                   for i, v in enumerate(self._committed)}  # each encoded once
        out = {}
        for u in live:
            nb = sorted(self.graph.neighbors_of(u))
            out[u] = NeighborKeys.encode_records(rid, u, [records[v] for v in nb])
        self.stage = Stage.SHARE
        return out

    def _finish_share(self) -> dict[int, bytes]:
        u2 = self._require("share", self._u2)
        out: dict[int, bytes] = {}
        for v in u2:
            cts = tuple(sorted(c for c in self._inbox.get(v, []) if c[0] in self._u2))
            if len(cts) + 1 < self.config.threshold:
                continue  # v cannot be masked safely: it will count as dropped
            self._peers[v] = frozenset(s for s, _ in cts)
            out[v] = ShareKeysBroadcast(self.session, v, cts).encode()
        self._inbox.clear()
        self.stage = Stage.MASKED
        return out

    def _finish_masked(self) -> dict[int, bytes]:
        u3 = self._require("masked", self._u3)
        self.stage = Stage.CONSISTENCY if self.config.authenticated else Stage.UNMASK
        if self.config.authenticated:
            return {v: ConsistencyRequest(self.session, v, u3).encode() for v in u3}
        return {v: UnmaskRequest(self.session, v, u3).encode() for v in u3}

    def _finish_consistency(self) -> dict[int, bytes]:
        u4 = self._require("consistency", self._confirms)
        u3 = self.survivors["masked"]
        out = {}
        assert self.graph is not None
        for v in u4:
            tags = tuple((w, self._confirms[w][v])
                         for w in sorted(self.graph.neighbors_of(v) & self._confirms.keys())
                         if v in self._confirms[w])
            out[v] = UnmaskRequest(self.session, v, u3, tags).encode()
        self.stage = Stage.UNMASK
        return out

    def _finish_unmask(self) -> dict[int, bytes]:
        self._require("unmask", self._u5)
        try:
            self.total = self._unmask()
        except ProtocolAbort:
            self.stage = Stage.ABORTED
            raise
        finally:  # shares are secret material: dropped whether or not the round finished
            self._self_sh.clear()
            self._key_sh.clear()
        self.stage = Stage.DONE
        return {}

    def _owner_order(self) -> list[int]:
        """Cohort ids in masking-graph order: on the Harary ring (SecAgg+) adjacent clients
        share most share holders, so reconstructing in ring order lets runs of owners reuse
        one set of Lagrange coefficients; any order gives the same secrets. The ring order
        is the one the graph was built on (:attr:`protocol.graph.Graph.order`), not drawn
        again; the complete graph's order is the cohort's."""
        if self.graph is None:
            raise ProtocolError("the masking graph is fixed only once every client revealed")
        return list(self.graph.order)

    def _unmask(self) -> np.ndarray:
        """Reconstruct b_u (survivors) and s_sk_d (dropped), remove every mask from the sum.

        Work: one Shamir reconstruction per client (shared Lagrange coefficients), one
        self mask per survivor, and per dropped client d one X25519 agreement, HKDF and PRG
        per surviving neighbour -- the bulk, spread over ``workers`` processes if > 1.
        """
        u3 = self._u3
        survivors = sorted(u3)
        dropped: dict[int, list[int]] = defaultdict(list)  # d -> survivors that masked with d
        for v in survivors:
            for d in self._peers[v] - u3:
                dropped[d].append(v)
        order = [o for o in self._owner_order() if o in u3 or o in dropped]
        tables = {o: (self._self_sh[o] if o in u3 else self._key_sh[o]) for o in order}
        secrets = _reconstruct(order, tables, self.config.threshold)
        tables.clear()
        keys = self._keys
        jobs: list[PairwiseJob] = [
            (d, secrets[d], keys[d].s_pk, tuple(peers), tuple(keys[v].s_pk for v in peers))
            for d, peers in sorted(dropped.items())]
        total = self._sum
        own, futures = self._dispatch(jobs, total)
        try:
            seeds = self_mask_seeds([secrets[u] for u in survivors], self.session, survivors)
            secrets.clear()
            expand_sum_into(seeds, total, -1)
            del seeds
            add_pairwise_masks(total, own, self.session, -1)
            for part, future in futures:
                try:
                    masks = future.result()
                except BrokenProcessPool:  # a worker died: redo its part here, same result
                    _discard_pool(self.workers - 1)
                    add_pairwise_masks(total, part, self.session, -1)
                    continue
                np.subtract(total, masks, out=total)
        finally:
            for _, future in futures:
                future.cancel()
            jobs.clear()
            own.clear()
        return reduce_in_place(total, self.config.bits)

    def _dispatch(self, jobs: list[PairwiseJob], total: np.ndarray
                  ) -> tuple[list[PairwiseJob], list[tuple[list[PairwiseJob], Future]]]:
        """Send all but this process's share of ``jobs`` to ``workers - 1`` worker processes;
        returns (jobs to run here, [(jobs, future of their mask total)])."""
        pairs = sum(len(j[3]) for j in jobs)
        if self.workers == 1 or pairs < MIN_PARALLEL_PAIRS:
            return list(jobs), []
        parts = _split_jobs(jobs, self.workers)
        try:
            pool = _worker_pool(self.workers - 1)
            futures = [(part, pool.submit(pairwise_mask_total, part, self.session, total.size,
                                          total.dtype.name)) for part in parts[1:] if part]
        except (BrokenProcessPool, OSError, RuntimeError, ValueError):  # no worker processes
            # here (none can start, or no forkserver on this platform): all work stays here
            _discard_pool(self.workers - 1)
            return list(jobs), []
        return parts[0], futures

    def resident_bytes(self) -> int:
        """Approximate bytes of round state the server holds now (sum + relayed data)."""
        relayed = sum(len(v) for v in self._inbox.values()) * (CIPHERTEXT_BYTES + 8)
        shares = sum(len(v) for v in (*self._self_sh.values(), *self._key_sh.values())) * 48
        tags = sum(len(v) for v in self._confirms.values()) * (TAG_BYTES + 8)
        return int(self._sum.nbytes) + relayed + shares + tags + 100 * len(self._keys)
