"""One client's round as a run executes it, wherever it runs (client side).

The trainer runs its clients through :meth:`ClientProgram.run` in its own process; a Ray
actor (:mod:`secure_fed.executor.training`) runs the same method on the shards it holds.
Seeds, randomness and model reuse are defined here once, so uploads, aggregates and
metrics are bit-identical under both executors. Nothing here imports the trainer or the
dataset code (an actor loads neither torchvision nor scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from crypto.rng import KeystreamRNG
from secure_fed.aggregation.layout import VectorLayout
from secure_fed.config import TrainConfig
from secure_fed.fl.client import (
    ClientContext,
    ClientOutput,
    ClientShard,
    evaluate,
    personalized_accuracy,
)
from secure_fed.privacy.noise import ClientNoise, SgdPlan
from secure_fed.privacy.upload import UploadSpec

if TYPE_CHECKING:
    from secure_fed.fl.server import Broadcast

ClientRound = Callable[["Broadcast", ClientShard, nn.Module, ClientContext], ClientOutput]
"""An algorithm's client round: (broadcast, shard, reusable model, context) -> output."""

Side = dict[str, dict[int, Any]]
"""Per-round client statistics, harness side: loss, DP-SGD plan, personalized accuracy."""

SMALL_MODEL_DATASETS = ("digits", "mnist5k", "mnist")
"""Datasets whose small model runs fastest on one CPU thread."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32)
    return int(state.view(np.uint64)[0] >> np.uint64(1))


def cpu_threads(cfg: TrainConfig) -> int | None:
    """Torch CPU threads for a run: ``--threads``, else 1 for the small models (where more
    threads only add synchronization), else torch's default (None)."""
    return cfg.threads or (1 if cfg.dataset in SMALL_MODEL_DATASETS else None)


def client_rng(cfg: TrainConfig, round_id: int, cid: int) -> KeystreamRNG:
    """Client ``cid``'s DP randomness in round ``round_id``: the OS CSPRNG when hardened,
    else a keystream seeded from ``--seed`` (reproducible experiments)."""
    if cfg.hardened:
        return KeystreamRNG.hardened()
    return KeystreamRNG.from_seed(derive_seed(cfg.seed, 6), f"client-dp/{round_id}/{cid}")


def new_side() -> Side:
    return {"loss": {}, "sgd": {}, "pers": {}}


@dataclass(frozen=True)
class ClientProgram:
    """What every client of a run runs (public settings only; picklable)."""

    cfg: TrainConfig
    spec: UploadSpec
    num_classes: int
    layout: VectorLayout
    round_fn: ClientRound

    def run(self, bc: Broadcast, shard: ClientShard, model: nn.Module, *, noise_multiplier: float,
            noise: ClientNoise | None, rng: KeystreamRNG, side: Side,
            test: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
        """Client ``shard.client_id``'s whole round: its flattened, DP-processed float upload.

        ``model`` is the reusable client model (the broadcast is loaded into it); ``rng`` the
        client's DP randomness (:func:`client_rng`); ``side`` collects its statistics;
        ``test`` (final round) evaluates the personalized model, harness side, never uploaded.
        """
        cid = shard.client_id
        gen = torch.Generator(device="cpu").manual_seed(derive_seed(self.cfg.seed, 3, bc.round_id, cid))
        ctx = ClientContext(self.cfg, self.spec, self.num_classes, gen, rng, noise_multiplier)
        out = self.round_fn(bc, shard, model, ctx)
        side["loss"][cid] = out.loss
        if out.sgd is not None:
            side["sgd"][cid] = SgdPlan(out.sgd.sample_rate, out.sgd.steps)
        if test is not None:
            test_x, test_y = test
            _, _, hits = evaluate(model, test_x, test_y)
            side["pers"][cid] = personalized_accuracy(hits, test_y, shard.y, self.num_classes)
        vec = self.layout.flatten(out.blocks)
        if noise is not None:
            vec = noise.finish_float(vec, rng)
        return vec
