"""Server side common to every algorithm: the global model, the broadcast, FedAvg.

A server's only input from clients is an :class:`~secure_fed.aggregation.layout.Aggregate`: the
sum over the cohort of the upload vectors. ``apply`` is the single entry point that takes
client information, and it takes nothing else.
"""

from __future__ import annotations

import copy
import math
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


GATE_SDS = 3.0
"""Under DP a class is read only if its noisy summed count is this many standard deviations of
the summed noise above zero: the gate of every prototype method (FedHPro, ProtoNorm, FedSA, GFPL)."""


def clears_snr(sums: torch.Tensor, sigma: float, min_snr: float) -> torch.Tensor:
    """Per row of ``sums`` (noisy per-class sums, C x d): whether its estimated signal energy
    |S_c|^2 - d sigma^2 is at least ``min_snr`` times its noise energy d sigma^2, ``sigma`` the
    public std of the summed noise on one entry. A count above the gate says a class is there,
    not that its d-dimensional sum points anywhere; this says the direction is more signal
    than noise (at ``min_snr`` 1: a cosine to the noiseless sum of about 0.7 or more)."""
    noise_energy = sums.shape[1] * sigma ** 2
    return (sums.double() ** 2).sum(1) - noise_energy >= min_snr * noise_energy


class FedServer:
    """Global model + FedAvg of n_k-weighted deltas. Subclasses add their own state.

    Upload blocks used here: ``delta`` (n_k * (theta_k - theta), P entries) and ``n`` (n_k)
    without DP; under DP only ``delta`` (theta_k - theta), averaged with uniform weights.
    """

    name = "fedavg"
    step_label: str | None = None
    """What the server's per-class step does with the classes ``apply`` reports as
    ``active_classes`` (shown in the round line as ``label k/C``); None: no per-class step."""

    count_noise_std: float = 0.0
    """Per-client noise std of one entry of the per-class release (public; installed by the
    trainer under DP, 0 without)."""

    def __init__(self, model: nn.Module, num_classes: int, device: torch.device, upload: UploadSpec) -> None:
        self.model = model
        self.upload = upload
        self.num_classes = num_classes
        self.device = device
        self.num_params = int(flat_params(model).numel())

    # -- the DP gate ---------------------------------------------------------------------
    def summed_noise_std(self, agg: Aggregate) -> float:
        """Std of the noise on one entry of the summed release (0 without DP)."""
        if self.upload.dp == "off":
            return 0.0
        return self.count_noise_std * math.sqrt(max(agg.count, 1))

    def count_gate(self, agg: Aggregate) -> float:
        """Smallest summed count of a class the server reads: > 0 without DP, else
        :data:`GATE_SDS` standard deviations of the summed noise on a count entry."""
        return GATE_SDS * self.summed_noise_std(agg)

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
