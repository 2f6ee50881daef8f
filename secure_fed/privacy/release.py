"""Which blocks form each algorithm's per-class release under ``--dp sample``, and its bound.

An algorithm states the kind of per-class release it makes in one row of
:data:`secure_fed.config.PER_CLASS_RELEASE` (a root module, so that :class:`TrainConfig`
can validate ``--release-noise-ratio`` with it); :data:`RELEASE_RULES` here says, per kind,
which blocks the per-class mechanism noises, the L2 sensitivity of one sample's
contribution to them (count coordinate included), the value of that count coordinate, and
any block released as a mechanism of its own. :class:`~secure_fed.privacy.noise.RunPrivacy`
(noise, ledger, planning, ``budget --from-run``, ``layout.json``), the upload bounds and the
audits read the declaration through :func:`declared_release`. An algorithm without a row
releases nothing per class under ``--dp sample`` (FedAvg: only the DP-SGD delta travels).

Two kinds of release exist:

* FedHPro's residual release (``cls_grad_b`` + ``class_count``): each sample adds its softmax
  residual (norm <= sqrt(2), never clipped) and the count coordinate, within
  :data:`~secure_fed.privacy.upload.RESIDUAL_SENSITIVITY`.
* The prototype release (``proto_sum`` + ``class_count``, ProtoNorm and FedSA): each sample
  adds its feature clipped to ``--proto-clip`` (:func:`dp.clipping.per_class_feature_sums`)
  and the count coordinate, within :func:`~secure_fed.privacy.upload.prototype_sensitivity`.

* The Gaussian-moment release (``proto_sum`` + ``feat_sq`` + ``class_count``, GFPL): each
  sample adds its feature clipped to ``--gfpl-clip`` and divided by it (norm <= 1), the
  entrywise square of that (norm <= 1) and the count coordinate
  (:func:`dp.clipping.per_class_moment_sums`), within :func:`moment_sensitivity`.

In all three the count coordinate is ``COUNT_SHARE`` times the sensitivity, so the noisy count
rides inside the release and costs nothing extra (DESIGN.md section 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from secure_fed.config import PER_CLASS_RELEASE, TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.privacy.upload import (
    COUNT_SHARE,
    RESIDUAL_SENSITIVITY,
    UploadSpec,
    prototype_sensitivity,
)

PROTO_BLOCK = "proto_sum"
"""The prototype release's feature block: per class, the summed clipped features (C x dim)."""
COUNT_BLOCK = "class_count"
"""Every per-class release's count block (C): the summed count coordinate."""
SQUARE_BLOCK = "feat_sq"
"""The Gaussian-moment release's second block: per class, the summed entrywise squares of
the rescaled clipped features (C x dim)."""


def moment_sensitivity() -> float:
    """L2 sensitivity of the Gaussian-moment release (sample unit, in the rescaled units
    of :func:`dp.clipping.per_class_moment_sums`): feature <= 1, square <= 1 and the count
    coordinate COUNT_SHARE * S (:func:`dp.clipping.moment_release_norm`), so S^2 = 2 + COUNT_SHARE^2 S^2, S = sqrt(2 / (1 - COUNT_SHARE^2))
    (independent of ``--gfpl-clip``: the clip sets the units, the server scales back)."""
    return math.sqrt(2.0 / (1.0 - COUNT_SHARE ** 2))


@dataclass(frozen=True)
class ReleaseDecl:
    """An algorithm's per-class release under ``--dp sample`` (public).

    ``blocks``: the blocks the per-class mechanism covers (those present in the layout are
    noised, the rest ignored); ``sensitivity``: L2 norm bound of one sample's contribution
    to them together; ``count_coordinate``: the constant each sample adds to its class's
    count entry; ``separate``: blocks released as their own mechanism at ``--clip`` (label
    ``weight_release``) when the layout holds them.
    """

    blocks: tuple[str, ...]
    sensitivity: float
    count_coordinate: float
    separate: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ConfigError("a per-class release needs at least one block")
        if not self.sensitivity > 0:
            raise ConfigError(f"release sensitivity must be > 0 (got {self.sensitivity})")
        if not 0 <= self.count_coordinate < self.sensitivity:
            raise ConfigError(f"count coordinate must be in [0, sensitivity) (got {self.count_coordinate})")
        if set(self.separate) & set(self.blocks):
            raise ConfigError(f"blocks {sorted(set(self.separate) & set(self.blocks))} are both in the release and apart")


ReleaseRule = Callable[[TrainConfig], ReleaseDecl]
"""(run configuration) -> the release its algorithm makes under ``--dp sample``."""


def residual_release(cfg: TrainConfig) -> ReleaseDecl:
    """FedHPro: the residual release; with ``--classifier meta`` the weight gradients
    (``cls_grad_w``, clipped to ``--clip``) are a second mechanism."""
    return ReleaseDecl(("feat_grad", "cls_grad_b", COUNT_BLOCK), RESIDUAL_SENSITIVITY,
                       COUNT_SHARE * RESIDUAL_SENSITIVITY, separate=("cls_grad_w",))


def prototype_release(cfg: TrainConfig) -> ReleaseDecl:
    """ProtoNorm, FedSA: per-class sums of features clipped to ``--proto-clip``, and counts."""
    s = prototype_sensitivity(cfg.proto_clip)
    return ReleaseDecl((PROTO_BLOCK, COUNT_BLOCK), s, COUNT_SHARE * s)


def moment_release(cfg: TrainConfig) -> ReleaseDecl:
    """GFPL: per-class sums of unit-ball features, of their squares, and counts."""
    s = moment_sensitivity()
    return ReleaseDecl((PROTO_BLOCK, SQUARE_BLOCK, COUNT_BLOCK), s, COUNT_SHARE * s)


RELEASE_RULES: dict[str, ReleaseRule] = {
    "residual": residual_release,
    "prototype": prototype_release,
    "moments": moment_release,
}
"""Release kind (the values of :data:`secure_fed.config.PER_CLASS_RELEASE`) -> its declaration."""


def has_release(algorithm: str) -> bool:
    """Whether ``algorithm`` makes a per-class release under ``--dp sample``."""
    return algorithm in PER_CLASS_RELEASE


def declared_release(cfg: TrainConfig) -> ReleaseDecl | None:
    """The per-class release of ``cfg.algorithm`` (None: it makes none)."""
    kind = PER_CLASS_RELEASE.get(cfg.algorithm)
    if kind is None:
        return None
    rule = RELEASE_RULES.get(kind)
    if rule is None:
        raise ConfigError(f"--algorithm {cfg.algorithm}: release kind {kind!r} has no rule in secure_fed.privacy.release")
    return rule(cfg)


def upload_spec(cfg: TrainConfig, train_size: int) -> UploadSpec:
    """The run's :class:`UploadSpec`: the release's sensitivity as declared (FedHPro's
    residual bound where the algorithm declares none, unused there)."""
    decl = declared_release(cfg)
    sens = RESIDUAL_SENSITIVITY if decl is None else decl.sensitivity
    return UploadSpec(cfg.dp, cfg.clip, train_size, release_sensitivity=sens, proto_clip=cfg.proto_clip)
