"""FedHPro (federated hyper-prototype learning via gradient matching), per DESIGN.md section 2.

Client side (:func:`fedhpro_client_round`): per-class gradient *sums* on the frozen global
features, then local training with CE + HPCL + HPAL against the broadcast hyper-prototypes.

Server side (:class:`FedHProServer`): from the cohort's sum only, match the hyper-prototypes
P (C x L x dim) to the summed per-class feature gradients, match the meta prototypes to the
summed classifier-parameter gradients, FedAvg the deltas, and optionally replace the
classifier by one trained on the meta prototypes. Matching uses the classifier the clients
used (the round's broadcast), not a retrained one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from dp.clipping import per_class_clipped_sums
from secure_fed.aggregation.layout import Aggregate
from secure_fed.config import TrainConfig
from secure_fed.fl.client import (
    ClientContext,
    ClientOutput,
    ClientShard,
    class_mean_features,
    extract_features,
    flat_params,
    per_class_gradient_sums,
    train_locally,
    weighted_delta,
)
from secure_fed.fl.losses import client_margin, hpal_loss, hpcl_loss, normalized_hp_means
from secure_fed.fl.matching import (
    init_hyper_prototypes,
    match_hyper_prototypes,
    match_meta_prototypes,
    train_meta_classifier,
)
from secure_fed.fl.server import Broadcast, FedServer
from secure_fed.privacy.upload import UploadSpec


class FedHProServer(FedServer):
    """Server of FedHPro: hyper-prototypes, meta prototypes, meta classifier, FedAvg."""

    name = "fedhpro"

    def __init__(
        self, model: nn.Module, num_classes: int, device: torch.device, cfg: TrainConfig,
        generator: torch.Generator, upload: UploadSpec, count_noise_std: float = 0.0,
    ) -> None:
        super().__init__(model, num_classes, device, upload)
        self.count_noise_std = count_noise_std  # per-client noise std of a count entry (public)
        self.cfg = cfg
        self.feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
        self.generator = generator
        self.hyper_prototypes = init_hyper_prototypes(num_classes, cfg.length_of_hp, self.feature_dim, generator, device)
        self.meta_prototypes = init_hyper_prototypes(num_classes, cfg.meta_per_class, self.feature_dim, generator, device)
        self.matched = False  # hyper-prototypes are broadcast once they have been matched

    def _blocks(self) -> list[tuple[str, tuple[int, ...], float]]:
        c, d, up = self.num_classes, self.feature_dim, self.upload
        g = up.per_class_bound()
        indicator: tuple[str, tuple[int, ...], float] = (
            ("holders", (c,), 1.0) if up.dp == "off" else ("class_count", (c,), up.count_bound()))
        return [("feat_grad", (c, d), g), ("cls_grad_w", (c, c, d), g), ("cls_grad_b", (c, c), g), indicator, *super()._blocks()]

    def _extras(self) -> dict[str, torch.Tensor | None]:
        return {"hyper_prototypes": self.hyper_prototypes.clone() if self.matched else None}

    def _apply_extras(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        dev = self.device
        weight = broadcast.model_state["classifier.weight"].to(dev)
        bias = broadcast.model_state["classifier.bias"].to(dev)
        g_feat = torch.tensor(agg.block("feat_grad"), dtype=torch.float32, device=dev)
        g_w = torch.tensor(agg.block("cls_grad_w"), dtype=torch.float32, device=dev)
        g_b = torch.tensor(agg.block("cls_grad_b"), dtype=torch.float32, device=dev)
        active = self._active_classes(agg, g_feat)
        cfg = self.cfg
        self.hyper_prototypes = match_hyper_prototypes(
            self.hyper_prototypes, weight, bias, g_feat, active, steps=cfg.rounds_of_hp, lr=cfg.hp_lr
        )
        self.meta_prototypes = match_meta_prototypes(
            self.meta_prototypes, weight, bias, g_w, g_b, active, steps=cfg.rounds_of_hp, lr=cfg.hp_lr
        )
        self.matched = True
        self._active = active
        return {"active_classes": float(active.sum())}

    def _active_classes(self, agg: Aggregate, g_feat: torch.Tensor) -> torch.Tensor:
        """Classes to match: a nonzero summed gradient (DP off), or a noisy count clearly
        above its noise (3 standard deviations of the summed noise) under DP."""
        if self.upload.dp == "off":
            return g_feat.flatten(1).norm(dim=1) > 0
        counts = torch.tensor(agg.block("class_count"), dtype=torch.float32, device=self.device)
        threshold = 3.0 * self.count_noise_std * math.sqrt(max(agg.count, 1))
        return counts > threshold

    def _after_fedavg(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        if self.cfg.classifier != "meta":
            return {}
        head: nn.Linear = self.model.classifier  # type: ignore[assignment]
        fresh = train_meta_classifier(
            self.meta_prototypes, self._active, self.num_classes,
            steps=self.cfg.meta_steps, lr=self.cfg.hp_lr, init=None, generator=self.generator,
        )
        with torch.no_grad():
            head.weight.copy_(fresh.weight.to(head.weight.device))
            head.bias.copy_(fresh.bias.to(head.bias.device))
        return {}

    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s.update(
            hyper_prototypes=self.hyper_prototypes.clone(),
            meta_prototypes=self.meta_prototypes.clone(),
            matched=self.matched,
        )
        return s

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.hyper_prototypes = state["hyper_prototypes"].to(self.device)
        self.meta_prototypes = state["meta_prototypes"].to(self.device)
        self.matched = bool(state["matched"])


def fedhpro_client_round(bc: Broadcast, shard: ClientShard, model: nn.Module, ctx: ClientContext) -> ClientOutput:
    """One client's FedHPro round (client side): per-class gradients, then local training.

    DP off: exact per-class sums and holder indicators, n_k-weighted delta. Sample unit: a
    Poisson(release_rate) subsample's per-class sums, each sample's contribution plus the
    count coordinate clipped jointly to the clip norm (:mod:`dp.clipping`), and DP-SGD local
    training. Client unit: per-class sums over n_k and holder indicators (the whole vector
    is clipped and noised after this function).
    """
    cfg, spec, num_classes = ctx.cfg, ctx.spec, ctx.num_classes
    model.load_state_dict(bc.model_state)
    theta0 = flat_params(model)
    feats = extract_features(model, shard.x)
    head: nn.Linear = model.classifier  # type: ignore[assignment]
    weight, bias = head.weight.detach(), head.bias.detach()
    blocks: dict[str, np.ndarray] = {}
    if spec.dp == "sample":
        keep = torch.as_tensor(ctx.rng.bernoulli(cfg.release_rate, shard.n), device=feats.device)
        sums = per_class_clipped_sums(feats[keep], shard.y[keep], weight, bias, spec.clip, spec.count_coordinate)
        g_feat, g_w, g_b = sums.feature, sums.weight, sums.bias
        blocks["class_count"] = sums.count.double().cpu().numpy()
    else:
        g_feat, g_w, g_b = per_class_gradient_sums(feats, shard.y, weight, bias)
        holders = (torch.bincount(shard.y, minlength=num_classes) > 0).double().cpu().numpy()
        if spec.dp == "client":
            g_feat, g_w, g_b = g_feat / shard.n, g_w / shard.n, g_b / shard.n
            blocks["class_count"] = holders
        else:
            blocks["holders"] = holders

    extra = None
    hp = bc.extras.get("hyper_prototypes")
    if hp is not None:
        hp_means = normalized_hp_means(hp.to(feats.device))
        # Under sample-level DP the margin is off: it is computed from all of the client's
        # samples, so one sample would move every other sample's loss and break DP-SGD's
        # per-sample sensitivity.
        use_margin = cfg.margin and spec.dp != "sample"
        margin = client_margin(class_mean_features(feats, shard.y, num_classes)) if use_margin else 0.0

        def extra(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return cfg.hpcl_weight * hpcl_loss(f, y, hp_means, tau=cfg.tau, margin=margin) + cfg.hpal_weight * hpal_loss(f, y, hp_means)

    loss, sgd = train_locally(model, shard, ctx, extra)
    delta = (flat_params(model) - theta0).double().cpu().numpy()
    blocks.update(
        feat_grad=g_feat.double().cpu().numpy(),
        cls_grad_w=g_w.double().cpu().numpy(),
        cls_grad_b=g_b.double().cpu().numpy(),
    )
    blocks.update(weighted_delta(delta, shard.n, spec))
    return ClientOutput(blocks, loss, sgd)
