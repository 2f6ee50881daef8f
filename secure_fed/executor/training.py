"""Training clients in Ray actors: each actor holds only its own clients' data shards.

A :class:`ClientKit` is what one actor needs to run its clients' round work and nothing
more: their data shards, one client model and the run's client program (round function,
upload layout, public settings); not the dataset, not the other clients' shards, not the
test set, not the server's model. The run owning the clients cuts one kit per actor
(:meth:`secure_fed.run.trainer.Trainer.client_kit`); the executor receives kits and round
setups, never the trainer. The test set travels only for the final round's
personalized evaluation, and the noise and encoding settings (:class:`RoundSetup`) only
when the noise multiplier changes.

:class:`TrainingRole` (client side, inside an actor) runs a client's work through the
trainer's own :class:`secure_fed.fl.program.ClientProgram` (same seeds, same randomness,
same model reuse), so uploads, aggregates and metrics are bit-identical to the ``local``
executor's. The actor never imports :mod:`secure_fed.run.trainer`, whose dataset code loads
torchvision and scikit-learn (what this saves per actor: ``benchmarks/RESULTS.md``).

:class:`RemoteTrainingClients` (driver side) ships each round's broadcast to the actors,
opens the round's client pool for secure aggregation (or fetches the uploads for a trusted
aggregator) and collects the clients' training statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from crypto.signing import SigningKeyPair
from protocol.client import SecAggClient
from protocol.config import ProtocolConfig
from secure_fed.aggregation.layout import ClientWork
from secure_fed.aggregation.secagg import RingSettings, SecAggAggregator, SecAggSettings
from secure_fed.device import configure_cpu_threads, resolve_device, to_device
from secure_fed.executor.ray_pool import RayClientPool
from secure_fed.fl.client import ClientShard
from secure_fed.fl.program import ClientProgram, Side, client_rng, cpu_threads, new_side
from secure_fed.privacy.noise import ClientNoise


@dataclass(frozen=True)
class ClientKit:
    """Everything one host needs for its clients' round work (client side, picklable).

    ``program``: what every client of the run runs. ``shards``: client id -> its data (CPU
    tensors). ``model``: the one client model reused by every client of the host (CPU;
    each round loads the broadcast into it).
    """

    program: ClientProgram
    model: nn.Module
    shards: Mapping[int, ClientShard]

    @property
    def nbytes(self) -> int:
        """Bytes of the shards' tensors (what the kit holds besides the model)."""
        return sum(s.x.nbytes + s.y.nbytes for s in self.shards.values())


@dataclass(frozen=True)
class RoundSetup:
    """The run's noise and encoding settings for clients (client side; shipped again only
    when they change, i.e. when the trainer installs a new noise multiplier).

    ``noise``: the DP noise added to uploads (None without DP). ``ring``/``secagg``: the
    secure aggregator's client settings (None without secure aggregation).
    """

    noise_multiplier: float
    noise: ClientNoise | None
    ring: RingSettings | None
    secagg: SecAggSettings | None


class TrainingRole:
    """The clients of one actor (client side): their shards, one model, DP, encoding."""

    def __init__(self, kit: ClientKit) -> None:
        configure_cpu_threads(cpu_threads(kit.program.cfg))
        self.device = resolve_device(kit.program.cfg.device)
        self.shards = {u: ClientShard(u, to_device(s.x, self.device), to_device(s.y, self.device))
                       for u, s in kit.shards.items()}
        self.model = to_device(kit.model, self.device)
        self.kit = replace(kit, shards={})  # the shards live in self.shards (on the device)
        self.setup: RoundSetup | None = None
        self.secagg: SecAggAggregator | None = None
        self.test: tuple[torch.Tensor, torch.Tensor] | None = None
        self.round: tuple[Any, bool] | None = None
        self.side = new_side()

    def begin_round(self, broadcast: Any, final: bool, setup: RoundSetup | None,
                    test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """A round's broadcast; ``setup`` when it changed; the test set in the final round."""
        if setup is not None:
            self.setup = setup
            self.secagg = None if setup.ring is None or setup.secagg is None else \
                SecAggAggregator(setup.ring, setup.secagg)
        assert self.setup is not None, "the first round brings the setup"
        self.test = None if test is None else (to_device(test[0], self.device),
                                                to_device(test[1], self.device))
        self.round = (broadcast, final)
        self.side = new_side()

    def client_work(self, cid: int) -> np.ndarray:
        """Client ``cid``'s whole round: its flattened, DP-processed float upload."""
        assert self.round is not None and self.setup is not None, "begin_round first"
        bc, final = self.round
        program = self.kit.program
        if final:
            assert self.test is not None, "the final round brings the test set"
        return program.run(bc, self.shards[cid], self.model, noise_multiplier=self.setup.noise_multiplier,
                           noise=self.setup.noise, rng=client_rng(program.cfg, bc.round_id, cid),
                           side=self.side, test=self.test if final else None)

    def work(self, ids: list[int]) -> list[np.ndarray]:
        """Float uploads of ``ids`` (for a trusted aggregator, which sees them anyway)."""
        return [self.client_work(u) for u in ids]

    def identity(self, u: int) -> SigningKeyPair:
        assert self.secagg is not None
        return self.secagg.client_identity(u)

    def client(self, config: ProtocolConfig, u: int, identity: SigningKeyPair | None,
               identity_keys: Mapping[int, bytes] | None, extra: Any) -> SecAggClient:
        assert self.secagg is not None
        codec, attempt = extra
        encode = self.secagg.client_encoder(config.round_id, codec, {u: partial(self.client_work, u)})
        return SecAggClient(u, config, partial(encode, u), identity, identity_keys,
                            self.secagg.protocol_rng(config.round_id, u, attempt),
                            policy=self.secagg.secagg.client_policy())

    def finish_round(self) -> Side:
        side, self.side = self.side, new_side()
        self.test = None
        return side


class RemoteTrainingClients:
    """Driver side handle on the actors holding a run's clients (built from their kits)."""

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self._ray = ray
        self.actors = actors
        self.pool = RayClientPool(ray, actors)
        self._sent: RoundSetup | None = None  # the setup the actors hold

    def begin_round(self, broadcast: Any, final: bool, setup: RoundSetup,
                    test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Send the round's broadcast (once, through the object store) to every actor, with
        ``setup`` when it is not the one shipped last (the run builds a new one only when
        its settings change) and ``test`` (CPU tensors) in the final round."""
        ray = self._ray
        setup_ref = None
        if setup is not self._sent:
            setup_ref = ray.put(setup)
            self._sent = setup
        test_ref = ray.put(test) if final else None
        ref = ray.put(broadcast)
        ray.get([a.call.remote("begin_round", ref, final, setup_ref, test_ref)
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

    def open_pool(self, config: ProtocolConfig, codec: Any, attempt: int = 0
                  ) -> tuple[RayClientPool, Mapping[int, bytes] | None]:
        """The round's clients, built in their actors (``attempt``: the protocol round of
        this training round, > 0 after a restart: fresh keys); and their identity public keys."""
        return self.pool, self.pool.open(config, (codec, attempt))

    def end_round(self) -> Side:
        """Close the round in every actor; returns the clients' statistics, merged."""
        side = new_side()
        for part in self.pool.close():
            for key, values in part.items():
                side[key].update(values)
        return side
