"""Accountants over mechanism events: RDP and PRV (server side, also used for planning).

An accountant is a pure function of an event sequence: ``epsilon(events, delta)``. It
holds no state, so a ledger replayed from JSON yields bit-identical epsilons.

* ``rdp``: Gaussian events use Opacus's ``compute_rdp`` on Opacus's default orders
  (``RDPAccountant.DEFAULT_ALPHAS``) and its RDP-to-(eps, delta) conversion, so on plain
  subsampled Gaussians this is Opacus's RDP accountant to the last bit. Discrete Gaussian
  events use the Kairouz-Liu-Steinke (ICML 2021) Prop. 14 bound, implemented here, with
  Poisson subsampling by the general bound of Zhu-Wang (ICML 2019, Thm. 6, the "3"
  factor version) at integer orders; fractional orders use the next integer order
  (Renyi divergence is non-decreasing in the order).
* ``prv``: Opacus's PRV accountant (Gopi et al. 2021), eps_error 0.01 and delta_error
  delta/1000 as Opacus defaults; Gaussian events only. A non-finite or failed result
  raises :class:`AccountingError` so callers can fall back to RDP and say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np
from opacus.accountants import PRVAccountant as _OpacusPRV
from opacus.accountants import RDPAccountant as _OpacusRDP
from opacus.accountants.analysis import rdp as _opacus_rdp
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size
from scipy import special

from dp.errors import AccountingError, ConfigError
from dp.events import DiscreteGaussianEvent, Event, GaussianEvent

RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in _OpacusRDP.DEFAULT_ALPHAS)
PRV_EPS_ERROR = 0.01
PRV_MAX_POINTS = 2e7  # the grid size past which PRV takes minutes (3.5e7 points: inf)
ACCOUNTANT_NAMES: tuple[str, ...] = ("rdp", "prv")


class Accountant(Protocol):
    """Epsilon of an event sequence at a given delta; no state."""

    name: str

    def epsilon(self, events: Sequence[Event], delta: float) -> float: ...


# -- discrete Gaussian RDP (KLS 2021 Prop. 14) ----------------------------------------------
def ddg_tau(sigma: float, shares: int) -> float:
    """tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1)) for n shares of N_Z(0, s^2)."""
    return 10.0 * sum(
        math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, shares)
    )


def ddg_rdp_unsampled(event: DiscreteGaussianEvent, order: float) -> float:
    """RDP at ``order`` of one release of the sum of ``shares`` discrete Gaussians.

    eps(a) = min(a/2 l2^2 + tau d, a/2 (l2^2 + 2 l1 tau + tau^2 d), a/2 (l2 + sqrt(d) tau)^2)
    with l2 = Delta_2 / (sqrt(n) sigma), l1 = Delta_1 / (sqrt(n) sigma) (KLS Prop. 14).
    """
    n, d = event.shares, event.dim
    scale = math.sqrt(n) * event.sigma
    l2, l1 = event.l2_sensitivity / scale, event.l1_sensitivity / scale
    tau = ddg_tau(event.sigma, n)
    return min(
        order / 2.0 * l2**2 + tau * d,
        order / 2.0 * (l2**2 + 2.0 * l1 * tau + tau**2 * d),
        order / 2.0 * (l2 + math.sqrt(d) * tau) ** 2,
    )


def subsampled_rdp_bound(order: int, q: float, rdp: list[float]) -> float:
    """Zhu-Wang Thm. 6: RDP at integer ``order`` >= 2 of a Poisson(q)-subsampled mechanism
    whose RDP at integer order l is ``rdp[l]`` (valid for any mechanism)."""
    a = order
    logs = [math.log((1 - q) ** (a - 1) * (a * q - q + 1))]
    coef = [1.0]
    for ell in range(2, a + 1):
        log_comb = special.gammaln(a + 1) - special.gammaln(ell + 1) - special.gammaln(a - ell + 1)
        logs.append(
            log_comb + ell * math.log(q) + (a - ell) * math.log1p(-q) + (ell - 1) * rdp[ell]
        )
        coef.append(1.0 if ell == 2 else 3.0)
    return float(special.logsumexp(logs, b=coef)) / (a - 1)


def ddg_rdp(event: DiscreteGaussianEvent, orders: Sequence[float]) -> np.ndarray:
    """RDP vector (one release times ``steps``) of a discrete Gaussian event."""
    q = event.sample_rate
    if q >= 1.0:
        per = [ddg_rdp_unsampled(event, a) for a in orders]
    else:
        top = int(math.ceil(max(orders)))
        base = [0.0, 0.0] + [ddg_rdp_unsampled(event, ell) for ell in range(2, top + 1)]
        per = []
        for a in orders:
            ai = max(2, int(math.ceil(a)))
            per.append(min(subsampled_rdp_bound(ai, q, base), base[ai]))
    return np.asarray(per, dtype=np.float64) * event.steps


@lru_cache(maxsize=8192)
def _gaussian_rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    v = np.atleast_1d(
        _opacus_rdp.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
        )
    ).astype(np.float64)
    v.setflags(write=False)
    return v


@lru_cache(maxsize=8192)
def _ddg_rdp_cached(key: tuple[float, int, float, float, int, float]) -> np.ndarray:
    sigma, shares, l2, l1, dim, q = key
    ev = DiscreteGaussianEvent(sigma, shares, l2, l1, dim, q, 1,
                               "none" if q >= 1.0 else "poisson")
    v = ddg_rdp(ev, RDP_ORDERS)
    v.setflags(write=False)
    return v


def event_rdp(event: Event) -> np.ndarray:
    """RDP vector of one event on :data:`RDP_ORDERS`.

    Per-step vectors are cached on the fields that matter for privacy (not subject,
    label or round) and multiplied by ``steps``, exactly as Opacus's ``compute_rdp`` does.
    """
    if isinstance(event, GaussianEvent):
        return _gaussian_rdp_one_step(event.noise_multiplier, event.sample_rate) * event.steps
    if isinstance(event, DiscreteGaussianEvent):
        key = (event.sigma, event.shares, event.l2_sensitivity, event.l1_sensitivity,
               event.dim, event.sample_rate)
        return _ddg_rdp_cached(key) * event.steps
    raise AccountingError(f"no RDP analysis for event type {type(event).__name__}")


def _check_delta(delta: float) -> None:
    if not (0.0 < delta < 1.0):
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


class RDPAccountant:
    """Renyi DP accountant (Opacus orders and conversion); all event types."""

    name = "rdp"

    def rdp(self, events: Sequence[Event]) -> np.ndarray:
        total = np.zeros(len(RDP_ORDERS))
        for ev in events:
            total = total + event_rdp(ev)
        return total

    def epsilon_and_order(self, events: Sequence[Event], delta: float) -> tuple[float, float]:
        _check_delta(delta)
        if not events:
            return 0.0, float("nan")
        eps, order = _opacus_rdp.get_privacy_spent(
            orders=list(RDP_ORDERS), rdp=self.rdp(events), delta=delta
        )
        return float(eps), float(order)

    def epsilon(self, events: Sequence[Event], delta: float) -> float:
        return self.epsilon_and_order(events, delta)[0]


def gaussian_history(events: Sequence[Event]) -> list[tuple[float, float, int]]:
    """Opacus-style history [(noise_multiplier, sample_rate, steps)].

    Composition commutes, so all events with the same (noise, rate) are merged, in order
    of first appearance (deterministic; fewer, larger self-compositions for the FFT).
    """
    steps: dict[tuple[float, float], int] = {}
    for ev in events:
        if not isinstance(ev, GaussianEvent):
            raise AccountingError(
                f"the PRV accountant handles Gaussian events only, got {type(ev).__name__}; "
                "use accountant='rdp'"
            )
        key = (ev.noise_multiplier, ev.sample_rate)
        steps[key] = steps.get(key, 0) + ev.steps
    return [(z, q, t) for (z, q), t in steps.items()]


def prv_grid_points(history: list[tuple[float, float, int]], delta: float,
                    eps_error: float = PRV_EPS_ERROR) -> float:
    """Points of the grid Opacus's PRV accountant would discretize on (its own formula)."""
    delta_error = delta / 1000
    length = compute_safe_domain_size(
        prvs=[PoissonSubsampledGaussianPRV(q, z) for z, q, _ in history],
        max_self_compositions=[t for _, _, t in history],
        eps_error=eps_error,
        delta_error=delta_error,
    )
    total = sum(t for _, _, t in history)
    mesh = eps_error / math.sqrt(total * math.log(12 / delta_error) / 2)
    return 2.0 * float(length) / mesh


class PRVAccountant:
    """Opacus's PRV accountant over Gaussian events; raises AccountingError if not finite.

    ``max_points`` (None: no limit) refuses histories whose discretization grid would
    exceed that many points, before spending minutes on them (noise 0.6, rate 1, 1000
    steps needs 3.5e7 points and then returns inf).
    """

    name = "prv"

    def __init__(self, eps_error: float = PRV_EPS_ERROR,
                 max_points: float | None = PRV_MAX_POINTS) -> None:
        self.eps_error = eps_error
        self.max_points = max_points

    def epsilon(self, events: Sequence[Event], delta: float) -> float:
        _check_delta(delta)
        if not events:
            return 0.0
        acc = _OpacusPRV()
        acc.history = gaussian_history(events)
        if self.max_points is not None:
            pts = prv_grid_points(acc.history, delta, self.eps_error)
            if not pts <= self.max_points:
                raise AccountingError(
                    f"PRV accountant not run: its grid would need {pts:.3g} points "
                    f"(limit {self.max_points:.3g}); use 'rdp'"
                )
        try:
            eps = float(acc.get_epsilon(delta=delta, eps_error=self.eps_error))
        except (ValueError, RuntimeError, OverflowError, FloatingPointError) as exc:
            raise AccountingError(f"PRV accountant failed ({exc}); use accountant='rdp'") from exc
        if not math.isfinite(eps):
            raise AccountingError("PRV accountant returned a non-finite epsilon; use 'rdp'")
        return eps


def get_accountant(name: str) -> Accountant:
    """The accountant called ``name`` ("rdp" or "prv")."""
    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ConfigError(f"accountant must be one of {ACCOUNTANT_NAMES}, got {name!r}")


def epsilon_with_fallback(
    events: Sequence[Event], delta: float, accountant: str
) -> tuple[float, str, str | None]:
    """(epsilon, accountant actually used, note). PRV failures fall back to RDP."""
    try:
        return get_accountant(accountant).epsilon(events, delta), accountant, None
    except AccountingError as exc:
        if accountant == "rdp":
            raise
        eps = RDPAccountant().epsilon(events, delta)
        return eps, "rdp", f"{accountant} failed: {exc}; fell back to rdp"
