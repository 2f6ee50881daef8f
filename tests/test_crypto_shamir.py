"""Shamir sharing: any t shares reconstruct, t-1 raise or reveal nothing, typed misuse errors."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import SharingError
from crypto.rng import KeystreamRNG
from crypto.shamir import (
    PRIME,
    Share,
    lagrange_at_zero,
    reconstruct,
    share_from_bytes,
    share_secrets,
    share_to_bytes,
)


def _is_probable_prime(n: int) -> bool:
    """Miller-Rabin with the first 24 prime bases (error < 4^-24 for composites)."""
    bases = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73]
    bases += [79, 83, 89]
    if n < 2 or any(n % p == 0 for p in bases):
        return n in bases
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_prime_is_prime_and_holds_32_byte_secrets() -> None:
    assert PRIME == 2**257 - 93 and _is_probable_prime(PRIME)
    assert PRIME > 2**256
    assert not any(_is_probable_prime(2**257 - c) for c in range(1, 93, 2))  # largest < 2^257


def _poly_eval(coeffs: list[int], x: int) -> int:
    return sum(c * pow(x, k, PRIME) for k, c in enumerate(coeffs)) % PRIME


def _interpolate_at(points: list[tuple[int, int]], x: int) -> int:
    """Reference O(t^2) Lagrange interpolation at x, independent of crypto.shamir."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total += yi * num * pow(den, -1, PRIME)
    return total % PRIME


secrets_st = st.lists(st.binary(min_size=0, max_size=32), min_size=1, max_size=3)


@settings(max_examples=25, deadline=None)
@given(
    secrets=secrets_st,
    n=st.integers(1, 9),
    data=st.data(),
)
def test_every_t_subset_reconstructs_and_t_minus_1_raises(
    secrets: list[bytes], n: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(1, n))
    indices = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    rng = KeystreamRNG.from_seed(data.draw(st.integers(0, 2**32)), "shamir-test")
    shares = share_secrets(secrets, t, indices, rng=rng)
    assert sorted(shares) == sorted(indices)
    lengths = [len(s) for s in secrets]
    subsets = list(itertools.combinations(shares.values(), t))
    for subset in subsets[:20]:
        assert reconstruct(list(subset), t, lengths) == secrets
    assert reconstruct(list(shares.values()), t, lengths) == secrets  # more than t is fine
    if t > 1:
        with pytest.raises(SharingError):
            reconstruct(list(subsets[0])[: t - 1], t, lengths)


@settings(max_examples=25, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    other=st.binary(min_size=32, max_size=32),
    t=st.integers(2, 6),
    seed=st.integers(0, 2**32),
)
def test_t_minus_1_shares_are_consistent_with_every_secret(
    secret: bytes, other: bytes, t: int, seed: int
) -> None:
    """Perfect secrecy: t-1 shares plus any candidate secret define a valid degree t-1
    polynomial, so another secret explains the same view equally well."""
    indices = list(range(1, t + 2))
    shares = share_secrets([secret], t, indices, rng=KeystreamRNG.from_seed(seed))
    view = [(i, shares[i].values[0]) for i in indices[: t - 1]]
    for candidate in (secret, other):
        points = [(0, int.from_bytes(candidate, "big")), *view]
        fresh = indices[-1]
        forged = Share(fresh, (_interpolate_at(points, fresh),))
        got = reconstruct([*(shares[i] for i in indices[: t - 1]), forged], t, 32)
        assert got == [candidate]
    # and the honest t-th share pins the true secret
    honest = reconstruct([shares[i] for i in indices[:t]], t, 32)
    assert honest == [secret]


def test_shares_are_the_polynomial_evaluations() -> None:
    """Horner with lazy reduction equals naive evaluation of the drawn polynomial."""
    secret = b"\xff" * 32
    indices = [1, 2, 3, 500, 2**32 - 1]
    shares = share_secrets([secret], 4, indices, rng=KeystreamRNG.from_seed(7))
    points = [(i, shares[i].values[0]) for i in indices[:4]]
    assert _interpolate_at(points, 0) == int.from_bytes(secret, "big")
    for i in indices[4:]:
        assert shares[i].values[0] == _interpolate_at(points, i)


def test_lagrange_matches_reference_and_is_cached() -> None:
    idx = [3, 1, 7, 12, 40]
    lam = lagrange_at_zero(idx)
    coeffs = [11, 22, 33, 44, 55]
    assert sum(li * _poly_eval(coeffs, x) for li, x in zip(lam, idx, strict=True)) % PRIME == 11
    assert lagrange_at_zero(idx) == lam


def test_large_cohort_roundtrip() -> None:
    secrets = [bytes(range(32)), bytes(range(32, 64))]
    shares = share_secrets(secrets, 60, range(1, 101))
    chosen = [shares[i] for i in range(41, 101)]
    assert reconstruct(chosen, 60) == secrets


def test_seeded_sharing_is_reproducible_and_hardened_is_not() -> None:
    a = share_secrets([b"x"], 3, [1, 2, 3], rng=KeystreamRNG.from_seed(1))
    b = share_secrets([b"x"], 3, [1, 2, 3], rng=KeystreamRNG.from_seed(1))
    c = share_secrets([b"x"], 3, [1, 2, 3])
    d = share_secrets([b"x"], 3, [1, 2, 3])
    assert a == b and c != d


@pytest.mark.parametrize(
    "secrets, t, indices",
    [
        ([b"a"], 2, [1, 1, 2]),  # duplicate
        ([b"a"], 2, [0, 1, 2]),  # out of range
        ([b"a"], 2, [1, 2**32]),  # out of range
        ([b"a"], 0, [1, 2]),  # threshold too small
        ([b"a"], 3, [1, 2]),  # threshold above n
        ([b"a" * 33], 1, [1]),  # secret too long
        ([], 1, [1]),  # nothing
    ],
)
def test_share_misuse_raises(secrets: list[bytes], t: int, indices: list[int]) -> None:
    with pytest.raises(SharingError):
        share_secrets(secrets, t, indices)


def test_reconstruct_misuse_raises() -> None:
    shares = share_secrets([b"k" * 32, b"s" * 16], 3, [1, 2, 3, 4])
    with pytest.raises(SharingError):  # duplicates do not count twice
        reconstruct([shares[1], shares[1], shares[2]], 3, [32, 16])
    with pytest.raises(SharingError):
        reconstruct([shares[1], shares[2]], 3, [32, 16])
    with pytest.raises(SharingError):  # wrong number of lengths
        reconstruct([shares[1], shares[2], shares[3]], 3, [32])
    with pytest.raises(SharingError):  # mixed widths
        reconstruct([shares[1], shares[2], Share(3, (1,))], 3, 32)
    with pytest.raises(SharingError):  # a tampered share does not decode to 16 bytes
        bad = Share(3, (shares[3].values[0], (shares[3].values[1] + 2**200) % PRIME))
        reconstruct([shares[1], shares[2], bad], 3, [32, 16])
    with pytest.raises(SharingError):
        Share(0, (1,))
    with pytest.raises(SharingError):
        Share(1, (PRIME,))


def test_share_bytes_roundtrip_and_malformed() -> None:
    share = share_secrets([b"a" * 32, b"b"], 2, [5, 9])[9]
    wire = share_to_bytes(share)
    assert len(wire) == 4 + 2 + 2 * 33
    assert share_from_bytes(wire) == share
    for bad in (wire[:-1], wire + b"\x00", b"", wire[:5]):
        with pytest.raises(SharingError):
            share_from_bytes(bad)
    over = wire[:6] + PRIME.to_bytes(33, "big") + wire[6 + 33 :]
    with pytest.raises(SharingError):
        share_from_bytes(over)
    with pytest.raises(SharingError):
        share_from_bytes(bytes(4) + wire[4:])  # index 0
    assert "values=<2 elements>" in repr(share)


@settings(max_examples=30, deadline=None)
@given(
    indices=st.one_of(
        st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=12, unique=True),
        st.lists(st.integers(1, 300), min_size=250, max_size=300, unique=True),
    )
)
def test_lagrange_at_zero_equals_reference(indices: list[int]) -> None:
    """Grouped int64 products and the batched inverse agree with the textbook formula
    (small and 32-bit indices, one and several row blocks)."""
    expected = []
    for xi in indices:
        num, den = 1, 1
        for xj in indices:
            if xj != xi:
                num, den = num * xj % PRIME, den * (xj - xi) % PRIME
        expected.append(num * pow(den, -1, PRIME) % PRIME)
    assert lagrange_at_zero(indices) == expected
