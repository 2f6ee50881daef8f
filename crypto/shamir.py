"""Shamir t-of-n secret sharing of byte strings (up to 32 bytes) over GF(p), p = 2^257 - 93.

Clients share their masking key and self-mask seed among their neighbours; the server
reconstructs from the survivors' shares. Field choice: ``p = 2^257 - 93`` is the largest
prime below 2^257 (primality is checked in the tests). It is the smallest prime size that
holds every 32-byte secret (< 2^256 < p) without loss, so a field element is a fixed 33
bytes on the wire, and being pseudo-Mersenne (2^257 minus a 7-bit constant) it keeps the
coefficients' rejection sampling essentially free (one 257-bit draw in ~2^250 is rejected).
Python's big integers do the arithmetic; evaluation is Horner's rule over all secrets and
all share points at once, with lazy reduction (mod p only every few steps, while the
unreduced value stays a few hundred bits), and Lagrange coefficients at zero are computed
once per index set with a single modular inversion (batched-inverse trick) and cached.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from crypto.errors import SharingError
from crypto.rng import KeystreamRNG

PRIME = (1 << 257) - 93
ELEMENT_BYTES = 33  # fixed width of one field element on the wire (bytes)
MAX_SECRET_BYTES = 32
MAX_INDEX = (1 << 32) - 1  # share indices are 1..MAX_INDEX (4 bytes on the wire)
_INDEX_BYTES = 4
_COUNT_BYTES = 2
_HEAD = struct.Struct(">IH")  # index, element count
_set_field = object.__setattr__  # how a frozen dataclass sets its own fields
_LAZY_BITS = 256  # let Horner's accumulator grow by this many bits before reducing
_PRODUCT_RUN = 32  # int64 partial products multiplied before one reduction mod p
_ROW_BLOCK = 256  # rows of the difference matrix held at once (caps memory at 2 KiB * t)


@dataclass(frozen=True, slots=True, init=False)
class Share:
    """One holder's share: its index (1..n) and one field element per shared secret."""

    index: int
    values: tuple[int, ...]

    def __init__(self, index: int, values: tuple[int, ...]) -> None:
        # validated before the fields are set, in plain loops (no generator): the server
        # builds ~10^5 shares per round while decoding unmasking messages
        if not isinstance(index, int) or not 1 <= index <= MAX_INDEX:
            raise SharingError("share index out of range")
        if not 1 <= len(values) < (1 << 16):
            raise SharingError("a share must hold 1..65535 field elements")
        for v in values:
            if not isinstance(v, int) or not 0 <= v < PRIME:
                raise SharingError("share value is not a field element")
        _set_field(self, "index", index)
        _set_field(self, "values", values)

    def __repr__(self) -> str:  # shares are secret material
        return f"Share(index={self.index}, values=<{len(self.values)} elements>)"


def _check_indices(indices: Sequence[int]) -> tuple[int, ...]:
    idx = tuple(int(i) for i in indices)
    if any(not 1 <= i <= MAX_INDEX for i in idx):
        raise SharingError(f"share indices must be in 1..{MAX_INDEX}")
    if len(set(idx)) != len(idx):
        raise SharingError("duplicate share indices")
    return idx


def _random_elements(rng: KeystreamRNG, count: int) -> list[int]:
    """``count`` uniform field elements (rejection sampling on 257-bit draws)."""
    out: list[int] = []
    top = (1 << 257) - 1
    while len(out) < count:
        need = count - len(out)
        raw = rng.bytes(ELEMENT_BYTES * need)
        for k in range(need):
            v = int.from_bytes(raw[k * ELEMENT_BYTES : (k + 1) * ELEMENT_BYTES], "big") & top
            if v < PRIME:
                out.append(v)
    return out


def _evaluate(coeffs: list[list[int]], xs: tuple[int, ...]) -> np.ndarray:
    """Evaluate each polynomial (row of low-to-high coefficients) at every x: (k, n) ints."""
    x_arr = np.array(xs, dtype=object)
    mat = np.array(coeffs, dtype=object)  # k x t
    acc = np.zeros((len(coeffs), len(xs)), dtype=object)
    every = max(1, _LAZY_BITS // max(xs).bit_length())
    for j in range(mat.shape[1] - 1, -1, -1):
        acc *= x_arr
        acc += mat[:, j : j + 1]
        if j % every == 0:
            acc %= PRIME
    return acc % PRIME


def share_secrets(
    secrets: Sequence[bytes],
    threshold: int,
    indices: Sequence[int],
    rng: KeystreamRNG | None = None,
) -> dict[int, Share]:
    """Split each secret (<= 32 bytes, read big-endian) into shares for ``indices``.

    Client side. Any ``threshold`` of the returned shares reconstruct every secret; fewer
    reveal nothing. ``rng`` None draws the polynomial coefficients from a hardened
    (OS-keyed) stream; pass a seeded :class:`KeystreamRNG` only in tests.
    """
    idx = _check_indices(indices)
    if not secrets:
        raise SharingError("nothing to share")
    if not 1 <= threshold <= len(idx):
        raise SharingError(f"threshold must be in 1..{len(idx)} (the number of holders)")
    if any(len(s) > MAX_SECRET_BYTES for s in secrets):
        raise SharingError(f"secrets must be at most {MAX_SECRET_BYTES} bytes")
    gen = KeystreamRNG.hardened() if rng is None else rng
    rand = _random_elements(gen, len(secrets) * (threshold - 1))
    coeffs = [
        [int.from_bytes(s, "big"), *rand[k * (threshold - 1) : (k + 1) * (threshold - 1)]]
        for k, s in enumerate(secrets)
    ]
    values = _evaluate(coeffs, idx)
    return {x: Share(x, tuple(int(v) for v in values[:, col])) for col, x in enumerate(idx)}


def _batch_inverse(values: list[int]) -> list[int]:
    """Inverses mod p of nonzero ``values`` with one modular inversion (Montgomery's trick)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % PRIME
        inv = inv * values[i] % PRIME
    return out


def _difference_products(idx: tuple[int, ...]) -> list[int]:
    """d_i = x_i * prod_{j != i} (x_j - x_i) mod p for every i, in O(t^2) int64 work.

    Blocks of rows of the t x t difference matrix are multiplied in numpy in groups small
    enough that a group's product fits in int64; Python then multiplies the ~t/group
    partial products, reducing mod p once per ~2000 bits.
    """
    x = np.array(idx, dtype=np.int64)
    bits = max(1, int(x.max() - x.min()).bit_length())
    group = max(1, 62 // bits)
    pad = np.ones((-len(idx)) % group, dtype=np.int64)
    out: list[int] = []
    for start in range(0, len(idx), _ROW_BLOCK):
        rows = x[start : start + _ROW_BLOCK]
        diff = np.concatenate([x, pad])[None, :] - rows[:, None]
        diff[np.arange(rows.size), start + np.arange(rows.size)] = 1
        diff[:, len(idx) :] = 1
        partial = diff.reshape(rows.size, -1, group).prod(axis=2).tolist()
        for xi, row in zip(rows.tolist(), partial, strict=True):
            acc = xi
            for k in range(0, len(row), _PRODUCT_RUN):
                acc = acc * math.prod(row[k : k + _PRODUCT_RUN]) % PRIME
            out.append(acc)
    return out


@lru_cache(maxsize=256)
def _lagrange_cached(idx: tuple[int, ...]) -> tuple[int, ...]:
    # lambda_i = prod_{j != i} x_j / (x_j - x_i) = N / (x_i * prod_{j != i} (x_j - x_i))
    numerator = 1
    for x in idx:
        numerator = numerator * x % PRIME
    inverses = _batch_inverse(_difference_products(idx))
    return tuple(numerator * inv % PRIME for inv in inverses)


def lagrange_at_zero(indices: Sequence[int]) -> list[int]:
    """Lagrange basis coefficients at x = 0 for ``indices`` (cached per ordered index set).

    Server side: secret = sum_i lambda_i * y_i mod p, for every secret shared on this set.
    """
    idx = _check_indices(indices)
    if not idx:
        raise SharingError("need at least one share index")
    return list(_lagrange_cached(idx))


def common_index_sets(available: Sequence[Collection[int]], threshold: int
                      ) -> list[tuple[int, ...]]:
    """Choose ``threshold`` share indices per secret so that neighbours in the given order
    reuse one choice (server side).

    ``available[j]``: the indices of the shares that arrived for secret j. Any t of them
    reconstruct it, so the choice only matters for speed: greedily, consecutive secrets
    join one group while the intersection of their available sets still holds t indices,
    and the whole group uses the t smallest of that intersection. Lagrange coefficients are
    then computed once per group instead of once per secret (on a SecAgg+ ring whose
    secrets are visited in ring order a group spans about k - t/(1-dropout) neighbours;
    on the complete graph all secrets form one group). For each fixed order the greedy
    grouping is the coarsest possible. Raises :class:`SharingError` if some secret has
    fewer than ``threshold`` shares.
    """
    if threshold < 1:
        raise SharingError("threshold must be at least 1")
    out: list[tuple[int, ...]] = []
    current: set[int] = set()
    size = 0  # secrets in the open group
    for avail in available:
        if len(avail) < threshold:
            raise SharingError(f"need at least {threshold} shares, got {len(avail)}")
        joined = current.intersection(avail) if size else set(avail)
        if len(joined) < threshold:
            out.extend([tuple(sorted(current)[:threshold])] * size)
            joined, size = set(avail), 0
        current, size = joined, size + 1
    if size:
        out.extend([tuple(sorted(current)[:threshold])] * size)
    return out


def interpolate_at_zero(indices: Sequence[int], rows: Sequence[Sequence[int]]) -> list[int]:
    """``sum_i lambda_i * y_i mod p`` for each row ``y`` of share values on ``indices``.

    Server side: every secret whose chosen shares sit on the same index set reuses one set
    of (cached) Lagrange coefficients; each row costs t big-integer products.
    """
    lam = lagrange_at_zero(indices)
    out = []
    for row in rows:
        if len(row) != len(lam):
            raise SharingError("need one share value per index")
        out.append(sum(map(operator.mul, lam, row)) % PRIME)
    return out


def reconstruct(
    shares: Sequence[Share], threshold: int, secret_lengths: Sequence[int] | int = 32
) -> list[bytes]:
    """Recover every shared secret from at least ``threshold`` distinct shares.

    Server side. Uses the ``threshold`` shares with the smallest indices (so the cached
    Lagrange coefficients are reused); ``secret_lengths`` gives each secret's byte length
    (one int for all). Raises :class:`SharingError` for too few, duplicate, out-of-range or
    inconsistent shares (a value that does not fit its declared length).
    """
    if threshold < 1 or len(shares) < threshold:
        raise SharingError(f"need at least {max(threshold, 1)} shares, got {len(shares)}")
    _check_indices([s.index for s in shares])
    width = {len(s.values) for s in shares}
    if len(width) != 1:
        raise SharingError("shares hold different numbers of secrets")
    count = width.pop()
    lengths = [secret_lengths] * count if isinstance(secret_lengths, int) else list(secret_lengths)
    if len(lengths) != count or any(not 0 <= n <= MAX_SECRET_BYTES for n in lengths):
        raise SharingError(f"need {count} secret lengths, each in 0..{MAX_SECRET_BYTES}")
    chosen = sorted(shares, key=lambda s: s.index)[:threshold]
    lam = _lagrange_cached(tuple(s.index for s in chosen))
    out: list[bytes] = []
    for k, length in enumerate(lengths):
        value = sum(li * s.values[k] for li, s in zip(lam, chosen, strict=True)) % PRIME
        if value >> (8 * length):
            raise SharingError("shares are inconsistent")
        out.append(value.to_bytes(length, "big"))
    return out


def share_to_bytes(share: Share) -> bytes:
    """Wire form: 4-byte index, 2-byte count, then 33 bytes per field element (big-endian)."""
    head = share.index.to_bytes(_INDEX_BYTES, "big") + len(share.values).to_bytes(2, "big")
    return head + b"".join(v.to_bytes(ELEMENT_BYTES, "big") for v in share.values)


def share_from_bytes(data: bytes) -> Share:
    """Parse :func:`share_to_bytes` output; raises :class:`SharingError` if malformed."""
    head = _INDEX_BYTES + _COUNT_BYTES
    if len(data) < head:
        raise SharingError("malformed share encoding")
    index, count = _HEAD.unpack_from(data)
    if len(data) != head + count * ELEMENT_BYTES:
        raise SharingError("malformed share encoding")
    if count == 1:  # unmasking shares: one element, parsed without a generator
        return Share(index, (int.from_bytes(data[head:], "big"),))
    values = tuple(
        int.from_bytes(data[head + k * ELEMENT_BYTES : head + (k + 1) * ELEMENT_BYTES], "big")
        for k in range(count)
    )
    return Share(index, values)
