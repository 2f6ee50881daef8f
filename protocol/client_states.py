"""Client side: one immutable state class per protocol round.

Each state accepts exactly one server message type; ``advance`` checks the whole message
first and only then returns the next state and the reply, so a refused message leaves the
client exactly where it was (the :class:`protocol.client.SecAggClient` facade swaps states
only after ``advance`` returns).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from crypto.aead import open_sealed, seal
from crypto.agreement import (
    KEY_BYTES,
    KeyPair,
    Label,
    check_public_key,
    derive_keys,
    generate_keypair,
)
from crypto.errors import CryptoError, DecryptionError, SharingError, SignatureError
from crypto.mac import mac, verify_mac
from crypto.rng import KeystreamRNG, random_bytes
from crypto.shamir import Share, share_from_bytes, share_secrets, share_to_bytes
from crypto.signing import SigningKeyPair, sign, verify
from protocol.commitments import (
    REVEAL_BYTES,
    commit_leaf,
    commitment,
    commitment_root,
    graph_seed,
    key_leaf,
    root_from_path,
    round_root,
)
from protocol.config import ProtocolConfig
from protocol.errors import (
    AuthenticationFailure,
    ConsistencyViolation,
    InvalidPublicKey,
    ProtocolAbort,
    ProtocolError,
    ReplayError,
)
from protocol.graph import Graph, build_graph
from protocol.masking import (
    apply_masks,
    pairwise_seeds,
    pairwise_sign,
    self_mask_seed,
    shared_secrets,
)
from protocol.messages import (
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
)
from protocol.session import (
    advertise_fields,
    confirmation_fields,
    pairwise_contexts,
    session_id,
    share_associated_data,
    survivors_digest,
)
from protocol.vectors import pack, reduce_in_place

SHARE_NONCE = bytes(12)  # each share key is used once: one key per (session, sender, recipient)


@dataclass(frozen=True, slots=True)
class ClientContext:
    """What a client knows for the whole round: its id, config, graph, input and keys."""

    client_id: int
    config: ProtocolConfig
    graph: Graph | None  # None until the reveals fix a Harary graph (see protocol.graph)
    value: np.ndarray  # the client's input in Z_{2^bits}; never leaves the client unmasked
    identity: SigningKeyPair | None
    identity_keys: Mapping[int, bytes]
    rng: KeystreamRNG | None

    def random(self, n: int) -> bytes:
        """n secret bytes: the injected stream (simulation) or the OS CSPRNG."""
        return self.rng.bytes(n) if self.rng is not None else random_bytes(n)

    def neighbors(self) -> frozenset[int]:
        if self.graph is None:
            raise ProtocolError("the masking graph is not known before every reveal")
        return self.graph.neighbors_of(self.client_id)


@dataclass(frozen=True, slots=True)
class PairKeys:
    """The keys ``me`` holds with each neighbour from their X25519 channel agreement."""

    outbound: dict[int, bytes]  # AES-256-GCM key of the shares me sends to the neighbour
    inbound: dict[int, bytes]  # ... of the shares the neighbour sends to me
    confirm: dict[int, bytes]  # HMAC key of the pair's survivor confirmations


def _pair_keys(secrets: list[bytes], session: bytes, me: int, peers: list[int]) -> PairKeys:
    """One 96-byte HKDF output per pair, bound to the session and both ids (lower
    first): its first third keys shares from the lower id to the higher, the second the
    other direction (each direction has its own key), the last the pair's confirmation
    MAC. The channel key pair c is never secret-shared, so a server that reconstructs a
    dropped client's masking key learns none of these."""
    okm = derive_keys(secrets, Label.PAIR_CHANNEL, pairwise_contexts(session, me, peers),
                      3 * KEY_BYTES)
    keys = PairKeys({}, {}, {})
    for v, k in zip(peers, okm, strict=True):
        low_high, high_low = k[:KEY_BYTES], k[KEY_BYTES : 2 * KEY_BYTES]
        keys.outbound[v] = low_high if me < v else high_low
        keys.inbound[v] = high_low if me < v else low_high
        keys.confirm[v] = k[2 * KEY_BYTES :]
    return keys


def _check_session(session: bytes, msg_session: bytes) -> None:
    if msg_session != session:
        raise ReplayError("message bound to another session")


class ClientState:
    """Base: a state accepts one message type and advances to the next state."""

    accepts: ClassVar[tuple[type, ...]] = ()
    name: ClassVar[str] = "state"

    def advance(self, ctx: ClientContext, msg: Message) -> tuple[ClientState, Message]:
        raise ProtocolError(f"{type(msg).__name__} is not valid in client state {self.name}")


@dataclass(frozen=True, slots=True)
class AdvertiseKeysState(ClientState):
    """Round 0: nothing received yet; :meth:`start` makes and advertises the key pairs and
    a commitment to fresh graph randomness r_u."""

    name: ClassVar[str] = "AdvertiseKeys"

    def start(self, ctx: ClientContext) -> tuple[ClientState, Message]:
        c, s = generate_keypair(ctx.random(32)), generate_keypair(ctx.random(32))
        cfg, u = ctx.config, ctx.client_id
        r = ctx.random(REVEAL_BYTES)
        com = commitment(cfg.digest(), u, r)
        sig = b""
        if cfg.authenticated:
            if ctx.identity is None:
                raise ProtocolError("authenticated mode needs the client's Ed25519 identity")
            sig = sign(ctx.identity.private, *advertise_fields(cfg, u, c.public, s.public, com))
        nxt = RevealState(c, s, r, com, sig)
        return nxt, AdvertiseKeys(cfg.round_id, u, c.public, s.public, com, sig)


@dataclass(frozen=True, slots=True)
class RevealState(ClientState):
    """Round 1: on the commitment proof, check this client's own leaves are in both trees
    (so the round root fixes them), then reveal r_u."""

    accepts: ClassVar[tuple[type, ...]] = (CommitProof,)
    name: ClassVar[str] = "Reveal"
    c: KeyPair
    s: KeyPair
    r: bytes
    com: bytes
    sig: bytes

    def advance(self, ctx: ClientContext, msg: Message) -> tuple[ClientState, Message]:
        assert isinstance(msg, CommitProof)
        cfg, u = ctx.config, ctx.client_id
        if msg.round_id != cfg.round_id:
            raise ReplayError("commitment proof from another round")
        if msg.recipient != u:
            raise ProtocolError("commitment proof addressed to another client")
        if msg.size > cfg.n:
            raise ConsistencyViolation("commitment tree larger than the cohort")
        if msg.size < cfg.threshold:
            raise ProtocolAbort(f"only {msg.size} clients committed, fewer than t")
        own_c = root_from_path(commit_leaf(u, self.com), msg.index, msg.size, msg.commit_path)
        own_k = root_from_path(key_leaf(u, self.c.public, self.s.public, self.sig), msg.index,
                               msg.size, msg.key_path)
        if own_c != msg.commit_root or own_k != msg.key_root:
            raise ConsistencyViolation("the round root omits or alters this client's entry")
        root = round_root(msg.commit_root, msg.key_root, msg.size)
        nxt = GraphState(self.c, self.s, self.r, msg.index, msg.size, msg.commit_root,
                         msg.key_root, root)
        return nxt, Reveal(cfg.round_id, u, self.r)


@dataclass(frozen=True, slots=True)
class GraphState(ClientState):
    """Round 2: on every reveal, check they open exactly the commitments fixed by the root
    this client checked, derive the graph seed and this client's neighbours."""

    accepts: ClassVar[tuple[type, ...]] = (RevealBroadcast,)
    name: ClassVar[str] = "Graph"
    c: KeyPair
    s: KeyPair
    r: bytes
    index: int
    size: int
    commit_root: bytes
    key_root: bytes
    root: bytes

    def advance(self, ctx: ClientContext, msg: Message) -> tuple[ClientState, Message]:
        assert isinstance(msg, RevealBroadcast)
        cfg, u = ctx.config, ctx.client_id
        if msg.round_id != cfg.round_id:
            raise ReplayError("reveal broadcast from another round")
        ids = msg.id_array()
        if ids.size != self.size:
            raise ConsistencyViolation("the reveal list does not cover every committed client")
        if int(ids[self.index]) != u or msg.reveal_at(self.index) != self.r:
            raise ConsistencyViolation("the reveal list omits or alters this client's reveal")
        if commitment_root(cfg.digest(), msg.ids, msg.reveals) != self.commit_root:
            raise ConsistencyViolation("the reveals do not open the commitments of the root "
                                       "this client checked")
        seed = graph_seed(msg.ids, msg.reveals)
        graph = build_graph(cfg, msg.ids, seed)  # refuses ids outside the cohort
        nb = sorted(graph.neighbors_of(u))
        pos = np.searchsorted(ids, nb)
        peers = {v: (int(i), commitment(cfg.digest(), v, msg.reveal_at(int(i))))
                 for v, i in zip(nb, pos, strict=True)}
        nxt = ShareKeysState(self.c, self.s, self.key_root, self.size, self.root + seed,
                             graph, peers)
        return nxt, GraphConfirm(cfg.round_id, u, seed)


@dataclass(frozen=True, slots=True)
class ShareKeysState(ClientState):
    """Round 3: on its neighbours' key leaves, verify each against the key root (and its
    signature), then share s_sk and b_u among those neighbours, sealed."""

    accepts: ClassVar[tuple[type, ...]] = (NeighborKeys,)
    name: ClassVar[str] = "ShareKeys"
    c: KeyPair
    s: KeyPair
    key_root: bytes
    size: int
    binding: bytes  # round root || graph seed: the session id's key input
    graph: Graph
    peer_leaves: Mapping[int, tuple[int, bytes]]  # neighbour -> (leaf index, its C_v)

    def _validate(self, ctx: ClientContext, msg: NeighborKeys) -> dict[int, NeighborKey]:
        cfg, u = ctx.config, ctx.client_id
        if msg.round_id != cfg.round_id:
            raise ReplayError("neighbour keys from another round")
        if msg.recipient != u:
            raise ProtocolError("neighbour keys addressed to another client")
        if [e.client_id for e in msg.entries] != sorted(self.peer_leaves):
            raise ConsistencyViolation("neighbour keys must be exactly this client's neighbours")
        for e in msg.entries:
            idx, _ = self.peer_leaves[e.client_id]
            leaf = key_leaf(e.client_id, e.c_pk, e.s_pk, e.signature)
            if root_from_path(leaf, idx, self.size, e.path) != self.key_root:
                raise AuthenticationFailure("a neighbour's key is not in the committed tree")
        try:  # before any share is sealed to c_pk or any mask derived from s_pk
            for e in msg.entries:
                check_public_key(e.c_pk)
                check_public_key(e.s_pk)
        except CryptoError:
            raise InvalidPublicKey("a neighbour advertised a low-order or non-canonical "
                                   "X25519 key") from None
        # every key is canonical now (the check above), so equal keys are equal bytes
        keys = [self.c.public, self.s.public]
        keys += [k for e in msg.entries for k in (e.c_pk, e.s_pk)]
        if len(set(keys)) != len(keys):
            raise ProtocolError("neighbour keys repeat a public key")
        if len(msg.entries) + 1 < cfg.threshold:
            raise ProtocolAbort("fewer than t share holders among this client's neighbours")
        if cfg.authenticated:
            for e in msg.entries:
                com = self.peer_leaves[e.client_id][1]
                try:
                    verify(ctx.identity_keys[e.client_id], e.signature,
                           *advertise_fields(cfg, e.client_id, e.c_pk, e.s_pk, com))
                except (SignatureError, KeyError):
                    raise AuthenticationFailure("a key advertisement did not verify") from None
        return {e.client_id: e for e in msg.entries}

    def advance(self, ctx: ClientContext, msg: Message) -> tuple[ClientState, Message]:
        assert isinstance(msg, NeighborKeys)
        peers = self._validate(ctx, msg)
        u, t = ctx.client_id, ctx.config.threshold
        session = session_id(ctx.config, self.binding)
        b_seed = ctx.random(32)
        holders = sorted([*peers, u])
        shares = share_secrets([self.s.private, b_seed], t, [h + 1 for h in holders], ctx.rng)
        ids = list(peers)
        secrets = shared_secrets(self.c.private, [peers[v].c_pk for v in ids])
        keys = _pair_keys(secrets, session, u, ids)
        del secrets
        cts = [(v, seal(keys.outbound[v], SHARE_NONCE, share_to_bytes(shares[v + 1]),
                        share_associated_data(session, u, v)))
               for v in ids]
        s_pks = {v: e.s_pk for v, e in peers.items()}
        nxt = MaskedInputState(self.s, session, b_seed, s_pks, keys.inbound, shares[u + 1],
                               keys.confirm if ctx.config.authenticated else {})
        return nxt, ShareKeys(session, u, tuple(cts))


@dataclass(frozen=True, slots=True)
class MaskedInputState(ClientState):
    """Round 2: on the shares addressed to it, open them and upload the masked input."""

    accepts: ClassVar[tuple[type, ...]] = (ShareKeysBroadcast,)
    name: ClassVar[str] = "MaskedInput"
    s: KeyPair
    session: bytes
    b_seed: bytes
    peer_s_pks: Mapping[int, bytes]  # live neighbours' masking public keys
    inbound_keys: Mapping[int, bytes]  # neighbour -> AES key of its shares for this client
    own_share: Share
    confirm_keys: Mapping[int, bytes]  # neighbour -> the pair's confirmation MAC key

    def _open(self, ctx: ClientContext, msg: ShareKeysBroadcast) -> dict[int, Share]:
        u = ctx.client_id
        held = {u: self.own_share}
        for v, ct in msg.ciphertexts:
            key = self.inbound_keys[v]
            try:
                pt = open_sealed(key, SHARE_NONCE, ct, share_associated_data(self.session, v, u))
                share = share_from_bytes(pt)
            except (DecryptionError, SharingError):
                raise AuthenticationFailure("a share ciphertext did not verify") from None
            if share.index != u + 1 or len(share.values) != 2:
                raise AuthenticationFailure("a share ciphertext did not verify")
            held[v] = share
        return held

    def advance(self, ctx: ClientContext, msg: Message) -> tuple[ClientState, Message]:
        assert isinstance(msg, ShareKeysBroadcast)
        cfg, u = ctx.config, ctx.client_id
        _check_session(self.session, msg.session_id)
        if msg.recipient != u:
            raise ProtocolError("share broadcast addressed to another client")
        senders = [v for v, _ in msg.ciphertexts]
        if not set(senders) <= set(self.peer_s_pks):
            raise ProtocolError("share broadcast contains shares from a non-neighbour")
        if len(senders) + 1 < cfg.threshold:
            raise ProtocolAbort("fewer than t of this client's share holders remain")
        held = self._open(ctx, msg)
        seeds = pairwise_seeds(self.s.private, [self.peer_s_pks[v] for v in senders],
                               self.session, u, senders)
        plus = [self_mask_seed(self.b_seed, self.session, u)]  # and pairs u < v: added
        minus: list[bytes] = []  # pairs u > v: subtracted (pairwise_sign)
        for v, seed in zip(senders, seeds, strict=True):
            (plus if pairwise_sign(u, v) == 1 else minus).append(seed)
        y = np.array(ctx.value, copy=True)
        apply_masks(y, plus, minus)
        reduce_in_place(y, cfg.bits)
        reply = MaskedInput(self.session, u, cfg.bits, cfg.length, pack(y, cfg.bits))
        nxt: ClientState = (ConsistencyCheckState(self.session, held, self.confirm_keys)
                            if cfg.authenticated else UnmaskingState(self.session, held, None))
        return nxt, reply


def _check_survivors(ctx: ClientContext, survivors: tuple[int, ...],
                     held: Mapping[int, Share]) -> None:
    """The checks of Bonawitz et al.'s ConsistencyCheck (Fig. 4) on the survivor set U3.

    Besides the set naming this client, lying in the cohort and holding t clients: every
    surviving *neighbour* must be one whose encrypted share this client received and
    masked with (``held``; U3 within U2). Without that, a server that forwarded only t - 1
    shares could declare those peers dropped and other neighbours survivors: holders would
    then reveal this client's b and the dropped peers' mask keys, and strip every mask from
    its masked input. An honest server never lists a neighbour whose share it withheld.
    """
    u = ctx.client_id
    if u not in survivors:
        raise ConsistencyViolation("survivor set omits this client, which sent its input")
    if not set(survivors) <= set(ctx.config.cohort):
        raise ConsistencyViolation("survivor set names clients outside the cohort")
    if len(survivors) < ctx.config.threshold:
        raise ProtocolAbort(f"survivor set of {len(survivors)} is smaller than t")
    if any(v not in held for v in ctx.neighbors().intersection(survivors)):
        raise ConsistencyViolation("survivor set lists a neighbour whose share this client "
                                   "never received")


@dataclass(frozen=True, slots=True)
class ConsistencyCheckState(ClientState):
    """Round 3 (authenticated): confirm the survivor set U3 the server claims to each
    surviving neighbour, with a MAC under the key only the two of them hold."""

    accepts: ClassVar[tuple[type, ...]] = (ConsistencyRequest,)
    name: ClassVar[str] = "ConsistencyCheck"
    session: bytes
    held: Mapping[int, Share]
    confirm_keys: Mapping[int, bytes]

    def advance(self, ctx: ClientContext, msg: Message) -> tuple[ClientState, Message]:
        assert isinstance(msg, ConsistencyRequest)
        _check_session(self.session, msg.session_id)
        u = ctx.client_id
        if msg.recipient != u:
            raise ProtocolError("consistency request addressed to another client")
        _check_survivors(ctx, msg.survivors, self.held)
        # every surviving neighbour is a holder here (checked just above)
        alive = set(msg.survivors)
        rcpts = sorted(v for v in self.held if v != u and v in alive)
        # hashed once: MACed to each neighbour here, and the holders' tags are checked
        # against it in the unmask round (whose set must equal this one)
        digest = survivors_digest(msg.survivors)
        tags = tuple((v, mac(self.confirm_keys[v],
                             *confirmation_fields(self.session, u, v, digest)))
                     for v in rcpts)
        nxt = UnmaskingState(self.session, self.held, msg.survivors, self.confirm_keys,
                             digest)
        return nxt, ConsistencyConfirm(self.session, u, tags)


@dataclass(frozen=True, slots=True)
class UnmaskingState(ClientState):
    """Round 4: reveal, per owner, its self-mask share if it survived, else its key share."""

    accepts: ClassVar[tuple[type, ...]] = (UnmaskRequest,)
    name: ClassVar[str] = "Unmasking"
    session: bytes
    held: Mapping[int, Share]
    confirmed: tuple[int, ...] | None  # the survivor set this client confirmed (authenticated)
    confirm_keys: Mapping[int, bytes] = field(default_factory=dict)
    confirmed_digest: bytes = b""  # survivors_digest(confirmed), made when confirming

    def _check_confirmations(self, ctx: ClientContext, msg: UnmaskRequest) -> None:
        """At least t of this client's holders must have confirmed exactly this survivor
        set: itself (it confirmed ``self.confirmed``, equal to the request's set) and t - 1
        peers whose share it received and masked with (only those count: Bonawitz et al.
        Fig. 4). Every confirmation from such a peer is checked, and any that does not
        verify is a ConsistencyViolation. A peer's confirmation is a MAC under a key only
        that peer and this client hold, bound to both ids and the session, so the server
        can neither forge one nor replay one from another client or direction. t are
        enough: two sets each confirmed by t of the k + 1 holders would need 2t > k + 1
        confirmers, so some honest holder would have confirmed both, which an honest
        client never does (it confirms once per round).
        """
        tags = dict(msg.confirmations)
        if not set(tags) <= set(msg.survivors):
            raise ConsistencyViolation("survivor confirmations from non-survivors")
        u = ctx.client_id
        confirmers = [v for v in sorted(self.held) if v != u and v in tags]
        # this client itself confirmed the set (checked against what it confirmed above)
        if len(confirmers) + 1 < ctx.config.threshold:
            raise ProtocolAbort("fewer than t share holders confirmed the survivor set")
        for v in confirmers:
            try:
                verify_mac(self.confirm_keys[v], tags[v],
                           *confirmation_fields(self.session, v, u, self.confirmed_digest))
            except (SignatureError, KeyError):
                raise ConsistencyViolation("survivor sets differ between clients") from None

    def advance(self, ctx: ClientContext, msg: Message) -> tuple[ClientState, Message]:
        assert isinstance(msg, UnmaskRequest)
        _check_session(self.session, msg.session_id)
        if msg.recipient != ctx.client_id:
            raise ProtocolError("unmask request addressed to another client")
        if self.confirmed is not None and msg.survivors != self.confirmed:
            raise ConsistencyViolation("unmask request's survivor set differs from the "
                                       "confirmed one")
        _check_survivors(ctx, msg.survivors, self.held)
        if ctx.config.authenticated:
            self._check_confirmations(ctx, msg)
        # one share per owner this client exchanged shares with (``held``: itself and the
        # peers whose share it received), of b if the owner survived, else of s_sk
        alive = set(msg.survivors)
        self_sh = tuple((o, Share(s.index, (s.values[1],)))
                        for o, s in sorted(self.held.items()) if o in alive)
        key_sh = tuple((o, Share(s.index, (s.values[0],)))
                       for o, s in sorted(self.held.items()) if o not in alive)
        revealed = {o: "self" for o, _ in self_sh} | {o: "key" for o, _ in key_sh}
        return DoneState(revealed), UnmaskShares(self.session, ctx.client_id, self_sh, key_sh)


@dataclass(frozen=True, slots=True)
class DoneState(ClientState):
    """Shares revealed: any further request (a second unmasking above all) is refused."""

    accepts: ClassVar[tuple[type, ...]] = (UnmaskRequest,)
    name: ClassVar[str] = "Done"
    revealed: Mapping[int, str] = field(default_factory=dict)

    def advance(self, ctx: ClientContext, msg: Message) -> tuple[ClientState, Message]:
        raise ConsistencyViolation("shares were already revealed this round; refusing again")
