"""Drives federated rounds: cohort selection, client work, aggregation, server update,
evaluation, audit log, checkpoints.

The trainer is the harness of a simulation: it owns every client's shard and runs their
work in-process, but it hands the server nothing except the :class:`Aggregate` returned by
the aggregator. Evaluation metrics (test accuracy, personalized accuracy) are computed by
the harness, outside the server's code path.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from secure_fed.aggregate import Aggregator, ClientWork, PlaintextAggregator, VectorLayout
from secure_fed.baselines import (
    FedAvgServer,
    FedProtoServer,
    fedavg_client_round,
    fedproto_client_round,
)
from secure_fed.client import ClientShard, evaluate, personalized_accuracy
from secure_fed.config import TrainConfig
from secure_fed.data.datasets import DatasetBundle, load_dataset
from secure_fed.data.partition import class_histogram, make_partition
from secure_fed.device import configure_cpu_threads, resolve_device, to_device
from secure_fed.errors import ConfigError
from secure_fed.fedhpro import FedHProServer, fedhpro_client_round
from secure_fed.models import build_model
from secure_fed.runio import AuditLog, make_run_dir, save_torch, write_json
from secure_fed.server import Broadcast, FedServer

ClientRound = Callable[
    [Broadcast, ClientShard, nn.Module, TrainConfig, int, torch.Generator], tuple[dict[str, np.ndarray], float]
]
CLIENT_ROUNDS: dict[str, ClientRound] = {
    "fedhpro": fedhpro_client_round,
    "fedavg": fedavg_client_round,
    "fedproto": fedproto_client_round,
}


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> np.uint64(1))


@dataclass
class RoundResult:
    round: int
    accuracy: float
    loss: float
    train_loss: float
    seconds: float
    cohort: list[int]


class Trainer:
    """One training run; ``run()`` executes the remaining rounds."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        aggregator: Aggregator | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        run_dir: Path | None = None,
        write_outputs: bool = True,
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.log = log or tqdm.write
        self.device = resolve_device(cfg.device)
        small_model = cfg.dataset in ("digits", "mnist5k", "mnist")
        configure_cpu_threads(cfg.threads or (1 if small_model else None))
        self.data = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
        self.num_classes = self.data.num_classes
        labels = self.data.train_y.numpy()
        if cfg.clients > labels.shape[0] // 2:
            raise ConfigError(f"--clients: {cfg.clients} clients for {labels.shape[0]} training samples is too many")
        self.parts = make_partition(labels, cfg.clients, cfg.partition, cfg.alpha, cfg.imbalance, cfg.seed)
        self.histogram = class_histogram(self.parts, labels, self.num_classes)
        self.shards = [
            ClientShard(k, to_device(self.data.train_x[idx], self.device), to_device(self.data.train_y[idx], self.device))
            for k, idx in enumerate(self.parts)
        ]
        self.test_x = to_device(self.data.test_x, self.device)
        self.test_y = to_device(self.data.test_y, self.device)

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.dataset, self.num_classes, self.data.input_shape, cfg.feature_dim)
        model = to_device(model, self.device)
        self.server = self._make_server(model)
        self.client_model = copy.deepcopy(model)  # the simulator's one reusable client model
        self.client_round = CLIENT_ROUNDS[cfg.algorithm]
        self.aggregator = aggregator or PlaintextAggregator()
        self.layout: VectorLayout = self.server.layout()
        self.history: list[dict[str, Any]] = []
        self.start_round = 1
        self.write_outputs = write_outputs
        self.run_dir: Path | None = None
        self.audit: AuditLog | None = None
        if write_outputs:
            self.run_dir = run_dir or make_run_dir(cfg.out, cfg.run_id, cfg.algorithm, cfg.seed)
            self.audit = AuditLog(self.run_dir / "audit.jsonl")

    def _make_server(self, model: nn.Module) -> FedServer:
        cfg = self.cfg
        if cfg.algorithm == "fedhpro":
            gen = torch.Generator(device="cpu").manual_seed(_derive_seed(cfg.seed, 1))
            return FedHProServer(model, self.num_classes, self.device, cfg, gen)
        if cfg.algorithm == "fedproto":
            return FedProtoServer(model, self.num_classes, self.device)
        return FedAvgServer(model, self.num_classes, self.device)

    # -- outputs --------------------------------------------------------------------------
    def write_static_outputs(self) -> None:
        if self.run_dir is None:
            return
        write_json(self.run_dir / "config.json", self.cfg.to_dict())
        write_json(
            self.run_dir / "partition.json",
            {
                "num_clients": self.cfg.clients,
                "num_classes": self.num_classes,
                "samples_per_client": [int(len(p)) for p in self.parts],
                "class_histogram": self.histogram.tolist(),
            },
        )
        write_json(self.run_dir / "layout.json", self.layout.describe())

    def _checkpoint(self, round_id: int) -> None:
        if self.run_dir is None:
            return
        gen = getattr(self.server, "generator", None)
        save_torch(
            self.run_dir / "checkpoint.pt",
            {
                "round": round_id,
                "server": self.server.state_dict(),
                "server_generator": None if gen is None else gen.get_state(),
                "history": self.history,
            },
        )
        write_json(self.run_dir / "metrics.json", self.metrics())

    def resume_from(self, run_dir: Path) -> None:
        """Continue a run after its last complete (checkpointed) round."""
        state = torch.load(run_dir / "checkpoint.pt", map_location=self.device, weights_only=False)
        self.server.load_state_dict(state["server"])
        gen = getattr(self.server, "generator", None)
        if gen is not None and state["server_generator"] is not None:
            gen.set_state(state["server_generator"])
        self.history = list(state["history"])
        self.start_round = int(state["round"]) + 1
        if self.audit is not None:
            self.audit.truncate_to_rounds(int(state["round"]))

    def metrics(self) -> dict[str, Any]:
        return {
            "algorithm": self.cfg.algorithm,
            "rounds": self.history,
            "final": self.history[-1] if self.history else None,
        }

    # -- rounds ---------------------------------------------------------------------------
    def cohort(self, round_id: int) -> list[int]:
        rng = np.random.default_rng(_derive_seed(self.cfg.seed, 2, round_id))
        return sorted(int(c) for c in rng.choice(self.cfg.clients, size=self.cfg.cohort, replace=False))

    def _client_work(self, bc: Broadcast, cid: int, train_losses: dict[int, float], final: bool, pers: dict[int, float]) -> np.ndarray:
        """Client ``cid``'s whole round (client side); returns its flattened upload."""
        gen = torch.Generator(device="cpu").manual_seed(_derive_seed(self.cfg.seed, 3, bc.round_id, cid))
        shard = self.shards[cid]
        blocks, loss = self.client_round(bc, shard, self.client_model, self.cfg, self.num_classes, gen)
        train_losses[cid] = loss
        if final:  # harness-side evaluation of the personalized (local) model; never uploaded
            _, _, hits = evaluate(self.client_model, self.test_x, self.test_y)
            pers[cid] = personalized_accuracy(hits, self.test_y, shard.y, self.num_classes)
        return self.layout.flatten(blocks)

    def run_round(self, round_id: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        cohort = self.cohort(round_id)
        bc = self.server.broadcast(round_id)
        final = round_id == self.cfg.rounds
        train_losses: dict[int, float] = {}
        pers: dict[int, float] = {}
        work: dict[int, ClientWork] = {
            cid: partial(self._client_work, bc, cid, train_losses, final, pers) for cid in cohort
        }
        t_clients = time.perf_counter()
        agg = self.aggregator.aggregate(round_id, self.layout, work)
        t_server = time.perf_counter()
        stats = self.server.apply(agg, bc)
        t_eval = time.perf_counter()
        acc, loss, _ = evaluate(self.server.model, self.test_x, self.test_y)
        t_end = time.perf_counter()
        rec: dict[str, Any] = {
            "round": round_id,
            "accuracy": acc,
            "loss": loss,
            "train_loss": float(np.mean(list(train_losses.values()))) if train_losses else None,
            "seconds": t_end - t0,
        }
        if final and pers:
            rec["personalized_accuracy"] = float(np.mean(list(pers.values())))
        self.history.append(rec)
        if self.audit is not None:
            self.audit.append(
                {
                    "round": round_id,
                    "algorithm": self.cfg.algorithm,
                    "aggregator": self.aggregator.name,
                    "cohort": cohort,
                    "survivors": list(agg.meta.get("survivors", cohort)),  # type: ignore[arg-type]
                    "dropped": sorted(set(cohort) - set(agg.meta.get("survivors", cohort))),  # type: ignore[arg-type]
                    "upload_entries": self.layout.size,
                    "bytes_up_per_client": agg.meta.get("bytes_up_per_client"),
                    "aggregate_sha256": agg.digest(),
                    "server": stats,
                    "accuracy": acc,
                    "loss": loss,
                    "timings": {
                        "clients_and_aggregation": t_server - t_clients,
                        "server_update": t_eval - t_server,
                        "evaluation": t_end - t_eval,
                        "total": t_end - t0,
                    },
                }
            )
        return rec

    def run(self, until: int | None = None) -> dict[str, Any]:
        """Run the remaining rounds (up to round ``until`` if given) and write the outputs."""
        if self.start_round == 1:
            self.write_static_outputs()
        last = self.cfg.rounds if until is None else min(until, self.cfg.rounds)
        rounds = range(self.start_round, last + 1)
        bar = tqdm(rounds, desc=f"{self.cfg.algorithm} on {self.cfg.dataset}", unit="round", disable=not self.progress, leave=False)
        for r in bar:
            rec = self.run_round(r)
            self._checkpoint(r)
            line = (
                f"round {r:>3}/{self.cfg.rounds}  acc {rec['accuracy']:.4f}  loss {rec['loss']:.4f}  "
                f"train {rec['train_loss']:.4f}  {rec['seconds']:.2f}s"
            )
            if "personalized_accuracy" in rec:
                line += f"  personalized {rec['personalized_accuracy']:.4f}"
            self.log(line)
        bar.close()
        self.start_round = last + 1
        if self.run_dir is not None:
            save_torch(self.run_dir / "model.pt", self.server.model.state_dict())
            write_json(self.run_dir / "metrics.json", self.metrics())
        return self.metrics()


def bundle_summary(data: DatasetBundle) -> str:
    return f"{data.name}: {len(data.train_y)} train / {len(data.test_y)} test, {data.num_classes} classes, input {data.input_shape}"
