"""Vectorized exact sampler for the discrete Gaussian N_Z(0, sigma^2) (client side).

The algorithm is Canonne-Kamath-Steinke (NeurIPS 2020), Algorithm 3: propose Y from the
discrete Laplace with scale t = floor(sigma) + 1 (their Algorithm 2: U uniform on {0..t-1}
kept with probability exp(-U/t), plus t times a geometric count of Bernoulli(exp(-1))
successes, random sign, reject "-0"), keep Y with probability exp(-(|Y| - sigma^2/t)^2 /
(2 sigma^2)). Every random decision is a uniform integer or a Bernoulli(exp(-gamma)).

Exactness argument. The only step that touches floating point is Bernoulli(exp(-gamma)),
and it is decided *lazily and exactly*: we draw a 64-bit word U, which fixes the uniform
u in [U/2^64, (U+1)/2^64), and compare with a float p = exp(-gamma) whose relative error
we bound by 2^-40 (gamma <= 700 is computed from exact integers and a float sigma^2 in a
handful of correctly rounded operations, each at most 2^-53 relative; numpy's exp is
within 1 ulp). We use the much wider margin REL = 2^-32: if (U+1)/2^64 <= p(1-REL) then
u < exp(-gamma) for certain, if U/2^64 >= p(1+REL) then u > exp(-gamma) for certain.
Otherwise (probability <= 2^-30 per decision) the same u is refined 64 bits at a time and
compared with rational lower/upper bounds of exp(-gamma) from its alternating Taylor
series, evaluated in exact rational arithmetic on the exact gamma (sigma^2 is taken as the
exact dyadic rational of the float sigma squared). So each decision equals the ideal
Bernoulli(exp(-gamma)) given the keystream bits, the output has exactly the N_Z(0,
sigma^2) distribution given uniform keystream bits, and there is no floating-point output
that could leak through its low bits (Mironov 2012): the output is an integer.

The uniform bits come from :class:`crypto.rng.KeystreamRNG` (AES-256-CTR), hardened or
seeded. Throughput: see benchmarks/bench_dp.py (about 10^6+ samples/s in hardened mode).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from crypto.rng import KeystreamRNG
from dp.errors import ConfigError

REL = 2.0**-32  # relative error margin of the float fast path (true error <= 2^-40)
_TWO64 = float(2**64)
_GAMMA_MAX = 700.0  # above this exp(-gamma) < 2^-1000; the fast path rejects unless U == 0

GammaFn = Callable[[int], Fraction]  # exact gamma of candidate number i (fallback only)


def _exp_neg_bounds(gamma: Fraction, terms: int) -> tuple[Fraction, Fraction]:
    """Rational (lower, upper) bounds on exp(-gamma) for gamma >= 0.

    exp(-r) for r in [0, 1] is an alternating series with non-increasing terms, so its
    partial sums bracket it; exp(-gamma) = exp(-1)^floor(gamma) * exp(-frac(gamma)).
    """
    n = gamma.numerator // gamma.denominator
    r = gamma - n

    def bracket(x: Fraction) -> tuple[Fraction, Fraction]:
        term, s = Fraction(1), Fraction(1)
        sums = [s]
        for i in range(1, terms + 1):
            term = -term * x / i
            s += term
            sums.append(s)
        a, b = sums[-1], sums[-2]
        return (min(a, b), max(a, b))

    lo_r, hi_r = bracket(r)
    lo_1, hi_1 = bracket(Fraction(1)) if n else (Fraction(1), Fraction(1))
    lo_r, lo_1 = max(lo_r, Fraction(0)), max(lo_1, Fraction(0))
    return (lo_1**n * lo_r, hi_1**n * hi_r)


def exact_bernoulli_exp_neg(word: int, gamma: Fraction, rng: KeystreamRNG) -> bool:
    """Decide u < exp(-gamma) exactly, where u's first 64 bits are ``word``.

    Further bits of u are drawn from ``rng`` 64 at a time until the comparison with a
    rational bracket of exp(-gamma) is decided (terminates with probability 1).
    """
    if gamma < 0:
        raise ConfigError("gamma must be >= 0")
    num, bits, terms = word, 64, 16
    while True:
        if num >= 1 and bits * math.log(2) <= float(gamma) - 1.0:
            return False  # u >= 2^-bits > exp(-gamma): decided without a bracket
        lo, hi = _exp_neg_bounds(gamma, terms)
        if Fraction(num + 1, 1 << bits) <= lo:
            return True
        if Fraction(num, 1 << bits) >= hi:
            return False
        num = (num << 64) | int(rng.uint64(1)[0])
        bits += 64
        terms *= 2


def bernoulli_exp_neg(gamma: np.ndarray, exact_gamma: GammaFn, rng: KeystreamRNG) -> np.ndarray:
    """Vectorized Bernoulli(exp(-gamma[i])) decisions, exact (see the module docstring).

    ``gamma`` holds float64 approximations (relative error <= 2^-40) of the exact values
    that ``exact_gamma(i)`` returns; the exact values are only asked for the rare
    undecided entries.
    """
    g = np.asarray(gamma, dtype=np.float64)
    words = rng.uint64(g.size)
    far = g > _GAMMA_MAX
    p = np.exp(-np.where(far, 0.0, g))
    lo = np.where(far, 0.0, np.floor(p * (1.0 - REL) * _TWO64))
    hi = np.where(far, 1.0, np.ceil(p * (1.0 + REL) * _TWO64))
    hi_capped = hi >= _TWO64
    lo_w = lo.astype(np.uint64)
    hi_w = np.where(hi_capped, 0.0, hi).astype(np.uint64)
    accept = words < lo_w
    reject = ~hi_capped & (words >= hi_w)
    undecided = np.flatnonzero(~accept & ~reject)
    for i in undecided:
        accept[i] = exact_bernoulli_exp_neg(int(words[i]), exact_gamma(int(i)), rng)
    return accept


def _geometric_exp_neg1(n: int, rng: KeystreamRNG) -> np.ndarray:
    """n draws of V = number of Bernoulli(exp(-1)) successes before the first failure."""
    v = np.zeros(n, dtype=np.int64)
    active = np.arange(n)
    one = Fraction(1)
    while active.size:
        ok = bernoulli_exp_neg(np.ones(active.size), lambda _i: one, rng)
        active = active[ok]
        v[active] += 1
    return v


def _ratio_fn(u: np.ndarray, t: int) -> GammaFn:
    """Exact gamma_i = u[i] / t for the fallback path."""
    return lambda i: Fraction(int(u[i]), t)


def discrete_laplace(t: int, n: int, rng: KeystreamRNG) -> np.ndarray:
    """n exact draws with P(y) proportional to exp(-|y|/t), integer t >= 1 (CKS Alg. 2)."""
    if t < 1:
        raise ConfigError(f"discrete Laplace scale t must be an integer >= 1, got {t}")
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        m = int((n - filled) * 1.7) + 16
        u = rng.integers(0, t, m)
        keep = bernoulli_exp_neg(u / t, _ratio_fn(u, t), rng)
        u = u[keep]
        x = u + t * _geometric_exp_neg1(u.size, rng)
        neg = rng.bernoulli(0.5, u.size)  # exact: top bit test of a 53-bit uniform
        ok = ~(neg & (x == 0))
        y = np.where(neg, -x, x)[ok][: n - filled]
        out[filled : filled + y.size] = y
        filled += y.size
    return out


def sample_discrete_gaussian(sigma: float, n: int, rng: KeystreamRNG) -> np.ndarray:
    """n exact draws from N_Z(0, sigma^2) as int64 (CKS Alg. 3), sigma in integer units."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ConfigError(f"discrete Gaussian sigma must be positive and finite, got {sigma}")
    s2 = Fraction(sigma) ** 2
    s2f = float(s2)
    t = math.floor(sigma) + 1
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        m = int((n - filled) * 1.5) + 16
        y = discrete_laplace(t, m, rng)
        a = np.abs(y).astype(np.float64)
        gam = (a - s2f / t) ** 2 / (2.0 * s2f)

        def exact(i: int, y: np.ndarray = y) -> Fraction:
            d = abs(int(y[i])) - s2 / t
            return d * d / (2 * s2)

        keep = bernoulli_exp_neg(gam, exact, rng)
        acc = y[keep][: n - filled]
        out[filled : filled + acc.size] = acc
        filled += acc.size
    return out


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """Exact-to-float pmf of N_Z(0, sigma^2) on integer ``support`` (tests, variance)."""
    half = int(math.ceil(sigma * 40)) + 2
    ks = np.arange(-half, half + 1, dtype=np.float64)
    z = np.exp(-(ks**2) / (2 * sigma * sigma)).sum()
    return np.exp(-(np.asarray(support, dtype=np.float64) ** 2) / (2 * sigma * sigma)) / z


def discrete_gaussian_variance(sigma: float) -> float:
    """Variance of N_Z(0, sigma^2) in integer units squared.

    At most sigma^2, and at least sigma^2 (1 - 4 pi^2 sigma^2 / (exp(4 pi^2 sigma^2) - 1))
    (CKS Prop. 19), so for sigma >= 5 it is sigma^2 to double precision; below, sum the pmf.
    """
    if sigma >= 5.0:
        return sigma * sigma
    half = int(math.ceil(sigma * 40)) + 2
    ks = np.arange(-half, half + 1)
    return float((discrete_gaussian_pmf(sigma, ks) * ks.astype(np.float64) ** 2).sum())
