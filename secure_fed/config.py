"""Run configuration: one frozen dataclass, validated in one place.

Every check raises :class:`ConfigError` naming the command-line flag to change, so the CLI
can print it as a one-line message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from secure_fed.errors import ConfigError


class Algorithm(StrEnum):
    FEDHPRO = "fedhpro"
    FEDAVG = "fedavg"
    FEDPROTO = "fedproto"
    PROTONORM = "protonorm"
    FEDSA = "fedsa"
    GFPL = "gfpl"


class Classifier(StrEnum):
    FEDAVG = "fedavg"
    META = "meta"


class HpControl(StrEnum):
    """--hp-control: FedHPro's control arm (none = FedHPro itself)."""

    NONE = "none"
    RANDOM = "random"
    FROZEN = "frozen"


class Partition(StrEnum):
    DIRICHLET = "dirichlet"
    IID = "iid"


class SecAggMode(StrEnum):
    OFF = "off"
    SECAGG = "secagg"
    SECAGG_PLUS = "secagg+"


class DpMode(StrEnum):
    """--dp: the privacy unit (or no DP)."""

    OFF = "off"
    SAMPLE = "sample"
    CLIENT = "client"


class Placement(StrEnum):
    LOCAL = "local"
    DISTRIBUTED = "distributed"


class Mechanism(StrEnum):
    GAUSSIAN = "gaussian"
    DISCRETE = "discrete"


class AccountantName(StrEnum):
    RDP = "rdp"
    PRV = "prv"


class ExecutorName(StrEnum):
    LOCAL = "local"
    RAY = "ray"


# The choices of each flag, in the order --help lists them (members compare equal to their strings).
ALGORITHMS = tuple(Algorithm)
CLASSIFIERS = tuple(Classifier)
HP_CONTROLS = tuple(HpControl)
PARTITIONS = tuple(Partition)
SECAGG_MODES = tuple(SecAggMode)
DP_MODES = tuple(DpMode)
PLACEMENTS = tuple(Placement)
MECHANISMS = tuple(Mechanism)
ACCOUNTANTS = tuple(AccountantName)
EXECUTORS = tuple(ExecutorName)
DEFAULT_RELEASE_NOISE_RATIO = 5.0
"""FedHPro under --dp sample: the release's noise multiplier is 5x DP-SGD's by default.
Measured on the default digits run at epsilon 8 with the residual release (3 seeds,
benchmarks/RESULTS.md, "Residual release: budget split"): ratios 5 and 10 tie on accuracy
(mean of the last 5 rounds 0.855 and 0.859, final 0.873 both), ahead of ratios 1-3; at 5
the noised release keeps cosine 0.69 to the clean one (0.44 at 10) and 26% of class-rounds
are matched after round 2 (4.5% at 10)."""
DEFAULT_MAX_COLLUDERS = 1
"""--max-colluders: colluding clients among any client's neighbours a round tolerates by
default. Sound for the default cohort of 10 at 10% dropout: protocol.params.round_params
gives the complete graph, k = 9, t = 6 (c < 2t - k - 1 = 2 against an active server)."""
DEFAULT_HALTING_BITS = 6.0
"""--halting-bits: a protocol round halts with probability <= 2^-6 (1/64) at the stated
dropout; a halted round restarts (reveal-stage dropout) or is recorded as aborted."""
PER_CLASS_RELEASE: dict[str, str] = {
    Algorithm.FEDHPRO: "residual",
    Algorithm.PROTONORM: "prototype",
    Algorithm.FEDSA: "prototype",
    Algorithm.GFPL: "moments",
}
"""--algorithm -> the kind of per-class release it makes under --dp sample (one row per
algorithm; what each kind releases, and its sensitivity, is in
:mod:`secure_fed.privacy.release`). An algorithm without a row releases only its DP-SGD
delta under --dp sample."""
DEFAULT_PROTO_CLIP = 1.0
"""--proto-clip: L2 norm each sample's feature is clipped to in the prototype release
(ProtoNorm, FedSA). Both methods read only the directions of the released prototypes
(ProtoNorm normalizes them before alignment, FedSA before the anchor update), and the
release's noise scales with this norm; a clip below the features' norms makes every sample
add (a multiple of) its feature's direction, which is what those steps read. The norm of a
feature varies with the model and training; raise it to keep magnitudes."""
RECORDED_KEYS = frozenset({"environment", "noise_multiplier_used", "threshold_used", "secure_aggregation", "noise_plan"})
"""Keys config.json records about a run beyond its settings (ignored when reading it back)."""


def default_release_ratio(splits_budget: bool) -> float:
    """The release's noise multiplier over DP-SGD's when --release-noise-ratio is not given
    (the one place this default is decided; ``train`` and ``budget`` both ask here):
    :data:`DEFAULT_RELEASE_NOISE_RATIO` where two mechanisms share the budget (a per-class
    release and DP-SGD steps), 1 where one mechanism runs."""
    return DEFAULT_RELEASE_NOISE_RATIO if splits_budget else 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (written to ``config.json``)."""

    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    algorithm: str = "fedhpro"
    clients: int = 10
    cohort: int = 10
    rounds: int = 30
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    partition: str = "dirichlet"
    alpha: float = 0.5
    imbalance: float = 1.0
    length_of_hp: int = 5
    rounds_of_hp: int = 30
    hp_lr: float = 0.1
    hp_control: str = "none"
    meta_per_class: int = 50
    meta_steps: int = 100
    tau: float = 0.05
    margin: bool = True
    hpcl_weight: float = 0.1
    hpal_weight: float = 1.0
    proto_weight: float = 1.0
    proto_clip: float = DEFAULT_PROTO_CLIP
    pa_steps: int = 100
    pa_lr: float = 0.01
    pu_norm: float = 3.0
    pn_min_snr: float = 1.0  # ProtoNorm under DP: a class's direction is read if its sum's signal/noise energy is at least this
    classifier: str = "fedavg"
    feature_dim: int | None = None
    secagg: str = "secagg+"
    neighbors: int | None = None
    threshold: int | None = None
    bits: int = 32
    authenticated: bool = True
    dropout: float = 0.1
    max_colluders: int = DEFAULT_MAX_COLLUDERS
    halting_bits: float = DEFAULT_HALTING_BITS
    dp: str = "sample"
    noise_placement: str = "distributed"
    mechanism: str = "discrete"
    clip: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = 8.0
    delta: float = 1e-5
    accountant: str = "rdp"
    release_rate: float = 0.5
    release_noise_ratio: float | None = None  # None: release_ratio()'s default
    hardened: bool = True
    device: str = "auto"
    threads: int = 0
    seed: int = 0
    out: str = "runs"
    run_id: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    workers: int = 0
    server_workers: int = 1
    fedsa_tau: float = 0.5  # FedSA: RMCL temperature (the seed gives none; 0.5 learnt faster than 0.1 on digits)
    fedsa_margin: float = 0.1  # FedSA: RMCL additive cosine margin on the own-class anchor
    fedsa_rmcl_weight: float = 1.0  # FedSA: weight of RMCL
    fedsa_cc_weight: float = 1.0  # FedSA: weight of classifier calibration on the anchors
    fedsa_momentum: float = 0.9  # FedSA: EMA keep-rate of the anchors on the server
    gfpl_lambda: float = 1.0  # GFPL: weight of the dot-regression loss to the ETF (Eq. 13; no value in the seed text)
    gfpl_proj_dim: int | None = None  # GFPL: ETF projection dim (None: the seed's, 50 MNIST-like, 80 CIFAR)
    gfpl_start: int = 2  # GFPL: first round the server calibrates the head on pseudo-features
    gfpl_interval: int = 1  # GFPL: calibrate every this many rounds from --gfpl-start
    gfpl_pseudo: int = 100  # GFPL: pseudo-features per class per calibration
    gfpl_calib_epochs: int = 1  # GFPL: epochs over the pseudo-features per calibration
    gfpl_calib_lr: float = 0.01  # GFPL: calibration SGD rate (the seed's learning rate, appendix C.2)
    gfpl_calib_momentum: float = 0.5  # GFPL: calibration SGD momentum (the seed's, appendix C.1)
    gfpl_calib_batch: int = 32  # GFPL: calibration batch size
    gfpl_clip: float = 10.0  # GFPL: per-sample feature norm R the moments are clipped to under DP
    gfpl_min_snr: float = 1.0  # GFPL under DP: a class's noisy mean is used if its signal/noise energy is at least this

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, flag: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{flag}: {msg}")

        need(self.algorithm in ALGORITHMS, "--algorithm", f"must be one of {', '.join(ALGORITHMS)} (got {self.algorithm!r})")
        need(self.classifier in CLASSIFIERS, "--classifier", f"must be one of {', '.join(CLASSIFIERS)} (got {self.classifier!r})")
        need(self.partition in PARTITIONS, "--partition", f"must be one of {', '.join(PARTITIONS)} (got {self.partition!r})")
        need(self.clients >= 1, "--clients", f"must be >= 1 (got {self.clients})")
        need(1 <= self.cohort <= self.clients, "--cohort", f"must be between 1 and --clients={self.clients} (got {self.cohort})")
        need(self.rounds >= 1, "--rounds", f"must be >= 1 (got {self.rounds})")
        need(self.local_epochs >= 1, "--local-epochs", f"must be >= 1 (got {self.local_epochs})")
        need(self.batch_size >= 1, "--batch-size", f"must be >= 1 (got {self.batch_size})")
        need(self.lr > 0, "--lr", f"must be > 0 (got {self.lr})")
        need(0 <= self.momentum < 1, "--momentum", f"must be in [0, 1) (got {self.momentum})")
        need(self.alpha > 0, "--alpha", f"must be > 0 (got {self.alpha})")
        need(self.imbalance >= 1, "--imbalance", f"must be >= 1 (1 = balanced; got {self.imbalance})")
        need(self.length_of_hp >= 1, "--length-of-hp", f"must be >= 1 (got {self.length_of_hp})")
        need(self.rounds_of_hp >= 0, "--rounds-of-hp", f"must be >= 0 (got {self.rounds_of_hp})")
        need(self.hp_control in HP_CONTROLS, "--hp-control", f"must be one of {', '.join(HP_CONTROLS)} (got {self.hp_control!r})")
        need(self.hp_lr > 0, "--hp-lr", f"must be > 0 (got {self.hp_lr})")
        need(self.meta_per_class >= 1, "--meta-per-class", f"must be >= 1 (got {self.meta_per_class})")
        need(self.meta_steps >= 0, "--meta-steps", f"must be >= 0 (got {self.meta_steps})")
        need(self.tau > 0, "--tau", f"must be > 0 (got {self.tau})")
        for flag, v in (("--hpcl-weight", self.hpcl_weight), ("--hpal-weight", self.hpal_weight), ("--proto-weight", self.proto_weight)):
            need(v >= 0, flag, f"must be >= 0 (got {v})")
        need(self.feature_dim is None or self.feature_dim >= 2, "--feature-dim", f"must be >= 2 (got {self.feature_dim})")
        need(self.secagg in SECAGG_MODES, "--secagg", f"must be one of {', '.join(SECAGG_MODES)} (got {self.secagg!r})")
        need(self.dp in DP_MODES, "--dp", f"must be one of {', '.join(DP_MODES)} (got {self.dp!r})")
        need(self.noise_placement in PLACEMENTS, "--noise-placement", f"must be one of {', '.join(PLACEMENTS)}")
        need(self.mechanism in MECHANISMS, "--mechanism", f"must be one of {', '.join(MECHANISMS)}")
        need(self.accountant in ACCOUNTANTS, "--accountant", f"must be one of {', '.join(ACCOUNTANTS)}")
        need(self.neighbors is None or self.neighbors >= 2, "--neighbors", f"must be >= 2 (got {self.neighbors})")
        need(self.threshold is None or self.threshold >= 2, "--threshold", f"must be >= 2 (got {self.threshold})")
        need(2 <= self.bits <= 64, "--bits", f"must be in 2..64 (got {self.bits})")
        need(0 <= self.dropout < 1, "--dropout", f"must be in [0, 1) (got {self.dropout})")
        need(self.max_colluders >= 0, "--max-colluders", f"must be >= 0 (got {self.max_colluders})")
        need(0 < self.halting_bits <= 64, "--halting-bits", f"must be in (0, 64] (got {self.halting_bits})")
        need(0 < self.clip < float("inf"), "--clip", f"must be > 0 and finite (got {self.clip})")
        need(self.noise_multiplier is None or 0 < self.noise_multiplier < float("inf"), "--noise-multiplier", f"must be a finite number > 0 (got {self.noise_multiplier})")
        need(self.target_epsilon is None or 0 < self.target_epsilon < float("inf"), "--target-epsilon",
             f"must be a finite number > 0 (got {self.target_epsilon}; use --no-target with --noise-multiplier for no target)")
        need(0 < self.delta < 1, "--delta", f"must be in (0, 1) (got {self.delta})")
        need(0 < self.release_rate <= 1, "--release-rate", f"must be in (0, 1] (got {self.release_rate})")
        r = self.release_noise_ratio
        need(r is None or 0 < r < float("inf"), "--release-noise-ratio", f"must be > 0 and finite (got {r})")
        need(r is None or r == 1.0 or self.splits_budget, "--release-noise-ratio",
             "splits the budget between the per-class release and DP-SGD, so it needs --dp sample and an algorithm with a "
             f"per-class release ({', '.join(PER_CLASS_RELEASE)}; elsewhere one mechanism runs: leave it at 1)")
        need(0 < self.proto_clip < float("inf"), "--proto-clip", f"must be > 0 and finite (got {self.proto_clip})")
        need(0 <= self.pa_steps <= 100_000, "--pa-steps", f"must be in [0, 100000] (got {self.pa_steps})")
        need(0 < self.pa_lr < float("inf"), "--pa-lr", f"must be > 0 and finite (got {self.pa_lr})")
        need(0 < self.pu_norm < float("inf"), "--pu-norm", f"must be > 0 and finite (got {self.pu_norm})")
        need(0 <= self.pn_min_snr < float("inf"), "--pn-min-snr", f"must be >= 0 and finite (got {self.pn_min_snr})")
        need(self.dp == "off" or self.noise_multiplier is not None or self.target_epsilon is not None,
             "--noise-multiplier", "give --noise-multiplier or --target-epsilon when --dp is on")
        need(self.dp == "off" or self.algorithm != "fedproto", "--algorithm",
             f"fedproto runs without DP only; use --dp off, or one of {', '.join(a for a in ALGORITHMS if a != 'fedproto')}")
        need(not (self.dp != "off" and self.noise_placement == "distributed" and self.secagg == "off"), "--noise-placement",
             "distributed noise needs --secagg secagg or secagg+ (without it the server sees each share alone); use local")
        need(self.secagg == "off" or self.cohort >= 3, "--cohort", f"secure aggregation needs at least 3 clients per round (got {self.cohort})")
        need(self.threads >= 0, "--threads", f"must be >= 0 (0 = auto; got {self.threads})")
        need(self.seed >= 0, "--seed", f"must be >= 0 (got {self.seed})")
        need(self.run_id is None or (isinstance(self.run_id, str) and self.run_id not in ("", ".", "..")
                                     and not any(c in self.run_id for c in "/\\\0") and self.run_id == self.run_id.strip()),
             "--run-id", f"must be a plain folder name: no path separators, not empty, not . or .. (got {self.run_id!r})")
        need(self.executor in EXECUTORS, "--executor", f"must be one of {', '.join(EXECUTORS)} (got {self.executor!r})")
        need(self.workers >= 0, "--workers", f"must be >= 0 (0 = one per CPU; got {self.workers})")
        need(self.server_workers >= 1, "--server-workers", f"must be >= 1 (1 = the server's own process; got {self.server_workers})")
        need(0 < self.fedsa_tau < float("inf"), "--fedsa-tau", f"must be > 0 and finite (got {self.fedsa_tau})")
        need(0 <= self.fedsa_margin < 2, "--fedsa-margin", f"must be in [0, 2) (a cosine margin; got {self.fedsa_margin})")
        for flag, v in (("--fedsa-rmcl-weight", self.fedsa_rmcl_weight), ("--fedsa-cc-weight", self.fedsa_cc_weight)):
            need(0 <= v < float("inf"), flag, f"must be >= 0 and finite (got {v})")
        need(0 <= self.fedsa_momentum < 1, "--fedsa-momentum", f"must be in [0, 1) (got {self.fedsa_momentum})")
        need(0 <= self.gfpl_lambda < float("inf"), "--gfpl-lambda", f"must be >= 0 and finite (got {self.gfpl_lambda})")
        need(self.gfpl_proj_dim is None or self.gfpl_proj_dim >= 2, "--gfpl-proj-dim", f"must be >= 2 (got {self.gfpl_proj_dim})")
        need(self.gfpl_start >= 1, "--gfpl-start", f"must be >= 1 (a round number; got {self.gfpl_start})")
        for flag, n in (("--gfpl-interval", self.gfpl_interval), ("--gfpl-pseudo", self.gfpl_pseudo),
                        ("--gfpl-calib-epochs", self.gfpl_calib_epochs), ("--gfpl-calib-batch", self.gfpl_calib_batch)):
            need(n >= 1, flag, f"must be >= 1 (got {n})")
        need(0 < self.gfpl_calib_lr < float("inf"), "--gfpl-calib-lr", f"must be > 0 and finite (got {self.gfpl_calib_lr})")
        need(0 <= self.gfpl_calib_momentum < 1, "--gfpl-calib-momentum", f"must be in [0, 1) (got {self.gfpl_calib_momentum})")
        need(0 < self.gfpl_clip < float("inf"), "--gfpl-clip", f"must be > 0 and finite (got {self.gfpl_clip})")
        need(0 <= self.gfpl_min_snr < float("inf"), "--gfpl-min-snr", f"must be >= 0 and finite (got {self.gfpl_min_snr})")

    @property
    def splits_budget(self) -> bool:
        """Whether two DP mechanisms share the budget: the algorithm's per-class release
        (:data:`PER_CLASS_RELEASE`) and DP-SGD (--dp sample); elsewhere one mechanism runs."""
        return self.dp == "sample" and self.algorithm in PER_CLASS_RELEASE

    def release_ratio(self) -> float:
        """The release's noise multiplier over DP-SGD's: --release-noise-ratio, else
        :data:`DEFAULT_RELEASE_NOISE_RATIO` where the budget is split, else 1."""
        if self.release_noise_ratio is not None:
            return self.release_noise_ratio
        return default_release_ratio(self.splits_budget)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in RECORDED_KEYS}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"config.json has unknown keys: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
