"""Baselines in the same harness: FedAvg (McMahan et al. 2017) and FedProto (Tan et al. 2022).

FedProto here exchanges prototypes *and* model deltas (the enhanced variant the FedHPro
paper compares against): clients add lambda * MSE(f, p_y) (mean over entries) to the cross-entropy, where p_y
is the global prototype of the label, and upload per-class feature sums and counts; the
server's global prototype of a class is the summed features over the summed count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from secure_fed.aggregation.layout import Aggregate
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
from secure_fed.privacy.upload import PLAIN_VALUE_BOUND, UploadSpec


class FedAvgServer(FedServer):
    """Plain FedAvg: the base server already does everything."""

    name = "fedavg"


class FedProtoServer(FedServer):
    """FedAvg of the model plus count-weighted global class prototypes."""

    name = "fedproto"
    step_label = "protos"

    def __init__(self, model: nn.Module, num_classes: int, device: torch.device, upload: UploadSpec) -> None:
        if upload.dp != "off":
            raise ConfigError("--algorithm fedproto runs without DP only (its prototype sums are not clipped per sample); use fedhpro or fedavg with --dp")
        super().__init__(model, num_classes, device, upload)
        self.feature_dim = int(model.feature_dim)  # type: ignore[arg-type]
        self.prototypes: torch.Tensor | None = None

    def _blocks(self) -> list[tuple[str, tuple[int, ...], float]]:
        c, d, n = self.num_classes, self.feature_dim, float(self.upload.train_size)
        return [("proto_sum", (c, d), PLAIN_VALUE_BOUND * n), ("class_count", (c,), n), *super()._blocks()]

    def _extras(self) -> dict[str, torch.Tensor | None]:
        return {"prototypes": None if self.prototypes is None else self.prototypes.clone()}

    def _apply_extras(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        sums = torch.tensor(agg.block("proto_sum"), dtype=torch.float32, device=self.device)
        counts = torch.tensor(agg.block("class_count"), dtype=torch.float32, device=self.device)
        present = counts > 0
        new = sums / counts.clamp_min(1.0)[:, None]
        if self.prototypes is None:
            self.prototypes = torch.zeros_like(new)
        # Classes absent from this cohort keep their previous prototype.
        self.prototypes = torch.where(present[:, None], new, self.prototypes)
        return {"active_classes": float(present.sum())}

    def state_dict(self) -> dict[str, Any]:
        s = super().state_dict()
        s["prototypes"] = None if self.prototypes is None else self.prototypes.clone()
        return s

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        p = state.get("prototypes")
        self.prototypes = None if p is None else p.to(self.device)


def fedavg_client_round(bc: Broadcast, shard: ClientShard, model: nn.Module, ctx: ClientContext) -> ClientOutput:
    """One client's FedAvg round (client side); DP-SGD under sample-level DP."""
    model.load_state_dict(bc.model_state)
    theta0 = flat_params(model)
    loss, sgd = train_locally(model, shard, ctx, None)
    delta = (flat_params(model) - theta0).double().cpu().numpy()
    return ClientOutput(weighted_delta(delta, shard.n, ctx.spec), loss, sgd)


def fedproto_client_round(bc: Broadcast, shard: ClientShard, model: nn.Module, ctx: ClientContext) -> ClientOutput:
    """One client's FedProto round (client side): CE + lambda * MSE(f, p_y); no DP."""
    cfg, num_classes = ctx.cfg, ctx.num_classes
    model.load_state_dict(bc.model_state)
    theta0 = flat_params(model)
    protos = bc.extras.get("prototypes")
    extra = None
    if protos is not None and cfg.proto_weight > 0:
        gp = protos.to(shard.x.device)

        def extra(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return cfg.proto_weight * torch.nn.functional.mse_loss(f, gp[y])

    loss, _ = train_locally(model, shard, ctx, extra)
    feats = extract_features(model, shard.x)
    onehot = torch.nn.functional.one_hot(shard.y, num_classes).to(feats.dtype)
    delta = (flat_params(model) - theta0).double().cpu().numpy()
    blocks = {
        "proto_sum": (onehot.T @ feats).double().cpu().numpy(),
        "class_count": onehot.sum(0).double().cpu().numpy(),
        **weighted_delta(delta, shard.n, ctx.spec),
    }
    return ClientOutput(blocks, loss)
