"""Budget planning: the noise multiplier for a target (epsilon, delta) over a run plan.

:func:`noise_for_all` (and :func:`noise_for_target`, one maker) finds by root finding
(Brent on log sigma) the smallest noise multiplier whose accounted epsilon stays within
the target, for several subjects at once (one search on the largest epsilon). It is the
one search every plan uses: the trainer's and ``run_secure.py budget --from-run``'s (both
through ``secure_fed.privacy.noise.RunPrivacy``, whose event builder writes the events a
run charges: discrete or float, sample or client unit) and ``budget``'s standalone forms.

:class:`RunPlan`, :func:`round_events` and :func:`plan_events` describe a generic plan of
float Gaussian events at sample level (a per-class release and DP-SGD steps): what
``budget`` plans from its flags alone, without a run's layout, codec or partition. They
are not the events a ``train`` run charges.

Cohort sampling: the server picks the cohort and sees who took part, so client sampling
gives no privacy amplification against it. The cohort rate only sets how many rounds a
client takes part in: ``participation="worst"`` (default, every round: a guarantee for
every client) or ``"expected"`` (ceil(rounds * cohort_rate) rounds).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import optimize

from dp.accountants import RDPAccountant, epsilon_with_fallback, get_accountant
from dp.errors import AccountingError, ConfigError
from dp.events import ALL, Event, GaussianEvent

Participation = Literal["worst", "expected"]
NOISE_MIN, NOISE_MAX = 1e-2, 1e4


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What one run releases about each client, per round.

    rounds: training rounds. cohort_rate: expected fraction of clients per round.
    release_rate: Poisson rate of the per-class gradient release (None: no release).
    local_steps, local_rate: DP-SGD steps per round and their Poisson rate B / n_k
    (local_steps 0: no DP-SGD). release_noise_ratio: the release uses this multiple of the
    planned noise multiplier (1.0: the same sigma for both).
    """

    rounds: int
    cohort_rate: float = 1.0
    release_rate: float | None = None
    local_steps: int = 0
    local_rate: float = 1.0
    release_noise_ratio: float = 1.0
    participation: Participation = "worst"

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        for name, v in (("cohort_rate", self.cohort_rate), ("local_rate", self.local_rate)):
            if not (0.0 < v <= 1.0):
                raise ConfigError(f"{name} must be in (0, 1], got {v}")
        if self.release_rate is not None and not (0.0 < self.release_rate <= 1.0):
            raise ConfigError(f"release_rate must be in (0, 1], got {self.release_rate}")
        if self.local_steps < 0:
            raise ConfigError(f"local_steps must be >= 0, got {self.local_steps}")
        if self.release_rate is None and self.local_steps == 0:
            raise ConfigError("the plan releases nothing: set release_rate or local_steps")
        if not (self.release_noise_ratio > 0 and math.isfinite(self.release_noise_ratio)):
            raise ConfigError(f"--release-noise-ratio must be > 0 and finite, got {self.release_noise_ratio}")
        if self.participation not in ("worst", "expected"):
            raise ConfigError("participation must be 'worst' or 'expected'")

    def participations(self, after_rounds: int | None = None) -> int:
        """Rounds the accounted client has taken part in after ``after_rounds`` rounds."""
        r = self.rounds if after_rounds is None else after_rounds
        if self.participation == "worst":
            return r
        return min(r, math.ceil(r * self.cohort_rate - 1e-12))


def _sampling(rate: float) -> Literal["poisson", "none"]:
    return "none" if rate >= 1.0 else "poisson"


def round_events(
    plan: RunPlan,
    noise_multiplier: float,
    *,
    subject: str = ALL,
    round_index: int = -1,
    release_noise_multiplier: float | None = None,
) -> list[Event]:
    """Events one client's round appends: per-class release, then DP-SGD steps.

    ``release_noise_multiplier`` overrides the planned release noise with the noise
    actually summed (distributed placement: survivors' shares, see
    :meth:`GaussianEvent.from_shares`).
    """
    events: list[Event] = []
    if plan.release_rate is not None:
        z = release_noise_multiplier or noise_multiplier * plan.release_noise_ratio
        events.append(
            GaussianEvent(z, plan.release_rate, 1, _sampling(plan.release_rate), "sample",
                          subject, "per_class_release", round_index)
        )
    if plan.local_steps:
        events.append(
            GaussianEvent(noise_multiplier, plan.local_rate, plan.local_steps,
                          _sampling(plan.local_rate), "sample", subject, "dpsgd", round_index)
        )
    return events


def plan_events(plan: RunPlan, noise_multiplier: float, after_rounds: int | None = None
                ) -> list[Event]:
    """Events of the accounted client over the plan (or its first ``after_rounds``)."""
    out: list[Event] = []
    for r in range(plan.participations(after_rounds)):
        out.extend(round_events(plan, noise_multiplier, round_index=r))
    return out


def plan_epsilon(plan: RunPlan, noise_multiplier: float, delta: float,
                 accountant: str = "rdp") -> float:
    return get_accountant(accountant).epsilon(plan_events(plan, noise_multiplier), delta)


def epsilon_per_round(plan: RunPlan, noise_multiplier: float, delta: float) -> list[float]:
    """RDP epsilon of the accounted client after each round 1..rounds."""
    acc = RDPAccountant()
    return [acc.epsilon(plan_events(plan, noise_multiplier, r), delta)
            for r in range(1, plan.rounds + 1)]


def noise_for_target(
    make_events: Callable[[float], Sequence[Event]],
    target_epsilon: float,
    delta: float,
    accountant: str = "rdp",
    rtol: float = 1e-6,
) -> float:
    """Smallest noise multiplier z (to ``rtol``) with epsilon(make_events(z)) <= target."""
    return noise_for_all([make_events], target_epsilon, delta, accountant, rtol)


def noise_for_all(
    makers: Sequence[Callable[[float], Sequence[Event]]],
    target_epsilon: float,
    delta: float,
    accountant: str = "rdp",
    rtol: float = 1e-6,
) -> float:
    """Smallest noise multiplier z (to ``rtol``) with which every maker's events (one
    subject each, e.g. clients of different DP-SGD shapes) stay within the target.

    One root search on the largest epsilon, rather than one search per maker: each
    maker's epsilon falls as z grows, so the largest root is the root of the largest
    epsilon, and the events the makers share (the release) are accounted once per z.
    """
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon}")
    if not makers:
        raise ConfigError("noise_for_all needs at least one event maker")
    get_accountant(accountant)  # an unknown name is a ConfigError before any work
    seen: dict[float, float] = {}  # the bracket ends are asked for again by brentq

    def gap(log_z: float) -> float:
        if log_z not in seen:
            # Where the accountant cannot bound a plan (PRV: event types it does not handle,
            # or a grid too large), RDP's bound holds for it too, as when reporting.
            z = math.exp(log_z)
            with warnings.catch_warnings():
                # Trial noises far from the root put RDP's best order at an end of Opacus's
                # grid, and Opacus warns; the bound is still valid there, and the search only
                # needs its sign. Epsilons reported for the run are computed elsewhere.
                warnings.filterwarnings("ignore", message=r"Optimal order is the (largest|smallest) alpha",
                                        category=UserWarning, module=r"opacus\.accountants\.analysis\.rdp\Z")
                eps = max(epsilon_with_fallback(make(z), delta, accountant)[0] for make in makers)
            seen[log_z] = min(eps, 1e6) - target_epsilon
        return seen[log_z]

    floor, ceil = math.log(NOISE_MIN), math.log(NOISE_MAX)
    if accountant != "rdp":
        # Bracket the root near RDP's answer: RDP always runs, and at the tiny noise of the
        # full bracket PRV's discretization grid is enormous (and it fails), so the search
        # would learn nothing there. Both accountants bound the same mechanism, so their roots
        # are close; the bracket widens until it holds the root.
        z_rdp = noise_for_all(makers, target_epsilon, delta, "rdp", rtol)
        lo, hi, step = math.log(max(z_rdp / 2, NOISE_MIN)), math.log(min(z_rdp * 1.25, NOISE_MAX)), math.log(2)
    else:
        # Grow the bracket outwards from noise 1 rather than starting at its ends: Opacus's
        # RDP of a subsampled Gaussian at noise 1e4 sums a slowly decaying series (seconds
        # per call at rate 0.5), and no plan worth running needs noise near either end.
        lo, hi, step = 0.0, 0.0, math.log(4)
    while gap(hi) > 0 and hi < ceil:  # too little noise at hi: move the bracket up
        lo, hi = hi, min(hi + step, ceil)
    while gap(lo) <= 0 and lo > floor:  # enough noise already at lo: move it down
        hi, lo = lo, max(lo - step, floor)
    if gap(hi) > 0:
        raise AccountingError(f"even noise multiplier {math.exp(hi):.6g} exceeds eps {target_epsilon}")
    if gap(lo) <= 0:
        return math.exp(lo)
    log_z = float(optimize.brentq(gap, lo, hi, xtol=rtol / 4, rtol=rtol / 4))
    z = math.exp(log_z)
    while gap(math.log(z)) > 0:  # land on the safe side of the root
        z *= 1.0 + rtol / 4
    return z


def noise_for_plan(plan: RunPlan, target_epsilon: float, delta: float,
                   accountant: str = "rdp") -> float:
    """Noise multiplier for a whole run plan (what ``train --target-epsilon`` uses)."""
    return noise_for_target(lambda z: plan_events(plan, z), target_epsilon, delta, accountant)
