"""What a client uploads under each privacy mode, and the declared bound of every block.

The :class:`UploadSpec` is public and identical for every client of a run. It decides
(DESIGN.md section 6) which blocks may travel:

* ``dp="off"``: exact per-class gradient sums, class-holder indicators, n_k * delta and n_k.
* ``dp="sample"``: the per-class release (FedHPro: softmax residuals plus a constant count
  coordinate per sample, within :data:`RESIDUAL_SENSITIVITY` without clipping; ProtoNorm and
  FedSA: features clipped to ``--proto-clip`` plus the count coordinate, within
  :func:`prototype_sensitivity`; which blocks, and the bound, are declared per algorithm in
  :mod:`secure_fed.privacy.release`; noised;
  with the meta classifier also the weight gradients, clipped to ``clip``, noised apart) and the DP-SGD model delta, averaged with
  uniform weights over the survivors. No n_k, no exact counts, no holder indicators.
* ``dp="client"``: every block inside one vector clipped to ``clip`` and noised
  (DP-FedAvg style); per-class sums are divided by the client's sample count first so no
  block dominates the joint norm; uniform weights again.

Bounds are per-client worst cases from public facts only (the clip norm, the size of the
training set, a per-sample value bound for unclipped values) and size the fixed-point
codec; a value beyond its bound is clamped on the client, which may cost accuracy but
never privacy (clamping is a contraction, so sensitivities do not grow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dp.clipping import RESIDUAL_NORM_BOUND
from secure_fed.config import DEFAULT_PROTO_CLIP
from secure_fed.errors import ConfigError

DP_MODES = ("off", "sample", "client")
PLAIN_VALUE_BOUND = 10.0
"""Per-sample bound of an unclipped gradient or feature entry (DP off)."""
DELTA_BOUND = 1.0
"""Bound of one parameter's change in one round of local training."""
COUNT_SHARE = 0.5
"""The count coordinate as a fraction of the per-class release's L2 sensitivity (sample unit)."""
RESIDUAL_SENSITIVITY = RESIDUAL_NORM_BOUND / math.sqrt(1.0 - COUNT_SHARE ** 2)
"""L2 sensitivity of FedHPro's per-class release (sample unit): one sample adds its softmax
residual (norm <= sqrt(2), no clipping needed) and the count coordinate
COUNT_SHARE * RESIDUAL_SENSITIVITY, so its contribution has norm
<= sqrt(2 + COUNT_SHARE^2 S^2) = S with S = sqrt(2) / sqrt(1 - COUNT_SHARE^2) (= 1.633)."""
def prototype_sensitivity(proto_clip: float) -> float:
    """L2 sensitivity of the prototype release (sample unit): one sample adds its feature
    clipped to ``proto_clip`` and the count coordinate COUNT_SHARE * S, so its contribution
    has norm <= sqrt(proto_clip^2 + COUNT_SHARE^2 S^2) = S, S = proto_clip / sqrt(1 - COUNT_SHARE^2)."""
    if not (proto_clip > 0 and math.isfinite(proto_clip)):
        raise ConfigError(f"--proto-clip must be > 0 and finite (got {proto_clip})")
    return proto_clip / math.sqrt(1.0 - COUNT_SHARE ** 2)


@dataclass(frozen=True)
class UploadSpec:
    """Public description of the uploads of a run (client and server agree on it)."""

    dp: str = "off"
    clip: float = 1.0  # validated where it enters: TrainConfig (--clip) and dp.clipping.check_clip
    train_size: int = 1  # N: training samples in the whole federation (public)
    release_sensitivity: float = RESIDUAL_SENSITIVITY
    """L2 sensitivity of the algorithm's per-class release (sample unit), as its
    :class:`~secure_fed.privacy.release.ReleaseDecl` states it (default: FedHPro's
    :data:`RESIDUAL_SENSITIVITY`, independent of ``--clip``)."""
    proto_clip: float = DEFAULT_PROTO_CLIP  # --proto-clip: per-sample feature norm of the prototype release

    def __post_init__(self) -> None:
        if self.dp not in DP_MODES:
            raise ConfigError(f"--dp must be one of {', '.join(DP_MODES)} (got {self.dp!r})")
        if self.train_size < 1:
            raise ConfigError("train_size must be >= 1")
        if not (self.release_sensitivity > 0 and math.isfinite(self.release_sensitivity)):
            raise ConfigError(f"release sensitivity must be > 0 and finite (got {self.release_sensitivity})")
        prototype_sensitivity(self.proto_clip)  # validates --proto-clip

    @property
    def count_coordinate(self) -> float:
        """Value of the constant count coordinate each sample adds (sample unit)."""
        return COUNT_SHARE * self.release_sensitivity

    def prototype_bound(self) -> float:
        """Bound of one entry of the prototype block (C x dim, summed features): clipped to
        ``proto_clip`` per sample under DP (client unit: divided by n_k, then the whole
        vector clipped to ``clip``); :data:`PLAIN_VALUE_BOUND` per sample without DP."""
        if self.dp == "sample":
            return self.proto_clip * self.train_size
        if self.dp == "client":
            return min(self.proto_clip, self.clip)
        return PLAIN_VALUE_BOUND * self.train_size

    def residual_bound(self) -> float:
        """Bound of one entry of the per-class residual block U (C x C): every entry of a
        sample's residual is in [-1, 1], so a client's sum is within its sample count (client
        unit: divided by n_k, then the whole vector clipped to ``clip``)."""
        if self.dp == "client":
            return min(1.0, self.clip)
        return float(self.train_size)

    def per_class_bound(self) -> float:
        """Bound of one entry of a per-class gradient block."""
        if self.dp == "sample":
            return self.clip * self.train_size
        if self.dp == "client":
            return self.clip
        return PLAIN_VALUE_BOUND * self.train_size

    def delta_bound(self) -> float:
        if self.dp == "off":
            return DELTA_BOUND * self.train_size  # n_k * delta
        if self.dp == "client":
            return self.clip
        return DELTA_BOUND

    def count_bound(self) -> float:
        if self.dp == "sample":
            return self.count_coordinate * self.train_size
        if self.dp == "client":
            return self.clip
        return float(self.train_size)

    @property
    def weighted(self) -> bool:
        """Whether FedAvg weights by the exact n_k (only without DP)."""
        return self.dp == "off"
