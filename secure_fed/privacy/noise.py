"""Differential privacy of a training run: the client-side noise step and the ledger events.

Client side (:class:`ClientNoise`): after a client's FedHPro work has produced its blocks
(per-class release already clipped per sample by :mod:`dp.clipping`, delta from DP-SGD),
client unit clips the whole vector; then either float Gaussian noise is added before
encoding, or discrete Gaussian noise in the ring after encoding. With ``distributed``
placement each client adds a share sized so that any ``t`` survivors carry the target.

Harness side (:class:`RunPrivacy`): the events each summed client's round adds to the
:class:`~dp.ledger.PrivacyLedger`, built from the noise actually summed (the survivors),
the planned events of the next round for ``--target-epsilon`` enforcement, and the noise
multiplier for a target epsilon over the run plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from crypto.rng import KeystreamRNG
from dp.clipping import clip_vector
from dp.events import DiscreteGaussianEvent, Event, GaussianEvent, Sampling, Unit
from dp.mechanisms import (
    DiscreteGaussianMechanism,
    GaussianMechanism,
    encoded_sensitivity,
    integer_sigma,
)
from dp.planning import noise_for_all
from secure_fed.aggregation.layout import VectorLayout
from secure_fed.aggregation.secagg import LayoutCodec
from secure_fed.errors import ConfigError

RELEASE_BLOCKS = ("feat_grad", "cls_grad_w", "cls_grad_b", "class_count")


def release_multiplier(sigma: float, ratio: float) -> float:
    """The per-class release's noise multiplier when DP-SGD's (the run's) is ``sigma`` and
    --release-noise-ratio is ``ratio``: the one place the two are multiplied."""
    return sigma * ratio


@dataclass(frozen=True)
class PrivacySettings:
    """The DP part of a run's configuration (public)."""

    unit: str  # "sample" | "client"
    placement: str  # "local" | "distributed"
    mechanism: str  # "gaussian" | "discrete"
    clip: float
    noise_multiplier: float
    delta: float
    release_rate: float
    accountant: str = "rdp"
    secure: bool = True  # is the sum computed under SecAgg (else the server sees each upload)
    release_noise_ratio: float = 1.0  # the release's noise multiplier over DP-SGD's
    release_sensitivity: float | None = None  # L2 sensitivity of the per-class release (None: clip)
    weight_release: bool = False  # the meta classifier's weight block is its own mechanism (clip)

    @property
    def release_noise_multiplier(self) -> float:
        """Noise std / sensitivity of the per-class release (client unit: of the whole upload)."""
        return release_multiplier(self.noise_multiplier, self.release_noise_ratio)

    @property
    def release_clip(self) -> float:
        """L2 sensitivity of the per-class release: its natural bound when given, else clip."""
        return self.clip if self.release_sensitivity is None else self.release_sensitivity

    def __post_init__(self) -> None:
        if self.unit not in ("sample", "client"):
            raise ConfigError(f"--dp must be sample or client here (got {self.unit!r})")
        if self.placement not in ("local", "distributed"):
            raise ConfigError(f"--noise-placement must be local or distributed (got {self.placement!r})")
        if self.mechanism not in ("gaussian", "discrete"):
            raise ConfigError(f"--mechanism must be gaussian or discrete (got {self.mechanism!r})")
        if self.placement == "distributed" and not self.secure:
            raise ConfigError(
                "--noise-placement distributed needs --secagg secagg or secagg+: without secure "
                "aggregation the server sees each client's noise share alone"
            )
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"--noise-multiplier must be > 0 (got {self.noise_multiplier})")
        if not 0 < self.delta < 1:
            raise ConfigError(f"--delta must be in (0, 1) (got {self.delta})")
        if not 0 < self.release_rate <= 1:
            raise ConfigError(f"--release-rate must be in (0, 1] (got {self.release_rate})")
        if not (self.release_noise_ratio > 0 and math.isfinite(self.release_noise_ratio)):
            raise ConfigError(f"--release-noise-ratio must be > 0 (got {self.release_noise_ratio})")
        if self.release_sensitivity is not None and not self.release_sensitivity > 0:
            raise ConfigError(f"release sensitivity must be > 0 (got {self.release_sensitivity})")
        if self.unit == "client" and self.release_noise_ratio != 1.0:
            raise ConfigError("--release-noise-ratio needs --dp sample: with --dp client one mechanism runs")


def noised_blocks(layout: VectorLayout, unit: str) -> tuple[str, ...]:
    """Names of the blocks the DP mechanism covers (client unit: all of them)."""
    if unit == "client":
        return layout.names()
    return tuple(n for n in layout.names() if n in RELEASE_BLOCKS)


WEIGHT_RELEASE_BLOCKS = ("cls_grad_w",)
"""Released as their own mechanism (clip ``clip``) when ``PrivacySettings.weight_release``."""


@dataclass(frozen=True)
class Release:
    """One noised mechanism of a round: its ledger label, blocks and L2 sensitivity."""

    label: str
    blocks: tuple[str, ...]
    sensitivity: float


def releases(layout: VectorLayout, settings: PrivacySettings) -> tuple[Release, ...]:
    """The noised mechanisms of a client's upload (client unit: one over the whole vector).

    Sample unit: the per-class release (every noised block but the weight block) at
    ``settings.release_clip``; with ``weight_release`` the weight block is a second
    mechanism clipped to ``clip``, with its own ledger event. Both use the release's noise
    multiplier.
    """
    names = noised_blocks(layout, settings.unit)
    if not names:
        return ()
    if settings.unit == "client":
        return (Release("client_update", names, settings.clip),)
    weight = tuple(n for n in names if n in WEIGHT_RELEASE_BLOCKS) if settings.weight_release else ()
    rest = tuple(n for n in names if n not in weight)
    out = [Release("per_class_release", rest, settings.release_clip)] if rest else []
    if weight:
        out.append(Release("weight_release", weight, settings.clip))
    return tuple(out)


def share_factor(placement: str, threshold: int) -> float:
    """Std of one client's share relative to the target: 1 (local) or 1/sqrt(t)."""
    return 1.0 if placement == "local" else 1.0 / math.sqrt(threshold)


class ClientNoise:
    """Client-side noise for one round (built from public parameters only)."""

    def __init__(self, settings: PrivacySettings, layout: VectorLayout, threshold: int) -> None:
        self.s = settings
        self.layout = layout
        self.threshold = threshold
        self.blocks = noised_blocks(layout, settings.unit)
        self.releases = releases(layout, settings)

    def _slices(self, release: Release) -> list[slice]:
        out = []
        for name in release.blocks:
            b = self.layout.block(name)
            out.append(slice(b.offset, b.offset + b.size))
        return out

    def finish_float(self, vector: np.ndarray, rng: KeystreamRNG) -> np.ndarray:
        """Client unit clipping, then float Gaussian noise (mechanism ``gaussian``)."""
        if self.s.unit == "client":
            clipped, _ = clip_vector(vector, self.s.clip)
            vector = np.asarray(clipped, dtype=np.float64)
        if self.s.mechanism != "gaussian" or not self.blocks:
            return vector
        out = vector.copy()
        for rel in self.releases:
            mech = GaussianMechanism(self.share_std(rel))
            for sl in self._slices(rel):
                out[sl] = mech.add(out[sl], rng)
        return out

    def integer_sigma(self, codec: LayoutCodec, release: Release | None = None) -> float:
        """Per-share discrete Gaussian parameter in encoded units of the release's gamma
        (default: the first release, the per-class one)."""
        rel = release or self.releases[0]
        gamma = codec.gamma(rel.blocks[0])
        return integer_sigma(self.s.release_noise_multiplier, rel.sensitivity, gamma) * share_factor(self.s.placement, self.threshold)

    def post_encode(self, words: np.ndarray, codec: LayoutCodec, rng: KeystreamRNG) -> np.ndarray:
        """Discrete Gaussian noise added in the ring to the released blocks (client side)."""
        if self.s.mechanism != "discrete" or not self.blocks:
            return words  # nothing released besides the DP-SGD delta (FedAvg): no release noise
        mask = np.uint64((1 << codec.bits) - 1) if codec.bits < 64 else None
        out = words.copy()
        for rel in self.releases:
            mech = DiscreteGaussianMechanism(self.integer_sigma(codec, rel))
            for sl in self._slices(rel):
                noise = mech.sample(sl.stop - sl.start, rng).astype(np.int64)
                block = out[sl].astype(np.uint64) + noise.view(np.uint64)
                if mask is not None:
                    block &= mask
                out[sl] = block.astype(out.dtype)
        return out

    def share_std(self, release: Release | None = None) -> float:
        """Std of one client's noise share per coordinate (input units) of ``release``
        (default: the first, the per-class release)."""
        sens = (release or self.releases[0]).sensitivity if self.releases else self.s.release_clip
        return self.s.release_noise_multiplier * sens * share_factor(self.s.placement, self.threshold)

    def total_noise_std(self, survivors_max: int) -> dict[str, float]:
        """Total noise std per noised block (input units) when ``survivors_max`` shares are
        summed: the headroom the codec must leave."""
        return {n: self.share_std(rel) * math.sqrt(survivors_max) for rel in self.releases for n in rel.blocks}

    def layout_doc(self) -> list[dict[str, object]]:
        """The upload layout (``layout.json``), each noised block with its mechanism's ledger
        label and L2 sensitivity (``release``, ``sensitivity``)."""
        doc = self.layout.describe()
        owner = {n: rel for rel in self.releases for n in rel.blocks}
        for block in doc:
            rel = owner.get(str(block["name"]))
            if rel is not None:
                block.update(release=rel.label, sensitivity=rel.sensitivity)
        return doc

    def release_dim(self, release: Release | None = None) -> int:
        """Entries of ``release`` (default: of every noised block)."""
        names = self.blocks if release is None else release.blocks
        return sum(self.layout.block(n).size for n in names)


@dataclass(frozen=True)
class SgdPlan:
    """One client's DP-SGD shape per round: Poisson rate and steps."""

    rate: float
    steps: int


class RunPrivacy:
    """Ledger events of a run (harness side)."""

    def __init__(self, settings: PrivacySettings, layout: VectorLayout, threshold: int, has_release: bool) -> None:
        self.s = settings
        self.layout = layout
        self.threshold = threshold
        self.has_release = has_release
        self.noise = ClientNoise(settings, layout, threshold)

    def _release_event(self, cid: int, round_id: int, shares: int, gamma: float | None, sigma: float,
                       release: Release | None = None) -> Event:
        """The event of ``release`` (default: the first) at run noise multiplier ``sigma``
        (the release uses ``sigma * release_noise_ratio``)."""
        s = self.s
        rel = release or self.noise.releases[0]
        sigma = release_multiplier(sigma, s.release_noise_ratio)
        rate = 1.0 if s.unit == "client" else s.release_rate
        sampling: Sampling = "none" if rate >= 1.0 else "poisson"
        unit: Unit = "client" if s.unit == "client" else "sample"
        share_std = sigma * rel.sensitivity * share_factor(s.placement, self.threshold)
        if s.mechanism == "gaussian" or gamma is None:
            return GaussianEvent.from_shares(
                share_std, shares, rel.sensitivity, sample_rate=rate, steps=1, sampling=sampling,
                unit=s.unit, subject=str(cid), label=rel.label, round=round_id,
            )
        dim = self.noise.release_dim(rel)
        l2, l1 = encoded_sensitivity(rel.sensitivity, gamma, dim)
        sig = integer_sigma(sigma, rel.sensitivity, gamma) * share_factor(s.placement, self.threshold)
        return DiscreteGaussianEvent(sig, shares, l2, l1, dim, rate, 1, sampling, unit, str(cid), rel.label, round_id)

    def round_events(
        self, cid: int, round_id: int, shares: int, gamma: float | None, sgd: SgdPlan | None, sigma: float | None = None
    ) -> list[Event]:
        """Events of client ``cid`` in round ``round_id`` with ``shares`` noise shares summed.

        ``sigma``: the run's noise multiplier (DP-SGD's; the release's is ``sigma *
        release_noise_ratio``), default the settings' own.
        """
        sigma = self.s.noise_multiplier if sigma is None else sigma
        events: list[Event] = []
        if self.has_release or self.s.unit == "client":
            events.extend(self._release_event(cid, round_id, shares, gamma, sigma, rel) for rel in self.noise.releases)
        if sgd is not None and self.s.unit == "sample":
            events.append(GaussianEvent(sigma, sgd.rate, sgd.steps, "poisson", "sample", str(cid), "dpsgd", round_id))
        return events

    def shares_for(self, summed: int) -> int:
        """Noise shares in what the server sees: all summed shares under SecAgg, else one."""
        return summed if self.s.secure else 1

    def noise_for_target(self, target: float, rounds: int, sgd: Sequence[SgdPlan | None], gamma: float | None) -> float:
        """Smallest noise multiplier keeping every client's planned epsilon within ``target``.

        Plans the worst case: every client in every round, with the fewest shares the
        protocol accepts (t under SecAgg).
        """
        shares = self.shares_for(self.threshold) if self.s.placement == "distributed" else 1
        def maker(plan: SgdPlan | None) -> Callable[[float], list[Event]]:
            def events(sigma: float) -> list[Event]:
                out: list[Event] = []
                for r in range(rounds):
                    out.extend(self.round_events(0, r + 1, shares, gamma, plan, sigma))
                return out
            return events

        # clients with the same DP-SGD shape need the same noise: one maker per shape
        return noise_for_all([maker(p) for p in dict.fromkeys(sgd)], target, self.s.delta, self.s.accountant)
