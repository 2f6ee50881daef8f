"""One-run empirical DP audit of the release mechanism (Steinke, Nasr, Jagielski, NeurIPS 2023).

What is audited. The mechanism that turns the cohort's per-class releases into what the
server holds: each survivor's contribution goes through this project's own client-side
noise step (:class:`secure_fed.privacy.noise.ClientNoise`: float Gaussian before encoding, or the
discrete Gaussian in the ring after :class:`secure_fed.aggregation.secagg.LayoutCodec`
encoding), with the run's placement, noise multiplier, clip, threshold, cohort, ring size
and survivors per round; the words are summed in Z_{2^bits} (what SecAgg unmasks: the
masks cancel exactly, so the ring sum *is* the protocol's output) and decoded.

The audit (auditor side, white box). m canaries, each a contribution of L2 norm C (the
run's clip) on one coordinate of the released blocks (a "Dirac canary", the white-box
canary of the paper's gradient-space audit), distinct coordinates within a release, so
canaries do not interfere. Each canary is included independently with probability 1/2
(the secret S in {-1, +1}^m) and handed to one survivor's upload. The canary's score is
the released value on its coordinate (the inner product of the canary direction with the
released sum; without secure aggregation, with its owner's own noised upload, which is what
the server then sees). The auditor guesses "in" for the k+ highest and "out" for the k-
lowest scores and abstains on the rest; W = number of correct guesses out of r = k+ + k-.

The bound (Steinke et al., the main theorem in its (eps, delta) form, as in the paper's
p-value code): if the mechanism is (eps, delta)-DP with respect to each canary, then for
every v

    P[W >= v] <= f(v) + 2 m delta * max_{1 <= i <= v} (f(v - i) - f(v)) / i,
    f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v].

epsilon-hat is the largest eps whose bound at the observed W is below p (= 0.05): with
confidence 1 - p the mechanism is not (eps', delta)-DP for any eps' < epsilon-hat (an
(eps', delta)-DP mechanism is (eps, delta)-DP for every eps >= eps'). The numbers of
guesses are not tuned on the data: a fixed grid of (k+, k-) is tested, each at level
p / len(grid) (Bonferroni), and epsilon-hat is the largest over the grid.

Canaries in several releases. A run has one release per round with fresh noise; a canary
sits in one release only, so the whole run is (eps, delta)-DP for each canary with eps the
single-release epsilon (parallel composition), and canaries may be spread over rounds.

Claimed epsilon. The accountant's epsilon (RDP, this project's :mod:`dp.accountants`) of
one release by one individual of sensitivity C at the noise the run actually summed: the
run's recorded per-round release event (ledger journal) with its subsampling removed
(sample rate 1, one step; the audit's own coin is the inclusion), maximized over the
releases used. The audit fails (``passed`` False) when epsilon-hat exceeds it.

A second, direct check rides along: the per-block standard deviation of the released
noise on coordinates that carry no canary, against the noise the accountant assumes
(sigma_total = effective noise multiplier * C in input units). It is evidence beside the
bound (summary ``noise_ratio_min``, ``noise_too_little_in``) and does not change
``passed``: it catches a noise deficit confined to a few coordinates, which the bound, with
only a few canaries there, cannot.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special, stats
from tqdm import tqdm

from crypto.rng import KeystreamRNG
from dp.accountants import RDPAccountant
from dp.events import DiscreteGaussianEvent, Event, GaussianEvent, event_from_dict
from secure_fed.aggregation.layout import VectorLayout
from secure_fed.aggregation.secagg import LayoutCodec
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.privacy.noise import (
    RELEASE_BLOCKS,
    ClientNoise,
    PrivacySettings,
    RunPrivacy,
    noised_blocks,
    release_multiplier,
)
from secure_fed.privacy.release import declared_release
from secure_fed.run.rundir import JOURNAL, load_config, load_json, read_audit, read_journal

NAME = "one_run"
P_VALUE = 0.05
DEFAULT_CANARIES = 5000
GUESS_FRACTIONS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
"""Guess counts tested: k+ = k- = round(fraction * m) (fraction 0.5: guess on every canary)."""
NOISE_CHECK_P = 1e-3
"""Level of the per-block noise check (Bonferroni over blocks): a diagnostic beside the
bound, kept strict so a correct mechanism is flagged about once in a thousand audits."""
_EPS_GRID_STEP = 0.01
_EPS_MAX = 60.0


# -- the bound -----------------------------------------------------------------------------
def p_value_bound(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Upper bound on P[W >= v] for an (eps, delta)-DP mechanism (Steinke et al., main theorem).

    m canaries, r guesses, v correct. f(v) = P[Bin(r, q) >= v], q = e^eps / (1 + e^eps);
    the delta term is 2 m delta max_{1<=i<=v} (f(v-i) - f(v)) / i, where f(v-i) - f(v) =
    P[v-i <= Bin(r, q) <= v-1]. For i > v the ratio is smaller than at i = v (f is 1 below
    0), so i stops at v.
    """
    if not (0 <= v <= r <= m):
        raise ConfigError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if not (eps >= 0 and 0 <= delta <= 1):
        raise ConfigError(f"need eps >= 0 and delta in [0, 1], got {eps}, {delta}")
    q = float(special.expit(eps))
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[W' = v-1], P[W' = v-2], ..., P[W' = 0]
    window = np.cumsum(pmf)  # window[i-1] = P[v-i <= W' <= v-1]
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(beta + 2.0 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, p: float = P_VALUE) -> float:
    """epsilon-hat: the largest eps with ``p_value_bound(m, r, v, eps, delta) < p`` (0 if none).

    f(v) (the first term, increasing in eps) bounds the whole expression from below, so no
    eps at or above e_top = min{eps : f(v) >= p} (found by bisection) can be rejected. Below
    e_top the bound need not be monotone in eps when delta > 0, so it is scanned downwards
    on a grid of step 0.01 to the first point below p, which is then refined by bisection
    towards the next grid point. The returned value always has a bound < p and is the
    supremum to the grid's resolution.
    """
    if not 0 < p < 1:
        raise ConfigError(f"p must be in (0, 1), got {p}")
    if r == 0:
        return 0.0

    def first_term(eps: float) -> float:
        return float(stats.binom.sf(v - 1, r, float(special.expit(eps))))

    lo, hi = 0.0, _EPS_MAX
    if first_term(hi) < p:
        top = hi
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if first_term(mid) < p else (lo, mid)
        top = hi
    eps = math.floor(top / _EPS_GRID_STEP) * _EPS_GRID_STEP
    while eps >= 0 and p_value_bound(m, r, v, eps, delta) >= p:
        eps = round(eps - _EPS_GRID_STEP, 10)
    if eps < 0:
        return 0.0
    lo, hi = eps, min(eps + _EPS_GRID_STEP, top)
    for _ in range(40):
        mid = (lo + hi) / 2
        if p_value_bound(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


# -- the mechanism under audit ---------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseSpec:
    """Public parameters of one release: what a run's config and audit log record.

    ``blocks``: the released (noised) blocks as (name, shape, declared bound). ``cohort``:
    clients the codec was sized for; ``survivors``: uploads actually summed. ``secure``:
    whether the server sees only the sum (SecAgg or the in-ring trusted sum) or each upload.
    """

    mechanism: str  # "gaussian" | "discrete"
    placement: str  # "local" | "distributed"
    unit: str  # "sample" | "client"
    noise_multiplier: float
    clip: float
    delta: float
    threshold: int
    cohort: int
    survivors: int
    bits: int
    secure: bool
    blocks: tuple[tuple[str, tuple[int, ...], float], ...]
    release_blocks: tuple[str, ...] = RELEASE_BLOCKS  # the algorithm's declared per-class release (sample unit)

    def __post_init__(self) -> None:
        if not 1 <= self.survivors <= self.cohort:
            raise ConfigError(f"survivors must be in 1..cohort={self.cohort}, got {self.survivors}")
        if not self.blocks:
            raise ConfigError("the release has no noised blocks to audit")
        names = tuple(b[0] for b in self.blocks)
        if noised_blocks(self.layout, self.unit, self.release_blocks) != names:
            raise ConfigError(f"blocks {names} are not all noised for unit {self.unit!r}; sample unit noises "
                              "the per-class release blocks only")

    @property
    def layout(self) -> VectorLayout:
        return VectorLayout.build(self.blocks)

    @property
    def dim(self) -> int:
        return self.layout.size

    def settings(self) -> PrivacySettings:
        return PrivacySettings(self.unit, self.placement, self.mechanism, self.clip, self.noise_multiplier,
                               self.delta, 1.0, "rdp", secure=self.secure, release_blocks=self.release_blocks)

    def ring(self) -> bool:
        """Whether uploads are encoded into the ring (SecAgg, or discrete noise in-ring)."""
        return self.secure or self.mechanism == "discrete"

    def codec(self) -> LayoutCodec:
        """The codec the run builds for a round (sized for the cohort, noise headroom included)."""
        noise = ClientNoise(self.settings(), self.layout, self.threshold)
        return LayoutCodec.for_cohort(self.layout, self.bits, self.cohort, noise.total_noise_std(self.cohort))

    def event(self) -> Event:
        """The ledger event of one such release with no subsampling, built by the run's own code."""
        privacy = RunPrivacy(self.settings(), self.layout, self.threshold, has_release=True)
        gamma = self.codec().gamma(privacy.noise.blocks[0]) if self.mechanism == "discrete" else None
        return privacy.round_events(0, 0, privacy.shares_for(self.survivors), gamma, None)[0]

    def accounted_noise_std(self) -> float:
        """Std of the noise one view carries (input units) as the accounted event assumes it:
        effective noise multiplier times C, the same in every released block."""
        ev = self.event()
        if isinstance(ev, GaussianEvent):
            return ev.noise_multiplier * self.clip
        return math.sqrt(ev.shares) * ev.sigma / self.codec().gamma(self.blocks[0][0])


Release = Callable[[np.ndarray, KeystreamRNG], np.ndarray]
"""(contributions: survivors x dim float, rng) -> views x dim float: what the server holds.

One view (the decoded sum) under secure aggregation, else one view per upload."""


def project_release(spec: ReleaseSpec) -> Release:
    """The project's release mechanism for ``spec``: ClientNoise + LayoutCodec + ring sum.

    Runs each survivor's client-side steps exactly as the trainer's aggregators do (float
    noise, encoding with stochastic rounding, discrete noise after encoding), then the
    server-side ring sum and decoding. Client-unit clipping is a no-op on the canaries,
    whose norm is C; the contributions are given per survivor.
    """
    noise = ClientNoise(spec.settings(), spec.layout, spec.threshold)
    codec = spec.codec() if spec.ring() else None
    zeros = np.zeros(spec.dim)

    def finish(x: np.ndarray, rng: KeystreamRNG) -> np.ndarray:
        if spec.unit == "sample":
            return noise.finish_float(x, rng)
        # Client unit: each canary stands for one client (norm C, so its own clip is a
        # no-op); several canaries share an upload here only to share its noise, so the
        # upload is not clipped as a whole: the noise step runs on the zero vector.
        return x + noise.finish_float(zeros.copy(), rng)

    def release(contributions: np.ndarray, rng: KeystreamRNG) -> np.ndarray:
        x = np.asarray(contributions, dtype=np.float64)
        if x.shape != (spec.survivors, spec.dim):
            raise ConfigError(f"contributions must be survivors x dim = {(spec.survivors, spec.dim)}, got {x.shape}")
        uploads = [finish(x[j].copy(), rng.spawn(f"client/{j}")) for j in range(spec.survivors)]
        if codec is None:  # no ring: the server sees every float upload (PlaintextAggregator)
            return np.stack(uploads)
        words = []
        for j, vec in enumerate(uploads):
            crng = rng.spawn(f"encode/{j}")
            w = codec.encode(vec, crng)
            words.append(noise.post_encode(w, codec, crng))
        total = np.zeros(spec.dim, dtype=words[0].dtype)
        for w in words:
            np.add(total, w, out=total)
        if spec.bits < total.dtype.itemsize * 8:
            total &= total.dtype.type((1 << spec.bits) - 1)
        return codec.decode_sum(total, spec.survivors)[None, :]  # SecAgg or the trusted in-ring sum

    return release


def claimed_epsilon(event: Event, delta: float) -> float:
    """RDP epsilon of one release (subsampling removed: sample rate 1, one step)."""
    one = dataclasses.replace(event, sample_rate=1.0, sampling="none", steps=1)
    return RDPAccountant().epsilon([one], delta)


# -- the audit -----------------------------------------------------------------------------------
def _guess_grid(m: int, fractions: Sequence[float]) -> list[int]:
    ks = sorted({max(1, min(m // 2, round(f * m))) for f in fractions})
    return ks


def _score_releases(
    specs: Sequence[ReleaseSpec], release_for: Callable[[ReleaseSpec], Release], m: int,
    gen: np.random.Generator, rng: KeystreamRNG, progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    """Insert canaries into the releases, release, and score (auditor side)."""
    per = [m // len(specs) + (1 if i < m % len(specs) else 0) for i in range(len(specs))]
    scores, included, where = [], [], []
    noise_vals: dict[str, list[np.ndarray]] = {}  # noise on canary-free coordinates / accounted std
    for rel, (spec, count) in enumerate(zip(specs, per, strict=True)):
        if count > spec.dim:
            raise ConfigError(f"canaries: {count} canaries in one release exceed its {spec.dim} coordinates; "
                              "lower the number of canaries")
        coords = gen.choice(spec.dim, size=count, replace=False)
        incl = gen.random(count) < 0.5
        owner = gen.integers(0, spec.survivors, size=count)
        x = np.zeros((spec.survivors, spec.dim))
        x[owner[incl], coords[incl]] = spec.clip
        views = release_for(spec)(x, rng.spawn(f"release/{rel}"))
        view_idx = owner if views.shape[0] > 1 else np.zeros(count, dtype=np.int64)
        scores.append(views[view_idx, coords] / spec.clip)
        included.append(incl)
        where.append(np.stack([np.full(count, rel), coords, owner], axis=1))
        free = np.ones(spec.dim, dtype=bool)
        free[coords[incl]] = False
        std = spec.accounted_noise_std()
        for b in spec.layout.blocks:
            sl = slice(b.offset, b.offset + b.size)
            noise_vals.setdefault(b.name, []).append(views[:, sl][:, free[sl]].ravel() / std)
        if progress is not None:
            progress(1)
    return {"scores": np.concatenate(scores), "included": np.concatenate(included),
            "where": np.concatenate(where), "noise": {k: np.concatenate(v) for k, v in noise_vals.items()}}


def _noise_check(noise: dict[str, np.ndarray], p: float = NOISE_CHECK_P) -> dict[str, Any]:
    """Per block: the released noise on canary-free coordinates in units of the accounted
    std (ratio 1 = as accounted), with a one-sided chi-square test of "variance >= the
    accounted one" (a p-value below ``p`` / blocks: less noise than the accountant assumes). The
    noise has mean zero, so the second moment is its variance."""
    out: dict[str, Any] = {}
    for name, vals in noise.items():
        n = int(vals.size)
        if n < 2:
            continue
        second = float(np.mean(vals * vals))
        pval = float(stats.chi2.cdf(n * second, n))
        out[name] = {"entries": n, "ratio": math.sqrt(second), "p_less_noise": pval,
                     "too_little_noise": pval < p / len(noise)}  # Bonferroni over the blocks
    return out


def audit_mechanism(
    specs: ReleaseSpec | Sequence[ReleaseSpec],
    *,
    release: Callable[[ReleaseSpec], Release] = project_release,
    claimed: float | None = None,
    canaries: int = DEFAULT_CANARIES,
    p: float = P_VALUE,
    guess_fractions: Sequence[float] = GUESS_FRACTIONS,
    seed: int | None = None,
    progress: bool | Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The one-run audit of a release mechanism (one or more releases, one per round).

    ``release`` builds the mechanism from a spec (default: this project's; tests inject a
    broken one). ``claimed``: the epsilon to check (default: the accountant's epsilon of one
    release, the largest over ``specs``). ``seed`` None: canary placement from OS entropy and
    noise from the CSPRNG; an integer makes the whole audit reproducible. ``progress``: True
    for a progress bar over the releases, or a callback given the releases done.
    """
    specs = [specs] if isinstance(specs, ReleaseSpec) else list(specs)
    if not specs:
        raise ConfigError("the one-run audit needs at least one release")
    if canaries < 2:
        raise ConfigError(f"--canaries: need at least 2 canaries, got {canaries}")
    delta = specs[0].delta
    events = [s.event() for s in specs]
    claim = max(claimed_epsilon(e, delta) for e in events) if claimed is None else float(claimed)
    gen = np.random.default_rng(seed)
    rng = KeystreamRNG.hardened() if seed is None else KeystreamRNG.from_seed(seed, "audit/one-run")
    bar = tqdm(total=len(specs), desc="one-run audit", unit="release", leave=False) if progress is True else None
    step = bar.update if bar is not None else (progress if callable(progress) else None)
    try:
        data = _score_releases(specs, release, canaries, gen, rng, step)
    finally:
        if bar is not None:
            bar.close()
    scores, included = data["scores"], data["included"]
    m = scores.size
    order = np.argsort(-scores, kind="stable")
    ks = _guess_grid(m, guess_fractions)
    level = p / len(ks)
    rows = []
    for k in ks:
        top, bottom = order[:k], order[m - k:]
        v = int(included[top].sum() + (~included[bottom]).sum())
        r = 2 * k
        rows.append({"k_plus": k, "k_minus": k, "guesses": r, "correct": v,
                     "epsilon_hat": epsilon_lower_bound(m, r, v, delta, level)})
    best = max(rows, key=lambda row: row["epsilon_hat"])
    eps_hat = float(best["epsilon_hat"])
    check = _noise_check(data["noise"])
    passed = bool(eps_hat <= claim)
    eff = [_effective_multiplier(e, s) for e, s in zip(events, specs, strict=True)]
    summary: dict[str, Any] = {
        "epsilon_hat": eps_hat, "claimed_epsilon": claim, "delta": delta, "p": p,
        "canaries": m, "releases": len(specs), "included": int(included.sum()),
        "best_guesses": best["guesses"], "best_correct": best["correct"],
        "mechanism": specs[0].mechanism, "placement": specs[0].placement, "unit": specs[0].unit,
        "noise_multiplier": specs[0].noise_multiplier, "effective_noise_multiplier_min": min(eff),
        "clip": specs[0].clip, "survivors_min": min(s.survivors for s in specs),
        "noise_ratio_min": min((c["ratio"] for c in check.values()), default=None),
        "noise_too_little_in": ",".join(n for n, c in check.items() if c["too_little_noise"]) or None,
        "seed": seed, "passed": passed,
        "verdict": (f"epsilon-hat {eps_hat:.3f} <= claimed epsilon {claim:.3f}" if passed else
                    f"epsilon-hat {eps_hat:.3f} > claimed epsilon {claim:.3f}: the release leaks more than "
                    "the accountant allows (a noise or sensitivity bug)"),
    }
    inc, exc = np.sort(scores[included]), np.sort(scores[~included])
    plots = [
        {"title": "One-run audit: epsilon lower bound per number of guesses", "xlabel": "guesses (k+ + k-)",
         "ylabel": "epsilon", "xscale": "log", "yscale": "linear",
         "series": [{"label": f"epsilon-hat (p = {level:.3g} each)", "x": [float(r["guesses"]) for r in rows],
                     "y": [float(r["epsilon_hat"]) for r in rows]},
                    {"label": "claimed epsilon (accountant)", "x": [float(ks[0] * 2), float(ks[-1] * 2)],
                     "y": [claim, claim]}]},
        {"title": "One-run audit: canary scores (empirical CDF)", "xlabel": "score (released value / C)",
         "ylabel": "fraction of canaries", "xscale": "linear", "yscale": "linear",
         "series": [{"label": "included", "x": inc.tolist(), "y": (np.arange(1, inc.size + 1) / max(inc.size, 1)).tolist()},
                    {"label": "excluded", "x": exc.tolist(), "y": (np.arange(1, exc.size + 1) / max(exc.size, 1)).tolist()}]},
    ]
    raw = {"scores": scores.tolist(), "included": included.astype(int).tolist(),
           "canary_release_coordinate_owner": data["where"].tolist(), "guess_grid": rows,
           "noise_check": check, "events": [dataclasses.asdict(e) for e in events],
           "specs": [dataclasses.asdict(s) for s in specs]}
    return {"name": NAME, "summary": summary, "passed": passed, "plots": plots, "raw": raw}


def _effective_multiplier(event: Event, spec: ReleaseSpec) -> float:
    if isinstance(event, GaussianEvent):
        return event.noise_multiplier
    return math.sqrt(event.shares) * event.sigma / event.l2_sensitivity


# -- from a run directory ------------------------------------------------------------------------
def run_release_specs(run_dir: Path) -> tuple[list[ReleaseSpec], list[Event], TrainConfig]:
    """One :class:`ReleaseSpec` per completed round of a run (empty if nothing was noised),
    with the release events the run journaled for those rounds."""
    cfg, raw = load_config(run_dir)
    if cfg.dp == "off":
        return [], [], cfg
    layout_doc = load_json(run_dir / "layout.json")
    layout = VectorLayout.build([(b["name"], tuple(b["shape"]), b["bound"]) for b in layout_doc])
    decl = declared_release(cfg)
    names = noised_blocks(layout, cfg.dp, () if decl is None else decl.blocks)
    clip = cfg.clip
    if decl is None and cfg.dp == "sample":
        names = ()  # FedAvg under sample DP releases only the DP-SGD delta: no release noise
    elif cfg.splits_budget and decl is not None:
        # The algorithm's per-class release (its declared sensitivity); blocks it releases
        # apart (FedHPro's meta weight block) are a second mechanism with its own event, not
        # audited here.
        clip = decl.sensitivity
    blocks = tuple((n, layout.block(n).shape, float(layout.block(n).bound or 0.0)) for n in names)
    z = raw.get("noise_multiplier_used")
    journal = {int(e["round"]): e["events"] for e in read_journal(run_dir / JOURNAL)} if (run_dir / JOURNAL).exists() else {}
    specs: list[ReleaseSpec] = []
    events: list[Event] = []
    for rec in read_audit(run_dir / "audit.jsonl"):
        if rec.get("kind") != "round" or rec.get("aborted") or not blocks:
            continue
        dp = rec.get("dp") or {}
        summed = rec.get("summed") or []
        threshold = int(dp.get("threshold") or raw.get("threshold_used") or 1)
        # The release's own noise multiplier (--release-noise-ratio times DP-SGD's).
        z_release = dp.get("release_noise_multiplier")
        if z_release is None:  # records written before the budget split: one multiplier
            z_dp = dp.get("noise_multiplier", z)
            if not isinstance(z_dp, int | float):
                raise ConfigError(f"RUN_DIR: round {rec.get('round')} of {run_dir.name} records no noise multiplier")
            z_release = release_multiplier(float(z_dp), cfg.release_ratio())
        specs.append(ReleaseSpec(
            cfg.mechanism, cfg.noise_placement, cfg.dp, float(z_release), clip, cfg.delta,
            threshold, cfg.cohort, len(summed), cfg.bits, cfg.secagg != "off", blocks,
            RELEASE_BLOCKS if decl is None else decl.blocks))
        rel = [event_from_dict(e) for e in journal.get(int(rec["round"]), [])
               if e.get("label") in ("per_class_release", "client_update")]
        if rel:
            events.append(rel[0])
    return specs, events, cfg


def audit_one_run(run_dir: Path, *, seed: int | None = None, canaries: int = DEFAULT_CANARIES,
                  releases: int | None = None, p: float = P_VALUE,
                  progress: bool | Callable[[int], None] | None = None) -> dict[str, Any]:
    """One-run audit of a finished run's release mechanism (see the module docstring).

    ``releases``: how many of the run's rounds to spread the canaries over (default: every
    completed round, as the run released them; each release is redrawn with that round's
    survivors; fewer: the rounds with the fewest survivors, i.e. the least noise). The claimed epsilon is the accountant's for one release, from the events
    the run journaled, checked against the events rebuilt from the config.
    """
    run_dir = Path(run_dir)
    specs, journaled, cfg = run_release_specs(run_dir)
    if not specs:
        why = "the run has no DP" if cfg.dp == "off" else "the run releases nothing through the noised sum"
        return {"name": NAME, "summary": {"skipped": why}, "passed": None, "plots": [], "raw": {}}
    need = -(-canaries // min(s.dim for s in specs))
    count = len(specs) if releases is None else releases
    if not max(need, 1) <= count <= len(specs):
        raise ConfigError(f"--releases: must be in {max(need, 1)}..{len(specs)} (enough rounds for the canaries, "
                          f"at most the run's completed rounds), got {count}")
    ranked = sorted(range(len(specs)), key=lambda i: specs[i].survivors)[:count]  # fewest shares first
    chosen = [specs[i] for i in sorted(ranked)]
    rebuilt = [s.event() for s in chosen]
    recorded = [journaled[i] for i in sorted(ranked)] if len(journaled) == len(specs) else []
    claims = [claimed_epsilon(e, cfg.delta) for e in (recorded or rebuilt)]
    out = audit_mechanism(chosen, claimed=max(claims), canaries=canaries, p=p, seed=seed, progress=progress)
    match = [_same_release(a, b) for a, b in zip(recorded, rebuilt, strict=False)]
    out["summary"]["claim_source"] = "ledger journal" if recorded else "rebuilt from config"
    out["summary"]["journal_matches_mechanism"] = all(match) if recorded else None
    out["summary"]["run_dir"] = run_dir.name
    return out


def _same_release(a: Event, b: Event) -> bool:
    """Whether two release events describe the same noise and sensitivity (to 1e-9)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, GaussianEvent) and isinstance(b, GaussianEvent):
        return math.isclose(a.noise_multiplier, b.noise_multiplier, rel_tol=1e-9)
    assert isinstance(a, DiscreteGaussianEvent) and isinstance(b, DiscreteGaussianEvent)
    return (a.shares == b.shares and a.dim == b.dim and math.isclose(a.sigma, b.sigma, rel_tol=1e-9)
            and math.isclose(a.l2_sensitivity, b.l2_sensitivity, rel_tol=1e-9))


__all__ = ["ReleaseSpec", "audit_mechanism", "audit_one_run", "claimed_epsilon", "epsilon_lower_bound",
           "p_value_bound", "project_release", "run_release_specs"]
