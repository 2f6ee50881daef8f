"""Accuracy under secure aggregation and sample-level DP on digits (10 clients, all in the cohort).

Three parts, each runnable alone (``--parts a b c``):

(a) plaintext vs SecAgg+ with DP off: what fixed-point encoding and masking cost in accuracy.
(b) DP at target epsilon in ``--epsilons`` (noise planned by the trainer), noise placed
    ``local`` (each client adds all of sigma*C, float Gaussian) or ``distributed`` (each adds
    a discrete-Gaussian share inside SecAgg+), against the non-DP SecAgg+ run of (a).
(c) FedHPro vs FedAvg under the same DP (epsilon ``--c-epsilon``, distributed, discrete)
    at each ``--c-alphas``: mean, spread, and paired (same seed) wins; FedHPro once per
    ``--c-ratios`` value (``--release-noise-ratio``: the budget split between its per-class
    release and DP-SGD).

Every run is an in-process :class:`Trainer` (no outputs written) in a worker process with
one torch thread; accuracy is the final-round global test accuracy, epsilon the accountant's
(RDP) largest per-client epsilon at ``--delta`` after the last round.

(c) runs at its first alpha where it stands in ``--parts`` and at its other alphas last, so
a cut-short run still has the priority order: (a), (c) at alpha 0.5, (b), (c) at alpha 0.1.

    python benchmarks/bench_privacy.py --parts a c b --jobs 2 --json privacy.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

Job = dict[str, Any]
"""One run: ``part`` and ``label`` (for the tables) plus TrainConfig settings."""

PLAIN: dict[str, Any] = {"secagg": "off", "dp": "off", "target_epsilon": None}
SECAGG: dict[str, Any] = {"secagg": "secagg+", "dp": "off", "target_epsilon": None}


def _dp(epsilon: float, placement: str) -> dict[str, Any]:
    """Sample-level DP settings with the noise planned by the trainer for ``epsilon``."""
    mechanism = "gaussian" if placement == "local" else "discrete"
    return {"secagg": "secagg+", "dp": "sample", "noise_placement": placement, "mechanism": mechanism,
            "target_epsilon": epsilon, "noise_multiplier": None}


def jobs_for(args: argparse.Namespace) -> list[Job]:
    """The run list, in the order of ``--parts`` (so a cut-short run keeps the first parts)."""
    jobs: list[Job] = []
    parts = list(args.parts)
    if "c" in parts and len(args.c_alphas) > 1:  # (c) at its first alpha in place, the rest last
        parts.append("c-rest")
    for part in parts:
        if part == "a":
            for label, mode in (("plaintext", PLAIN), ("secagg+", SECAGG)):
                jobs += [{"part": "a", "label": label, "alpha": args.alpha, "seed": s, **mode} for s in args.seeds]
        elif part == "b":
            for eps in args.epsilons:
                for placement in ("local", "distributed"):
                    jobs += [{"part": "b", "label": f"eps={eps:g} {placement}", "epsilon_target": eps,
                              "placement": placement, "alpha": args.alpha, "seed": s, **_dp(eps, placement),
                              "release_noise_ratio": args.release_noise_ratio} for s in args.seeds]
        elif part in ("c", "c-rest"):
            for alpha in args.c_alphas[:1] if part == "c" else args.c_alphas[1:]:
                for algorithm, ratio in [("fedhpro", r) for r in args.c_ratios] + [("fedavg", 1.0)]:
                    dp = _dp(args.c_epsilon, "distributed")
                    if algorithm == "fedavg":  # no noised release block: only DP-SGD, whatever
                        dp["mechanism"] = "gaussian"  # the mechanism (works around a crash, see results)
                    label = algorithm if ratio == 1.0 else f"{algorithm} ratio {ratio:g}"
                    jobs += [{"part": "c", "label": label, "algorithm": algorithm, "alpha": alpha, "seed": s,
                              "release_noise_ratio": ratio, **dp} for s in args.c_seeds]
    return jobs


def run_one(job: Job, common: dict[str, Any]) -> dict[str, Any]:
    """Worker: one training run (one torch thread); returns the job with its results."""
    warnings.filterwarnings("ignore")
    from secure_fed.config import TrainConfig
    from secure_fed.run.trainer import Trainer

    settings = {k: v for k, v in job.items() if k not in ("part", "label", "epsilon_target", "placement")}
    cfg = TrainConfig(**{**common, **settings, "threads": 1})
    t0 = time.perf_counter()
    tr = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    tr.run()
    done = [h for h in tr.history if not h.get("aborted")]
    last = tr.history[-1]
    return {
        **job, "accuracy": last["accuracy"], "epsilon": last.get("epsilon"),
        "noise_multiplier": tr.noise_multiplier if cfg.dp != "off" else None,
        "rounds_run": len(tr.history), "rounds_aborted": len(tr.history) - len(done),
        "stopped": None if tr.stopped is None else tr.stopped["reason"],
        "seconds": time.perf_counter() - t0,
    }


def _mean_sd(xs: list[float], scale: float = 100.0) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * statistics.mean(xs):.2f} ± {scale * sd:.2f}"


def _select(results: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return sorted((r for r in results if all(r.get(k) == v for k, v in match.items())), key=lambda r: r["seed"])


def table_a(results: list[dict[str, Any]], alpha: float) -> list[str]:
    plain = _select(results, part="a", label="plaintext", alpha=alpha)
    sec = _select(results, part="a", label="secagg+", alpha=alpha)
    if not plain and not sec:
        return []
    out = [f"### (a) plaintext vs SecAgg+, DP off (alpha {alpha})", "",
           "| mode | seeds | accuracy % (mean ± std) | per seed | s/run |", "|---|---|---|---|---|"]
    for label, rs in (("plaintext", plain), ("secagg+", sec)):
        per = ", ".join(f"{100 * r['accuracy']:.2f}" for r in rs)
        secs = statistics.mean(r["seconds"] for r in rs) if rs else 0.0
        out.append(f"| {label} | {[r['seed'] for r in rs]} | {_mean_sd([r['accuracy'] for r in rs])} | {per} | {secs:.0f} |")
    if plain and sec:
        diff = 100 * (statistics.mean(r["accuracy"] for r in sec) - statistics.mean(r["accuracy"] for r in plain))
        paired = {r["seed"]: r["accuracy"] for r in plain}
        gaps = [100 * abs(r["accuracy"] - paired[r["seed"]]) for r in sec if r["seed"] in paired]
        verdict = "meets" if abs(diff) <= 0.5 else "misses"
        out += ["", f"|difference of means| = {abs(diff):.2f} points (SecAgg+ minus plaintext = {diff:+.2f}); "
                    f"target <= 0.5: {verdict}. Largest paired (same seed) gap: {max(gaps, default=0.0):.2f} points."]
    return out + [""]


def table_b(results: list[dict[str, Any]], alpha: float) -> list[str]:
    rs_b = _select(results, part="b", alpha=alpha)
    if not rs_b:
        return []
    base = _select(results, part="a", label="secagg+", alpha=alpha)
    base_acc = statistics.mean(r["accuracy"] for r in base) if base else None
    out = [f"### (b) sample-level DP, delta {rs_b[0].get('delta', 1e-5):g} (alpha {alpha})", "",
           "| target eps | placement | seeds | noise multiplier | final eps per seed | accuracy % (mean ± std) | "
           "accuracy % per seed | cost vs non-DP SecAgg+ (points) | s/run |", "|---|---|---|---|---|---|---|---|---|"]
    for label in sorted({r["label"] for r in rs_b}, key=lambda s: (float(s.split()[0][4:]), s)):
        rs = [r for r in rs_b if r["label"] == label]
        acc = [r["accuracy"] for r in rs]
        eps = [r["epsilon"] for r in rs if r["epsilon"] is not None]
        sig = [r["noise_multiplier"] for r in rs]
        cost = "-" if base_acc is None else f"{100 * (base_acc - statistics.mean(acc)):.2f}"
        out.append(f"| {rs[0]['epsilon_target']:g} | {rs[0]['placement']} | {[r['seed'] for r in rs]} | "
                   f"{min(sig):.3f}-{max(sig):.3f} | {' / '.join(f'{e:.3f}' for e in eps)} | {_mean_sd(acc)} | "
                   f"{', '.join(f'{100 * a:.2f}' for a in acc)} | {cost} | "
                   f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
    stopped = [r for r in rs_b if r["stopped"] or r["rounds_aborted"]]
    out += ["", f"Runs stopped early or with aborted rounds: {len(stopped)}"
                + "".join(f"; {r['label']} seed {r['seed']}: {r['stopped'] or ''} aborted {r['rounds_aborted']}"
                          for r in stopped)]
    return out + [""]


def table_c(results: list[dict[str, Any]], alphas: list[float]) -> list[str]:
    out: list[str] = []
    for alpha in alphas:
        labels = list(dict.fromkeys(r["label"] for r in _select(results, part="c", alpha=alpha)))
        runs = {lab: {r["seed"]: r for r in _select(results, part="c", label=lab, alpha=alpha)} for lab in labels}
        fa = runs.get("fedavg", {})
        if not runs:
            continue
        out += [f"### (c) FedHPro vs FedAvg, DP sample-level, distributed discrete noise (alpha {alpha})", "",
                "| method | seeds | accuracy % (mean ± std) | min-max | final eps | noise multiplier (DP-SGD) | per seed |",
                "|---|---|---|---|---|---|---|"]
        for label, rs in runs.items():
            acc = [r["accuracy"] for r in rs.values()]
            eps = [r["epsilon"] for r in rs.values() if r["epsilon"] is not None]
            per = ", ".join(f"{s}: {100 * r['accuracy']:.2f}" for s, r in sorted(rs.items()))
            span = f"{100 * min(acc):.2f}-{100 * max(acc):.2f}" if acc else "-"
            sig = [r["noise_multiplier"] for r in rs.values()]
            out.append(f"| {label} | {sorted(rs)} | {_mean_sd(acc)} | {span} | "
                       f"{max(eps) if eps else float('nan'):.3f} | {min(sig):.3f}-{max(sig):.3f} | {per} |")
        out.append("")
        for label, hp in runs.items():
            if label == "fedavg":
                continue
            paired = sorted(set(hp) & set(fa))
            wins = sum(hp[s]["accuracy"] > fa[s]["accuracy"] for s in paired)
            ties = sum(hp[s]["accuracy"] == fa[s]["accuracy"] for s in paired)
            gaps = [100 * (hp[s]["accuracy"] - fa[s]["accuracy"]) for s in paired]
            out += [f"{label}: ahead of FedAvg in {wins} of {len(paired)} paired runs (ties {ties}); "
                    f"paired gaps (points): {', '.join(f'{g:+.2f}' for g in gaps)}", ""]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="*", default=["a", "c", "b"], choices=["a", "b", "c"],
                    help="parts to run (none: only print the tables of --load)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of parts (a) and (b)")
    ap.add_argument("--c-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds of part (c)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha of parts (a) and (b)")
    ap.add_argument("--c-alphas", nargs="+", type=float, default=[0.5, 0.1])
    ap.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 4.0, 8.0])
    ap.add_argument("--c-epsilon", type=float, default=8.0)
    ap.add_argument("--release-noise-ratio", type=float, default=None,
                    help="FedHPro's --release-noise-ratio in part (b) (default: the project's default)")
    ap.add_argument("--c-ratios", nargs="+", type=float, default=[1.0],
                    help="FedHPro's --release-noise-ratio values in part (c) (budget split; 1 = one noise multiplier)")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--dropout", type=float, default=0.0, help="SecAgg dropout rate per stage (0 or 0.1)")
    ap.add_argument("--hardened", action="store_true", help="OS CSPRNG noise (default: seeded, repeatable)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel worker processes (1 torch thread each)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw results here (after every run)")
    ap.add_argument("--load", nargs="*", type=Path, default=[], help="earlier --json files to include in the tables")
    args = ap.parse_args()

    common = {"dataset": "digits", "clients": 10, "cohort": 10, "rounds": args.rounds, "delta": args.delta,
              "dropout": args.dropout, "hardened": args.hardened}
    results: list[dict[str, Any]] = []
    for path in args.load:
        results += json.loads(path.read_text())
    jobs = jobs_for(args)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, {**job, "delta": args.delta}, common) for job in jobs]
        for fut in as_completed(futures):
            r = fut.result()
            results.append(r)
            print(f"[{time.perf_counter() - t0:6.0f} s] part {r['part']} {r['label']} alpha {r['alpha']} "
                  f"seed {r['seed']}: acc {r['accuracy']:.4f} eps {r['epsilon']}", file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))

    print(f"digits, 10 clients (all in the cohort), {args.rounds} rounds, dropout {args.dropout}, "
          f"{'hardened' if args.hardened else 'seeded'} randomness, settings {common}")
    print(f"wall time {time.perf_counter() - t0:.0f} s ({len(jobs)} runs, {args.jobs} jobs)\n")
    lines = table_a(results, args.alpha) + table_b(results, args.alpha) + table_c(results, args.c_alphas)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
