"""GFPL (Generative Federated Prototype Learning, seed 003) in its secure form.

What the paper does, per client: a dual-classifier structure (DCS) on top of the feature
extractor: a learnable projection, its output normalized, read by a fixed simplex
equiangular tight frame (ETF) through a dot-regression loss and by a trainable classifier
through cross-entropy (hybrid loss CE + lambda * DR, Eq. 13); per class a Gaussian mixture
of K components fitted to the client's features (its "local prototype"); the server fuses
the clients' components of a class by Bhattacharyya distance (weighted average under a
threshold, kept apart above it) and every client samples balanced pseudo-features from the
fused mixtures to retrain projection and classifier with the extractor frozen. No model
parameters travel: each client keeps its own model.

Why this is not that, and what it is instead. Bhattacharyya fusion needs each client's
components *individually*; the server here sees only the cohort's sum (DESIGN.md section 1),
so every client's statistics are added before anyone reads them. What a sum carries exactly
are moments, so each client uploads per class (:func:`class_moments`) the sum of its
features, the sum of their squares (diagonal) and a count; the sum over the cohort is the
pooled moments, from which the server forms one diagonal Gaussian per class
(:func:`moments_to_gaussians`): the same Gaussian as fitting one component to all the
cohort's class-c features pooled, i.e. the paper's fusion with every pair merged (a
threshold of infinity) by moment matching, with K = 1. The calibration the paper runs on
every client runs once, on the server, on the global model (:meth:`GfplServer._calibrate`):
pseudo-features sampled from the global Gaussians retrain the projection and the trainable
classifier with the hybrid loss, extractor untouched. The harness evaluates one global
model, so the model itself is averaged (FedAvg of the deltas) as for FedProto here.

The moments are of the *received global model's* features, computed before local training
(as ProtoNorm here): a secure sum adds features, and only the global model's features live
in one space; the Gaussians so lag local training by one round.

Privacy units (the upload is public in layout, :class:`GfplServer` declares the bounds):

* ``--dp off``: exact per-class sums of f, f * f and exact counts, n_k-weighted delta.
* ``--dp sample``: the Gaussian-moment release declared in
  :mod:`secure_fed.privacy.release` (kind ``moments``): a Poisson(``--release-rate``)
  subsample, each feature clipped to ``--gfpl-clip`` R and divided by R, its entrywise
  squares and the count coordinate, jointly within one sensitivity, noised and charged as
  ``per_class_release``; DP-SGD for the model. The server reads counts only through the
  noisy count coordinate.
* ``--dp client``: the same rescaled moments without the coordinate, every block over n_k,
  then the whole vector clipped and noised (:class:`~secure_fed.privacy.noise.ClientNoise`).

Under DP the server uses a class's Gaussian only when its count clears the noise gate and its
summed features are resolved above their (public) noise level, with one pooled variance
(:func:`moments_to_gaussians`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dp.clipping import per_class_moment_sums
from dp.dpsgd import DPSGDReport, private_local_training
from secure_fed.aggregation.layout import Aggregate
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.fl.client import (
    ClientContext,
    ClientOutput,
    ClientShard,
    extract_features,
    flat_params,
    weighted_delta,
)
from secure_fed.fl.program import derive_seed
from secure_fed.fl.server import Broadcast, FedServer, clears_snr
from secure_fed.privacy.release import COUNT_BLOCK, PROTO_BLOCK, SQUARE_BLOCK
from secure_fed.privacy.upload import PLAIN_VALUE_BOUND, UploadSpec

PAPER_PROJ_DIM = {"digits": 50, "mnist5k": 50, "mnist": 50, "cifar10": 80, "cifar100": 80}
"""The seed's projection dimension per dataset (appendix C.2: MNIST 50, CIFAR-10/100 80)."""
GAUSSIAN_BLOCKS = (PROTO_BLOCK, SQUARE_BLOCK, COUNT_BLOCK)
"""GFPL's per-class statistics: sum of features (C x dim), of their squares (C x dim), count (C)."""
VAR_FLOOR = 1e-6
"""Smallest variance of a pseudo-feature coordinate (a noisy second moment can fall below the
squared mean; the Gaussian needs a positive variance)."""
ETF_SEED_TAG = 7
"""derive_seed(--seed, 7): the public seed of the ETF matrix (any client can rebuild it)."""
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# -- the dual-classifier structure ------------------------------------------------------------------
def etf_matrix(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    """Simplex ETF (Eqs. 9-10) as rows: C x dim, unit rows, pairwise inner product -1/(C-1).

    A random dim x C matrix, its reduced QR factor U (orthonormal columns), then
    sqrt(C / (C - 1)) U (I - 11^T / C). Needs dim >= C.
    """
    if num_classes < 2 or dim < num_classes:
        raise ConfigError(f"--gfpl-proj-dim: the ETF of {num_classes} classes needs a projection of at least "
                          f"{num_classes} dimensions (got {dim})")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(dim, num_classes, generator=gen, dtype=torch.float64)
    u, _ = torch.linalg.qr(a, mode="reduced")
    c = num_classes
    centre = torch.eye(c, dtype=torch.float64) - torch.full((c, c), 1.0 / c, dtype=torch.float64)
    m = math.sqrt(c / (c - 1)) * (u @ centre)
    return m.T.contiguous().to(torch.float32)


class DualClassifier(nn.Module):
    """GFPL's head on the extractor's features f (B x feature_dim), client and server.

    ``project(f)``: the normalized projection h = P f + b over its norm (B x proj_dim);
    ``forward(f)``: the trainable classifier's logits on h (what the harness evaluates);
    ``etf`` (C x proj_dim, a buffer: broadcast with the model, never averaged or trained).
    """

    def __init__(self, feature_dim: int, proj_dim: int, num_classes: int, etf: torch.Tensor) -> None:
        super().__init__()
        if etf.shape != (num_classes, proj_dim):
            raise ConfigError(f"ETF has shape {tuple(etf.shape)}, need {(num_classes, proj_dim)}")
        self.projection = nn.Linear(feature_dim, proj_dim)
        self.linear = nn.Linear(proj_dim, num_classes)
        self.register_buffer("etf", etf.clone())

    etf: torch.Tensor

    def project(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(f), dim=1, eps=1e-12)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.linear(self.project(f))


def dot_regression_loss(h: torch.Tensor, etf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 12 on normalized h: mean over the batch of (1 - h . e_y)^2 / 2 (0 when h = e_y)."""
    cos = (h * etf[y]).sum(dim=1)
    return 0.5 * ((1.0 - cos) ** 2).mean()


def proj_dim_for(cfg: TrainConfig, num_classes: int) -> int:
    """--gfpl-proj-dim, else the seed's value for the dataset, raised to the class count
    (the ETF needs proj_dim >= C)."""
    if cfg.gfpl_proj_dim is not None:
        return cfg.gfpl_proj_dim
    return max(PAPER_PROJ_DIM.get(cfg.dataset, 50), num_classes)


def gfpl_model(model: nn.Module, cfg: TrainConfig, num_classes: int) -> nn.Module:
    """``model`` with its linear classifier replaced by the :class:`DualClassifier` (in place).

    Every model here exposes ``features``, ``feature_dim`` and ``forward = classifier(features)``.
    """
    dim = proj_dim_for(cfg, num_classes)
    etf = etf_matrix(num_classes, dim, derive_seed(cfg.seed, ETF_SEED_TAG))
    model.classifier = DualClassifier(int(model.feature_dim), dim, num_classes, etf)  # type: ignore[arg-type]
    return model


def hybrid_loss(lam: float) -> LossFn:
    """Eq. 13: CE of the trainable classifier + lam * dot regression to the ETF, on one
    projection of the batch (each layer runs once per forward, as DP-SGD's hooks expect)."""

    def loss_fn(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        head: DualClassifier = m.classifier  # type: ignore[assignment]
        h = head.project(m.features(xb))  # type: ignore[operator]
        out = F.cross_entropy(head.linear(h), yb)
        return out + lam * dot_regression_loss(h, head.etf, yb) if lam > 0 else out

    return loss_fn


def _plain_train(model: nn.Module, shard: ClientShard, ctx: ClientContext, loss_fn: LossFn) -> float:
    """SGD epochs over the shard (client side); the mean loss of the last epoch."""
    cfg = ctx.cfg
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    last = 0.0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(shard.n, generator=ctx.generator).to(shard.x.device)
        total, batches = 0.0, 0
        for start in range(0, shard.n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = loss_fn(model, shard.x[idx], shard.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        last = total / max(batches, 1)
    return last


def train_dcs(model: nn.Module, shard: ClientShard, ctx: ClientContext) -> tuple[float, DPSGDReport | None]:
    """Local training with the hybrid loss (client side): SGD, or DP-SGD under --dp sample."""
    cfg = ctx.cfg
    loss_fn = hybrid_loss(cfg.gfpl_lambda)
    if ctx.spec.dp != "sample":
        return _plain_train(model, shard, ctx, loss_fn), None
    model.train()
    report = private_local_training(
        model, loss_fn, shard.x, shard.y, epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        noise_multiplier=ctx.noise_multiplier, max_grad_norm=ctx.spec.clip, rng=ctx.rng, momentum=cfg.momentum,
    )
    loss = report.last_epoch_loss
    if not math.isfinite(loss):
        with torch.no_grad():
            model.eval()
            loss = float(loss_fn(model, shard.x, shard.y))
    return loss, report


# -- the moments --------------------------------------------------------------------------------------
def class_moments(features: torch.Tensor, labels: torch.Tensor, num_classes: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class sums (client side, float64): of the features (C x dim), of their squares
    (C x dim) and the sample counts (C). Classes the client lacks are zero rows."""
    f = features.to(torch.float64)
    onehot = F.one_hot(labels, num_classes).to(torch.float64)
    return onehot.T @ f, onehot.T @ (f * f), onehot.sum(0)


@dataclass(frozen=True)
class ClassGaussians:
    """One diagonal Gaussian per class, formed by the server from summed moments.

    mean, var: C x dim (float64, feature units); weight: C, the summed count (or weight) the
    moments were divided by; active: C, the classes whose weight cleared the gate.
    """

    mean: torch.Tensor
    var: torch.Tensor
    weight: torch.Tensor
    active: torch.Tensor


def moments_to_gaussians(feat_sum: torch.Tensor, feat_sq: torch.Tensor, count: torch.Tensor,
                         min_weight: float = 0.0, scale: float = 1.0, noise_std: float = 0.0,
                         min_snr: float = 1.0) -> ClassGaussians:
    """Per class c with weight W_c > ``min_weight``: mean S_c / W_c, variance Q_c / W_c -
    mean^2 (floored at :data:`VAR_FLOOR`), times ``scale`` (resp. ``scale``^2) to undo the
    clients' rescaling by ``--gfpl-clip``. Inactive classes get mean 0, variance 1 (never sampled).

    ``noise_std`` > 0 (DP: the std of the noise on one entry of the summed blocks, public):
    a class is active only if its summed features' estimated signal energy |S_c|^2 - d sigma^2
    is at least ``min_snr`` (``--gfpl-min-snr``) times their noise energy d sigma^2 (else its
    mean would be mostly noise); the squared mean's noise bias (sigma / W_c)^2 is added back; and the
    variance is one number, the average over the active classes and coordinates, since a
    single coordinate's Q_c / W_c carries noise sigma / W_c far above a feature variance.
    """
    s, q, w = feat_sum.to(torch.float64), feat_sq.to(torch.float64), count.to(torch.float64)
    active = w > max(min_weight, 0.0)
    if noise_std > 0:
        active &= clears_snr(s, noise_std, min_snr)
    denom = torch.where(active, w, torch.ones_like(w))[:, None]
    mean = s / denom
    var = q / denom - mean * mean + (noise_std / denom) ** 2
    if noise_std > 0 and bool(active.any()):
        var = torch.full_like(var, float(var[active].mean()))
    var = var.clamp_min(VAR_FLOOR / scale ** 2)
    mean = torch.where(active[:, None], mean * scale, torch.zeros_like(mean))
    var = torch.where(active[:, None], var * scale ** 2, torch.ones_like(var))
    return ClassGaussians(mean, var, w, active)


def gaussian_blocks(features: torch.Tensor, labels: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
    """A client's statistics blocks for its privacy unit (client side).

    DP off: exact per-class sums of f and f * f and exact counts. ``--dp sample``: the
    Gaussian-moment release (:func:`secure_fed.privacy.release.moment_release`) on a
    Poisson(``--release-rate``) subsample drawn from the client's rng: each feature clipped
    to ``--gfpl-clip`` and divided by it, its squares, and the count coordinate
    (:func:`dp.clipping.per_class_moment_sums`), noised later by the run's
    :class:`~secure_fed.privacy.noise.ClientNoise`. ``--dp client``: the same rescaled
    moments without the coordinate, every block (counts included) divided by n_k, so the
    client's moments add up to one sample's; the whole upload is clipped and noised later.
    """
    spec, cfg, c = ctx.spec, ctx.cfg, ctx.num_classes
    if spec.dp == "sample":
        keep = torch.as_tensor(ctx.rng.bernoulli(cfg.release_rate, int(labels.shape[0])), device=features.device)
        rel = per_class_moment_sums(features[keep], labels[keep], c, cfg.gfpl_clip, spec.count_coordinate)
        s, q, n = rel.feature, rel.square, rel.count
    elif spec.dp == "client":
        rel = per_class_moment_sums(features, labels, c, cfg.gfpl_clip)
        k = float(max(int(labels.shape[0]), 1))
        s, q = rel.feature / k, rel.square / k
        n = torch.bincount(labels, minlength=c).to(torch.float64) / k
    else:
        s, q, n = class_moments(features, labels, c)
    return {PROTO_BLOCK: s.cpu().numpy(), SQUARE_BLOCK: q.cpu().numpy(), COUNT_BLOCK: n.double().cpu().numpy()}


# -- client and server ------------------------------------------------------------------------------
def gfpl_client_round(bc: Broadcast, shard: ClientShard, model: nn.Module, ctx: ClientContext) -> ClientOutput:
    """One client's GFPL round (client side): the per-class moments of the broadcast model's
    features (extractor frozen), then local training with the hybrid loss; uploads the
    moments and the model delta."""
    model.load_state_dict(bc.model_state)
    theta0 = flat_params(model)
    blocks = gaussian_blocks(extract_features(model, shard.x), shard.y, ctx)
    loss, sgd = train_dcs(model, shard, ctx)
    delta = (flat_params(model) - theta0).double().cpu().numpy()
    blocks.update(weighted_delta(delta, shard.n, ctx.spec))
    return ClientOutput(blocks, loss, sgd)


class GfplServer(FedServer):
    """Server of GFPL (secure form): global class Gaussians from summed moments, FedAvg, and
    the calibration of the head on pseudo-features sampled from them.

    Round r calibrates when r >= ``--gfpl-start`` and (r - start) is a multiple of
    ``--gfpl-interval``. The Gaussians of round r describe the broadcast model's features;
    the calibration runs after FedAvg, on the averaged model (one round of extractor drift).
    """

    name = "gfpl"
    step_label = "gaussians"

    def __init__(self, model: nn.Module, num_classes: int, device: torch.device, cfg: TrainConfig,
                 generator: torch.Generator, upload: UploadSpec, count_noise_std: float = 0.0) -> None:
        if not isinstance(getattr(model, "classifier", None), DualClassifier):
            raise ConfigError("GfplServer needs a model with GFPL's dual classifier (build it with gfpl_model)")
        super().__init__(model, num_classes, device, upload)
        self.cfg = cfg
        self.generator = generator
        self.count_noise_std = count_noise_std  # per-client noise std of one entry of the release (public)
        self.feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
        self.gaussians: ClassGaussians | None = None
        self.calibrated_rounds = 0

    def _blocks(self) -> list[tuple[str, tuple[int, ...], float]]:
        c, d, up = self.num_classes, self.feature_dim, self.upload
        if up.dp == "off":  # exact sums: per sample an entry within PLAIN_VALUE_BOUND, its square within its square
            n = float(up.train_size)
            bounds = (PLAIN_VALUE_BOUND * n, PLAIN_VALUE_BOUND ** 2 * n, n)
        elif up.dp == "sample":  # per sample: unit-ball feature, its squares, the count coordinate
            n = float(up.train_size)
            bounds = (n, n, up.count_bound())
        else:  # unit-ball moments and counts over n_k: every entry within 1, and within --clip
            b = min(1.0, up.clip)
            bounds = (b, b, b)
        return [(PROTO_BLOCK, (c, d), bounds[0]), (SQUARE_BLOCK, (c, d), bounds[1]), (COUNT_BLOCK, (c,), bounds[2]),
                *super()._blocks()]

    def _apply_extras(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        s, q, n = (torch.as_tensor(np.array(agg.block(b)), dtype=torch.float64, device=self.device) for b in GAUSSIAN_BLOCKS)
        gate = self.count_gate(agg)
        if self.upload.dp == "sample":  # the count block holds count_coordinate per released sample
            cc = self.upload.count_coordinate
            n, gate = n / cc, gate / cc
        scale = 1.0 if self.upload.dp == "off" else self.cfg.gfpl_clip
        sigma = self.summed_noise_std(agg)
        g = moments_to_gaussians(s, q, n, min_weight=gate, scale=scale, noise_std=sigma, min_snr=self.cfg.gfpl_min_snr)
        self.gaussians = g
        return {"active_classes": float(g.active.sum())}

    def calibrates(self, round_id: int) -> bool:
        start, every = self.cfg.gfpl_start, self.cfg.gfpl_interval
        return round_id >= start and (round_id - start) % every == 0

    def _after_fedavg(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        g = self.gaussians
        due = float(self.calibrates(agg.round_id))  # scheduled this round: a skip is reported as one
        if g is None or not bool(g.active.any()) or not due:
            return {"calibrated": 0.0, "calibration_due": due}
        loss = self._calibrate(g)
        self.calibrated_rounds += 1
        return {"calibrated": 1.0, "calibration_due": 1.0, "calibration_loss": loss}

    def pseudo_features(self, g: ClassGaussians) -> tuple[torch.Tensor, torch.Tensor]:
        """``--gfpl-pseudo`` samples per active class from its Gaussian, through the ReLU every
        extractor here ends with (features are >= 0), shuffled: (features, labels)."""
        m = self.cfg.gfpl_pseudo
        classes = torch.nonzero(g.active).flatten()
        mean = g.mean[classes].repeat_interleave(m, dim=0)
        std = g.var[classes].sqrt().repeat_interleave(m, dim=0)
        noise = torch.randn(mean.shape, generator=self.generator, dtype=torch.float64).to(self.device)
        feats = (mean + std * noise).clamp_min(0.0).to(torch.float32)
        labels = classes.repeat_interleave(m).to(self.device)
        order = torch.randperm(labels.numel(), generator=self.generator).to(self.device)
        return feats[order], labels[order]

    def _calibrate(self, g: ClassGaussians) -> float:
        """Retrain projection and trainable classifier on pseudo-features (Eq. 14: the hybrid
        loss), SGD with ``--gfpl-calib-lr``/``--gfpl-calib-momentum``; returns the mean loss of
        the last epoch. The extractor is not touched (its features are not in the loop)."""
        cfg = self.cfg
        head: DualClassifier = self.model.classifier  # type: ignore[assignment]
        feats, labels = self.pseudo_features(g)
        opt = torch.optim.SGD(head.parameters(), lr=cfg.gfpl_calib_lr, momentum=cfg.gfpl_calib_momentum)
        head.train()
        last = 0.0
        for _ in range(cfg.gfpl_calib_epochs):
            total, batches = 0.0, 0
            for start in range(0, labels.numel(), cfg.gfpl_calib_batch):
                fb, yb = feats[start : start + cfg.gfpl_calib_batch], labels[start : start + cfg.gfpl_calib_batch]
                h = head.project(fb)
                loss = F.cross_entropy(head.linear(h), yb)
                if cfg.gfpl_lambda > 0:
                    loss = loss + cfg.gfpl_lambda * dot_regression_loss(h, head.etf, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                batches += 1
            last = total / max(batches, 1)
        return last

    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s["calibrated_rounds"] = self.calibrated_rounds
        return s

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.calibrated_rounds = int(state.get("calibrated_rounds", 0))
