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

import enum
from collections import defaultdict
from collections.abc import Collection, Mapping

import numpy as np

from crypto.agreement import generate_keypair
from crypto.errors import SharingError, SignatureError
from crypto.prg import dtype_for_bits
from crypto.shamir import PRIME, Share, lagrange_at_zero
from crypto.signing import verify
from protocol.config import ProtocolConfig
from protocol.errors import (
    AuthenticationFailure,
    MalformedMessage,
    ProtocolAbort,
    ProtocolError,
    ReplayError,
)
from protocol.graph import build_graph
from protocol.masking import apply_mask, pairwise_seeds, pairwise_sign, self_mask_seed
from protocol.messages import (
    CIPHERTEXT_BYTES,
    AdvertiseBroadcast,
    AdvertisedKey,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    Message,
    ShareKeys,
    ShareKeysBroadcast,
    UnmaskRequest,
    UnmaskShares,
    decode,
)
from protocol.session import advertise_fields, consistency_fields, session_id
from protocol.vectors import reduce_in_place


class Stage(enum.Enum):
    """Server stages, in order; each collects one client message type."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_EXPECTS: dict[Stage, type] = {
    Stage.ADVERTISE: AdvertiseKeys, Stage.SHARE: ShareKeys, Stage.MASKED: MaskedInput,
    Stage.CONSISTENCY: ConsistencySignature, Stage.UNMASK: UnmaskShares,
}


def reconstruct_secrets(shares: Mapping[int, list[Share]], t: int) -> dict[int, bytes]:
    """One 32-byte secret per owner from its t lowest-index shares (server side).

    secret = sum_i lambda_i * y_i mod p with ``crypto.shamir.lagrange_at_zero`` (cached per
    index set, so the complete graph computes it once for all owners). Raises ProtocolAbort
    if an owner has fewer than t shares or they do not interpolate to a 32-byte value.
    """
    out: dict[int, bytes] = {}
    for owner, lst in shares.items():
        if len(lst) < t:
            raise ProtocolAbort(f"fewer than t shares survived for client {owner}")
        chosen = sorted(lst, key=lambda s: s.index)[:t]
        try:
            lam = lagrange_at_zero([s.index for s in chosen])
        except SharingError:
            raise ProtocolAbort("inconsistent shares; the round cannot finish") from None
        value = sum(li * s.values[0] for li, s in zip(lam, chosen, strict=True)) % PRIME
        if value >> 256:
            raise ProtocolAbort("inconsistent shares; the round cannot finish")
        out[owner] = value.to_bytes(32, "big")
    return out


class SecAggServer:
    """Server of one SecAgg / SecAgg+ round (server side; holds bytes and one sum)."""

    def __init__(self, config: ProtocolConfig, identity_keys: Mapping[int, bytes] | None = None):
        if config.authenticated and identity_keys is None:
            raise ProtocolError("authenticated mode needs the clients' Ed25519 public keys")
        self.config = config
        self.graph = build_graph(config)
        self._ids = frozenset(config.cohort)
        self._identity_keys = dict(identity_keys or {})
        self.stage = Stage.ADVERTISE
        self.session = b""
        self._keys: dict[int, AdvertiseKeys] = {}
        self._inbox: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self._u2: set[int] = set()
        self._peers: dict[int, frozenset[int]] = {}  # v -> senders in v's share broadcast
        self._sum = np.zeros(config.length, dtype=dtype_for_bits(config.bits))
        self._u3: set[int] = set()
        self._sigs: dict[int, bytes] = {}
        self._u3_fields: tuple[bytes, ...] = ()
        self._self_sh: dict[int, list[Share]] = defaultdict(list)
        self._key_sh: dict[int, list[Share]] = defaultdict(list)
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
        if isinstance(msg, AdvertiseBroadcast) or (
                not isinstance(msg, AdvertiseKeys) and msg.session_id != self.session):
            raise ReplayError("message bound to another session")
        handler = {Stage.ADVERTISE: self._on_advertise, Stage.SHARE: self._on_share,
                   Stage.MASKED: self._on_masked, Stage.CONSISTENCY: self._on_signature,
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
        if msg.round_id != self.config.round_id:
            raise ReplayError("key advertisement from another round")
        self._check_sender(msg.sender, set(self._ids), self._keys)
        if self.config.authenticated:
            try:
                verify(self._identity_keys[msg.sender], msg.signature,
                       *advertise_fields(self.config, msg.sender, msg.c_pk, msg.s_pk))
            except (SignatureError, KeyError):
                raise AuthenticationFailure("a key advertisement did not verify") from None
        self._keys[msg.sender] = msg

    def _on_share(self, msg: Message) -> None:
        assert isinstance(msg, ShareKeys)
        self._check_sender(msg.sender, self._keys, self._u2)
        expected = sorted(v for v in self.graph.neighbors_of(msg.sender) if v in self._keys)
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

    def _on_signature(self, msg: Message) -> None:
        assert isinstance(msg, ConsistencySignature)
        self._check_sender(msg.sender, self._u3, self._sigs)
        try:
            verify(self._identity_keys[msg.sender], msg.signature, *self._u3_fields)
        except (SignatureError, KeyError):
            raise AuthenticationFailure("a consistency signature did not verify") from None
        self._sigs[msg.sender] = msg.signature

    def _on_unmask(self, msg: Message) -> None:
        assert isinstance(msg, UnmaskShares)
        responders = set(self._sigs) if self.config.authenticated else self._u3
        self._check_sender(msg.sender, responders, self._u5)
        held = self._peers[msg.sender] | {msg.sender}
        want_self = sorted(held & self._u3)
        want_key = sorted(held - self._u3)
        if [o for o, _ in msg.self_shares] != want_self or [
                o for o, _ in msg.key_shares] != want_key:
            raise ProtocolError("unmasking shares do not match the survivor set")
        if any(s.index != msg.sender + 1 for _, s in msg.self_shares + msg.key_shares):
            raise ProtocolError("unmasking share carries another holder's index")
        for owner, share in msg.self_shares:
            self._self_sh[owner].append(share)
        for owner, share in msg.key_shares:
            self._key_sh[owner].append(share)
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
        step = {Stage.ADVERTISE: self._finish_advertise, Stage.SHARE: self._finish_share,
                Stage.MASKED: self._finish_masked, Stage.CONSISTENCY: self._finish_consistency,
                Stage.UNMASK: self._finish_unmask}.get(self.stage)
        if step is None:
            raise ProtocolError(f"nothing to finish in server stage {self.stage.value}")
        return step()

    def _finish_advertise(self) -> dict[int, bytes]:
        u1 = self._require("advertise", self._keys)
        entries = tuple(AdvertisedKey(u, self._keys[u].c_pk, self._keys[u].s_pk,
                                      self._keys[u].signature) for u in u1)
        msg = AdvertiseBroadcast.from_entries(self.config.round_id, entries)
        self.session = session_id(self.config, msg.key_records())
        data = msg.encode()
        self.stage = Stage.SHARE
        return dict.fromkeys(u1, data)

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
        self._u3_fields = consistency_fields(self.session, u3)
        self.stage = Stage.CONSISTENCY if self.config.authenticated else Stage.UNMASK
        if self.config.authenticated:
            return {v: ConsistencyRequest(self.session, v, u3).encode() for v in u3}
        return {v: UnmaskRequest(self.session, v, u3).encode() for v in u3}

    def _finish_consistency(self) -> dict[int, bytes]:
        u4 = self._require("consistency", self._sigs)
        u3 = self.survivors["masked"]
        out = {}
        for v in u4:
            signers = sorted((self.graph.neighbors_of(v) | {v}) & self._sigs.keys())
            sigs = tuple((w, self._sigs[w]) for w in signers)
            out[v] = UnmaskRequest(self.session, v, u3, sigs).encode()
        self.stage = Stage.UNMASK
        return out

    def _finish_unmask(self) -> dict[int, bytes]:
        self._require("unmask", self._u5)
        dropped: dict[int, set[int]] = defaultdict(set)  # d -> survivors that masked with d
        for v in self._u3:
            for d in self._peers[v] - self._u3:
                dropped[d].add(v)
        t = self.config.threshold
        try:
            b_seeds = reconstruct_secrets({u: self._self_sh[u] for u in self._u3}, t)
            s_keys = reconstruct_secrets({d: self._key_sh[d] for d in dropped}, t)
        except ProtocolAbort:
            self.stage = Stage.ABORTED
            raise
        total = self._sum
        for u in sorted(self._u3):
            apply_mask(total, self_mask_seed(b_seeds[u], self.session, u), -1)
        for d, peers in sorted(dropped.items()):
            self._remove_pairwise(total, d, s_keys[d], peers)
        self.total = reduce_in_place(total, self.config.bits)
        self.stage = Stage.DONE
        return {}

    def _remove_pairwise(self, total: np.ndarray, d: int, s_sk: bytes, peers: set[int]) -> None:
        if generate_keypair(s_sk).public != self._keys[d].s_pk:
            self.stage = Stage.ABORTED
            raise ProtocolAbort("a reconstructed key does not match its advertisement")
        order = sorted(peers)
        seeds = pairwise_seeds(s_sk, [self._keys[v].s_pk for v in order], self.session, d, order)
        for v, seed in zip(order, seeds, strict=True):
            apply_mask(total, seed, -pairwise_sign(v, d))

    def resident_bytes(self) -> int:
        """Approximate bytes of round state the server holds now (sum + relayed data)."""
        relayed = sum(len(v) for v in self._inbox.values()) * (CIPHERTEXT_BYTES + 8)
        shares = sum(len(v) for v in (*self._self_sh.values(), *self._key_sh.values())) * 48
        return int(self._sum.nbytes) + relayed + shares + 100 * len(self._keys)
