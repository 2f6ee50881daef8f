"""Measure FedHPro's per-class release on the default DP run: signal, gate and accuracy.

For each budget split ``--release-noise-ratio`` and seed, runs ``python run_secure.py`` with
the defaults (digits, --dp sample, SecAgg+, discrete noise, epsilon 8) in reproducible mode
(--no-hardened, so the arms are paired by seed) and records:

* accuracy: final, and the mean of the last 5 rounds;
* matched: the fraction of class-rounds matched after round 2 (rounds 3..R);
* cosine: per round, the cosine of the release the server decodes (U and the count
  coordinate, noised) to the clean release (the same clients' uploads before noise, summed
  over the clients actually summed); the median over rounds.

    PYTHONPATH=. python benchmarks/bench_release.py [--ratios 1 2 3 5 10] [--seeds 0 1] [--rounds 30]
        [--hp-control random]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import warnings
from typing import Any

import numpy as np

from secure_fed.config import PER_CLASS_RELEASE, TrainConfig
from secure_fed.run.trainer import Trainer

RELEASE = ("cls_grad_b", "class_count")
RELEASE_BLOCKS = {"residual": RELEASE, "prototype": ("proto_sum", "class_count"),
                  "moments": ("proto_sum", "feat_sq", "class_count")}
"""Per release kind (:data:`secure_fed.config.PER_CLASS_RELEASE`), the blocks whose noised
sum is compared with the clean one (FedHPro: U and the count coordinate)."""


def record_release_cosines(trainer: Trainer) -> list[float]:
    """Instrument ``trainer`` (an algorithm with a per-class release, under DP, local
    executor) so that every applied round appends to the returned list the cosine of the
    release the server decodes (FedHPro: U and the count coordinate; a prototype release:
    the prototype sums and the count coordinate; noised) to the same survivors' uploads
    before noise. Call before ``trainer.run()``; the list fills as the rounds run."""
    blocks = RELEASE_BLOCKS[PER_CLASS_RELEASE[trainer.cfg.algorithm]]
    clean: dict[tuple[int, int], np.ndarray] = {}
    inner = trainer.program.round_fn

    def recording(bc: Any, shard: Any, model: Any, ctx: Any) -> Any:
        out = inner(bc, shard, model, ctx)
        clean[(bc.round_id, shard.client_id)] = np.concatenate([out.blocks[n].ravel() for n in blocks])
        return out

    trainer.program = dataclasses.replace(trainer.program, round_fn=recording)
    cosines: list[float] = []
    apply = trainer.server.apply

    def recording_apply(agg: Any, bc: Any) -> dict[str, float]:
        noised = np.concatenate([agg.block(n).ravel() for n in blocks])
        summed = list(agg.meta.get("summed", []))
        truth = sum(clean.pop((agg.round_id, c)) for c in summed)
        for key in [k for k in clean if k[0] <= agg.round_id]:  # dropped clients' uploads
            del clean[key]
        cosines.append(float(noised @ truth / (np.linalg.norm(noised) * np.linalg.norm(truth))))
        return apply(agg, bc)

    trainer.server.apply = recording_apply  # type: ignore[method-assign]
    return cosines


def measure(ratio: float, seed: int, rounds: int, **overrides: Any) -> dict[str, float]:
    cfg = TrainConfig(release_noise_ratio=ratio, seed=seed, rounds=rounds, hardened=False, **overrides)
    trainer = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    cosines = record_release_cosines(trainer)
    trainer.run()
    hist = [r for r in trainer.history if "hp" in r]
    late = [r["hp"] for r in hist if r["round"] > 2]
    matched = sum(len(h["matched_classes"]) for h in late) / max(sum(h["num_classes"] for h in late), 1)
    accs = [r["accuracy"] for r in trainer.history if r.get("accuracy") is not None]
    return {"final": accs[-1], "last5": float(np.mean(accs[-5:])), "matched": matched,
            "cosine": statistics.median(cosines), "sigma": trainer.noise_multiplier,
            "release_sigma": trainer.noise_multiplier * ratio, "rounds": len(trainer.history)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[1, 2, 3, 5, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--hp-control", default="none", help="the control arm (none, random, frozen)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print("| ratio | seed | DP-SGD sigma | release sigma | final acc | mean acc, last 5 | matched after round 2 | median cosine |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary: dict[float, list[dict[str, float]]] = {}
    for ratio in args.ratios:
        for seed in args.seeds:
            m = measure(ratio, seed, args.rounds, hp_control=args.hp_control)
            summary.setdefault(ratio, []).append(m)
            print(f"| {ratio:g} | {seed} | {m['sigma']:.3f} | {m['release_sigma']:.2f} | {m['final']:.4f} | "
                  f"{m['last5']:.4f} | {m['matched']:.3f} | {m['cosine']:.3f} |", flush=True)
    print()
    print("| ratio | mean final acc | mean acc, last 5 | matched after round 2 | median cosine |")
    print("|---:|---:|---:|---:|---:|")
    for ratio, ms in summary.items():
        print(f"| {ratio:g} | {np.mean([m['final'] for m in ms]):.4f} | {np.mean([m['last5'] for m in ms]):.4f} | "
              f"{np.mean([m['matched'] for m in ms]):.3f} | {np.mean([m['cosine'] for m in ms]):.3f} |")


if __name__ == "__main__":
    main()
