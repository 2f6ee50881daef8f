"""FedSA (federated learning via semantic anchors, Zhou et al., AAAI 2025) on the secure sum.

Server side (:class:`FedSAServer`): it holds one semantic anchor per class (C x dim, unit
vectors), drawn at the start from the server's seeded generator and independent of every
local model (the paper's point: prototypes are not generated from biased local models). It
broadcasts them with the model. From the cohort's sum only, it forms each class's global
prototype direction from the summed (clipped) features and moves the anchor toward it by
an exponential moving average, ``a_c <- n(m a_c + (1 - m) n(p_c))`` (m = ``--fedsa-momentum``),
for the classes whose summed count clears the gate; then FedAvg of the model deltas.

Client side (:func:`fedsa_client_round`): local training from the global model with

    loss = CE + lambda_r RMCL + lambda_c CC

* RMCL (anchor-based regularization with margin-enhanced contrastive learning): for each
  sample, a softmax over the classes of cos(f_i, a_c) / tau with the own class's cosine
  lowered by the margin m, i.e. ``CE((cos(f_i, A) - m e_y) / tau, y_i)``;
* CC (anchor-based classifier calibration): the classifier's cross-entropy on the anchors
  themselves, ``mean_c CE(classifier(a_c), c)``: every client's decision boundaries are
  fit to the same points.

Then each client uploads its per-class feature sums and counts (:func:`prototype_blocks`),
computed with its locally trained model (the paper's local prototypes), and its model delta.

Under ``--dp sample`` the release is the declared prototype release
(:func:`secure_fed.privacy.release.prototype_release`): a Poisson(``--release-rate``)
subsample, each sample's feature clipped to ``--proto-clip`` plus the constant count
coordinate (:func:`dp.clipping.per_class_feature_sums`); RMCL is per sample (it reads only
the sample and the public anchors) and rides inside DP-SGD; CC reads no data at all, so it
cannot go through Opacus's per-sample hooks and runs after DP-SGD as plain SGD steps on the
classifier over the public anchors (as many steps as DP-SGD took): post-processing, no
privacy cost. Under ``--dp client`` the per-class sums (features clipped to
``--proto-clip``) are divided by n_k, the counts become holder indicators, and the whole
upload is clipped and noised after this function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crypto.rng import KeystreamRNG
from dp.clipping import per_class_feature_sums
from secure_fed.aggregation.layout import Aggregate
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.fl.client import (
    ClientContext,
    ClientOutput,
    ClientShard,
    extract_features,
    flat_params,
    train_locally,
    weighted_delta,
)
from secure_fed.fl.server import Broadcast, FedServer
from secure_fed.privacy.release import COUNT_BLOCK, PROTO_BLOCK
from secure_fed.privacy.upload import UploadSpec


# -- anchors (server side) ---------------------------------------------------------------------
def init_anchors(num_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Random unit anchors (C x dim) from ``generator``: orthonormal when C <= dim (the QR
    of a Gaussian matrix, signs fixed by R's diagonal), else normalized Gaussian draws."""
    if num_classes < 2 or dim < 1:
        raise ConfigError(f"FedSA needs >= 2 classes and a feature dim >= 1 (got {num_classes}, {dim})")
    g = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    if num_classes <= dim:
        q, r = torch.linalg.qr(g)
        sign = torch.diagonal(r).sign()
        a = (q * torch.where(sign == 0, torch.ones_like(sign), sign)).T
    else:
        a = g.T
    return F.normalize(a, dim=1).float()


def ema_anchors(anchors: torch.Tensor, proto_sums: torch.Tensor, active: torch.Tensor, momentum: float) -> torch.Tensor:
    """The anchors after one EMA step toward the prototype directions of the ``active``
    classes: ``n(m a_c + (1 - m) n(p_c))``; other classes (and zero sums) keep theirs."""
    p = F.normalize(proto_sums, dim=1)
    moved = F.normalize(momentum * anchors + (1.0 - momentum) * p, dim=1)
    ok = active & (proto_sums.norm(dim=1) > 0) & (moved.norm(dim=1) > 0)
    return torch.where(ok[:, None], moved, anchors)


class FedSAServer(FedServer):
    """Server of FedSA: semantic anchors updated by EMA from the summed prototypes, FedAvg.

    Upload blocks besides the model delta: ``proto_sum`` (C x dim, per class the summed
    features: exact without DP, clipped to ``--proto-clip`` per sample under DP) and
    ``class_count`` (C: exact counts without DP, the noisy count coordinate under
    ``--dp sample``, holder indicators under ``--dp client``). Only the sum reaches it.
    """

    name = "fedsa"
    step_label = "anchors moved"

    def __init__(self, model: nn.Module, num_classes: int, device: torch.device, cfg: TrainConfig,
                 generator: torch.Generator, upload: UploadSpec, count_noise_std: float = 0.0) -> None:
        super().__init__(model, num_classes, device, upload)
        self.cfg = cfg
        self.feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
        self.generator = generator
        self.count_noise_std = count_noise_std  # per-client noise std of a count entry (public)
        self.anchors = init_anchors(num_classes, self.feature_dim, generator).to(device)
        self.updated = torch.zeros(num_classes, dtype=torch.bool, device=device)  # ever moved, per class

    def _blocks(self) -> list[tuple[str, tuple[int, ...], float]]:
        c, d, up = self.num_classes, self.feature_dim, self.upload
        return [(PROTO_BLOCK, (c, d), up.prototype_bound()), (COUNT_BLOCK, (c,), up.count_bound()), *super()._blocks()]

    def _extras(self) -> dict[str, torch.Tensor | None]:
        return {"anchors": self.anchors.clone()}

    def active_classes(self, agg: Aggregate) -> torch.Tensor:
        """Classes whose anchors move: a positive summed count without DP, a noisy count
        above the gate (:meth:`~secure_fed.fl.server.FedServer.count_gate`) under DP."""
        counts = torch.tensor(agg.block(COUNT_BLOCK), dtype=torch.float32, device=self.device)
        if self.upload.dp == "off":
            return counts > 0
        return counts > self.count_gate(agg)

    def _apply_extras(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        sums = torch.tensor(agg.block(PROTO_BLOCK), dtype=torch.float32, device=self.device)
        active = self.active_classes(agg)
        before = self.anchors
        self.anchors = ema_anchors(before, sums, active, self.cfg.fedsa_momentum)
        moved = (self.anchors - before).norm(dim=1) > 0
        self.updated |= moved
        return {"active_classes": float(moved.sum()),
                "anchor_movement": float((self.anchors - before).norm() / before.norm().clamp_min(1e-12))}

    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s.update(anchors=self.anchors.clone(), anchors_updated=self.updated.clone())
        return s

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.anchors = state["anchors"].to(self.device)
        self.updated = state["anchors_updated"].to(self.device)


# -- losses (client side) ----------------------------------------------------------------------
def rmcl_loss(features: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, *, tau: float,
              margin: float) -> torch.Tensor:
    """Margin-enhanced contrastive loss of features (B x dim) to the anchors (C x dim), the
    batch mean of ``CE((cos(f_i, A) - margin e_{y_i}) / tau, y_i)``; each sample's term
    reads only that sample (DP-SGD's per-sample clipping holds). A zero feature has cosine 0."""
    cos = F.normalize(features, dim=1) @ F.normalize(anchors, dim=1).T
    cos = cos - margin * F.one_hot(labels, anchors.shape[0]).to(cos.dtype)
    return F.cross_entropy(cos / tau, labels)


def calibration_loss(classifier: nn.Module, anchors: torch.Tensor) -> torch.Tensor:
    """Classifier calibration: the mean cross-entropy of the classifier on each class's anchor."""
    target = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(classifier(anchors), target)


def calibrate_classifier(classifier: nn.Module, anchors: torch.Tensor, *, steps: int, lr: float, momentum: float,
                         weight: float) -> None:
    """``steps`` SGD steps on the classifier alone minimizing ``weight`` * CC (public inputs only)."""
    if steps <= 0 or weight == 0:
        return
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum)
    classifier.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        (weight * calibration_loss(classifier, anchors)).backward()
        opt.step()


# -- the prototype upload (client side) --------------------------------------------------------
def prototype_blocks(feats: torch.Tensor, y: torch.Tensor, num_classes: int, spec: UploadSpec,
                     rng: KeystreamRNG, release_rate: float) -> dict[str, np.ndarray]:
    """A client's ``proto_sum`` and ``class_count`` blocks (client side).

    DP off: exact per-class feature sums and counts. ``--dp sample``: the prototype release
    on a Poisson(``release_rate``) subsample drawn from ``rng``, features clipped to
    ``spec.proto_clip`` plus the count coordinate (sensitivity ``spec.release_sensitivity``),
    noised later by the run's :class:`~secure_fed.privacy.noise.ClientNoise`. ``--dp
    client``: features clipped to ``spec.proto_clip``, sums divided by n_k, holder
    indicators (the whole upload is clipped to ``--clip`` and noised later).
    """
    n = int(y.shape[0])
    if spec.dp == "sample":
        keep = torch.as_tensor(rng.bernoulli(release_rate, n), device=feats.device)
        rel = per_class_feature_sums(feats[keep], y[keep], num_classes, spec.proto_clip, spec.count_coordinate)
        return {PROTO_BLOCK: rel.feature.double().cpu().numpy(), COUNT_BLOCK: rel.count.double().cpu().numpy()}
    counts = torch.bincount(y, minlength=num_classes).double()
    if spec.dp == "client":
        rel = per_class_feature_sums(feats, y, num_classes, spec.proto_clip)
        return {PROTO_BLOCK: (rel.feature.double() / max(n, 1)).cpu().numpy(),
                COUNT_BLOCK: (counts > 0).double().cpu().numpy()}
    onehot = F.one_hot(y, num_classes).to(feats.dtype)
    return {PROTO_BLOCK: (onehot.T @ feats).double().cpu().numpy(), COUNT_BLOCK: counts.cpu().numpy()}


def fedsa_client_round(bc: Broadcast, shard: ClientShard, model: nn.Module, ctx: ClientContext) -> ClientOutput:
    """One client's FedSA round (client side): CE + RMCL (+ CC) toward the broadcast anchors,
    then the per-class prototype sums of the trained model and the model delta."""
    cfg, spec, num_classes = ctx.cfg, ctx.spec, ctx.num_classes
    model.load_state_dict(bc.model_state)
    theta0 = flat_params(model)
    anchors_t = bc.extras.get("anchors")
    if anchors_t is None:
        raise ConfigError("FedSA broadcast carries no anchors (server and client algorithms differ)")
    anchors = anchors_t.to(shard.x.device)
    head: nn.Module = model.classifier  # type: ignore[assignment]
    joint_cc = spec.dp != "sample" and cfg.fedsa_cc_weight > 0

    def extra(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = cfg.fedsa_rmcl_weight * rmcl_loss(f, y, anchors, tau=cfg.fedsa_tau, margin=cfg.fedsa_margin)
        if joint_cc:  # the paper's joint loss; under DP-SGD it runs after training (see the module doc)
            out = out + cfg.fedsa_cc_weight * calibration_loss(head, anchors)
        return out

    loss, sgd = train_locally(model, shard, ctx, extra)
    if spec.dp == "sample" and sgd is not None:
        calibrate_classifier(head, anchors, steps=sgd.steps, lr=cfg.lr, momentum=cfg.momentum,
                             weight=cfg.fedsa_cc_weight)
    feats = extract_features(model, shard.x)
    blocks = prototype_blocks(feats, shard.y, num_classes, spec, ctx.rng, cfg.release_rate)
    delta = (flat_params(model) - theta0).double().cpu().numpy()
    blocks.update(weighted_delta(delta, shard.n, spec))
    return ClientOutput(blocks, loss, sgd)
