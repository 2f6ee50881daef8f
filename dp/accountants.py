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
  delta/1000 as Opacus defaults; Gaussian events only. It is run and its answer checked:
  an exception, or an epsilon that is not a finite number >= 0, raises
  :class:`AccountingError` saying what happened, so callers fall back to RDP and say so
  (:func:`epsilon_with_fallback`). Known case: noise 0.6, rate 1, 1000 steps returns inf
  (epsilon there is ~1.6e3, and PRV's float64 terms exp(-t) underflow past t ~ 745). The
  one thing checked before running is memory: Opacus discretizes on a grid costing up to
  ~183 bytes per point (that case: 6.47 GB peak for the whole process, 3.53e7 points), so
  a grid that would need more than half the memory available is refused rather than risk
  the process (or its neighbours) being killed for memory.
"""

from __future__ import annotations

import math
import os
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
PRV_BYTES_PER_POINT = 200.0  # Opacus 1.6 peak memory per grid point (<= 183 measured) + margin
EXP_UNDERFLOW = 745.0  # exp(-t) is 0.0 in float64 past this t
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
                f"it handles Gaussian events only, got {type(ev).__name__}"
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


def available_memory_bytes() -> float | None:
    """Memory the OS can give this process now (Linux ``MemAvailable``), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


class PRVAccountant:
    """Opacus's PRV accountant over Gaussian events, its result checked.

    ``epsilon`` runs Opacus and raises :class:`AccountingError` (message: what went wrong)
    if it raises or returns anything but a finite epsilon >= 0. A history whose
    discretization grid would need more than ``max_bytes`` (None: half the memory
    available at the call; ``math.inf``: no check) is refused before anything is allocated.
    """

    name = "prv"

    def __init__(self, eps_error: float = PRV_EPS_ERROR, max_bytes: float | None = None) -> None:
        self.eps_error = eps_error
        self.max_bytes = max_bytes

    def _memory_limit(self) -> float | None:
        if self.max_bytes is None:
            avail = available_memory_bytes()
            return None if avail is None else avail / 2
        return None if math.isinf(self.max_bytes) else float(self.max_bytes)

    def epsilon(self, events: Sequence[Event], delta: float) -> float:
        _check_delta(delta)
        if not events:
            return 0.0
        acc = _OpacusPRV()
        acc.history = gaussian_history(events)
        limit = self._memory_limit()
        if limit is not None:
            pts = prv_grid_points(acc.history, delta, self.eps_error)
            need = pts * PRV_BYTES_PER_POINT
            if not need <= limit:
                raise AccountingError(
                    f"not run: its grid of {pts:.3g} points needs ~{need / 2**30:.3g} GiB, "
                    f"more than the {limit / 2**30:.3g} GiB it may use"
                )
        try:
            raw = acc.get_epsilon(delta=delta, eps_error=self.eps_error)
        except Exception as exc:  # any failure inside Opacus is reported, never fatal
            raise AccountingError(f"it raised {type(exc).__name__}: {exc}") from exc
        try:
            eps = float(raw)
        except (TypeError, ValueError) as exc:
            raise AccountingError(f"it returned {raw!r}, not a number") from exc
        if not (math.isfinite(eps) and eps >= 0.0):
            raise AccountingError(f"it returned epsilon = {eps}")
        return eps


def get_accountant(name: str) -> Accountant:
    """The accountant called ``name`` ("rdp" or "prv")."""
    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ConfigError(f"accountant must be one of {ACCOUNTANT_NAMES}, got {name!r}")


def fallback_note(accountant: str, why: str) -> str:
    """The one line that says ``accountant`` failed (``why``) and RDP is used instead."""
    return f"{accountant.upper()} accountant failed for this plan ({why}); using RDP"


def epsilon_with_fallback(
    events: Sequence[Event], delta: float, accountant: str
) -> tuple[float, str, str | None]:
    """(epsilon, accountant actually used, note).

    A failed PRV (see :class:`PRVAccountant`) falls back to RDP; the note is one line
    saying so and why (:func:`fallback_note`), e.g. ``PRV accountant failed for this plan
    (it returned epsilon = inf; epsilon here is beyond ~745, where PRV's float64 exp(-t)
    underflows: RDP gives 1.64e+03); using RDP``. RDP failures propagate.
    """
    try:
        return get_accountant(accountant).epsilon(events, delta), accountant, None
    except AccountingError as exc:
        if accountant == "rdp":
            raise
        eps = RDPAccountant().epsilon(events, delta)
        why = str(exc)
        if why.startswith("it returned epsilon = inf") and eps > EXP_UNDERFLOW:
            why += (f"; epsilon here is beyond ~{EXP_UNDERFLOW:.0f}, where PRV's float64 "
                    f"exp(-t) underflows: RDP gives {eps:.3g}")
        return eps, "rdp", fallback_note(accountant, why)
