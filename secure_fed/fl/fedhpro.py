"""FedHPro (federated hyper-prototype learning via gradient matching), per DESIGN.md section 2.

Client side (:func:`fedhpro_client_round`): per-class sums of the softmax residuals U on the
frozen global features (plus the weight gradients with ``--classifier meta`` only), then
local training with CE + HPCL + HPAL toward the hyper-prototypes the server marks matched.

Server side (:class:`FedHProServer`): from the cohort's sum only, form the summed per-class
feature gradients U W with the classifier it broadcast, match the hyper-prototypes P
(C x L x dim) for the classes whose release clears the gate, match the meta prototypes
(``--classifier meta``), FedAvg the deltas, and optionally replace the classifier by one
trained on the meta prototypes. Matching uses the classifier the clients used (the round's
broadcast), not a retrained one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from dp.clipping import per_class_residual_sums, per_class_weight_sums
from secure_fed.aggregation.layout import Aggregate
from secure_fed.config import TrainConfig
from secure_fed.fl.client import (
    ClientContext,
    ClientOutput,
    ClientShard,
    class_mean_features,
    extract_features,
    flat_params,
    train_locally,
    weighted_delta,
)
from secure_fed.fl.losses import (
    client_margin,
    hpal_loss_masked,
    hpcl_loss_masked,
    normalized_hp_means,
)
from secure_fed.fl.matching import (
    feature_matching_loss,
    hp_feature_gradients,
    init_hyper_prototypes,
    match_hyper_prototypes,
    match_meta_prototypes,
    train_meta_classifier,
)
from secure_fed.fl.server import Broadcast, FedServer
from secure_fed.privacy.upload import UploadSpec


class HpRound(TypedDict):
    """One round of hyper-prototype matching (the ``hp`` field of the round and audit records)."""

    matched_classes: list[int]  # classes matched this round (their release cleared the gate)
    gate_passed: int  # classes whose release cleared the gate (the control arms may not match them)
    num_classes: int
    ever_matched: int  # classes matched in this or any earlier round
    broadcast_next: int  # classes whose anchors the next broadcast marks active (hp_mask)
    control: str  # --hp-control
    matching_loss_before: float | None  # mean 1 - cos over the matched classes (None: none matched)
    matching_loss_after: float | None
    hp_movement: float  # |P_new - P_old| / |P_old|


class FedHProServer(FedServer):
    """Server of FedHPro: hyper-prototypes, meta prototypes, meta classifier, FedAvg.

    The per-class release is U (C x C, block ``cls_grad_b``): row c is the sum over the
    cohort's class-c samples of the softmax residual p_i - e_c, i.e. the summed bias
    gradient. With the linear head the clients used (the broadcast W), the summed feature
    gradient of class c is W^T U_c, formed here as ``U @ W`` (C x dim); the weight block
    ``cls_grad_w`` (C x C x dim) is uploaded only with ``--classifier meta``.

    Honest broadcast: a class is matched only in a round where its release clears the gate
    (:meth:`_active_classes`); a class that has never been matched is broadcast as inactive
    (``hp_mask`` False: no HP loss for it on the clients), and a class matched before but
    gated out now keeps its last matched value (a learned anchor, post-processing of earlier
    releases, rather than switching the clients' loss on and off with the gate's noise).
    ``--hp-control random`` broadcasts the untrained N(0, 1) anchors of every class and never
    matches; ``frozen`` matches each class once (its first round through the gate) and then
    keeps it. Both still upload and charge the release, so the control differs only in what
    the server does with it.
    """

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
        self.hp_matched = torch.zeros(num_classes, dtype=torch.bool, device=device)  # ever matched, per class
        self.applied = False  # at least one aggregate applied (the random control broadcasts from then on)
        self._active = torch.zeros(num_classes, dtype=torch.bool, device=device)
        self.hp_round: HpRound | None = None  # this round's matching record (audit and report)

    @property
    def matched(self) -> bool:
        """Whether any class's hyper-prototypes have been matched (never True otherwise)."""
        return bool(self.hp_matched.any())

    def summary(self, rounds: list[HpRound], release_noise_multiplier: float | None) -> str:
        """The run's matching in one sentence, from its rounds' records; under DP,
        ``release_noise_multiplier`` is the release's (it sets the count gate)."""
        total = sum(len(h["matched_classes"]) for h in rounds)
        slots = sum(int(h["num_classes"]) for h in rounds)
        if self.cfg.hp_control == "random":
            return f"hyper-prototypes: control arm 'random': fixed random anchors, never matched ({len(rounds)} rounds)"
        if not self.matched:
            return (f"hyper-prototypes: NO class was ever matched in {len(rounds)} rounds (no release cleared the count "
                    "gate): the clients trained without HP losses, i.e. this run is FedAvg plus the release's cost")
        why = ""
        if total < slots and self.cfg.dp != "off" and release_noise_multiplier is not None:
            why = (f"; the others' noisy counts did not clear the gate (3 noise std, release noise multiplier "
                   f"{release_noise_multiplier:.3g})")
        return (f"hyper-prototypes: {total}/{slots} class-rounds matched, {int(self.hp_matched.sum())}/"
                f"{self.num_classes} classes ever matched{why}")

    def _blocks(self) -> list[tuple[str, tuple[int, ...], float]]:
        c, d, up = self.num_classes, self.feature_dim, self.upload
        indicator: tuple[str, tuple[int, ...], float] = (
            ("holders", (c,), 1.0) if up.dp == "off" else ("class_count", (c,), up.count_bound()))
        weight: list[tuple[str, tuple[int, ...], float]] = (
            [("cls_grad_w", (c, c, d), up.per_class_bound())] if self.cfg.classifier == "meta" else [])
        return [*weight, ("cls_grad_b", (c, c), up.residual_bound()), indicator, *super()._blocks()]

    def broadcast_mask(self) -> torch.Tensor:
        """Classes whose hyper-prototypes the clients train toward (bool, C)."""
        if self.cfg.hp_control == "random":
            return torch.full_like(self.hp_matched, self.applied)
        return self.hp_matched.clone()

    def _extras(self) -> dict[str, torch.Tensor | None]:
        mask = self.broadcast_mask()
        if not bool(mask.any()):
            return {"hyper_prototypes": None, "hp_mask": None}
        return {"hyper_prototypes": self.hyper_prototypes.clone(), "hp_mask": mask}

    def _apply_extras(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        dev = self.device
        weight = broadcast.model_state["classifier.weight"].to(dev)
        bias = broadcast.model_state["classifier.bias"].to(dev)
        u = torch.tensor(agg.block("cls_grad_b"), dtype=torch.float32, device=dev)
        g_feat = u @ weight  # row c: W^T U_c, the summed class-c feature gradient
        gate = self._active_classes(agg, g_feat)
        cfg = self.cfg
        if cfg.hp_control == "random":
            active = torch.zeros_like(gate)
        elif cfg.hp_control == "frozen":
            active = gate & ~self.hp_matched
        else:
            active = gate
        before = self.hyper_prototypes
        loss_before = self._matching_loss(before, weight, bias, g_feat, active)
        if bool(active.any()):
            self.hyper_prototypes = match_hyper_prototypes(
                before, weight, bias, g_feat, active, steps=cfg.rounds_of_hp, lr=cfg.hp_lr
            )
            if cfg.classifier == "meta":
                g_w = torch.tensor(agg.block("cls_grad_w"), dtype=torch.float32, device=dev)
                self.meta_prototypes = match_meta_prototypes(
                    self.meta_prototypes, weight, bias, g_w, u, active, steps=cfg.rounds_of_hp, lr=cfg.hp_lr
                )
        loss_after = self._matching_loss(self.hyper_prototypes, weight, bias, g_feat, active)
        moved = float((self.hyper_prototypes - before).norm() / before.norm().clamp_min(1e-12))
        self.hp_matched |= active
        self.applied = True
        self._active = active
        k = int(active.sum())
        self.hp_round = {
            "matched_classes": [int(c) for c in torch.nonzero(active).flatten().tolist()],
            "gate_passed": int(gate.sum()), "num_classes": self.num_classes,
            "ever_matched": int(self.hp_matched.sum()), "broadcast_next": int(self.broadcast_mask().sum()),
            "control": cfg.hp_control,
            "matching_loss_before": loss_before / k if k else None,
            "matching_loss_after": loss_after / k if k else None,
            "hp_movement": moved,
        }
        return {"active_classes": float(k)}

    @torch.no_grad()
    def _matching_loss(self, p: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, g_feat: torch.Tensor,
                       active: torch.Tensor) -> float:
        """L_GM summed over the ``active`` classes at hyper-prototypes ``p``."""
        return float(feature_matching_loss(g_feat, hp_feature_gradients(p, weight, bias), active))

    def _active_classes(self, agg: Aggregate, g_feat: torch.Tensor) -> torch.Tensor:
        """Classes to match: a nonzero summed gradient (DP off), or a noisy count clearly
        above its noise (3 standard deviations of the summed noise) under DP."""
        if self.upload.dp == "off":
            return g_feat.flatten(1).norm(dim=1) > 0
        counts = torch.tensor(agg.block("class_count"), dtype=torch.float32, device=self.device)
        return counts > self.count_gate(agg)

    def _after_fedavg(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        if self.cfg.classifier != "meta" or not bool(self._active.any()):
            return {}  # no matched class: keep the averaged classifier (never one fit to noise)
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
            hp_matched=self.hp_matched.clone(),
            applied=self.applied,
        )
        return s

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.hyper_prototypes = state["hyper_prototypes"].to(self.device)
        self.meta_prototypes = state["meta_prototypes"].to(self.device)
        if "hp_matched" in state:
            self.hp_matched = state["hp_matched"].to(self.device)
            self.applied = bool(state["applied"])
        else:  # a checkpoint from before per-class matching: all or nothing
            self.hp_matched = torch.full((self.num_classes,), bool(state["matched"]), device=self.device)
            self.applied = bool(state["matched"])


def _residual_sums(logits: torch.Tensor, feats: torch.Tensor, y: torch.Tensor, num_classes: int, with_weight: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact per-class sums (no clipping): U (C x C) of the residuals p_i - e_{y_i}, and the
    weight gradients sum r_i f_i^T (C x C x dim) when ``with_weight``."""
    onehot = torch.nn.functional.one_hot(y, num_classes).to(logits.dtype)
    err = torch.softmax(logits, dim=1) - onehot
    wgrad = torch.einsum("bc,bk,bd->ckd", onehot, err, feats) if with_weight else None
    return onehot.T @ err, wgrad


def fedhpro_client_round(bc: Broadcast, shard: ClientShard, model: nn.Module, ctx: ClientContext) -> ClientOutput:
    """One client's FedHPro round (client side): per-class residual sums, then local training.

    Uploads U (block ``cls_grad_b``, C x C: per class, the summed softmax residuals of the
    global classifier on the frozen features) and, with ``--classifier meta`` only, the
    weight gradients (``cls_grad_w``). DP off: exact sums and holder indicators, n_k-weighted
    delta. Sample unit: a Poisson(release_rate) subsample; each sample adds its residual
    (norm <= sqrt(2)) and the count coordinate, within the release's sensitivity without
    clipping (:func:`dp.clipping.per_class_residual_sums`); the weight block is clipped to
    ``--clip`` apart (its own mechanism); DP-SGD local training. Client unit: sums over n_k
    and holder indicators (the whole vector is clipped and noised after this function).

    The HP losses use only the classes the server marks matched (``hp_mask``).
    """
    cfg, spec, num_classes = ctx.cfg, ctx.spec, ctx.num_classes
    model.load_state_dict(bc.model_state)
    theta0 = flat_params(model)
    feats = extract_features(model, shard.x)
    head: nn.Linear = model.classifier  # type: ignore[assignment]
    weight, bias = head.weight.detach(), head.bias.detach()
    logits = feats @ weight.T + bias
    with_weight = cfg.classifier == "meta"
    blocks: dict[str, np.ndarray] = {}
    g_w: torch.Tensor | None
    if spec.dp == "sample":
        keep = torch.as_tensor(ctx.rng.bernoulli(cfg.release_rate, shard.n), device=feats.device)
        rel = per_class_residual_sums(logits[keep], shard.y[keep], spec.release_sensitivity, spec.count_coordinate)
        u = rel.residual
        g_w = per_class_weight_sums(logits[keep], feats[keep], shard.y[keep], spec.clip)[0] if with_weight else None
        blocks["class_count"] = rel.count.double().cpu().numpy()
    else:
        u, g_w = _residual_sums(logits, feats, shard.y, num_classes, with_weight)
        holders = (torch.bincount(shard.y, minlength=num_classes) > 0).double().cpu().numpy()
        if spec.dp == "client":
            u, g_w = u / shard.n, None if g_w is None else g_w / shard.n
            blocks["class_count"] = holders
        else:
            blocks["holders"] = holders

    extra = None
    hp = bc.extras.get("hyper_prototypes")
    if hp is not None:
        hp_means = normalized_hp_means(hp.to(feats.device))
        mask = bc.extras.get("hp_mask")
        active = (torch.ones(num_classes, dtype=torch.bool) if mask is None else mask).to(feats.device)
        # Under sample-level DP the margin is off: it is computed from all of the client's
        # samples, so one sample would move every other sample's loss and break DP-SGD's
        # per-sample sensitivity.
        use_margin = cfg.margin and spec.dp != "sample"
        margin = client_margin(class_mean_features(feats, shard.y, num_classes)) if use_margin else 0.0

        def extra(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (cfg.hpcl_weight * hpcl_loss_masked(f, y, hp_means, active, tau=cfg.tau, margin=margin)
                    + cfg.hpal_weight * hpal_loss_masked(f, y, hp_means, active))

    loss, sgd = train_locally(model, shard, ctx, extra)
    delta = (flat_params(model) - theta0).double().cpu().numpy()
    blocks["cls_grad_b"] = u.double().cpu().numpy()
    if g_w is not None:
        blocks["cls_grad_w"] = g_w.double().cpu().numpy()
    blocks.update(weighted_delta(delta, shard.n, spec))
    return ClientOutput(blocks, loss, sgd)
