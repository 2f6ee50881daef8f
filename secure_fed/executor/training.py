"""Training clients in Ray actors: each actor holds its clients' data shards and a model.

:class:`TrainingRole` (client side, inside an actor) rebuilds the client side of a run from
its :class:`~secure_fed.config.TrainConfig` exactly as the trainer does (same data split,
same model, same seeds), so a client's round work, encoding and noise are bit-identical to
the ``local`` executor's. :class:`RemoteTrainingClients` (driver side) ships each round's
broadcast to the actors, opens the round's client pool for secure aggregation (or fetches
the uploads for a trusted aggregator) and collects the clients' training statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from crypto.signing import SigningKeyPair
from protocol.client import SecAggClient
from protocol.config import ProtocolConfig
from secure_fed.aggregate import ClientWork
from secure_fed.config import TrainConfig
from secure_fed.executor.ray_executor import RayClientPool

Side = dict[str, dict[int, Any]]


def _new_side() -> Side:
    return {"loss": {}, "sgd": {}, "pers": {}}


class TrainingRole:
    """The clients of one actor (client side): shards, model, DP state, encoding."""

    def __init__(self, cfg: TrainConfig) -> None:
        from secure_fed.secure_aggregation import SecAggAggregator
        from secure_fed.trainer import Trainer

        self.trainer = Trainer(cfg.replace(executor="local"), progress=False,
                               log=lambda s: None, write_outputs=False)
        self.secagg = self.trainer.aggregator if isinstance(
            self.trainer.aggregator, SecAggAggregator) else None
        self.round: tuple[Any, bool] | None = None
        self.side = _new_side()

    def begin_round(self, broadcast: Any, final: bool, noise_multiplier: float) -> None:
        if noise_multiplier != self.trainer.noise_multiplier:
            self.trainer._set_noise(noise_multiplier)
            from secure_fed.secure_aggregation import SecAggAggregator

            agg = self.trainer.aggregator
            self.secagg = agg if isinstance(agg, SecAggAggregator) else None
        self.round = (broadcast, final)
        self.side = _new_side()

    def _work(self, u: int) -> ClientWork:
        assert self.round is not None, "begin_round first"
        bc, final = self.round
        return partial(self.trainer._client_work, bc, u, self.side, final)

    def work(self, ids: list[int]) -> list[np.ndarray]:
        """Float uploads of ``ids`` (for a trusted aggregator, which sees them anyway)."""
        return [self._work(u)() for u in ids]

    def identity(self, u: int) -> SigningKeyPair:
        assert self.secagg is not None
        return self.secagg.client_identity(u)

    def client(self, config: ProtocolConfig, u: int, identity: SigningKeyPair | None,
               identity_keys: Mapping[int, bytes] | None, extra: Any) -> SecAggClient:
        assert self.secagg is not None
        codec = extra
        encode = self.secagg._encoder(config.round_id, codec, {u: self._work(u)})
        return SecAggClient(u, config, partial(encode, u), identity, identity_keys,
                            self.secagg.protocol_rng(config.round_id, u))

    def finish_round(self) -> Side:
        side, self.side = self.side, _new_side()
        return side


class RemoteTrainingClients:
    """Driver side handle on the actors holding a run's clients."""

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self._ray = ray
        self.actors = actors
        self.pool = RayClientPool(ray, actors)

    def begin_round(self, broadcast: Any, final: bool, noise_multiplier: float) -> None:
        """Send the round's broadcast (once, through the object store) to every actor."""
        ref = self._ray.put(broadcast)
        self._ray.get([a.call.remote("begin_round", ref, final, noise_multiplier)
                       for a in self.actors])

    def work(self, cohort: list[int]) -> dict[int, ClientWork]:
        """Callables returning each client's float upload, computed in its actor; all are
        started on the first call (for aggregators without secure aggregation)."""
        results: dict[int, np.ndarray] = {}

        def fetch(u: int) -> np.ndarray:
            if not results:
                parts = self.pool.split(cohort)
                refs = [a.call.remote("work", p) for a, p in zip(self.actors, parts, strict=True)]
                for p, vecs in zip(parts, self._ray.get(refs), strict=True):
                    results.update(zip(p, vecs, strict=True))
            return results.pop(u)

        return {u: partial(fetch, u) for u in cohort}

    def open_pool(self, config: ProtocolConfig, codec: Any) -> tuple[RayClientPool, Mapping[int, bytes] | None]:
        """The round's clients, built in their actors; and their identity public keys."""
        return self.pool, self.pool.open(config, codec)

    def end_round(self) -> Side:
        """Close the round in every actor; returns the clients' statistics, merged."""
        side = _new_side()
        for part in self.pool.close():
            for key, values in part.items():
                side[key].update(values)
        return side
