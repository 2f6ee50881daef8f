"""Noise mechanisms: exactness of the integer sampler, variances, placement, randomness."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from scipy import stats

import dp.discrete_gaussian as dg
from crypto.rng import KeystreamRNG
from dp.errors import ConfigError
from dp.mechanisms import (
    DiscreteGaussianMechanism,
    GaussianMechanism,
    NoiseMechanism,
    distributed,
    encoded_sensitivity,
    integer_sigma,
    local,
    noise_rng,
    share,
)


def _chi2_pvalue(samples: np.ndarray, sigma: float) -> float:
    lo, hi = int(samples.min()), int(samples.max())
    support = np.arange(lo, hi + 1)
    counts = np.bincount(samples - lo, minlength=support.size).astype(float)
    pmf = dg.discrete_gaussian_pmf(sigma, support)
    tail = 1.0 - pmf.sum()  # mass outside the observed range goes to the end bins
    pmf[0] += tail / 2
    pmf[-1] += tail / 2
    exp = pmf * samples.size
    # merge bins with expected count < 5 into neighbours (from both tails inwards)
    obs_b, exp_b, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(counts, exp, strict=True):
        acc_o += o
        acc_e += e
        if acc_e >= 5:
            obs_b.append(acc_o)
            exp_b.append(acc_e)
            acc_o = acc_e = 0.0
    obs_b[-1] += acc_o
    exp_b[-1] += acc_e
    exp_arr = np.array(exp_b) * (sum(obs_b) / sum(exp_b))
    return float(stats.chisquare(obs_b, exp_arr).pvalue)


@pytest.mark.parametrize("sigma", [0.8, 3.5, 40.0])
def test_discrete_gaussian_goodness_of_fit(sigma: float) -> None:
    rng = KeystreamRNG.from_seed(11, f"gof-{sigma}")
    x = dg.sample_discrete_gaussian(sigma, 200_000, rng)
    assert x.dtype == np.int64
    assert _chi2_pvalue(x, sigma) > 1e-3


def test_goodness_of_fit_detects_wrong_scale() -> None:
    x = dg.sample_discrete_gaussian(3.5, 200_000, KeystreamRNG.from_seed(2))
    assert _chi2_pvalue(x, 3.3) < 1e-6  # the test has power: 6% off in scale fails


def test_exp_neg_bounds_bracket_the_true_value() -> None:
    mpmath.mp.prec = 300
    for g in [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(7, 2), Fraction(123, 10)]:
        lo, hi = dg._exp_neg_bounds(g, 30)
        true = mpmath.exp(-mpmath.mpf(g.numerator) / g.denominator)
        assert mpmath.mpf(lo.numerator) / lo.denominator <= true
        assert true <= mpmath.mpf(hi.numerator) / hi.denominator
        assert hi - lo < Fraction(1, 10**20)


@pytest.mark.parametrize("gamma", [Fraction(1, 3), Fraction(5, 2)])
def test_exact_bernoulli_refines_the_same_uniform(gamma: Fraction) -> None:
    mpmath.mp.prec = 200
    p = mpmath.exp(-mpmath.mpf(gamma.numerator) / gamma.denominator) * mpmath.mpf(2) ** 64
    word = int(mpmath.floor(p))
    frac = float(p - word)  # P(u < p | first 64 bits of u == word)
    rng = KeystreamRNG.from_seed(5, str(gamma))
    assert dg.exact_bernoulli_exp_neg(word - 1, gamma, rng)
    assert not dg.exact_bernoulli_exp_neg(word + 1, gamma, rng)
    hits = sum(dg.exact_bernoulli_exp_neg(word, gamma, rng) for _ in range(3000))
    se = math.sqrt(frac * (1 - frac) / 3000)
    assert abs(hits / 3000 - frac) < 4 * se


def test_fast_path_and_exact_path_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    gam = np.full(8_000, 0.7)
    p = math.exp(-0.7)
    fast = dg.bernoulli_exp_neg(gam, lambda i: Fraction(7, 10), KeystreamRNG.from_seed(1))
    monkeypatch.setattr(dg, "REL", 0.9)  # almost everything goes through the exact path
    calls = []

    def exact(i: int) -> Fraction:
        calls.append(i)
        return Fraction(7, 10)

    slow = dg.bernoulli_exp_neg(gam, exact, KeystreamRNG.from_seed(2))
    assert len(calls) > 4_000
    se = math.sqrt(p * (1 - p) / gam.size)
    assert abs(fast.mean() - p) < 4 * se
    assert abs(slow.mean() - p) < 4 * se


def test_discrete_laplace_pmf() -> None:
    t = 3
    x = dg.discrete_laplace(t, 100_000, KeystreamRNG.from_seed(9))
    ks = np.arange(-6, 7)
    pmf = np.exp(-np.abs(ks) / t) * (1 - math.exp(-1 / t)) / (1 + math.exp(-1 / t))
    emp = np.array([(x == k).mean() for k in ks])
    assert np.all(np.abs(emp - pmf) < 4 * np.sqrt(pmf * (1 - pmf) / x.size) + 1e-4)


@pytest.mark.parametrize("hardened", [False, True])
def test_float_gaussian_variance_within_three_standard_errors(hardened: bool) -> None:
    rng = KeystreamRNG.hardened() if hardened else KeystreamRNG.from_seed(3)
    mech = GaussianMechanism(2.5)
    n = 400_000
    x = mech.sample(n, rng)
    se = mech.variance() * math.sqrt(2.0 / (n - 1))
    assert abs(x.var(ddof=1) - mech.variance()) < 3 * se
    assert abs(x.mean()) < 3 * mech.std / math.sqrt(n)


def test_float_gaussian_hardened_uses_four_normals() -> None:
    a = GaussianMechanism(1.0).sample(8, KeystreamRNG.from_seed(4))
    rng = KeystreamRNG.from_seed(4)
    rng.hardened_mode = True  # same stream, hardened construction
    b = GaussianMechanism(1.0).sample(8, rng)
    ref = KeystreamRNG.from_seed(4).standard_normal(32).reshape(4, 8).sum(axis=0) / 2
    assert np.allclose(b, ref) and not np.allclose(a, b)


@pytest.mark.parametrize(
    "mech", [GaussianMechanism(3.0), DiscreteGaussianMechanism(3.0), DiscreteGaussianMechanism(1.2)]
)
@pytest.mark.parametrize("t", [1, 3, 7])
def test_distributed_shares_of_t_survivors_carry_the_target(mech: NoiseMechanism, t: int) -> None:
    s = distributed(mech, t)
    assert t * s.variance() >= mech.variance()
    assert t * s.std**2 >= mech.std**2
    assert local(mech) is mech
    rng = KeystreamRNG.from_seed(21, f"{mech}-{t}")
    n = 100_000
    total = sum(s.sample(n, rng).astype(np.float64) for _ in range(t))
    se = t * s.variance() * math.sqrt(2.0 / (n - 1))
    assert total.var(ddof=1) > mech.variance() - 3 * se
    assert abs(total.var(ddof=1) - t * s.variance()) < 3 * se


def test_discrete_gaussian_variance_below_sigma_squared_for_small_sigma() -> None:
    v = dg.discrete_gaussian_variance(0.5)
    assert 0.8 * 0.25 < v < 0.25
    assert dg.discrete_gaussian_variance(10.0) == 100.0


def test_mechanisms_share_one_interface() -> None:
    rng = KeystreamRNG.from_seed(8)
    for mech in (GaussianMechanism(1.0), DiscreteGaussianMechanism(4.0)):
        assert isinstance(mech, NoiseMechanism)
        assert share(mech, "distributed", 4).std == pytest.approx(mech.std / 2, rel=1e-6)
        x = np.zeros(16, dtype=np.int64)
        y = mech.add(x, rng)
        assert y.shape == (16,) and not np.array_equal(y, x) and np.all(x == 0)
    with pytest.raises(ConfigError):
        DiscreteGaussianMechanism(4.0).add(np.zeros(3), rng)
    with pytest.raises(ConfigError):
        share(GaussianMechanism(1.0), "everywhere", 2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        distributed(GaussianMechanism(1.0), 0)
    with pytest.raises(ConfigError):
        GaussianMechanism(0.0)


def test_integer_units() -> None:
    assert integer_sigma(1.5, 2.0, 1024.0) == 1.5 * 2.0 * 1024.0
    l2, l1 = encoded_sensitivity(1.0, 100.0, 16)
    assert l2 == 104.0 and l1 == 104.0 * 4.0


def test_hardened_mode_refuses_seeds_and_seeded_mode_reproduces() -> None:
    with pytest.raises(ConfigError):
        noise_rng(hardened=True, seed=1)
    with pytest.raises(ConfigError):
        noise_rng(hardened=False)
    a = DiscreteGaussianMechanism(5.0).sample(100, noise_rng(hardened=False, seed=3))
    b = DiscreteGaussianMechanism(5.0).sample(100, noise_rng(hardened=False, seed=3))
    c = DiscreteGaussianMechanism(5.0).sample(100, noise_rng(hardened=True))
    d = DiscreteGaussianMechanism(5.0).sample(100, noise_rng(hardened=True))
    assert np.array_equal(a, b) and not np.array_equal(c, d)
    assert noise_rng(hardened=True).hardened_mode
