"""Accuracy of FedHPro (both classifiers) against FedAvg and FedProto on one harness.

Every method runs on the same partition and seed; the table gives the final-round global
test accuracy and the personalized accuracy (each cohort client's local model on the test
set reweighted to its own label distribution), mean and standard deviation over seeds.

    python benchmarks/bench_accuracy.py --alphas 0.1 0.5 1.0 --seeds 0 1 2 --rounds 30 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS: dict[str, dict[str, Any]] = {
    "fedhpro": {"algorithm": "fedhpro", "classifier": "fedavg"},
    "fedhpro-meta": {"algorithm": "fedhpro", "classifier": "meta"},
    "fedavg": {"algorithm": "fedavg"},
    "fedproto": {"algorithm": "fedproto"},
    "protonorm": {"algorithm": "protonorm"},
    "fedsa": {"algorithm": "fedsa"},
    "gfpl": {"algorithm": "gfpl"},
}


def _one(job: tuple[str, float, int, dict[str, Any]]) -> dict[str, Any]:
    from secure_fed.config import TrainConfig
    from secure_fed.run.trainer import Trainer

    method, alpha, seed, extra = job
    cfg = TrainConfig(**{**METHODS[method], **extra, "alpha": alpha, "seed": seed, "threads": 1})
    t0 = time.perf_counter()
    tr = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    tr.run()
    last = tr.history[-1]
    return {
        "method": method, "alpha": alpha, "seed": seed,
        "accuracy": last["accuracy"], "personalized": last.get("personalized_accuracy"),
        "seconds": time.perf_counter() - t0,
    }


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.1, 0.5, 1.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra TrainConfig settings, e.g. hpcl_weight=0.1")
    ap.add_argument("--jobs", type=int, default=2, help="parallel worker processes (1 torch thread each)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()

    extra: dict[str, Any] = {
        "rounds": args.rounds, "clients": args.clients, "cohort": args.clients,
        "secagg": "off", "dp": "off", "target_epsilon": None,
    }
    for kv in args.set:
        k, v = kv.split("=", 1)
        extra[k] = json.loads(v) if v not in ("fedavg", "meta") else v
    jobs = [(m, a, s, extra) for a in args.alphas for m in args.methods for s in args.seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_one, jobs))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))

    print(f"digits, {args.clients} clients, {args.rounds} rounds, seeds {args.seeds}, settings {extra}")
    print(f"wall time {time.perf_counter() - t0:.0f} s\n")
    print("| alpha | method | global accuracy (mean ± std) | personalized accuracy | s/run |")
    print("|---|---|---|---|---|")
    for a in args.alphas:
        for m in args.methods:
            rs = [r for r in results if r["alpha"] == a and r["method"] == m]
            acc = [r["accuracy"] for r in rs]
            pers = [r["personalized"] for r in rs if r["personalized"] is not None]
            secs = statistics.mean(r["seconds"] for r in rs)
            print(f"| {a} | {m} | {_fmt(acc)} | {_fmt(pers)} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
