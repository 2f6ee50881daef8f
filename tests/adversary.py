"""A malicious server for the adversarial tests: it drives REAL clients over bytes.

The attacker relays (or withholds, or rewrites) every message of a round between real
:class:`protocol.client.SecAggClient` objects, and plays the colluding clients itself: it
holds their secrets (masking keys, every share they received, the keys they confirm survivor
sets with) and confirms any survivor set to any of their neighbours. After the round it *attempts the recovery* of a target's exact
input from what honest clients revealed (:meth:`Attack.recover`): reconstruct b_u and the
pairwise masks of the target, strip them from its individual masked vector.

Strategies (plans) are plain data: which shares each client is forwarded, and which
survivor set each client is shown. :func:`mask_isolation_plan` is item 1 of the threat
model (forward t - 1 shares to the target, then declare those peers dropped);
:func:`split_view_plan` gives holders of the target's shares two different survivor sets.

The round starts with the commit-reveal stages that fix the SecAgg+ graph
(:mod:`protocol.graph`): :meth:`Attack.advertise` plays them -- honestly, or editing the
advertisements it commits to, showing some clients another key tree, or opening a
commitment for a client it skipped -- and only then is the graph known, so a plan is
made on :func:`advertised`'s graph. Keys reach a client in NeighborKeys (its neighbours'
key leaves with their Merkle paths): :meth:`Attack.share` can rewrite them, which for a
key that is not in the committed tree means a path that does not lead to the root.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from crypto.mac import mac
from crypto.prg import dtype_for_bits
from crypto.rng import KeystreamRNG
from crypto.shamir import Share
from crypto.signing import SigningKeyPair
from protocol.client import SecAggClient
from protocol.client_states import ConsistencyCheckState, MaskedInputState, RevealState
from protocol.commitments import MerkleTree, commit_leaf, graph_seed, key_leaf, round_root
from protocol.config import ProtocolConfig
from protocol.errors import ProtocolAbort, ProtocolError
from protocol.graph import Graph, build_graph
from protocol.masking import apply_mask, pairwise_seeds, pairwise_sign, self_mask_seed
from protocol.messages import (
    AdvertiseKeys,
    CommitProof,
    ConsistencyConfirm,
    ConsistencyRequest,
    MaskedInput,
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
from protocol.policy import ClientPolicy
from protocol.runner import make_identities
from protocol.server import reconstruct_secrets
from protocol.session import confirmation_fields, session_id, survivors_digest
from protocol.simulator import simulated_inputs
from protocol.vectors import reduce_in_place

Views = Mapping[int, tuple[int, ...]]  # honest client -> survivor set it is shown


KeyRewrite = Callable[[dict[int, AdvertiseKeys]], None]
# (attack, sender w, recipient v, survivor set) -> a tag the attacker passes off as w's
# confirmation to v when it has no genuine one (None: leave it out)
Forge = Callable[["Attack", int, int, tuple[int, ...]], bytes | None]
NeighborRewrite = Callable[[int, list[NeighborKey]], list[NeighborKey]]


@dataclass
class _View:
    """One key tree the attacker shows some clients (an honest server shows one)."""

    adverts: dict[int, AdvertiseKeys]
    tree: MerkleTree
    root: bytes
    session: bytes = b""


@dataclass
class Attack:
    """One round between real clients and a malicious server (the attacker)."""

    config: ProtocolConfig
    clients: dict[int, SecAggClient]
    identities: dict[int, SigningKeyPair]
    inputs: dict[int, np.ndarray]
    colluders: frozenset[int]
    graph: Graph | None = None  # fixed by the reveals, in :meth:`advertise`
    session: bytes = b""  # the session of the main view (every client, unless split)
    adverts: dict[int, AdvertiseKeys] = field(default_factory=dict)  # main view
    committed: tuple[int, ...] = ()
    views: dict[int, _View] = field(default_factory=dict)  # client -> the key tree it sees
    reveals: dict[int, bytes] = field(default_factory=dict)
    shares: dict[int, ShareKeys] = field(default_factory=dict)
    forwarded: dict[int, tuple[int, ...]] = field(default_factory=dict)  # rcpt -> senders
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    # honest sender -> survivor set it was shown -> recipient -> its confirmation tag
    confirms: dict[int, dict[tuple[int, ...], dict[int, bytes]]] = field(default_factory=dict)
    revealed: dict[int, UnmaskShares] = field(default_factory=dict)
    refused: dict[int, type[Exception]] = field(default_factory=dict)  # client -> error type
    refused_stage: dict[int, str] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)  # clients that advertised keys
    s_sk: dict[int, bytes] = field(default_factory=dict)  # colluders' masking private keys
    held: dict[int, Mapping[int, Share]] = field(default_factory=dict)  # colluders' shares
    confirm_keys: dict[int, Mapping[int, bytes]] = field(default_factory=dict)  # colluders'
    forge: Forge | None = None  # how the attacker fills a missing honest confirmation

    @property
    def honest(self) -> list[int]:
        return [u for u in self.config.cohort if u not in self.colluders]

    def alive(self, ids: object = None) -> list[int]:
        """Honest clients that have not refused (optionally among ``ids``)."""
        pool = self.honest if ids is None else [u for u in ids if u in set(self.honest)]
        return [u for u in pool if u not in self.refused]

    def _talk(self, u: int, stage: str, call: Callable[[], bytes]) -> bytes | None:
        try:
            return call()
        except ProtocolError as exc:  # honest clients must refuse with typed errors only
            self.refused[u] = type(exc)
            self.refused_stage[u] = stage
            return None

    def _session(self, u: int) -> bytes:
        view = self.views.get(u)
        return self.session if view is None else view.session

    # -- stages --------------------------------------------------------------------
    def advertise(self, rewrite: KeyRewrite | None = None, skip: frozenset[int] = frozenset(),
                  honest_view: frozenset[int] = frozenset(),
                  reveals: Mapping[int, bytes] | None = None) -> None:
        """Advertise, commit, reveal and graph stages; afterwards ``graph`` and
        ``session`` are fixed. ``skip``: clients never contacted; ``rewrite``: the
        attacker edits the advertisements (it may add one for a skipped client) before
        committing to them; ``honest_view``: clients shown the commitment proof of a key
        tree over the unedited advertisements (a split view of the key root: the
        commitment root is the same for all); ``reveals``: the r_u the attacker plays for
        skipped clients (known from an earlier attempt). A colluder whose own client
        refuses the proof (its keys were edited) reveals through the attacker."""
        original: dict[int, AdvertiseKeys] = {}
        for u, c in self.clients.items():
            if u in skip:
                continue
            data = self._talk(u, "advertise", c.start)
            if data is not None:
                self.started.add(u)
                msg = decode(data)
                assert isinstance(msg, AdvertiseKeys)
                original[u] = msg
        self.adverts = dict(original)
        if rewrite is not None:
            rewrite(self.adverts)
        if len(self.adverts) < self.config.threshold:
            return
        self.committed = tuple(sorted(self.adverts))
        ctree = MerkleTree([commit_leaf(u, self.adverts[u].commitment) for u in self.committed])
        main = self._view(self.adverts, ctree)
        honest = self._view({**self.adverts, **{u: original[u] for u in honest_view}}, ctree)
        rid, m = self.config.round_id, len(self.committed)
        # commit: each client gets the roots of its view and its own two paths
        for i, u in enumerate(self.committed):
            view = honest if u in honest_view else main
            self.views[u] = view
            if u not in self.started:
                continue
            down = CommitProof(rid, u, m, i, ctree.root, view.tree.root, ctree.path(i),
                               view.tree.path(i)).encode()
            up = self._talk(u, "commit", lambda u=u, d=down: self.clients[u].receive(d))
            if up is not None:
                msg = decode(up)
                assert isinstance(msg, Reveal)
                self.reveals[u] = msg.reveal
            elif u in self.colluders:  # the attacker opens its colluder's commitment itself
                state = self.clients[u].state
                assert isinstance(state, RevealState)
                self.reveals[u] = state.r
        self.reveals.update(reveals or {})
        if any(u not in self.reveals for u in self.committed):
            return  # an honest server aborts here; the attacker cannot open the rest
        ids = np.asarray(self.committed, dtype=">u4").tobytes()
        all_r = b"".join(self.reveals[u] for u in self.committed)
        seed = graph_seed(ids, all_r)
        self.graph = build_graph(self.config, self.committed, seed)
        for view in (main, honest):
            view.session = session_id(self.config, view.root + seed)
        self.session = main.session
        down = RevealBroadcast(rid, ids, all_r).encode()
        for u in self.committed:
            if u in self.started and u not in self.refused:
                self._talk(u, "graph", lambda u=u: self.clients[u].receive(down))

    def _view(self, adverts: Mapping[int, AdvertiseKeys], ctree: MerkleTree) -> _View:
        ktree = MerkleTree([key_leaf(u, adverts[u].c_pk, adverts[u].s_pk, adverts[u].signature)
                            for u in self.committed])
        return _View(dict(adverts), ktree, round_root(ctree.root, ktree.root, ctree.size))

    def share(self, rewrite: NeighborRewrite | None = None) -> None:
        """Send each live client its neighbours' key leaves and paths (from the key tree
        of its view; ``rewrite`` edits a recipient's entries) and collect the shares."""
        assert self.graph is not None
        index = {u: i for i, u in enumerate(self.committed)}
        for u in self.alive(self.started) + sorted(self.colluders & self.started):
            view = self.views[u]
            entries = [NeighborKey(v, view.adverts[v].c_pk, view.adverts[v].s_pk,
                                   view.adverts[v].signature, view.tree.path(index[v]))
                       for v in sorted(self.graph.neighbors_of(u))]
            if rewrite is not None:
                entries = rewrite(u, entries)
            data = NeighborKeys(self.config.round_id, u, tuple(entries)).encode()
            up = self._talk(u, "share", lambda u=u, d=data: self.clients[u].receive(d))
            if up is not None:
                msg = decode(up)
                assert isinstance(msg, ShareKeys)
                self.shares[u] = msg
            state = self.clients[u].state
            if u in self.colluders and isinstance(state, MaskedInputState):
                self.s_sk[u] = state.s.private
                self.confirm_keys[u] = state.confirm_keys

    def mask(self, forward: Mapping[int, frozenset[int]] | None = None) -> None:
        """Deliver share ciphertexts: recipient v gets those of senders ``forward[v]``
        (default: every sender that addressed v)."""
        inbox: dict[int, list[tuple[int, bytes]]] = {}
        for sender, msg in self.shares.items():
            for rcpt, ct in msg.ciphertexts:
                inbox.setdefault(rcpt, []).append((sender, ct))
        for v in sorted(self.shares):
            cts = sorted(c for c in inbox.get(v, []) if forward is None or v not in forward
                         or c[0] in forward[v])
            self.forwarded[v] = tuple(s for s, _ in cts)
            down = ShareKeysBroadcast(self._session(v), v, tuple(cts)).encode()
            if v in self.refused:
                continue
            up = self._talk(v, "masked", lambda v=v, d=down: self.clients[v].receive(d))
            if up is not None:
                msg = decode(up)
                assert isinstance(msg, MaskedInput)
                self.masked[v] = msg.vector()
            state = self.clients[v].state
            if v in self.colluders and isinstance(state, ConsistencyCheckState):
                self.held[v] = state.held

    def _confirmation(self, w: int, v: int, survivors: tuple[int, ...]) -> bytes | None:
        """The tag by which w confirms ``survivors`` to v, if the attacker has one."""
        if w in self.colluders:  # the attacker confirms any set for a colluder
            key = self.confirm_keys.get(w, {}).get(v)
            if key is None:
                return None
            return mac(key, *confirmation_fields(self._session(v), w, v,
                                                 survivors_digest(survivors)))
        return self.confirms.get(w, {}).get(survivors, {}).get(v)

    def consistency(self, views: Views) -> None:
        for v, survivors in sorted(views.items()):
            if v in self.colluders or v in self.refused or v not in self.masked:
                continue
            down = ConsistencyRequest(self._session(v), v, survivors).encode()
            up = self._talk(v, "consistency", lambda v=v, d=down: self.clients[v].receive(d))
            if up is not None:
                msg = decode(up)
                assert isinstance(msg, ConsistencyConfirm)
                self.confirms.setdefault(v, {})[survivors] = dict(msg.tags)

    def unmask(self, views: Views) -> None:
        for v, survivors in sorted(views.items()):
            if v in self.colluders or v in self.refused or v not in self.masked:
                continue
            tags = []
            if self.config.authenticated:
                for w in survivors:
                    tag = self._confirmation(w, v, survivors)
                    if tag is None and self.forge is not None and w != v:
                        tag = self.forge(self, w, v, survivors)
                    if tag is not None and w != v:
                        tags.append((w, tag))
            down = UnmaskRequest(self._session(v), v, survivors, tuple(tags)).encode()
            up = self._talk(v, "unmask", lambda v=v, d=down: self.clients[v].receive(d))
            if up is not None:
                msg = decode(up)
                assert isinstance(msg, UnmaskShares)
                self.revealed[v] = msg

    def run(self, views: Views, forward: Mapping[int, frozenset[int]] | None = None) -> None:
        """Share, mask, consistency (authenticated) and unmask stages after ``advertise``
        (which ran the commit, reveal and graph stages honestly or as told)."""
        self.share()
        self.mask(forward)
        if self.config.authenticated:
            self.consistency(views)
        self.unmask(views)

    # -- what the attacker learns ----------------------------------------------------
    def share_tables(self) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
        """owner -> holder index -> share value, for b (self) and s_sk (key): everything
        honest clients revealed plus both shares of every owner a colluder holds."""
        self_sh: dict[int, dict[int, int]] = {}
        key_sh: dict[int, dict[int, int]] = {}
        for msg in self.revealed.values():
            for owner, s in msg.self_shares:
                self_sh.setdefault(owner, {})[s.index] = s.values[0]
            for owner, s in msg.key_shares:
                key_sh.setdefault(owner, {})[s.index] = s.values[0]
        for held in self.held.values():
            for owner, s in held.items():
                key_sh.setdefault(owner, {})[s.index] = s.values[0]
                self_sh.setdefault(owner, {})[s.index] = s.values[1]
        return self_sh, key_sh

    def _secret(self, table: Mapping[int, int] | None) -> bytes | None:
        if not table or len(table) < self.config.threshold:
            return None
        shares = [Share(i, (v,)) for i, v in sorted(table.items())]
        try:
            return reconstruct_secrets({0: shares}, self.config.threshold)[0]
        except ProtocolAbort:
            return None

    def recover(self, u: int) -> np.ndarray | None:
        """The attacker's best attempt at x_u: strip b_u's mask and every pairwise mask of
        u from its masked vector y_u; None when a needed secret is out of reach."""
        if u not in self.masked:
            return None
        self_sh, key_sh = self.share_tables()
        b_u = self._secret(self_sh.get(u))
        if b_u is None:
            return None
        s_u = self.s_sk.get(u) or self._secret(key_sh.get(u))
        y = np.array(self.masked[u], copy=True)
        apply_mask(y, self_mask_seed(b_u, self.session, u), -1)
        for v in self.forwarded[u]:
            pk = {w: a.s_pk for w, a in self.adverts.items()}
            if s_u is not None:
                seed = pairwise_seeds(s_u, [pk[v]], self.session, u, [v])[0]
            else:
                s_v = self.s_sk.get(v) or self._secret(key_sh.get(v))
                if s_v is None:
                    return None
                try:
                    seed = pairwise_seeds(s_v, [pk[u]], self.session, v, [u])[0]
                except ProtocolError:
                    return None
            apply_mask(y, seed, -pairwise_sign(u, v))
        return reduce_in_place(y, self.config.bits)

    def recovered(self, u: int) -> bool:
        """Whether :meth:`recover` gives exactly the target's input."""
        got = self.recover(u)
        return got is not None and bool(np.array_equal(got, self.inputs[u]))

    def check_reveals(self) -> None:
        """Every honest reveal stays within what the client exchanged: shares only of
        owners it holds (itself and peers whose share it received), one kind per owner."""
        for v, msg in self.revealed.items():
            owners_s = {o for o, _ in msg.self_shares}
            owners_k = {o for o, _ in msg.key_shares}
            assert not owners_s & owners_k, f"client {v} revealed both shares of one owner"
            assert owners_s | owners_k <= {v, *self.forwarded[v]}, (
                f"client {v} revealed shares of owners it did not exchange shares with")


def make_attack(n: int, t: int, graph: str = "complete", k: int | None = None,
                colluders: frozenset[int] = frozenset(), length: int = 4, bits: int = 16,
                seed: int = 3, round_id: int = 5, authenticated: bool = True,
                policy: ClientPolicy | None = None, nonce: bytes = b"",
                identities: dict[int, SigningKeyPair] | None = None) -> Attack:
    """A round of n real clients (ids 0..n-1) facing the attacker."""
    ids = tuple(range(n))
    cfg = ProtocolConfig(round_id, ids, length, bits, t, graph,
                         None if graph == "complete" else k, authenticated, nonce=nonce)
    rng = KeystreamRNG.from_seed(seed, "attack")
    ident = identities or make_identities(ids, rng)
    pub = {u: s.public for u, s in ident.items()}
    inputs = simulated_inputs(ids, length, bits, seed)
    pol = policy if policy is not None else ClientPolicy.permissive()
    clients = {u: SecAggClient(u, cfg, inputs[u], ident[u] if authenticated else None,
                               pub if authenticated else None, rng.spawn(f"c{u}"), policy=pol)
               for u in ids}
    return Attack(cfg, clients, ident, inputs, frozenset(colluders))


def advertised(attack: Attack) -> Graph:
    """Run the attack's advertise, commit, reveal and graph stages honestly and return
    the masking graph the reveals fixed -- the graph every plan is made on."""
    attack.advertise()
    assert attack.graph is not None, "the commit-reveal stages did not finish"
    return attack.graph


# -- plans ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IsolationPlan:
    """Forward the target only the shares of ``peers`` (t - 1 neighbours), then show
    everybody the survivor set ``survivors`` = cohort minus those peers."""

    target: int
    peers: frozenset[int]
    survivors: tuple[int, ...]


def mask_isolation_plan(graph: Graph, cohort: tuple[int, ...], t: int, target: int
                        ) -> IsolationPlan | None:
    """A mask-isolation plan against ``target`` that the unfixed client accepts: every
    isolated peer keeps t live holders of its key among the declared survivors, and the
    target t holders of b. None if the counting rules it out (odd k, or t > k/2 + 1)."""
    nb = sorted(graph.neighbors_of(target))
    for peers in itertools.combinations(nb, t - 1):
        p = frozenset(peers)
        survivors = tuple(v for v in cohort if v not in p)
        alive = set(survivors)
        if len(({target} | set(nb)) & alive) < t:
            continue
        if all(len((graph.neighbors_of(d) | {d}) & alive) >= t for d in p):
            return IsolationPlan(target, p, survivors)
    return None


def run_isolation(attack: Attack, plan: IsolationPlan) -> None:
    """After :func:`advertised` (the plan needs the graph the reveals fixed)."""
    forward = {plan.target: plan.peers}
    views = {v: plan.survivors for v in plan.survivors}
    attack.run(views, forward)


@dataclass(frozen=True)
class SplitPlan:
    """Two survivor sets: ``a`` (the target survived: its b is revealed) and ``b`` (the
    target dropped: its s_sk is revealed), each honest client shown one of them."""

    target: int
    a: tuple[int, ...]
    b: tuple[int, ...]

    def views(self, honest: list[int]) -> dict[int, tuple[int, ...]]:
        return {v: (self.a if v in self.a else self.b) for v in honest
                if v in self.a or v in self.b}


def split_view_plan(graph: Graph, cohort: tuple[int, ...], t: int, target: int,
                    colluders: frozenset[int], best_effort: bool = False) -> SplitPlan | None:
    """A split view that every honest client accepts: each confirms the set it is shown and
    sees t - 1 neighbours (honest ones shown the same set, or colluders) confirm it; the
    target's honest holders shown set a, plus the target and the colluders, reach t, and
    those shown set b plus the colluders reach t. Searches the target's honest
    neighbours' assignment (a / b / silent); other clients take the side most of their
    neighbours are on, or are left silent. None when no assignment works.

    ``best_effort``: when no accepted assignment reaches t on both sides (c < 2t - k - 1),
    return the one that comes closest (largest smaller side), whether or not every honest
    client would accept it, to run anyway."""
    nb = sorted(graph.neighbors_of(target))
    honest_nb = [v for v in nb if v not in colluders]
    c_u = len(colluders & set(nb))
    others = [v for v in cohort if v != target and v not in nb and v not in colluders]
    best: tuple[int, SplitPlan] | None = None
    for assign in itertools.product((0, 1, 2), repeat=len(honest_nb)):
        a = {target} | {v for v, s in zip(honest_nb, assign, strict=True) if s == 0}
        b = {v for v, s in zip(honest_nb, assign, strict=True) if s == 1}
        short = min(len(a), len(b)) + c_u
        if short < t and (not best_effort or not b or (best and best[0] >= short)):
            continue
        side = {v: 0 for v in a} | {v: 1 for v in b}
        for _ in range(3):
            for w in others:
                counts = [sum(1 for x in graph.neighbors_of(w)
                              if x in colluders or side.get(x) == s) for s in (0, 1)]
                pick = int(counts[1] > counts[0])
                if counts[pick] >= t - 1:
                    side[w] = pick
                else:
                    side.pop(w, None)

        if best_effort or all(_confirmed(graph, side, colluders, v, t) for v in side):
            set_a = tuple(sorted({v for v, s in side.items() if s == 0} | colluders))
            set_b = tuple(sorted({v for v, s in side.items() if s == 1} | colluders))
            if best_effort or (len(set_a) >= t and len(set_b) >= t):
                if short >= t:
                    return SplitPlan(target, set_a, set_b)
                best = (short, SplitPlan(target, set_a, set_b))
    return None if best is None else best[1]


def _confirmed(graph: Graph, side: Mapping[int, int], colluders: frozenset[int], v: int,
               t: int) -> bool:
    """Whether v sees t - 1 neighbours confirm its set (same side, or colluders)."""
    agree = sum(1 for x in graph.neighbors_of(v) if x in colluders or side.get(x) == side[v])
    return agree >= t - 1


def run_split(attack: Attack, plan: SplitPlan) -> None:
    """After :func:`advertised`."""
    attack.run(plan.views(attack.honest))


def zero_input(config: ProtocolConfig) -> np.ndarray:
    return np.zeros(config.length, dtype=dtype_for_bits(config.bits))
