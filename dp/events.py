"""Immutable descriptions of what a mechanism released (recorded server side).

An event says *what was run*, never what was planned: for distributed noise the noise
parameters are those of the shares actually summed (the survivors). Events validate
themselves on construction and serialize to plain dicts for the ledger's JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from dp.errors import ConfigError

Sampling = Literal["poisson", "none"]
Unit = Literal["sample", "client"]
ALL = "all"  # subject of an event that concerns every client


def _check_common(rate: float, sampling: str, steps: int, unit: str, subject: str) -> None:
    if sampling not in ("poisson", "none"):
        raise ConfigError(f"sampling must be 'poisson' or 'none', got {sampling!r}")
    if not (0.0 < rate <= 1.0):
        raise ConfigError(f"sample_rate must be in (0, 1], got {rate}")
    if sampling == "none" and rate != 1.0:
        raise ConfigError("sampling='none' requires sample_rate=1.0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    if unit not in ("sample", "client"):
        raise ConfigError(f"privacy unit must be 'sample' or 'client', got {unit!r}")
    if not isinstance(subject, str) or not subject:
        raise ConfigError("subject must be a non-empty string (a client id or 'all')")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be positive and finite, got {value!r}")


@dataclass(frozen=True, slots=True)
class GaussianEvent:
    """``steps`` releases with Gaussian noise std = noise_multiplier * L2 sensitivity,
    each on a Poisson(sample_rate) subsample (sample_rate 1.0 and sampling 'none': all)."""

    noise_multiplier: float
    sample_rate: float
    steps: int = 1
    sampling: Sampling = "poisson"
    unit: Unit = "sample"
    subject: str = ALL
    label: str = ""
    round: int = -1

    def __post_init__(self) -> None:
        _check_positive("noise_multiplier", self.noise_multiplier)
        _check_common(self.sample_rate, self.sampling, self.steps, self.unit, self.subject)

    @classmethod
    def from_shares(
        cls, share_std: float, survivors: int, sensitivity: float, **kw: Any
    ) -> GaussianEvent:
        """Event for ``survivors`` float shares of std ``share_std`` actually summed."""
        _check_positive("share_std", share_std)
        _check_positive("sensitivity", sensitivity)
        if survivors < 1:
            raise ConfigError(f"survivors must be >= 1, got {survivors}")
        return cls(noise_multiplier=math.sqrt(survivors) * share_std / sensitivity, **kw)


@dataclass(frozen=True, slots=True)
class DiscreteGaussianEvent:
    """``steps`` releases of a sum of ``shares`` N_Z(0, sigma^2) vectors (encoded units).

    ``sigma`` is the per-share parameter, ``shares`` the number actually summed
    (survivors; 1 for local noise); sensitivities are in encoded integer units and
    ``dim`` is the released vector's length (all from the codec, see
    :func:`dp.mechanisms.encoded_sensitivity`).
    """

    sigma: float
    shares: int
    l2_sensitivity: float
    l1_sensitivity: float
    dim: int
    sample_rate: float
    steps: int = 1
    sampling: Sampling = "poisson"
    unit: Unit = "sample"
    subject: str = ALL
    label: str = ""
    round: int = -1

    def __post_init__(self) -> None:
        _check_positive("sigma", self.sigma)
        _check_positive("l2_sensitivity", self.l2_sensitivity)
        _check_positive("l1_sensitivity", self.l1_sensitivity)
        if isinstance(self.shares, bool) or not isinstance(self.shares, int) or self.shares < 1:
            raise ConfigError(f"shares must be an integer >= 1, got {self.shares!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"dim must be an integer >= 1, got {self.dim!r}")
        _check_common(self.sample_rate, self.sampling, self.steps, self.unit, self.subject)


Event = GaussianEvent | DiscreteGaussianEvent
EVENT_TYPES: dict[str, type[GaussianEvent] | type[DiscreteGaussianEvent]] = {
    "gaussian": GaussianEvent,
    "discrete_gaussian": DiscreteGaussianEvent,
}


def event_kind(event: Event) -> str:
    return "gaussian" if isinstance(event, GaussianEvent) else "discrete_gaussian"


def event_to_dict(event: Event) -> dict[str, Any]:
    return {"kind": event_kind(event), **asdict(event)}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event; unknown kinds or fields raise ConfigError (nothing half-built)."""
    data = dict(data)
    kind = data.pop("kind", None)
    cls = EVENT_TYPES.get(str(kind))
    if cls is None:
        raise ConfigError(f"unknown event kind {kind!r}")
    names = {f.name for f in fields(cls)}
    extra = set(data) - names
    if extra:
        raise ConfigError(f"unknown fields for {kind} event: {sorted(extra)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"malformed {kind} event: {exc}") from exc
