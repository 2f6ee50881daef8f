"""Upload-inversion audit: what a curious server recovers from per-class uploads (FedHPro, prototypes).

The attack itself (what is recovered from one vector, and how) is described and implemented in
:mod:`secure_fed.audit.attack`; this module is the audit around it.

The audit (:func:`audit_inversion`) runs on a finished run folder. It rebuilds the run from
``config.json`` (data, partition, model, upload layout, aggregator) and ``checkpoint.pt``
(final global state and noise multiplier), then replays one round of client work with the
project's real client code path and the run's real aggregator (SecAgg/SecAgg+, fixed-point
codec and DP noise as configured) at two model points: round 1 (the initial global model,
rebuilt from the run's seed: the round whose uploads reveal most) and the round after the
last (the final global model). It attacks (a) each summed client's own upload, as an
insecure system would expose it (the client's encoded words before masking, including its
own noise share), and (b) the aggregate the server actually receives. Ground truth and the
population-mean baseline (guessing the federation's class means) come from the harness,
which holds every shard. The audit's own randomness (DP sampling and noise, rounding,
dropouts, protocol secrets) is seeded from ``seed``, so a seed gives the same result.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from crypto.rng import KeystreamRNG
from secure_fed.aggregation.layout import (
    Aggregate,
    Aggregator,
    ClientWork,
    PlaintextAggregator,
)
from secure_fed.aggregation.secagg import LayoutCodec, RingAggregator, SecAggAggregator
from secure_fed.audit.attack import (
    AttackerKnowledge,
    Guess,
    Inversion,
    cosine,
    invert,
    invert_prototypes,
    pool,
    rel_l2,
    score_client,
)
from secure_fed.config import PER_CLASS_RELEASE, TrainConfig
from secure_fed.errors import ConfigError, ProtocolAbort
from secure_fed.fl.client import extract_features
from secure_fed.fl.program import derive_seed
from secure_fed.fl.server import Broadcast
from secure_fed.run.rundir import load_config
from secure_fed.run.trainer import Trainer

NAME = "inversion"
POINTS = ("first", "final")
POINT_LABELS = {"first": "round 1 (initial model)", "final": "final model"}
DEFAULT_MAX_ADVANTAGE = 0.05
"""Largest mean-cosine advantage of the server-view attack over the population-mean
baseline, for any single client, that the audit accepts under secure aggregation."""


# -- replaying a round of the run ------------------------------------------------------------
TRAINED_PROTOTYPES = ("fedproto", "fedsa")
"""Algorithms whose per-class upload sums the features of the client's *locally trained*
model: the truth a recovered mean is scored against is the client's class means under that
model (elsewhere under the round's broadcast model)."""


class _AuditTrainer(Trainer):
    """The run's trainer with the audit's seeded client randomness (DP sampling and noise)."""

    def __init__(self, cfg: TrainConfig, audit_seed: int) -> None:
        self.audit_seed = audit_seed
        if getattr(cfg, "executor", "local") != "local":
            # The tap sits on the client side, so the replayed clients run in this process
            # (same client code as a remote worker runs).
            cfg = cfg.replace(executor="local")
        super().__init__(cfg, progress=False, log=lambda s: None, write_outputs=False)

    def _client_rng(self, round_id: int, cid: int) -> KeystreamRNG:
        return KeystreamRNG.from_seed(derive_seed(self.audit_seed, 6), f"audit-client-dp/{round_id}/{cid}")


class _Tap:
    """Records each client's upload on the client side, before masking (the insecure view);
    with ``model`` (the trainer's reusable client model), also each client's model as its
    round left it (for algorithms whose upload is computed after local training)."""

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.floats: dict[int, np.ndarray] = {}
        self.encoded: dict[int, np.ndarray] = {}
        self.model = model
        self.trained: dict[int, dict[str, torch.Tensor]] = {}

    def work(self, cid: int, fn: ClientWork) -> ClientWork:
        def run() -> np.ndarray:
            vec = fn()
            self.floats[cid] = vec.copy()
            if self.model is not None:
                self.trained[cid] = copy.deepcopy(self.model.state_dict())
            return vec

        return run

    def post_encode(self, inner: Any) -> Any:
        def post(round_id: int, cid: int, words: np.ndarray, codec: LayoutCodec, rng: KeystreamRNG) -> np.ndarray:
            out = words if inner is None else inner(round_id, cid, words, codec, rng)
            self.encoded[cid] = codec.decode_sum(out, 1)  # exactly what this client sends, unmasked
            return out

        return post

    def upload(self, cid: int) -> np.ndarray:
        return self.encoded[cid] if cid in self.encoded else self.floats[cid]


def _tapped_aggregator(trainer: Trainer, tap: _Tap, seed: int) -> Aggregator:
    """The run's aggregator with the tap on its client side and the audit's seeded randomness."""
    agg = trainer.aggregator
    if isinstance(agg, PlaintextAggregator):
        return PlaintextAggregator()
    if isinstance(agg, RingAggregator | SecAggAggregator):
        ring = dataclasses.replace(agg.settings, post_encode=tap.post_encode(agg.settings.post_encode),
                                   hardened=False, seed=derive_seed(seed, 5))
        if isinstance(agg, SecAggAggregator):
            return SecAggAggregator(ring, dataclasses.replace(agg.secagg, dropout_seed=derive_seed(seed, 4)))
        return RingAggregator(ring)
    raise ConfigError(f"inversion audit: aggregator {getattr(agg, 'name', agg)!r} is not supported")


@torch.no_grad()
def _truth(trainer: Trainer, bc: Broadcast, trained: dict[int, dict[str, torch.Tensor]] | None = None
           ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-client class means and counts under the broadcast model (a client in ``trained``:
    under its locally trained model, the features its upload summed), and the population's."""
    model = copy.deepcopy(trainer.server.model)
    c = trainer.num_classes
    means, counts = [], []
    pop_sum: np.ndarray | None = None
    pop_n = np.zeros(c)
    for k, shard in enumerate(trainer.shards):
        model.load_state_dict((trained or {}).get(k, bc.model_state))
        f = extract_features(model, shard.x).double().cpu().numpy()
        y = shard.y.cpu().numpy()
        n = np.bincount(y, minlength=c).astype(np.float64)
        s = np.zeros((c, f.shape[1]))
        np.add.at(s, y, f)
        means.append(s / np.maximum(n, 1)[:, None])
        counts.append(n)
        pop_sum = s if pop_sum is None else pop_sum + s
        pop_n += n
    assert pop_sum is not None
    return means, counts, pop_sum / np.maximum(pop_n, 1)[:, None], pop_n


def _knowledge(trainer: Trainer, bc: Broadcast, uploads: int) -> AttackerKnowledge:
    share = trainer.privacy.noise.share_std() if trainer.privacy is not None and trainer.privacy.noise.blocks else 0.0
    head = "classifier" if "classifier.weight" in bc.model_state else "classifier.linear"  # GFPL's dual head
    return AttackerKnowledge(
        weight=bc.model_state[f"{head}.weight"].double().cpu().numpy(),
        bias=bc.model_state[f"{head}.bias"].double().cpu().numpy(),
        dp=trainer.cfg.dp, count_coordinate=trainer.spec.count_coordinate, release_rate=trainer.cfg.release_rate,
        noise_std=share * math.sqrt(uploads),
    )


def _replay_round(trainer: Trainer, round_id: int, seed: int, trained: dict[int, dict[str, torch.Tensor]] | None = None
                  ) -> tuple[Broadcast, dict[int, np.ndarray], Aggregate | None, str | None]:
    """One round of the real client work and aggregation on the current global state.

    Returns the broadcast, every client's upload as it left the client (before masking), the
    aggregate the server receives (None if the protocol aborted) and the abort reason. For
    an algorithm of :data:`TRAINED_PROTOTYPES`, ``trained`` (if given) receives each
    client's locally trained model state.
    """
    bc = trainer.server.broadcast(round_id)
    cohort = trainer.cohort(round_id)
    tap = _Tap(trainer.client_model if trainer.cfg.algorithm in TRAINED_PROTOTYPES else None)
    aggregator = _tapped_aggregator(trainer, tap, seed)
    side: dict[str, dict[int, Any]] = {"loss": {}, "sgd": {}, "pers": {}}
    # Trainer.client_work is the client's whole round as training runs it (FedHPro work,
    # DP clipping, DP-SGD, flattening, float noise); the aggregator encodes, noises and masks.
    work = {cid: tap.work(cid, partial(trainer.client_work, bc, cid, side, False)) for cid in cohort}
    try:
        agg: Aggregate | None = aggregator.aggregate(round_id, trainer.layout, work)
        reason = None
    except ProtocolAbort as exc:
        agg, reason = None, str(exc)
    uploads = {cid: tap.upload(cid) for cid in sorted(tap.floats)}
    if trained is not None:
        trained.update(tap.trained)
    return bc, uploads, agg, reason


def _per_client_guess(inv: Inversion, uploads: int) -> Guess:
    return Guess(inv.means, inv.counts / max(uploads, 1), inv.present)


def _audit_point(trainer: Trainer, point: str, round_id: int, seed: int) -> dict[str, Any]:
    """Attack one replayed round: each client's upload, the server's aggregate, the baseline."""
    trained: dict[int, dict[str, torch.Tensor]] = {}
    bc, uploads, agg, reason = _replay_round(trainer, round_id, seed, trained)
    means, counts, pop_means, pop_counts = _truth(trainer, bc, trained)
    layout, batch = trainer.layout, trainer.cfg.batch_size
    summed: list[int] = []
    if agg is not None:
        listed = agg.meta.get("summed", sorted(uploads))
        summed = sorted(int(c) for c in listed) if isinstance(listed, list | tuple) else sorted(uploads)
    targets = summed or sorted(uploads)
    baseline = Guess(pop_means, pop_counts / trainer.cfg.clients, pop_counts > 0)
    rows: dict[str, list[dict[str, Any]]] = {"upload": [], "server": [], "baseline": []}
    server_inv = invert(layout, agg.vector, _knowledge(trainer, bc, agg.count)) if agg is not None else None
    advantage: dict[str, float] = {}
    for cid in targets:
        own = invert(layout, uploads[cid], _knowledge(trainer, bc, 1))
        rows["upload"].append({"client": cid, **score_client(_per_client_guess(own, 1), means[cid], counts[cid], batch)})
        base = {"client": cid, **score_client(baseline, means[cid], counts[cid], batch)}
        rows["baseline"].append(base)
        if server_inv is not None and agg is not None:
            srv = {"client": cid, **score_client(_per_client_guess(server_inv, agg.count), means[cid], counts[cid], batch)}
            rows["server"].append(srv)
            if srv["cosine"]:
                advantage[str(cid)] = float(np.mean(srv["cosine"]) - np.mean(base["cosine"]))
    population = None
    if server_inv is not None:
        cls = np.flatnonzero(pop_counts > 0)
        population = {"classes": cls.tolist(),
                      "cosine": [cosine(server_inv.means[c], pop_means[c]) for c in cls],
                      "rel_l2": [rel_l2(server_inv.means[c], pop_means[c]) for c in cls]}
    return {
        "point": point, "round": round_id, "targets": targets, "summed": summed,
        "dropped": sorted(set(uploads) - set(summed)) if agg is not None else [],
        "aborted": reason, "aggregator": None if agg is None else agg.meta.get("aggregator"),
        "noise_std_upload": _knowledge(trainer, bc, 1).noise_std,
        "noise_std_sum": None if agg is None else _knowledge(trainer, bc, agg.count).noise_std,
        "views": {view: {"pooled": pool(r), "clients": r} for view, r in rows.items()},
        "advantage": advantage, "population": population,
    }


# -- the audit -------------------------------------------------------------------------------
def _load_config(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    cfg, raw = load_config(run_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        raise ConfigError(f"RUN_DIR: {run_dir} has no checkpoint.pt (the inversion audit needs the final global state)")
    return cfg, raw


def _points(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(p for p in POINTS if p in {str(i).strip() for i in items})
    bad = {str(i).strip() for i in items} - set(POINTS)
    if bad or not out:
        raise ConfigError(f"--inversion-points: choose from {', '.join(POINTS)} (got {', '.join(map(str, items)) or 'nothing'})")
    return out


def _summary_for(res: dict[str, Any]) -> dict[str, float | int | str | None]:
    tag = POINT_LABELS[res["point"]]
    up, srv, base = (res["views"][v]["pooled"] for v in ("upload", "server", "baseline"))
    pop = res["population"]
    adv = res["advantage"]
    return {
        f"{tag}: upload cosine to true class means (mean)": up["cosine_mean"],
        f"{tag}: upload cosine (worst class)": up["cosine_min"],
        f"{tag}: upload relative L2 (mean)": up["rel_l2_mean"],
        f"{tag}: upload exact counts (all classes)": up["count_hit_rate"],
        f"{tag}: upload exact counts (count < batch size)": up["small_count_hit_rate"],
        f"{tag}: upload label-set precision / recall": _pr(up),
        f"{tag}: server sum cosine to the client's class means (mean)": srv["cosine_mean"],
        f"{tag}: server sum exact counts (count < batch size)": srv["small_count_hit_rate"],
        f"{tag}: server sum label-set precision / recall": _pr(srv),
        f"{tag}: population-mean baseline cosine (mean)": base["cosine_mean"],
        f"{tag}: population-mean baseline exact counts (count < batch size)": base["small_count_hit_rate"],
        f"{tag}: server advantage over baseline, worst client (cosine)": max(adv.values()) if adv else None,
        f"{tag}: server sum cosine to population class means (mean)": float(np.mean(pop["cosine"])) if pop and pop["cosine"] else None,
        f"{tag}: clients summed / noise std per entry of the sum": (
            f"{len(res['summed'])} / {res['noise_std_sum']:.4g}" if res["noise_std_sum"] is not None else f"aborted: {res['aborted']}"),
    }


def _pr(pooled: dict[str, Any]) -> str | None:
    if pooled["label_precision"] is None:
        return None
    return f"{pooled['label_precision']:.3f} / {pooled['label_recall']:.3f}"


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    xs = sorted(float(v) for v in values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def _plots(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    cos_series, err_series = [], []
    for res in results:
        tag = POINT_LABELS[res["point"]]
        for view, label in (("upload", "one client's upload"), ("server", "server's sum"), ("baseline", "population mean")):
            rows = res["views"][view]["clients"]
            cos = [v for r in rows for v in r["cosine"]]
            err = [abs(e - t) for r in rows for e, t in zip(r["count_estimates"], r["true_counts"], strict=True)]
            if cos:
                x, y = _cdf(cos)
                cos_series.append({"label": f"{label}, {tag}", "x": x, "y": y})
            if err:
                x, y = _cdf(err)
                err_series.append({"label": f"{label}, {tag}", "x": x, "y": y})
    return [
        {"title": "Inversion: cosine of the recovered to the client's true class-mean features",
         "xlabel": "cosine to the true class mean", "ylabel": "fraction of (client, class) pairs <= x",
         "xscale": "linear", "yscale": "linear", "series": cos_series},
        {"title": "Inversion: error of the recovered class counts",
         "xlabel": "|recovered - true| class count", "ylabel": "fraction of (client, class) pairs <= x",
         "xscale": "linear", "yscale": "linear", "series": err_series},
    ]


PROTOTYPE_UPLOADERS = ("fedproto", "protonorm", "fedsa", "gfpl")
"""Algorithms whose per-class upload is ``proto_sum`` + ``class_count`` (attacked by
:func:`invert_prototypes`)."""
APPLICABLE = tuple(dict.fromkeys((*PER_CLASS_RELEASE, *PROTOTYPE_UPLOADERS)))
"""The algorithms the audit applies to: every per-class release (FedHPro's residual, the
prototype release) and FedProto's plaintext prototype upload."""


def _not_applicable(cfg: TrainConfig) -> dict[str, Any]:
    why = (f"algorithm {cfg.algorithm} uploads no per-class gradients or prototypes; the inversion audit applies to "
           f"{', '.join(APPLICABLE)} runs")
    return {"name": NAME, "summary": {"applicable": False, "verdict": why}, "passed": None, "plots": [], "raw": {"reason": why}}


def audit_inversion(run_dir: Path, *, seed: int | None = None, points: Any = POINTS,
                    max_advantage: float | None = DEFAULT_MAX_ADVANTAGE, progress: bool = True) -> dict[str, Any]:
    """Run the upload-inversion audit on a finished run folder (operator side).

    ``seed`` (None = 0) seeds the audit's replayed rounds; ``points``: "first" and/or "final"
    (a comma string or a sequence); ``max_advantage``: the largest mean-cosine advantage over
    the population-mean baseline the server-view attack may have on any client before the
    audit fails (checked only under secure aggregation, where the server is claimed to learn
    only the sum; None never fails). Returns the audit result dict (see secure_fed.audit).
    """
    if max_advantage is not None and not (isinstance(max_advantage, int | float) and max_advantage >= 0):
        raise ConfigError(f"--inversion-max-advantage: must be a number >= 0 (got {max_advantage!r})")
    run_dir = Path(run_dir)
    wanted = _points(points)
    audit_seed = 0 if seed is None else int(seed)
    if audit_seed < 0:
        raise ConfigError(f"--seed: must be >= 0 (got {seed})")
    cfg, raw_cfg = _load_config(run_dir)
    if cfg.algorithm not in APPLICABLE:
        return _not_applicable(cfg)
    trainer = _AuditTrainer(cfg, audit_seed)
    results = []
    for point in tqdm(wanted, desc="inversion audit", unit="round", disable=not progress, leave=False):
        if point == "first":
            sigma = raw_cfg.get("noise_multiplier_used")
            if trainer.privacy is not None:
                if not isinstance(sigma, int | float):
                    raise ConfigError(f"RUN_DIR: {run_dir.name}/config.json records no noise_multiplier_used")
                trainer.set_noise(float(sigma))  # the run's noise, installed as training does
            round_id = 1
        else:
            trainer.resume_from(run_dir)  # final global state and noise multiplier
            round_id = trainer.start_round
        results.append(_audit_point(trainer, point, round_id, audit_seed))
    return _result(cfg, results, max_advantage, audit_seed)


def _result(cfg: TrainConfig, results: list[dict[str, Any]], max_advantage: float | None, seed: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"applicable": True}
    for res in results:
        summary.update(_summary_for(res))
    worst = [max(r["advantage"].values()) for r in results if r["advantage"]]
    secure = cfg.secagg != "off"
    if not secure:
        passed = None
        verdict = ("no secure aggregation: the server may see each upload, so the upload attack "
                   "applies as is; no claim to check")
    elif max_advantage is None or not worst:
        passed = None
        verdict = "measured only (no advantage bound given, or no sum released)"
    else:
        passed = max(worst) <= max_advantage
        verdict = (f"the server-sum attack beats the population-mean baseline for some client by "
                   f"{max(worst):.3g} mean cosine; the bound is {max_advantage}") if not passed else (
                   f"the server-sum attack is within {max_advantage} mean cosine of the "
                   f"population-mean baseline for every client (worst {max(worst):.3g})")
    summary["max advantage allowed (cosine)"] = max_advantage if secure else None
    summary["verdict"] = verdict
    return {
        "name": NAME, "summary": summary, "passed": passed, "plots": _plots(results),
        "raw": {"seed": seed, "points": results, "batch_size": cfg.batch_size, "dp": cfg.dp,
                "secagg": cfg.secagg, "mechanism": cfg.mechanism, "noise_placement": cfg.noise_placement},
    }


__all__ = ["AttackerKnowledge", "Inversion", "audit_inversion", "invert", "invert_prototypes", "score_client"]
