"""Server side common to every algorithm: the global model, the broadcast, FedAvg.

A server's only input from clients is an :class:`~secure_fed.aggregation.layout.Aggregate`: the
sum over the cohort of the upload vectors. ``apply`` is the single entry point that takes
client information, and it takes nothing else.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from secure_fed.aggregation.layout import Aggregate, VectorLayout
from secure_fed.errors import ConfigError
from secure_fed.fl.client import flat_params, set_flat_params
from secure_fed.privacy.upload import UploadSpec


@dataclass(frozen=True)
class Broadcast:
    """What the server sends every client of a round (public to the cohort)."""

    round_id: int
    model_state: Mapping[str, torch.Tensor]
    extras: Mapping[str, torch.Tensor | None] = field(default_factory=dict)


class FedServer:
    """Global model + FedAvg of n_k-weighted deltas. Subclasses add their own state.

    Upload blocks used here: ``delta`` (n_k * (theta_k - theta), P entries) and ``n`` (n_k)
    without DP; under DP only ``delta`` (theta_k - theta), averaged with uniform weights.
    """

    name = "fedavg"
    step_label: str | None = None
    """What the server's per-class step does with the classes ``apply`` reports as
    ``active_classes`` (shown in the round line as ``label k/C``); None: no per-class step."""

    def __init__(self, model: nn.Module, num_classes: int, device: torch.device, upload: UploadSpec) -> None:
        self.model = model
        self.upload = upload
        self.num_classes = num_classes
        self.device = device
        self.num_params = int(flat_params(model).numel())

    # -- layout and broadcast -----------------------------------------------------------
    def layout(self) -> VectorLayout:
        return VectorLayout.build(self._blocks())

    def _blocks(self) -> list[tuple[str, tuple[int, ...], float]]:
        up = self.upload
        blocks: list[tuple[str, tuple[int, ...], float]] = [("delta", (self.num_params,), up.delta_bound())]
        if up.weighted:
            blocks.append(("n", (1,), float(up.train_size)))
        return blocks

    def broadcast(self, round_id: int) -> Broadcast:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return Broadcast(round_id, state, self._extras())

    def _extras(self) -> dict[str, torch.Tensor | None]:
        return {}

    # -- the one input from clients -------------------------------------------------------
    def apply(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        """Update the global state from the cohort's sum; returns server-side statistics."""
        if agg.layout != self.layout():
            raise ConfigError("aggregate layout does not match this server's layout")
        stats = self._apply_extras(agg, broadcast)
        self._fedavg(agg)
        stats.update(self._after_fedavg(agg, broadcast))
        return stats

    def _fedavg(self, agg: Aggregate) -> None:
        """theta += sum(n_k delta_k) / sum(n_k) without DP; the uniform mean over the summed
        clients under DP (the count is protocol metadata the server sees anyway)."""
        n_total = float(agg.block("n")[0]) if self.upload.weighted else float(agg.count)
        if n_total <= 0:
            return
        delta = torch.tensor(agg.block("delta") / n_total, dtype=torch.float32)
        theta = flat_params(self.model)
        set_flat_params(self.model, theta + delta.to(theta.device))

    def _apply_extras(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        return {}

    def _after_fedavg(self, agg: Aggregate, broadcast: Broadcast) -> dict[str, float]:
        return {}

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": copy.deepcopy(self.model.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
