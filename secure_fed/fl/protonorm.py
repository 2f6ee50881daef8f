"""ProtoNorm (Lee, Shin, Choi 2025, arXiv 2507.04310): Prototype Alignment and Upscaling.

Clients train with cross-entropy plus ``--proto-weight`` * MSE(f, p_y) toward the global
prototype of the label (the FedProto regularizer ProtoNorm builds on) and upload per-class
feature sums and counts through the secure sum, with the model delta (FedAvg of the model,
as this harness's FedProto does). Unlike the paper, whose clients send the prototypes of their
locally trained models, the sums here are of the *received global model's* features,
computed before local training: a secure sum adds features, and features of different local
models live in different spaces; the global model's are one space. The prototypes so lag
local training by one round. The server, from the :class:`Aggregate` only:

1. averages the summed features per class and normalizes each to the unit sphere;
2. Prototype Alignment (PA): ``--pa-steps`` steps of projected gradient descent, rate
   ``--pa-lr``, on the Thomson energy sum_{i<j} 1 / |u_i - u_j| of the unit prototypes
   (maximizing their angular separation), starting from the aggregated directions;
3. Prototype Upscaling (PU): multiplies the aligned unit prototypes by ``--pu-norm``.

The seed text gives no values for the PA step count, rate or the PU magnitude; the defaults
are this implementation's choice. Under ``--dp sample`` each sample's feature is clipped to
``--proto-clip`` (the release of :mod:`secure_fed.privacy.release`), and the server reads
only the directions of the noisy sums, so no exact count is used. Under DP a class's
direction is read in a round only when its noisy count clears the gate
(:meth:`~secure_fed.fl.server.FedServer.count_gate`) *and* its noisy sum's estimated signal
energy is at least ``--pn-min-snr`` times the noise energy
(:func:`~secure_fed.fl.server.clears_snr`); otherwise the
class keeps its previous direction, or has no prototype (and no pull) until it clears.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from dp.clipping import per_class_feature_sums
from secure_fed.aggregation.layout import Aggregate
from secure_fed.config import TrainConfig
from secure_fed.fl.client import (
    ClientContext,
    ClientOutput,
    ClientShard,
    extract_features,
    flat_params,
    train_locally,
    weighted_delta,
)
from secure_fed.fl.server import Broadcast, FedServer, clears_snr
from secure_fed.privacy.release import COUNT_BLOCK, PROTO_BLOCK
from secure_fed.privacy.upload import UploadSpec


def thomson_align(units: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Prototype Alignment: ``steps`` projected gradient steps on the Thomson energy of the
    rows of ``units`` (each renormalized to norm 1 after every step). Returns unit rows."""
    u = nn.functional.normalize(units.detach().double(), dim=1)
    c = u.shape[0]
    if c < 2 or steps == 0:
        return u.to(units.dtype)
    iu = torch.triu_indices(c, c, offset=1)
    for _ in range(steps):
        u.requires_grad_(True)
        dist = torch.cdist(u, u)[iu[0], iu[1]].clamp_min(1e-6)
        energy = (1.0 / dist).sum()
        (grad,) = torch.autograd.grad(energy, u)
        with torch.no_grad():
            # the tangential part only: moving along the sphere
            grad = grad - (grad * u).sum(1, keepdim=True) * u
            u = nn.functional.normalize(u - lr * grad, dim=1)
    return u.detach().to(units.dtype)


def thomson_energy(units: torch.Tensor) -> float:
    """sum_{i<j} 1 / |u_i - u_j| (lower: better separated)."""
    c = units.shape[0]
    iu = torch.triu_indices(c, c, offset=1)
    return float((1.0 / torch.cdist(units.double(), units.double())[iu[0], iu[1]].clamp_min(1e-6)).sum())


class ProtoNormServer(FedServer):
    """FedAvg of the model plus aligned (PA) and upscaled (PU) global class prototypes."""

    name = "protonorm"
    step_label = "protos"

    def __init__(self, model: nn.Module, num_classes: int, device: torch.device, upload: UploadSpec,
                 cfg: TrainConfig) -> None:
        super().__init__(model, num_classes, device, upload)
        self.cfg = cfg
        self.feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
        self.directions: torch.Tensor | None = None  # last aggregated unit direction per class
        self.prototypes: torch.Tensor | None = None

    def _blocks(self) -> list[tuple[str, tuple[int, ...], float]]:
        c, d, up = self.num_classes, self.feature_dim, self.upload
        return [(PROTO_BLOCK, (c, d), up.prototype_bound()), (COUNT_BLOCK, (c,), up.count_bound()), *super()._blocks()]

    def _extras(self) -> dict[str, torch.Tensor | None]:
        return {"prototypes": None if self.prototypes is None else self.prototypes.clone()}

    def _apply_extras(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        sums = torch.tensor(agg.block(PROTO_BLOCK), dtype=torch.float32, device=self.device)
        counts = torch.tensor(agg.block(COUNT_BLOCK), dtype=torch.float32, device=self.device)
        # Only directions are read: the sum's direction is the mean's, so no count divides it.
        present = (counts > self.count_gate(agg)) & (sums.norm(dim=1) > 0)
        if self.upload.dp != "off":
            # A count above the gate says the class is there, not that its sum points anywhere:
            # with the count gate alone, noise directions (cosine ~0.2 to the exact sums at
            # epsilon 8) became prototypes whose negative coordinates killed the ReLU features
            # (mnist5k: chance accuracy by round 30; benchmarks/RESULTS.md, "Six prototype methods").
            present &= clears_snr(sums, self.summed_noise_std(agg), self.cfg.pn_min_snr)
        new = nn.functional.normalize(sums, dim=1)
        if self.directions is None:
            self.directions = torch.zeros_like(new)
        # Classes absent from this cohort (under DP: below the gate) keep their previous direction.
        self.directions = torch.where(present[:, None], new, self.directions)
        known = self.directions.norm(dim=1) > 0
        if int(known.sum()) == 0:
            return {"active_classes": 0.0}
        before = thomson_energy(self.directions[known])
        aligned = self.directions.clone()
        aligned[known] = thomson_align(self.directions[known], self.cfg.pa_steps, self.cfg.pa_lr)
        self.prototypes = torch.where(known[:, None], aligned * self.cfg.pu_norm, torch.zeros_like(aligned))
        return {"active_classes": float(present.sum()), "thomson_before": before,
                "thomson_after": thomson_energy(aligned[known])}

    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s["prototypes"] = None if self.prototypes is None else self.prototypes.clone()
        s["directions"] = None if self.directions is None else self.directions.clone()
        return s

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        p, d = state.get("prototypes"), state.get("directions")
        self.prototypes = None if p is None else p.to(self.device)
        self.directions = None if d is None else d.to(self.device)


def protonorm_client_round(bc: Broadcast, shard: ClientShard, model: nn.Module, ctx: ClientContext) -> ClientOutput:
    """One client's ProtoNorm round (client side).

    Uploads per-class feature sums under the received global model (before training; the
    paper's clients send their locally trained model's prototypes, see the module docstring),
    then trains with CE + ``--proto-weight`` * MSE(f, p_y) toward the broadcast prototypes. DP off: exact sums and counts,
    n_k-weighted delta. Sample unit: a Poisson(``--release-rate``) subsample, each feature
    clipped to ``--proto-clip`` plus the count coordinate (:func:`dp.clipping.per_class_feature_sums`);
    DP-SGD local training. Client unit: the per-sample-clipped sums over n_k and holder
    indicators (the whole vector is clipped and noised after this function).
    """
    cfg, spec, num_classes = ctx.cfg, ctx.spec, ctx.num_classes
    model.load_state_dict(bc.model_state)
    theta0 = flat_params(model)
    protos = bc.extras.get("prototypes")
    extra = None
    if protos is not None and cfg.proto_weight > 0:
        gp = protos.to(shard.x.device)
        known = gp.norm(dim=1) > 0  # a class the server has never read has no prototype: no pull

        def extra(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # MSE(f, p_y) over the batch, per sample separable (DP-SGD), samples of classes
            # without a prototype contributing nothing (not a pull toward the origin).
            sq = (f - gp[y]) ** 2 * known[y].to(f.dtype)[:, None]
            return cfg.proto_weight * sq.sum() / f.numel()

    # The release is computed on the received global model, before local training: every
    # client's features then live in one feature space (the sum mixes no local models), and
    # the release does not depend on this round's DP-SGD.
    feats = extract_features(model, shard.x)
    blocks: dict[str, np.ndarray] = {}
    if spec.dp == "sample":
        keep = torch.as_tensor(ctx.rng.bernoulli(cfg.release_rate, shard.n), device=feats.device)
        rel = per_class_feature_sums(feats[keep], shard.y[keep], num_classes, spec.proto_clip, spec.count_coordinate)
        blocks[PROTO_BLOCK] = rel.feature.double().cpu().numpy()
        blocks[COUNT_BLOCK] = rel.count.double().cpu().numpy()
    elif spec.dp == "client":
        rel = per_class_feature_sums(feats, shard.y, num_classes, spec.proto_clip)
        blocks[PROTO_BLOCK] = (rel.feature / shard.n).double().cpu().numpy()
        blocks[COUNT_BLOCK] = (torch.bincount(shard.y, minlength=num_classes) > 0).double().cpu().numpy()
    else:
        onehot = nn.functional.one_hot(shard.y, num_classes).to(feats.dtype)
        blocks[PROTO_BLOCK] = (onehot.T @ feats).double().cpu().numpy()
        blocks[COUNT_BLOCK] = onehot.sum(0).double().cpu().numpy()
    loss, sgd = train_locally(model, shard, ctx, extra)
    delta = (flat_params(model) - theta0).double().cpu().numpy()
    blocks.update(weighted_delta(delta, shard.n, spec))
    return ClientOutput(blocks, loss, sgd)
