"""Noise mechanisms behind one interface, and where the noise is placed (client side).

Two mechanisms implement :class:`NoiseMechanism`:

* :class:`GaussianMechanism`: float noise N(0, std^2) on float vectors (before encoding),
  std = noise_multiplier * clip. In hardened mode each sample is the sum of four
  Box-Muller normals divided by two (the construction Opacus uses in ``secure_mode``,
  after Holohan and Braghin 2021) to blunt floating-point precision attacks.
* :class:`DiscreteGaussianMechanism`: integer noise N_Z(0, sigma^2) on encoded integer
  vectors (after the fixed-point codec, before SecAgg masking), sigma in encoded units:
  ``sigma_int = gamma * noise_multiplier * clip`` for a codec of scale gamma.

Why the discrete Gaussian and not Skellam. (1) It can be sampled *exactly* from uniform
bits with integer comparisons (Canonne-Kamath-Steinke), which we vectorize with a lazy
exact Bernoulli (see :mod:`dp.discrete_gaussian`); Skellam needs Poisson variates, whose
fast samplers are floating-point approximations. (2) With a single share (``local``) its
Renyi DP is exactly the Gaussian's, alpha * Delta^2 / (2 sigma^2), and with n shares the
Kairouz-Liu-Steinke (ICML 2021) bound adds only a tau term that vanishes exponentially in
sigma^2, so it tends to the Gaussian accountant; Skellam's bound (Agarwal-Kairouz-Liu
2021) carries a 1/mu^2 correction that decays only polynomially.

Placement (who adds how much):

* ``local``: every client adds the full noise; private even without SecAgg.
* ``distributed``: every client adds a share sized so that the sum over *any* ``t``
  survivors carries at least the target noise (variance t * share >= target). The ledger
  must record the noise actually summed (the survivors), see :mod:`dp.ledger`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from crypto.rng import KeystreamRNG
from dp.discrete_gaussian import discrete_gaussian_variance, sample_discrete_gaussian
from dp.errors import ConfigError
from dp.normal import keystream_gaussian

Placement = Literal["local", "distributed"]
PLACEMENTS: tuple[str, ...] = ("local", "distributed")


@runtime_checkable
class NoiseMechanism(Protocol):
    """What every noise mechanism offers (client side)."""

    @property
    def kind(self) -> str: ...

    @property
    def std(self) -> float:
        """Noise scale parameter in the units of the vector it is added to."""
        ...

    def variance(self) -> float:
        """Exact per-coordinate variance of one draw, in squared vector units."""
        ...

    def sample(self, n: int, rng: KeystreamRNG) -> np.ndarray:
        """n independent noise coordinates drawn from ``rng``."""
        ...

    def add(self, x: np.ndarray, rng: KeystreamRNG) -> np.ndarray:
        """Return ``x`` plus fresh noise (a new array; ``x`` is not modified)."""
        ...

    def share(self, placement: Placement, threshold: int) -> NoiseMechanism:
        """The per-client mechanism for ``placement`` (see :func:`share`)."""
        ...


def _check_scale(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be positive and finite, got {value}")


def _check_threshold(threshold: int) -> None:
    if threshold < 1:
        raise ConfigError(f"distributed noise needs a survivor threshold t >= 1, got {threshold}")


@dataclass(frozen=True, slots=True)
class GaussianMechanism:
    """Float Gaussian noise N(0, std^2) per coordinate; std in the vector's units."""

    std: float

    def __post_init__(self) -> None:
        _check_scale("GaussianMechanism.std", self.std)

    @property
    def kind(self) -> str:
        return "gaussian"

    def variance(self) -> float:
        return self.std * self.std

    def sample(self, n: int, rng: KeystreamRNG) -> np.ndarray:
        # hardened: each draw is the sum of four normals over 2, as Opacus's secure_mode
        return keystream_gaussian(n, self.std, rng).numpy()

    def add(self, x: np.ndarray, rng: KeystreamRNG) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x + self.sample(x.size, rng).reshape(x.shape)

    def share(self, placement: Placement, threshold: int) -> GaussianMechanism:
        if placement == "local":
            return self
        _check_placement(placement)
        _check_threshold(threshold)
        s = self.std / math.sqrt(threshold)
        while threshold * s * s < self.variance():  # guard the last ulp
            s = math.nextafter(s, math.inf)
        return GaussianMechanism(s)


@dataclass(frozen=True, slots=True)
class DiscreteGaussianMechanism:
    """Integer noise N_Z(0, sigma^2) per coordinate; sigma in encoded integer units."""

    sigma: float

    def __post_init__(self) -> None:
        _check_scale("DiscreteGaussianMechanism.sigma", self.sigma)

    @property
    def kind(self) -> str:
        return "discrete_gaussian"

    @property
    def std(self) -> float:
        return self.sigma

    def variance(self) -> float:
        return discrete_gaussian_variance(self.sigma)

    def sample(self, n: int, rng: KeystreamRNG) -> np.ndarray:
        return sample_discrete_gaussian(self.sigma, n, rng)

    def add(self, x: np.ndarray, rng: KeystreamRNG) -> np.ndarray:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.integer):
            raise ConfigError("DiscreteGaussianMechanism adds to encoded integer vectors only")
        return x.astype(np.int64) + self.sample(x.size, rng).reshape(x.shape)

    def share(self, placement: Placement, threshold: int) -> DiscreteGaussianMechanism:
        """Per-client sigma such that ``threshold`` shares carry >= this variance and sigma.

        Both the parameter (t * share^2 >= sigma^2, what the accountant uses) and the true
        variance (slightly below share^2 for share < 5) are guaranteed.
        """
        if placement == "local":
            return self
        _check_placement(placement)
        _check_threshold(threshold)
        target = self.variance()
        s = self.sigma / math.sqrt(threshold)
        while threshold * s * s < self.sigma**2:
            s = math.nextafter(s, math.inf)
        return DiscreteGaussianMechanism(_raise_until(s, lambda v: threshold * v >= target))


def _raise_until(s: float, ok: Callable[[float], bool]) -> float:
    """Smallest sigma >= s (to 1e-12 relative) with ok(variance(sigma)); variance grows."""
    if ok(discrete_gaussian_variance(s)):
        return s
    lo, hi = s, s * 1.25
    while not ok(discrete_gaussian_variance(hi)):
        lo, hi = hi, hi * 1.25
    while hi - lo > 1e-12 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(discrete_gaussian_variance(mid)) else (mid, hi)
    return hi


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ConfigError(f"noise placement must be one of {PLACEMENTS}, got {placement!r}")


def share(mechanism: NoiseMechanism, placement: Placement, threshold: int = 1) -> NoiseMechanism:
    """Per-client mechanism: ``local`` = all of it, ``distributed`` = a 1/t share of variance."""
    _check_placement(placement)
    return mechanism.share(placement, threshold)


def local(mechanism: NoiseMechanism) -> NoiseMechanism:
    """Placement ``local``: each client adds the full noise."""
    return share(mechanism, "local")


def distributed(mechanism: NoiseMechanism, threshold: int) -> NoiseMechanism:
    """Placement ``distributed``: each client adds a share so any ``threshold`` survivors'
    sum carries at least the target noise."""
    return share(mechanism, "distributed", threshold)


def integer_sigma(noise_multiplier: float, clip: float, gamma: float) -> float:
    """Discrete Gaussian sigma in encoded units for a codec of scale ``gamma``.

    ``gamma`` is integer units per float unit; ``clip`` the L2 sensitivity in float units.
    """
    _check_scale("noise_multiplier", noise_multiplier)
    _check_scale("clip", clip)
    _check_scale("gamma", gamma)
    return gamma * noise_multiplier * clip


def encoded_sensitivity(clip: float, gamma: float, dim: int) -> tuple[float, float]:
    """(L2, L1) sensitivity in encoded units after scaling by gamma and stochastic rounding.

    Stochastic rounding moves each coordinate by < 1, so the L2 norm grows by at most
    sqrt(dim) (KLS 2021, Thm. 1 with beta = 0); on the integer grid L1 <= L2^2 and
    L1 <= sqrt(dim) L2.
    """
    _check_scale("clip", clip)
    _check_scale("gamma", gamma)
    if dim < 1:
        raise ConfigError(f"dim must be >= 1, got {dim}")
    l2 = gamma * clip + math.sqrt(dim)
    return l2, l2 * min(math.sqrt(dim), l2)


def noise_rng(*, hardened: bool, seed: int | None = None, label: str = "dp-noise"
              ) -> KeystreamRNG:
    """The generator for noise and sampling decisions.

    ``hardened=True``: keyed from the OS CSPRNG; a seed is refused (it would make the
    noise reproducible by whoever knows it). ``hardened=False``: seeded, for tests and
    reproducible experiments only; a seed is required.
    """
    if hardened:
        if seed is not None:
            raise ConfigError("hardened mode refuses a seed: noise must not be reproducible")
        return KeystreamRNG.hardened()
    if seed is None:
        raise ConfigError("seeded (non-hardened) noise needs an explicit seed")
    return KeystreamRNG.from_seed(seed, label)
