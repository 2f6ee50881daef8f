"""Drives federated rounds: cohort selection, client work, aggregation, server update,
evaluation, audit log, checkpoints.

The trainer is the harness of a simulation: it owns every client's shard and runs their
work in-process, but it hands the server nothing except the :class:`Aggregate` returned by
the aggregator. Evaluation metrics (test accuracy, personalized accuracy) are computed by
the harness, outside the server's code path.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from crypto.rng import KeystreamRNG
from dp.accountants import epsilon_with_fallback
from dp.events import event_from_dict, event_to_dict
from dp.ledger import PrivacyLedger
from protocol.params import RoundParams
from secure_fed.aggregation.layout import (
    Aggregate,
    Aggregator,
    ClientWork,
    PlaintextAggregator,
    VectorLayout,
)
from secure_fed.aggregation.secagg import (
    RingAggregator,
    RingSettings,
    SecAggAggregator,
    SecAggSettings,
)
from secure_fed.config import TrainConfig
from secure_fed.device import configure_cpu_threads, resolve_device, to_device
from secure_fed.errors import ConfigError, ProtocolAbort
from secure_fed.executor import Executor, make_executor
from secure_fed.executor.training import ClientKit, RemoteTrainingClients, RoundSetup
from secure_fed.fl.baselines import (
    FedAvgServer,
    FedProtoServer,
    fedavg_client_round,
    fedproto_client_round,
)
from secure_fed.fl.client import ClientShard, evaluate
from secure_fed.fl.data.datasets import load_dataset
from secure_fed.fl.data.partition import class_histogram, make_partition
from secure_fed.fl.fedhpro import FedHProServer, fedhpro_client_round
from secure_fed.fl.fedsa import FedSAServer, fedsa_client_round
from secure_fed.fl.gfpl import GfplServer, gfpl_client_round, gfpl_model
from secure_fed.fl.models import build_model
from secure_fed.fl.program import (
    ClientProgram,
    ClientRound,
    Side,
    client_rng,
    cpu_threads,
    derive_seed,
    new_side,
)
from secure_fed.fl.protonorm import ProtoNormServer, protonorm_client_round
from secure_fed.fl.server import Broadcast, FedServer
from secure_fed.privacy.noise import NoisePlan, RunPrivacy, SgdPlan, share_factor
from secure_fed.privacy.release import upload_spec
from secure_fed.run.records import RoundRecord, StopRecord, guarantee_line, round_line, server_step
from secure_fed.run.resume import record_restart, resume
from secure_fed.run.rundir import (
    JOURNAL,
    AuditLog,
    RunLock,
    append_journal,
    environment,
    file_sha256,
    make_run_dir,
    read_journal,
    save_torch,
    write_json,
)

CLIENT_ROUNDS: dict[str, ClientRound] = {
    "fedhpro": fedhpro_client_round,
    "fedavg": fedavg_client_round,
    "fedproto": fedproto_client_round,
    "protonorm": protonorm_client_round,
    "fedsa": fedsa_client_round,
    "gfpl": gfpl_client_round,
}


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
        configure_cpu_threads(cpu_threads(cfg))
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
        self.spec = upload_spec(cfg, int(labels.shape[0]))
        if cfg.dp != "off" and cfg.delta > 1.0 / labels.shape[0]:
            self.log(f"warning: --delta {cfg.delta:g} is above 1/n = 1/{labels.shape[0]} training samples: "
                     "a mechanism that publishes one random sample outright meets (epsilon, delta) at that delta; "
                     f"use a delta well below {1.0 / labels.shape[0]:.3g}")

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.dataset, self.num_classes, self.data.input_shape, cfg.feature_dim)
        if cfg.algorithm == "gfpl":  # GFPL's dual classifier (projection, ETF, trainable classifier)
            model = gfpl_model(model, cfg, self.num_classes)
        model = to_device(model, self.device)
        self.client_model = copy.deepcopy(model)  # the simulator's one reusable client model
        self.client_round = CLIENT_ROUNDS[cfg.algorithm]
        self._secagg_probe: SecAggAggregator | None = None
        # (k, t) of a full cohort and the guarantee they deliver (protocol.params.round_params)
        self.round_params: RoundParams | None = None if cfg.secagg == "off" else SecAggAggregator(
            RingSettings(bits=cfg.bits), self._secagg_settings()).round_params(cfg.cohort)
        self.threshold = 1 if self.round_params is None else self.round_params.t  # t (1 without SecAgg)
        self.privacy: RunPrivacy | None = None
        self.noise_multiplier = 0.0
        self.server = self._make_server(model)
        self.layout: VectorLayout = self.server.layout()
        self.program = ClientProgram(cfg, self.spec, self.num_classes, self.layout, self.client_round)
        self.noise_plan: NoisePlan | None = None
        if cfg.dp != "off":
            self.privacy = RunPrivacy.for_config(cfg, self.layout, self.threshold, [s.n for s in self.shards])
        self._custom_aggregator = aggregator is not None
        # --executor: where the clients' round work runs (None: in this process)
        self.executor: Executor | None = None
        self.remote: RemoteTrainingClients | None = None
        self._setup: tuple[float, Aggregator, RoundSetup] | None = None  # see round_setup
        if cfg.executor != "local":
            self.executor = make_executor(cfg.executor, cfg.ray_address, cfg.workers)
            self.remote = self.executor.training_clients(cfg, self.client_kit)
        self.aggregator = aggregator or self._make_aggregator()
        self.ledger = PrivacyLedger()
        self.history: list[RoundRecord] = []
        self.start_round = 1
        self.stopped: StopRecord | None = None
        self.interrupted_releases: list[int] = []
        self.rerun_rounds: set[int] = set()  # rounds with a record that a resume re-runs
        self.run_dir: Path | None = None
        self.audit: AuditLog | None = None
        self.lock: RunLock | None = None
        self._planned_noise: float | None = None
        if write_outputs:
            if run_dir is None:  # a fresh run: plan before the folder exists, so a refused plan leaves none
                self._planned_noise = self.plan_noise()
                self.run_dir, self.lock = make_run_dir(cfg.out, cfg.run_id, cfg.algorithm, cfg.seed)
            else:
                self.run_dir, self.lock = run_dir, RunLock(run_dir)
            self.audit = AuditLog(self.run_dir / "audit.jsonl")

    # -- construction -----------------------------------------------------------------------
    def _secagg_settings(self) -> SecAggSettings:
        cfg = self.cfg
        return SecAggSettings(
            graph="complete" if cfg.secagg == "secagg" else "harary", neighbors=cfg.neighbors,
            threshold=cfg.threshold, authenticated=cfg.authenticated, dropout=cfg.dropout,
            dropout_seed=derive_seed(cfg.seed, 4), server_workers=cfg.server_workers,
            max_colluders=cfg.max_colluders, halting_bits=cfg.halting_bits,
        )

    def _make_server(self, model: nn.Module) -> FedServer:
        cfg = self.cfg
        if cfg.algorithm == "fedhpro":
            gen = torch.Generator(device="cpu").manual_seed(derive_seed(cfg.seed, 1))
            return FedHProServer(model, self.num_classes, self.device, cfg, gen, self.spec)  # noise set in set_noise
        if cfg.algorithm == "fedproto":
            return FedProtoServer(model, self.num_classes, self.device, self.spec)
        if cfg.algorithm == "protonorm":
            return ProtoNormServer(model, self.num_classes, self.device, self.spec, cfg)  # noise set in set_noise
        if cfg.algorithm == "fedsa":
            gen = torch.Generator(device="cpu").manual_seed(derive_seed(cfg.seed, 1))
            return FedSAServer(model, self.num_classes, self.device, cfg, gen, self.spec)  # noise set in set_noise
        if cfg.algorithm == "gfpl":
            gen = torch.Generator(device="cpu").manual_seed(derive_seed(cfg.seed, 1))
            return GfplServer(model, self.num_classes, self.device, cfg, gen, self.spec)  # noise set in set_noise
        return FedAvgServer(model, self.num_classes, self.device, self.spec)

    def _make_aggregator(self) -> Aggregator:
        cfg = self.cfg
        if cfg.secagg == "off" and (cfg.dp == "off" or cfg.mechanism == "gaussian"):
            return PlaintextAggregator()
        post = None
        noise_std = None
        if self.privacy is not None:
            noise = self.privacy.noise
            noise_std = noise.total_noise_std(cfg.cohort)

            def post(round_id: int, cid: int, words: np.ndarray, codec: Any, rng: KeystreamRNG) -> np.ndarray:
                return noise.post_encode(words, codec, rng)

        ring = RingSettings(cfg.bits, noise_std, post, hardened=cfg.hardened, seed=derive_seed(cfg.seed, 5))
        if cfg.secagg == "off":
            return RingAggregator(ring)
        return SecAggAggregator(ring, self._secagg_settings(), remote=self.remote)

    def client_kit(self, ids: list[int]) -> ClientKit:
        """What an executor's host needs for clients ``ids``: their shards and the client model
        (CPU copies) and the run's client program."""
        shards = {u: ClientShard(u, self.shards[u].x.cpu(), self.shards[u].y.cpu()) for u in ids}
        return ClientKit(self.program, copy.deepcopy(self.client_model).cpu(), shards)

    def round_setup(self) -> RoundSetup:
        """The client settings installed now; the same object until the noise or aggregator changes."""
        if self._setup is None or self._setup[0] != self.noise_multiplier or self._setup[1] is not self.aggregator:
            agg, noise = self.aggregator, (self.privacy.noise if self.privacy is not None else None)
            ring, secagg = (agg.settings, agg.secagg) if isinstance(agg, SecAggAggregator) else (None, None)
            self._setup = (self.noise_multiplier, agg, RoundSetup(self.noise_multiplier, noise, ring, secagg))
        return self._setup[2]

    def close(self) -> None:
        """Release the executor's workers (a local Ray instance is shut down) and the run folder's lock."""
        if self.executor is not None:
            self.executor.close()
            self.executor, self.remote = None, None
        if self.lock is not None:
            self.lock.release()

    def plan_noise(self) -> float:
        """The noise multiplier: given, or the smallest that keeps the planned run within
        --target-epsilon for every client (worst case: every round, fewest shares); planned
        by :meth:`RunPrivacy.plan`, as ``budget --from-run`` plans it."""
        if self.privacy is None:
            return 0.0
        self.noise_plan = self.privacy.plan()
        return self.noise_plan.noise_multiplier

    def set_noise(self, sigma: float) -> None:
        """Install the run's noise multiplier everywhere it is used (client and server)."""
        self.noise_multiplier = sigma
        if self.privacy is None:
            return
        self.privacy = self.privacy.at(sigma)
        self.server.count_noise_std = self.privacy.noise.share_std()  # public: every server's DP gate
        if self._custom_aggregator:
            if self.cfg.mechanism == "discrete":
                raise ConfigError("--mechanism discrete needs the trainer's own aggregator (it adds the ring noise)")
            return
        self.aggregator = self._make_aggregator()

    # -- outputs --------------------------------------------------------------------------
    def write_static_outputs(self) -> None:
        if self.run_dir is None:
            return
        cfg = self.cfg.to_dict()
        cfg["environment"] = environment(self.device)
        cfg["noise_multiplier_used"] = self.noise_multiplier if self.privacy is not None else None
        cfg["threshold_used"] = self.threshold if self.cfg.secagg != "off" else None
        plan = self.noise_plan
        cfg["noise_plan"] = None if plan is None else dataclasses.asdict(plan)
        cfg["secure_aggregation"] = None if self.round_params is None else self.round_params.to_dict()
        write_json(self.run_dir / "config.json", cfg)
        if self.audit is not None and not self.audit.records:  # the chain starts from this config.json
            self.audit.append({"kind": "config", "config_sha256": file_sha256(self.run_dir / "config.json")})
            if self.interrupted_releases:  # a restart that charged releases made before its first checkpoint
                record_restart(self)
        write_json(
            self.run_dir / "partition.json",
            {
                "num_clients": self.cfg.clients,
                "num_classes": self.num_classes,
                "samples_per_client": [int(len(p)) for p in self.parts],
                "class_histogram": self.histogram.tolist(),
            },
        )
        write_json(self.run_dir / "layout.json",
                   self.privacy.noise.layout_doc() if self.privacy is not None else self.layout.describe())

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
                "ledger": self.ledger.to_json(),
                "noise_multiplier": self.noise_multiplier,
                "stopped": self.stopped,
            },
        )
        write_json(self.run_dir / "metrics.json", self.metrics())

    def resume_from(self, run_dir: Path) -> None:
        """Continue a run after its last complete (checkpointed) round (see :func:`secure_fed.run.resume.resume`)."""
        resume(self, run_dir)

    def metrics(self) -> dict[str, Any]:
        return {
            "algorithm": self.cfg.algorithm,
            "rounds": self.history,
            "final": self.history[-1] if self.history else None,
            "stopped": self.stopped,
            **({"hp_summary": summary} if (summary := self.hp_summary()) is not None else {}),
        }

    # -- privacy ----------------------------------------------------------------------------
    def epsilons(self) -> dict[str, Any] | None:
        """Epsilon at the run's delta per accountant: per client and the max."""
        if self.privacy is None or len(self.ledger) == 0:
            return None
        out: dict[str, Any] = {}
        for name in dict.fromkeys(("rdp", self.cfg.accountant)):
            per = {}
            note = None
            for subject in self.ledger.subjects():
                eps, used, msg = epsilon_with_fallback(self.ledger.events_for(subject), self.cfg.delta, name)
                per[subject] = eps
                note = note or msg
            out[name] = {"max": max(per.values()), "per_client": per, "note": note}
        return out

    def _planned_events(self, round_id: int, cohort: list[int]) -> list[Any]:
        assert self.privacy is not None
        return self.privacy.planned_events(round_id, cohort)

    def _budget_allows(self, round_id: int, cohort: list[int]) -> bool:
        cfg = self.cfg
        if self.privacy is None or cfg.target_epsilon is None:
            return True
        if not self.ledger.would_exceed(self._planned_events(round_id, cohort), cfg.target_epsilon, cfg.delta, cfg.accountant):
            return True
        spent = self.epsilons()
        self.stopped = {
            "round": round_id,
            "reason": f"target epsilon {cfg.target_epsilon} (delta {cfg.delta}) would be exceeded by round {round_id}; "
                      f"stopped after round {round_id - 1}",
            "epsilon": spent,
        }
        return False

    # -- rounds ---------------------------------------------------------------------------
    def cohort(self, round_id: int) -> list[int]:
        rng = np.random.default_rng(derive_seed(self.cfg.seed, 2, round_id))
        return sorted(int(c) for c in rng.choice(self.cfg.clients, size=self.cfg.cohort, replace=False))

    def _client_rng(self, round_id: int, cid: int) -> KeystreamRNG:
        return client_rng(self.cfg, round_id, cid)

    def client_work(self, bc: Broadcast, cid: int, side: Side, final: bool) -> np.ndarray:
        """Client ``cid``'s whole round (client side); returns its flattened, DP-processed upload."""
        return self.program.run(
            bc, self.shards[cid], self.client_model, noise_multiplier=self.noise_multiplier,
            noise=self.privacy.noise if self.privacy is not None else None,
            rng=self._client_rng(bc.round_id, cid), side=side,
            test=(self.test_x, self.test_y) if final else None,  # personalized accuracy, harness side
        )

    def _charge(self, round_id: int, agg: Aggregate, sgd: dict[int, SgdPlan]) -> list[dict[str, Any]]:
        """Ledger events of the clients whose uploads are in the sum."""
        if self.privacy is None:
            return []
        summed = list(agg.meta.get("summed", []))  # type: ignore[call-overload]
        gamma = None
        if self.cfg.mechanism == "discrete" and self.privacy.noise.blocks:
            gamma = agg.meta["codec_gamma"][self.privacy.noise.blocks[0]]  # type: ignore[index]
        events = self.privacy.charged_events(round_id, summed, gamma, sgd)
        dicts = [event_to_dict(e) for e in events]
        if self.run_dir is not None:
            append_journal(self.run_dir / JOURNAL, {"round": round_id, "events": dicts})
        self.ledger.extend(events)
        return dicts

    def recover_interrupted_releases(self, run_dir: Path, last_complete: int) -> None:
        """Hardened mode: a round killed after its sum was released but before its checkpoint
        spent privacy with noise that will not be drawn again; count it (from the journal)
        before the round is redone. Reproducible mode redraws the identical noise, so the
        redone release is the same value and is counted once."""
        path = run_dir / JOURNAL
        if not self.cfg.hardened or not path.exists():
            return
        for entry in read_journal(path):
            if int(entry["round"]) > last_complete:
                self.ledger.extend(event_from_dict(e) for e in entry["events"])
                self.interrupted_releases.append(int(entry["round"]))

    def run_round(self, round_id: int) -> RoundRecord | None:
        """One round; None when the privacy budget stops training before it."""
        t0 = time.perf_counter()
        cohort = self.cohort(round_id)
        if not self._budget_allows(round_id, cohort):
            return None
        bc = self.server.broadcast(round_id)
        final = round_id == self.cfg.rounds
        side = new_side()
        work: dict[int, ClientWork] = {cid: partial(self.client_work, bc, cid, side, final) for cid in cohort}
        if self.remote is not None:  # the clients' work runs in the executor's workers
            self.remote.begin_round(bc, final, self.round_setup(),
                                    (self.test_x.cpu(), self.test_y.cpu()) if final else None)
            work = self.remote.work(cohort)
        t_clients = time.perf_counter()
        try:
            agg = self.aggregator.aggregate(round_id, self.layout, work)
        except ProtocolAbort as exc:
            return self._aborted(round_id, cohort, str(exc), time.perf_counter() - t0)
        finally:
            for key, values in (self.remote.end_round() if self.remote is not None else {}).items():
                side[key].update(values)
            for key in side:  # client order, whichever order they finished in
                side[key] = dict(sorted(side[key].items()))
        t_server = time.perf_counter()
        events = self._charge(round_id, agg, side["sgd"])  # journaled before the server uses the sum
        stats = self.server.apply(agg, bc)
        t_eval = time.perf_counter()
        acc, loss, _ = evaluate(self.server.model, self.test_x, self.test_y)
        t_end = time.perf_counter()
        eps = self.epsilons()
        summed = list(agg.meta.get("summed", cohort))  # type: ignore[call-overload]
        rec: RoundRecord = {
            "round": round_id,
            "accuracy": acc,
            "loss": loss,
            "train_loss": float(np.mean(list(side["loss"].values()))) if side["loss"] else None,
            "epsilon": None if eps is None else eps[self.cfg.accountant]["max"],
            "survivors": len(summed),
            "cohort": len(cohort),
            "bytes_up_per_client": cast("int | None", agg.meta.get("bytes_up_per_client")),
            "seconds": t_end - t0,
        }
        if restarts := cast("list[Any]", agg.meta.get("restarts") or []):
            rec["restarts"] = len(restarts)
        if final and side["pers"]:
            rec["personalized_accuracy"] = float(np.mean(list(side["pers"].values())))
        if isinstance(self.server, FedHProServer) and self.server.hp_round is not None:
            rec["hp"] = self.server.hp_round  # matched classes, matching loss, movement
        if self.server.step_label is not None and "active_classes" in stats:
            rec["server_step"] = server_step(self.server.step_label, stats, self.num_classes)
        self.history.append(rec)
        if self.audit is not None:
            audit = self._audit_record(round_id, cohort, agg, stats, events, eps, acc, loss, {
                "clients_and_aggregation": t_server - t_clients, "server_update": t_eval - t_server,
                "evaluation": t_end - t_eval, "total": t_end - t0,
            })
            if "hp" in rec:
                audit["hp"] = rec["hp"]
            if "server_step" in rec:
                audit["server_step"] = rec["server_step"]
            if round_id in self.rerun_rounds:
                audit["rerun"] = True  # an earlier record of this round was written before a crash
            self.audit.append(audit)
        return rec

    def _split_note(self) -> str:
        s = self.privacy.s if self.privacy is not None else None
        if s is None or s.release_noise_ratio == 1.0:
            return ""
        return f" (DP-SGD; release {s.release_noise_multiplier:.4f} = {s.release_noise_ratio:g}x)"

    def _plan_note(self) -> str:
        plan = self.noise_plan
        if plan is None:
            return ""
        return (f"; planned epsilon {plan.epsilon:.4f} for the worst client ({plan.worst_client_samples} samples, "
                "every round, fewest shares)")

    def _dp_record(self) -> dict[str, Any] | None:
        if self.privacy is None:
            return None
        cfg = self.cfg
        return {
            "unit": cfg.dp, "placement": cfg.noise_placement, "mechanism": cfg.mechanism,
            "noise_multiplier": self.noise_multiplier, "clip": cfg.clip, "delta": cfg.delta,
            "release_noise_ratio": self.privacy.s.release_noise_ratio,
            "release_noise_multiplier": self.privacy.s.release_noise_multiplier,
            "release_rate": cfg.release_rate, "target_epsilon": cfg.target_epsilon,
            "hardened": cfg.hardened, "threshold": self.threshold,
        }

    def _audit_record(self, round_id: int, cohort: list[int], agg: Aggregate, stats: dict[str, float],
                      events: list[dict[str, Any]], eps: dict[str, Any] | None, acc: float, loss: float,
                      timings: dict[str, float]) -> dict[str, Any]:
        meta = agg.meta
        summed = list(meta.get("summed", cohort))  # type: ignore[call-overload]
        dp = self._dp_record()
        if dp is not None and summed:
            shares = self.privacy.shares_for(len(summed)) if self.privacy else 1
            dp["effective_noise_multiplier"] = dp["release_noise_multiplier"] * share_factor(self.cfg.noise_placement, self.threshold) * shares ** 0.5
        return {
            "kind": "round", "round": round_id, "algorithm": self.cfg.algorithm, "aggregator": self.aggregator.name,
            "cohort": cohort, "survivors": meta.get("survivors", {"masked": cohort}), "summed": summed,
            "dropped": meta.get("dropped", []), "threshold": meta.get("threshold"),
            "graph": meta.get("graph"), "neighbors": meta.get("neighbors"), "bits": meta.get("bits"),
            "bytes": meta.get("bytes"), "bytes_up_per_client": meta.get("bytes_up_per_client"),
            "upload_entries": self.layout.size, "protocol_seconds": meta.get("seconds"),
            "dp": dp, "events": events, "epsilon": eps,
            "guarantee": meta.get("guarantee"), "restarts": meta.get("restarts", []),
            "aggregate_sha256": agg.digest(), "server": stats, "accuracy": acc, "loss": loss, "timings": timings,
        }

    def hp_summary(self) -> str | None:
        """FedHPro: the run's matching in one sentence (None for other algorithms)."""
        if not isinstance(self.server, FedHProServer):
            return None
        release = self.privacy.s.release_noise_multiplier if self.privacy is not None else None
        return self.server.summary([r["hp"] for r in self.history if "hp" in r], release)

    def _aborted(self, round_id: int, cohort: list[int], reason: str, seconds: float) -> RoundRecord:
        rec: RoundRecord = {"round": round_id, "aborted": reason, "accuracy": self.history[-1]["accuracy"] if self.history else None,
               "loss": None, "train_loss": None, "epsilon": self.history[-1].get("epsilon") if self.history else None,
               "survivors": 0, "cohort": len(cohort), "bytes_up_per_client": None, "seconds": seconds}
        self.history.append(rec)
        if self.audit is not None:
            g = None if self.round_params is None else self.round_params.to_dict()
            self.audit.append({"kind": "round", "round": round_id, "aborted": reason, "cohort": cohort,
                               "aggregator": self.aggregator.name, "guarantee": g, "dp": self._dp_record(), "events": [],
                               "epsilon": self.epsilons(), "accuracy": rec["accuracy"], "timings": {"total": seconds}})
        return rec

    def run(self, until: int | None = None) -> dict[str, Any]:
        """Run the remaining rounds (up to round ``until`` if given) and write the outputs."""
        if self.lock is not None and not self.lock.held and self.run_dir is not None:
            self.lock = RunLock(self.run_dir)
        if self.start_round == 1 and not self.history:
            self.set_noise(self._planned_noise if self._planned_noise is not None else self.plan_noise())
            self.write_static_outputs()
            if (guarantee := guarantee_line(self.round_params)) is not None:
                self.log(guarantee)
            if self.privacy is not None:
                self.log(f"DP {self.cfg.dp}-level, {self.cfg.mechanism} noise ({self.cfg.noise_placement}), "
                         f"noise multiplier {self.noise_multiplier:.4f}{self._split_note()}, clip {self.cfg.clip}, delta {self.cfg.delta}"
                         + self._plan_note())
        last = self.cfg.rounds if until is None else min(until, self.cfg.rounds)
        bar = tqdm(range(self.start_round, last + 1), desc=f"{self.cfg.algorithm} on {self.cfg.dataset}", unit="round",
                   disable=not self.progress, leave=False)
        for r in bar:
            if self.stopped is not None:
                break
            rec = self.run_round(r)
            if rec is None:
                assert self.stopped is not None
                self.log(f"stopped before round {r}: {self.stopped['reason']}")
                if self.audit is not None:
                    self.audit.append({"kind": "stop", **self.stopped})
                self._checkpoint(r - 1)
                break
            self._checkpoint(r)
            self.log(round_line(rec, self.cfg.rounds, self.cfg.secagg != "off"))
        bar.close()
        if (last == self.cfg.rounds or self.stopped is not None) and (summary := self.hp_summary()) is not None:
            self.log(summary)
        self.start_round = last + 1
        if self.run_dir is not None:
            save_torch(self.run_dir / "model.pt", self.server.model.state_dict())
            write_json(self.run_dir / "metrics.json", self.metrics())
        if self.lock is not None:  # this process is done writing the folder
            self.lock.release()
        return self.metrics()
