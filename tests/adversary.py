"""A malicious server for the adversarial tests: it drives REAL clients over bytes.

The attacker relays (or withholds, or rewrites) every message of a round between real
:class:`protocol.client.SecAggClient` objects, and plays the colluding clients itself: it
holds their secrets (masking keys, every share they received) and signs any survivor set
with their identity keys. After the round it *attempts the recovery* of a target's exact
input from what honest clients revealed (:meth:`Attack.recover`): reconstruct b_u and the
pairwise masks of the target, strip them from its individual masked vector.

Strategies (plans) are plain data: which shares each client is forwarded, and which
survivor set each client is shown. :func:`mask_isolation_plan` is item 1 of the threat
model (forward t - 1 shares to the target, then declare those peers dropped);
:func:`split_view_plan` gives holders of the target's shares two different survivor sets.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from crypto.prg import dtype_for_bits
from crypto.rng import KeystreamRNG
from crypto.shamir import Share
from crypto.signing import SigningKeyPair, sign
from protocol.client import SecAggClient
from protocol.client_states import ConsistencyCheckState, MaskedInputState
from protocol.config import ProtocolConfig
from protocol.errors import ProtocolAbort, ProtocolError
from protocol.graph import Graph, build_graph
from protocol.masking import apply_mask, pairwise_seeds, pairwise_sign, self_mask_seed
from protocol.messages import (
    AdvertiseBroadcast,
    AdvertisedKey,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    ShareKeys,
    ShareKeysBroadcast,
    UnmaskRequest,
    UnmaskShares,
    decode,
)
from protocol.policy import ClientPolicy
from protocol.runner import make_identities
from protocol.server import reconstruct_secrets
from protocol.session import consistency_fields, session_id
from protocol.simulator import simulated_inputs
from protocol.vectors import reduce_in_place

Views = Mapping[int, tuple[int, ...]]  # honest client -> survivor set it is shown


@dataclass
class Attack:
    """One round between real clients and a malicious server (the attacker)."""

    config: ProtocolConfig
    clients: dict[int, SecAggClient]
    identities: dict[int, SigningKeyPair]
    inputs: dict[int, np.ndarray]
    colluders: frozenset[int]
    graph: Graph
    session: bytes = b""
    adverts: dict[int, AdvertiseKeys] = field(default_factory=dict)
    broadcast: AdvertiseBroadcast | None = None
    shares: dict[int, ShareKeys] = field(default_factory=dict)
    forwarded: dict[int, tuple[int, ...]] = field(default_factory=dict)  # rcpt -> senders
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    signatures: dict[int, dict[tuple[int, ...], bytes]] = field(default_factory=dict)
    revealed: dict[int, UnmaskShares] = field(default_factory=dict)
    refused: dict[int, type[Exception]] = field(default_factory=dict)  # client -> error type
    refused_stage: dict[int, str] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)  # clients that advertised keys
    s_sk: dict[int, bytes] = field(default_factory=dict)  # colluders' masking private keys
    held: dict[int, Mapping[int, Share]] = field(default_factory=dict)  # colluders' shares

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

    # -- stages --------------------------------------------------------------------
    def advertise(self, rewrite: Callable[[dict[int, AdvertiseKeys]], None] | None = None,
                  skip: frozenset[int] = frozenset()) -> None:
        for u, c in self.clients.items():
            if u in skip:
                continue
            data = self._talk(u, "advertise", c.start)
            if data is not None:
                self.started.add(u)
                msg = decode(data)
                assert isinstance(msg, AdvertiseKeys)
                self.adverts[u] = msg
        if rewrite is not None:
            rewrite(self.adverts)
        entries = tuple(AdvertisedKey(u, a.c_pk, a.s_pk, a.signature)
                        for u, a in sorted(self.adverts.items()))
        self.broadcast = AdvertiseBroadcast.from_entries(self.config.round_id, entries)
        self.session = session_id(self.config, self.broadcast.key_records())

    def share(self) -> None:
        assert self.broadcast is not None
        data = self.broadcast.encode()
        for u in self.alive(self.started) + sorted(self.colluders & self.started):
            up = self._talk(u, "share", lambda u=u: self.clients[u].receive(data))
            if up is not None:
                msg = decode(up)
                assert isinstance(msg, ShareKeys)
                self.shares[u] = msg
            state = self.clients[u].state
            if u in self.colluders and isinstance(state, MaskedInputState):
                self.s_sk[u] = state.s.private

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
            down = ShareKeysBroadcast(self.session, v, tuple(cts)).encode()
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

    def _signature(self, v: int, survivors: tuple[int, ...]) -> bytes | None:
        if v in self.colluders:  # the attacker signs any set for a colluder
            return sign(self.identities[v].private, *consistency_fields(self.session, survivors))
        return self.signatures.get(v, {}).get(survivors)

    def consistency(self, views: Views) -> None:
        for v, survivors in sorted(views.items()):
            if v in self.colluders or v in self.refused or v not in self.masked:
                continue
            down = ConsistencyRequest(self.session, v, survivors).encode()
            up = self._talk(v, "consistency", lambda v=v, d=down: self.clients[v].receive(d))
            if up is not None:
                msg = decode(up)
                assert isinstance(msg, ConsistencySignature)
                self.signatures.setdefault(v, {})[survivors] = msg.signature

    def unmask(self, views: Views) -> None:
        for v, survivors in sorted(views.items()):
            if v in self.colluders or v in self.refused or v not in self.masked:
                continue
            sigs = []
            if self.config.authenticated:
                for w in survivors:
                    s = self._signature(w, survivors)
                    if s is not None and w != v:
                        sigs.append((w, s))
            down = UnmaskRequest(self.session, v, survivors, tuple(sigs)).encode()
            up = self._talk(v, "unmask", lambda v=v, d=down: self.clients[v].receive(d))
            if up is not None:
                msg = decode(up)
                assert isinstance(msg, UnmaskShares)
                self.revealed[v] = msg

    def run(self, views: Views, forward: Mapping[int, frozenset[int]] | None = None) -> None:
        """Share, mask, consistency (authenticated) and unmask stages after ``advertise``."""
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
    return Attack(cfg, clients, ident, inputs, frozenset(colluders), build_graph(cfg))


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
    attack.advertise()
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
    """A split view that every honest client accepts: each signs the set it is shown and
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
    attack.advertise()
    attack.run(plan.views(attack.honest))


def zero_input(config: ProtocolConfig) -> np.ndarray:
    return np.zeros(config.length, dtype=dtype_for_bits(config.bits))
