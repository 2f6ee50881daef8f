"""The server's batched unmasking: each fast path equals the plain definition it replaces."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.server as server_mod
from crypto.agreement import (
    KeyMismatch,
    Label,
    PublicKeyCache,
    derive_key,
    derive_keys,
    generate_keypair,
    shared_secret,
    shared_secrets,
)
from crypto.errors import ConfigError, CryptoError, SharingError
from crypto.prg import expand, expand_into, expand_sum_into
from crypto.rng import KeystreamRNG
from crypto.shamir import (
    PRIME,
    Share,
    common_index_sets,
    interpolate_at_zero,
    lagrange_at_zero,
    reconstruct,
    share_secrets,
)
from crypto.signing import encode_fields
from protocol.errors import MalformedMessage, ProtocolAbort
from protocol.masking import apply_mask, apply_masks, pairwise_seed_from_secret, pairwise_seeds
from protocol.server import SecAggServer, Stage, reconstruct_secrets
from protocol.session import (
    encode_ids,
    pairwise_context,
    pairwise_contexts,
    share_associated_data,
    survivors_digest,
)
from protocol.wire import Reader, Writer
from tests.protocol_helpers import make_round

SID = b"s" * 32


# -- Shamir: shared index sets ---------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.lists(st.sets(st.integers(1, 14), min_size=6, max_size=14),
                                   min_size=1, max_size=12), st.integers(0, 2**32))
def test_common_index_sets_reconstruct_every_secret(t: int, avail: list[set[int]],
                                                    seed: int) -> None:
    rng = KeystreamRNG.from_seed(seed, "common-sets")
    chosen = common_index_sets(avail, t)
    assert len(chosen) == len(avail)
    for idx, a in zip(chosen, avail, strict=True):
        assert len(idx) == t and set(idx) <= a
    # the choice is greedy over runs: a set changes only where the run's intersection
    # would fall below t, and equal neighbours share one set
    for j in range(1, len(avail)):
        if chosen[j] != chosen[j - 1]:
            run_start = max(i for i in range(j) if i == 0 or chosen[i] != chosen[i - 1])
            common = set.intersection(*avail[run_start : j + 1])
            assert len(common) < t
    # and every chosen set reconstructs the secret shared on all 14 indices
    secrets = [rng.bytes(32) for _ in avail]
    rows = []
    for sec, idx in zip(secrets, chosen, strict=True):
        sh = share_secrets([sec], t, range(1, 15), rng)
        rows.append((idx, [sh[i].values[0] for i in idx]))
    for sec, (idx, vals) in zip(secrets, rows, strict=True):
        assert interpolate_at_zero(idx, [vals]) == [int.from_bytes(sec, "big")]


def test_common_index_sets_one_group_when_sets_coincide_and_refuses_short() -> None:
    full = set(range(1, 21))
    chosen = common_index_sets([full] * 50, 11)
    assert len(set(chosen)) == 1 and chosen[0] == tuple(range(1, 12))
    with pytest.raises(SharingError):
        common_index_sets([full, set(range(1, 5))], 5)


def test_interpolate_at_zero_equals_reconstruct() -> None:
    rng = KeystreamRNG.from_seed(4, "interp")
    sh = share_secrets([b"a" * 32, b"\x07" * 5], 4, [3, 9, 11, 20, 21], rng)
    idx = (3, 11, 20, 21)
    got = interpolate_at_zero(idx, [[sh[i].values[0] for i in idx], [sh[i].values[1] for i in idx]])
    want = reconstruct([sh[i] for i in idx], 4, [32, 5])
    assert [g.to_bytes(33, "big")[-n:] for g, n in zip(got, (32, 5), strict=True)] == want
    with pytest.raises(SharingError):
        interpolate_at_zero(idx, [[1, 2, 3]])


def test_reconstruct_secrets_refuses_too_few_and_inconsistent_shares() -> None:
    rng = KeystreamRNG.from_seed(5, "recon")
    sec = rng.bytes(32)
    sh = share_secrets([sec], 3, [1, 2, 3, 4], rng)
    ok = reconstruct_secrets({9: [sh[1], sh[2], sh[4]]}, 3)
    assert ok == {9: sec}
    with pytest.raises(ProtocolAbort):
        reconstruct_secrets({9: [sh[1], sh[2]]}, 3)
    # a share shifted so that the interpolated value is 2^256: not a 32-byte secret
    lam = lagrange_at_zero([1, 2, 3])[1]
    delta = ((1 << 256) - int.from_bytes(sec, "big")) * pow(lam, -1, PRIME) % PRIME
    bad = Share(2, ((sh[2].values[0] + delta) % PRIME,))
    with pytest.raises(ProtocolAbort):
        reconstruct_secrets({9: [sh[1], bad, sh[3]]}, 3)


# -- agreement, HKDF, PRG batches --------------------------------------------------------------

def _kp(i: int) -> tuple[bytes, bytes]:
    k = generate_keypair(bytes([i]) * 32)
    return k.private, k.public


def test_shared_secrets_with_cache_and_expected_public() -> None:
    sk, pk = _kp(1)
    peers = [_kp(i)[1] for i in range(2, 9)]
    cache = PublicKeyCache()
    want = [shared_secret(sk, p) for p in peers]
    assert shared_secrets(sk, peers, expected_public=pk, cache=cache) == want
    assert shared_secrets(sk, peers[::-1], cache=cache) == want[::-1]
    assert len(cache) == len(peers)
    with pytest.raises(KeyMismatch):
        shared_secrets(sk, peers, expected_public=_kp(2)[1])
    with pytest.raises(CryptoError):  # a low-order peer key is refused with the cache too
        shared_secrets(sk, [peers[0], bytes(32)], cache=cache)


def test_derive_keys_and_contexts_equal_the_single_forms() -> None:
    secrets = [bytes([i]) * 32 for i in range(5)]
    peers = [0, 3, 9, 2**32 - 2, 8]
    ctx = pairwise_contexts(SID, 7, peers)
    assert ctx == [pairwise_context(SID, 7, v) for v in peers]
    assert derive_keys(secrets, Label.PAIRWISE_MASK, ctx) == [
        derive_key(s, Label.PAIRWISE_MASK, c) for s, c in zip(secrets, ctx, strict=True)]
    assert pairwise_seeds(_kp(1)[0], [_kp(2)[1]], SID, 4, [6]) == [
        pairwise_seed_from_secret(shared_secret(_kp(1)[0], _kp(2)[1]), SID, 4, 6)]
    with pytest.raises(ConfigError):
        derive_keys(secrets, Label.SELF_MASK, ctx[:2])


@pytest.mark.parametrize("length,dtype", [(1, np.uint32), (1000, np.uint32), (333, np.uint64),
                                          (70_000, np.uint32), (40_000, np.uint64)])
def test_expand_sum_into_equals_one_expand_into_per_seed(length: int, dtype: type) -> None:
    rng = KeystreamRNG.from_seed(length, "sum")
    seeds = [rng.bytes(32) for _ in range(300 if length < 10_000 else 5)] + [rng.bytes(16)]
    for sign in (1, -1):
        got = np.arange(length, dtype=dtype)
        want = got.copy()
        expand_sum_into(seeds, got, sign)
        for s in seeds:
            expand_into(s, want, sign)
        assert np.array_equal(got, want)
    before = np.arange(5, dtype=np.uint32)
    after = before.copy()
    expand_sum_into([], after, 1)
    assert np.array_equal(before, after)
    with pytest.raises(ConfigError):
        expand_sum_into([b"x" * 31], after, 1)
    with pytest.raises(ConfigError):
        expand_sum_into(seeds, np.zeros(4, np.int32), 1)


# -- wire: fixed-width pair lists --------------------------------------------------------------

def _pairs_slow(r: Reader, size: int) -> tuple[tuple[int, bytes], ...]:
    n = r.count(8 + size)
    return tuple((r.u32(), r.blob(exact=size)) for _ in range(n))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 9))
def test_reader_pairs_equals_field_by_field_reading(body: bytes, size: int) -> None:
    data = Writer(3).finish() + body
    results = []
    for read in (lambda r: r.pairs(size), lambda r: _pairs_slow(r, size)):
        r = Reader(data, 3)
        try:
            results.append((read(r), r._pos))
        except MalformedMessage:
            results.append(None)
    assert results[0] == results[1]


def test_reader_pairs_reads_a_written_list() -> None:
    w = Writer(3).u32(3)
    for cid in (1, 5, 2**32 - 1):
        w.u32(cid).blob(bytes([cid % 251]) * 6)
    r = Reader(w.u8(9).finish(), 3)
    assert r.pairs(6) == ((1, b"\x01" * 6), (5, b"\x05" * 6), (2**32 - 1, bytes([(2**32 - 1) % 251]) * 6))
    assert r.u8() == 9


# -- the server: workers, hygiene ---------------------------------------------------------------

def _finish(rnd) -> np.ndarray:  # type: ignore[no-untyped-def]
    while rnd.server.stage not in (Stage.DONE, Stage.ABORTED):
        rnd.step(skip=frozenset({2, 5}) if rnd.server.stage is Stage.MASKED else frozenset())
    assert rnd.server.total is not None
    return rnd.server.total


def test_server_with_worker_processes_gives_the_same_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "MIN_PARALLEL_PAIRS", 0)
    totals = []
    for workers in (1, 2):
        rnd = make_round(n=12, length=50, bits=32, graph="harary", k=6, authenticated=False)
        rnd.server = SecAggServer(rnd.config, workers=workers)
        totals.append(_finish(rnd))
        assert not rnd.server._self_sh and not rnd.server._key_sh  # shares dropped
    assert np.array_equal(totals[0], totals[1])
    acc = sum(rnd.inputs[u].astype(object) for u in range(12) if u not in (2, 5))
    assert [int(v) % 2**32 for v in acc] == [int(v) for v in totals[0]]


def test_worker_count_is_validated() -> None:
    cfg = make_round(n=4, authenticated=False).config
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="workers"):
            SecAggServer(cfg, workers=bad)  # type: ignore[arg-type]


def test_forged_key_share_aborts_without_revealing_a_sum() -> None:
    """A key share that reconstructs to a key other than the advertised one aborts."""
    rnd = make_round(n=6, length=4, bits=32, t=4, authenticated=False)
    for _ in range(4):  # advertise, reveal, graph, share
        rnd.step()
    rnd.step(skip=frozenset({0}))  # client 0 drops before its masked input
    ups = {u: rnd.clients[u].receive(d) for u, d in rnd.down.items()}
    srv = rnd.server
    for data in ups.values():
        srv.receive(data)
    owner = 0
    table = srv._key_sh[owner]
    first = min(table)
    table[first] = (table[first] + 1) % PRIME  # one holder lies about its share of s_sk_0
    with pytest.raises(ProtocolAbort):
        srv.finish_stage()
    assert srv.stage is Stage.ABORTED and srv.total is None
    assert not srv._key_sh and not srv._self_sh


@pytest.mark.parametrize("length,dtype", [(65_536, np.uint32), (65_537, np.uint32),
                                          (32_769, np.uint64), (262_145, np.uint32)])
def test_streamed_masks_equal_the_sum_of_expanded_masks(length: int, dtype: type) -> None:
    """Across the 256 KiB keystream chunk and the 1 MiB batch boundary, the streamed sum
    (one reused buffer for every chunk and seed) equals adding expand() of each seed."""
    rng = KeystreamRNG.from_seed(length, "stream")
    plus, minus = [rng.bytes(32) for _ in range(3)], [rng.bytes(16), rng.bytes(32)]
    bits = np.dtype(dtype).itemsize * 8
    got = np.arange(length, dtype=dtype)
    want = got.copy()
    apply_masks(got, plus, minus)
    for s in plus:
        np.add(want, expand(s, length, bits), out=want)
    for s in minus:
        np.subtract(want, expand(s, length, bits), out=want)
    assert np.array_equal(got, want)
    one = np.arange(length, dtype=dtype)
    apply_mask(one, plus[0], -1)
    assert np.array_equal(one, np.arange(length, dtype=dtype) - expand(plus[0], length, bits))


@given(st.binary(min_size=0, max_size=40), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_share_associated_data_is_the_encoded_fields(session: bytes, a: int, b: int) -> None:
    assert share_associated_data(session, a, b) == encode_fields(
        b"secure_fed/share-ciphertext/v1", session, a.to_bytes(4, "big"), b.to_bytes(4, "big"))


_SETS = st.lists(st.integers(0, 2**32 - 1), max_size=30, unique=True).map(
    lambda ids: tuple(sorted(ids)))


@given(_SETS, _SETS)
def test_survivors_digest_binds_the_exact_set(a: tuple, b: tuple) -> None:
    """A confirmation MACs the digest, so two sets must share a digest only if equal (the
    encoding is fixed-width and the digest is SHA-256 of it, under its own tag)."""
    assert (survivors_digest(a) == survivors_digest(b)) == (a == b)
    assert survivors_digest(a) == hashlib.sha256(b"secure_fed/survivor-set/v1"
                                                 + encode_ids(a)).digest()
