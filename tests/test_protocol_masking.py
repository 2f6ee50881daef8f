"""Mask seeds: symmetric pairwise seeds, the batched agreement helper, cancellation."""

from __future__ import annotations

import numpy as np
import pytest

from crypto.agreement import generate_keypair, shared_secret
from crypto.prg import expand
from protocol.errors import AuthenticationFailure
from protocol.masking import (
    apply_mask,
    pairwise_seeds,
    pairwise_sign,
    self_mask_seed,
    shared_secrets,
)

SID = b"s" * 32


def _kp(i: int) -> tuple[bytes, bytes]:
    kp = generate_keypair(bytes([i]) * 32)
    return kp.private, kp.public


def test_shared_secrets_equal_the_crypto_primitive() -> None:
    sk, _ = _kp(1)
    peers = [_kp(i)[1] for i in range(2, 7)]
    assert shared_secrets(sk, peers) == [shared_secret(sk, p) for p in peers]


@pytest.mark.parametrize("bad", [bytes(32), b"\x01" + bytes(31), b"short"])
def test_shared_secrets_refuse_low_order_or_malformed_keys(bad: bytes) -> None:
    with pytest.raises(AuthenticationFailure):
        shared_secrets(_kp(1)[0], [_kp(2)[1], bad])


def test_pairwise_seeds_are_symmetric_and_session_bound() -> None:
    (a_sk, a_pk), (b_sk, b_pk) = _kp(3), _kp(4)
    assert pairwise_seeds(a_sk, [b_pk], SID, 3, [9]) == pairwise_seeds(b_sk, [a_pk], SID, 9, [3])
    assert pairwise_seeds(a_sk, [b_pk], SID, 3, [9]) != pairwise_seeds(a_sk, [b_pk], b"t" * 32,
                                                                        3, [9])
    assert self_mask_seed(b"b" * 32, SID, 1) != self_mask_seed(b"b" * 32, SID, 2)


def test_masks_cancel_in_the_sum() -> None:
    keys = {u: _kp(10 + u) for u in range(4)}
    length = 257
    total = np.zeros(length, np.uint32)
    for u in keys:
        y = np.zeros(length, np.uint32)
        others = [v for v in keys if v != u]
        for v, seed in zip(others, pairwise_seeds(keys[u][0], [keys[v][1] for v in others],
                                                  SID, u, others), strict=True):
            apply_mask(y, seed, pairwise_sign(u, v))
        assert np.unique(y).size > length // 2  # each vector alone looks random
        total += y
    assert not total.any()


def test_mask_is_the_prg_definition() -> None:
    seed = self_mask_seed(b"b" * 32, SID, 5)
    y = np.zeros(100, np.uint64)
    apply_mask(y, seed, 1)
    np.testing.assert_array_equal(y, expand(seed, 100, 64))


def test_large_vectors_stream_through_expand_into() -> None:
    seed = self_mask_seed(b"c" * 32, SID, 1)
    n = (1 << 20) // 4 + 3  # just above the direct-expansion limit (uint32)
    y = np.zeros(n, np.uint32)
    apply_mask(y, seed, 1)
    np.testing.assert_array_equal(y, expand(seed, n, 32))
    apply_mask(y, seed, -1)
    assert not y.any()
