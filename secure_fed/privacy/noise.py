"""Differential privacy of a training run: the client-side noise step and the ledger events.

Client side (:class:`ClientNoise`): after a client's FedHPro work has produced its blocks
(per-class release already clipped per sample by :mod:`dp.clipping`, delta from DP-SGD),
client unit clips the whole vector; then either float Gaussian noise is added before
encoding, or discrete Gaussian noise in the ring after encoding. With ``distributed``
placement each client adds a share sized so that any ``t`` survivors carry the target.

Harness side (:class:`RunPrivacy`): the one object ``train`` and ``budget --from-run``
plan with: the events each summed client's round adds to the
:class:`~dp.ledger.PrivacyLedger` (built by :meth:`ClientNoise.release_event` from the
noise the clients add, with the shares the server's view may be credited with), the
planned events of the next round for ``--target-epsilon`` enforcement, and the noise
multiplier for a target epsilon over the run (:meth:`RunPrivacy.plan`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crypto.rng import KeystreamRNG
from dp.accountants import epsilon_with_fallback
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
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.privacy.release import declared_release

RELEASE_BLOCKS = ("feat_grad", "cls_grad_w", "cls_grad_b", "class_count")
"""FedHPro's release blocks: the default of :attr:`PrivacySettings.release_blocks` (a run's
come from its algorithm's :class:`~secure_fed.privacy.release.ReleaseDecl`)."""
WEIGHT_RELEASE_BLOCKS = ("cls_grad_w",)
"""Released as their own mechanism (clip ``clip``) when ``PrivacySettings.weight_release``
(the default of :attr:`PrivacySettings.separate_blocks`)."""


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
    weight_release: bool = False  # the separate blocks (FedHPro's meta weight block) are their own mechanism (clip)
    release_blocks: tuple[str, ...] = RELEASE_BLOCKS  # blocks of the per-class release (sample unit), if in the layout
    separate_blocks: tuple[str, ...] = WEIGHT_RELEASE_BLOCKS  # released apart at clip when weight_release

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


def noised_blocks(layout: VectorLayout, unit: str, release_blocks: Sequence[str] = RELEASE_BLOCKS) -> tuple[str, ...]:
    """Names of the blocks the DP mechanism covers (client unit: all of them; sample unit:
    those of ``release_blocks`` in the layout)."""
    if unit == "client":
        return layout.names()
    return tuple(n for n in layout.names() if n in release_blocks)


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
    names = noised_blocks(layout, settings.unit, settings.release_blocks)
    if not names:
        return ()
    if settings.unit == "client":
        return (Release("client_update", names, settings.clip),)
    weight = tuple(n for n in names if n in settings.separate_blocks) if settings.weight_release else ()
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
        self.blocks = noised_blocks(layout, settings.unit, settings.release_blocks)
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
        return self.integer_sigma_at(codec.gamma(rel.blocks[0]), rel)

    def integer_sigma_at(self, gamma: float, release: Release) -> float:
        """Per-share discrete Gaussian parameter of ``release`` at codec scale ``gamma``."""
        return integer_sigma(self.s.release_noise_multiplier, release.sensitivity, gamma) * share_factor(self.s.placement, self.threshold)

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

    def release_event(self, release: Release, *, shares: int, gamma: float | None, subject: str,
                      round_id: int) -> Event:
        """The ledger event of ``release`` when ``shares`` of this object's noise shares are in
        what the server sees: float Gaussian shares of :meth:`share_std`, or discrete
        Gaussian shares of :meth:`integer_sigma_at` at codec scale ``gamma`` (the one event
        builder: planning, enforcement and charging all come here)."""
        s = self.s
        rate = 1.0 if s.unit == "client" else s.release_rate
        sampling: Sampling = "none" if rate >= 1.0 else "poisson"
        unit: Unit = "client" if s.unit == "client" else "sample"
        if s.mechanism == "gaussian" or gamma is None:
            return GaussianEvent.from_shares(
                self.share_std(release), shares, release.sensitivity, sample_rate=rate, steps=1,
                sampling=sampling, unit=unit, subject=subject, label=release.label, round=round_id,
            )
        dim = self.release_dim(release)
        l2, l1 = encoded_sensitivity(release.sensitivity, gamma, dim)
        return DiscreteGaussianEvent(self.integer_sigma_at(gamma, release), shares, l2, l1, dim, rate, 1, sampling,
                                     unit, subject, release.label, round_id)

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


def sgd_plan(samples: int, batch_size: int, local_epochs: int) -> SgdPlan:
    """DP-SGD's shape for a client of ``samples`` samples, as Opacus's Poisson loader runs
    it: rate 1/ceil(n/B), ceil(n/B) steps per epoch."""
    batches = -(-samples // batch_size)
    return SgdPlan(1.0 / batches, local_epochs * batches)


@dataclass(frozen=True)
class RunShape:
    """The public facts of a run its privacy plan depends on besides the DP settings."""

    rounds: int
    cohort: int
    bits: int
    batch_size: int
    local_epochs: int
    sample_counts: tuple[int, ...]  # n_k of every client, by client id
    noise_multiplier: float | None = None  # given (--noise-multiplier), else planned
    target_epsilon: float | None = None


@dataclass(frozen=True)
class NoisePlan:
    """The answer of :meth:`RunPrivacy.plan`: the run's noise multiplier, the planned epsilon
    of the worst client (every round, fewest shares) and that client's sample count."""

    noise_multiplier: float
    epsilon: float
    worst_client: int
    worst_client_samples: int
    codec_gamma: float | None


class RunPrivacy:
    """A run's privacy: the client noise (:attr:`noise`), the ledger events it produces and
    the plan (harness side). ``train`` (planning, ``--target-epsilon`` enforcement, charging)
    and ``budget --from-run`` all go through this object, so each formula is written once:
    the noise std and the event builder in :class:`ClientNoise`, the shares in
    :meth:`shares_for`, the codec scale in :meth:`release_gamma`."""

    def __init__(self, settings: PrivacySettings, layout: VectorLayout, threshold: int, has_release: bool,
                 shape: RunShape | None = None) -> None:
        self.s = settings
        self.layout = layout
        self.threshold = threshold
        self.has_release = has_release
        self.shape = shape
        self.noise = ClientNoise(settings, layout, threshold)

    @classmethod
    def for_config(cls, cfg: TrainConfig, layout: VectorLayout, threshold: int,
                   sample_counts: Sequence[int]) -> RunPrivacy:
        """The privacy of the run ``cfg`` describes (``cfg.dp`` must not be off). The per-class
        release (blocks, sensitivity, blocks released apart) is the one ``cfg.algorithm``
        declares in :data:`secure_fed.privacy.release.PER_CLASS_RELEASES`."""
        decl = declared_release(cfg)
        sample = cfg.dp == "sample" and decl is not None
        separate = decl.separate if decl is not None else ()
        settings = PrivacySettings(
            cfg.dp, cfg.noise_placement, cfg.mechanism, cfg.clip, cfg.noise_multiplier or 1.0,
            cfg.delta, cfg.release_rate, cfg.accountant, secure=cfg.secagg != "off",
            release_noise_ratio=cfg.release_ratio(),
            release_sensitivity=decl.sensitivity if sample and decl is not None else None,
            weight_release=sample and any(n in layout.names() for n in separate),
            release_blocks=(decl.blocks + decl.separate) if decl is not None else (),
            separate_blocks=separate,
        )
        shape = RunShape(cfg.rounds, cfg.cohort, cfg.bits, cfg.batch_size, cfg.local_epochs,
                         tuple(int(n) for n in sample_counts), cfg.noise_multiplier, cfg.target_epsilon)
        return cls(settings, layout, threshold, has_release=decl is not None, shape=shape)

    def at(self, sigma: float) -> RunPrivacy:
        """The same run at noise multiplier ``sigma``."""
        return RunPrivacy(dataclasses.replace(self.s, noise_multiplier=sigma), self.layout, self.threshold,
                          self.has_release, self.shape)

    def _shape(self) -> RunShape:
        if self.shape is None:
            raise ConfigError("this privacy object has no run shape (build it with RunPrivacy.for_config)")
        return self.shape

    # -- events -----------------------------------------------------------------------------
    def round_events(
        self, cid: int, round_id: int, shares: int, gamma: float | None, sgd: SgdPlan | None, sigma: float | None = None
    ) -> list[Event]:
        """Events of client ``cid`` in round ``round_id`` with ``shares`` noise shares summed.

        ``sigma``: the run's noise multiplier (DP-SGD's; the release's is ``sigma *
        release_noise_ratio``), default the settings' own.
        """
        me = self if sigma is None or sigma == self.s.noise_multiplier else self.at(sigma)
        events: list[Event] = []
        if self.has_release or self.s.unit == "client":
            events.extend(me.noise.release_event(rel, shares=shares, gamma=gamma, subject=str(cid), round_id=round_id)
                          for rel in me.noise.releases)
        if sgd is not None and self.s.unit == "sample":
            events.append(GaussianEvent(me.s.noise_multiplier, sgd.rate, sgd.steps, "poisson", "sample", str(cid),
                                        "dpsgd", round_id))
        return events

    def shares_for(self, summed: int) -> int:
        """Noise shares the ledger may credit when ``summed`` uploads are summed: all of them
        for integer noise in the SecAgg ring, else one. Float noise is added before the codec
        rounds and clamps each client's value, so the sum the server sees is not a function of
        the Gaussian sum (a clamp applied to a noised value breaks the mechanism); each
        client's noised upload alone is a Gaussian mechanism, and the rest is post-processing.
        """
        return summed if self.s.secure and self.s.mechanism == "discrete" else 1

    def planned_shares(self) -> int:
        """Shares the plan assumes: the fewest the protocol accepts (t) for distributed noise."""
        return self.shares_for(self.threshold) if self.s.placement == "distributed" else 1

    def sgd_plan(self, cid: int) -> SgdPlan | None:
        """Client ``cid``'s DP-SGD shape (None without DP-SGD)."""
        if self.s.unit != "sample":
            return None
        sh = self._shape()
        return sgd_plan(sh.sample_counts[cid], sh.batch_size, sh.local_epochs)

    def release_gamma(self, sigma: float | None = None) -> float | None:
        """Codec gamma of the released blocks for a full cohort at noise multiplier ``sigma``
        (None: the current one); None when no integer noise is released."""
        if self.s.mechanism != "discrete" or not self.noise.blocks:
            return None
        sh = self._shape()
        noise = self.noise if sigma is None else self.at(sigma).noise
        codec = LayoutCodec.for_cohort(self.layout, sh.bits, sh.cohort, noise.total_noise_std(sh.cohort))
        return codec.gamma(noise.blocks[0])

    def planned_events(self, round_id: int, cohort: Sequence[int], sigma: float | None = None) -> list[Event]:
        """Events the clients ``cohort`` would add in round ``round_id`` (the worst case: the
        fewest shares, the full cohort's codec scale): what ``--target-epsilon`` enforces."""
        gamma = self.release_gamma(sigma)
        events: list[Event] = []
        for cid in cohort:
            events.extend(self.round_events(cid, round_id, self.planned_shares(), gamma, self.sgd_plan(cid), sigma))
        return events

    def charged_events(self, round_id: int, summed: Sequence[int], gamma: float | None,
                       sgd: Mapping[int, SgdPlan]) -> list[Event]:
        """Events of the clients ``summed`` in round ``round_id``'s released sum (codec scale
        ``gamma``; ``sgd`` the DP-SGD each actually ran)."""
        shares = self.shares_for(len(summed))
        events: list[Event] = []
        for cid in summed:
            events.extend(self.round_events(cid, round_id, shares, gamma, sgd.get(cid)))
        return events

    # -- planning ---------------------------------------------------------------------------
    def noise_for_target(self, target: float, rounds: int, sgd: Sequence[SgdPlan | None], gamma: float | None) -> float:
        """Smallest noise multiplier keeping every client's planned epsilon within ``target``.

        Plans the worst case: every client in every round, with the fewest shares the
        protocol accepts (t under SecAgg).
        """
        shares = self.planned_shares()

        def maker(plan: SgdPlan | None) -> Callable[[float], list[Event]]:
            def events(sigma: float) -> list[Event]:
                out: list[Event] = []
                for r in range(rounds):
                    out.extend(self.round_events(0, r + 1, shares, gamma, plan, sigma))
                return out
            return events

        # clients with the same DP-SGD shape need the same noise: one maker per shape
        return noise_for_all([maker(p) for p in dict.fromkeys(sgd)], target, self.s.delta, self.s.accountant)

    def plan_noise(self) -> float:
        """The run's noise multiplier: given, or the smallest that keeps the planned run within
        the target epsilon for every client (worst case: every round, fewest shares)."""
        sh = self._shape()
        if sh.noise_multiplier is not None:
            return sh.noise_multiplier
        if sh.target_epsilon is None:
            raise ConfigError("--noise-multiplier: give --noise-multiplier or --target-epsilon when --dp is on")
        plans = [self.sgd_plan(c) for c in range(len(sh.sample_counts))]
        gamma = self.release_gamma()
        if gamma is None:
            return self.noise_for_target(sh.target_epsilon, sh.rounds, plans, None)
        # Discrete mechanism: the codec's gamma shrinks as the noise grows (the ring must
        # hold the noise), and a smaller gamma means a larger encoded sensitivity. Plan with a
        # gamma no larger than the one the run's codec will use at the planned noise, or the
        # rounds charged at that gamma would cross the target the plan promised to keep.
        for _ in range(20):
            sigma = self.noise_for_target(sh.target_epsilon, sh.rounds, plans, gamma)
            actual = self.release_gamma(sigma)
            assert actual is not None
            if actual >= gamma:
                return sigma
            gamma = actual * (1.0 - 1e-6)
        raise ConfigError("could not plan the discrete mechanism's noise: the codec's scale does not settle; "
                          "raise --bits or give --noise-multiplier")

    def plan(self) -> NoisePlan:
        """The noise multiplier and the planned epsilon at it: every client in every round
        with the fewest shares, at the codec scale the run will use; the worst client (the
        largest epsilon; among equals the first) and its sample count."""
        sh = self._shape()
        sigma = self.plan_noise()
        me = self.at(sigma)
        best: tuple[float, int] | None = None
        seen: dict[SgdPlan | None, float] = {}
        for cid in range(len(sh.sample_counts)):
            key = me.sgd_plan(cid)
            if key not in seen:
                events = [e for r in range(sh.rounds) for e in me.planned_events(r + 1, [cid])]
                seen[key] = epsilon_with_fallback(events, self.s.delta, self.s.accountant)[0]
            if best is None or seen[key] > best[0]:
                best = (seen[key], cid)
        assert best is not None
        return NoisePlan(sigma, best[0], best[1], sh.sample_counts[best[1]], me.release_gamma())
