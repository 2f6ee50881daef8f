"""Empirical privacy audits on digits: the one-run DP audit and membership inference.

Parts (``--parts``, each runnable alone, results as JSON in ``--out``):

* ``one_run``: train the default run (FedHPro, sample-level DP, discrete Gaussian shares
  inside SecAgg+, target epsilon 8; ``--reproducible`` so the run is repeatable), then the
  one-run audit of its release mechanism at ``--seeds`` seeds: epsilon-hat against the
  accountant's epsilon for one release. Then the same audit with the noise scaled by 1/10
  (the mechanism a noise bug would produce; the claim unchanged) at ``--broken-seeds``.
* ``mia_nodp`` / ``mia_dp``: membership inference on the final model of a run on a small
  training set (``--mia-imbalance 50`` keeps 399 of the 1,437 digits training images;
  ``--mia-local-epochs 20``; ``--mia-clients``), without DP and with sample-level DP at epsilon ``--mia-epsilon``,
  everything else the defaults (SecAgg+, 30 rounds): loss threshold and LiRA offline with
  ``--shadow-runs`` reference trainings, AUC and TPR at low FPR with bootstrap intervals.

    python benchmarks/bench_audit_dp.py --parts one_run mia_nodp mia_dp --out bench-audit
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("one_run", "mia_nodp", "mia_dp")


def _train(cfg_kw: dict[str, Any], out: Path, run_id: str) -> tuple[Path, float, dict[str, Any]]:
    from secure_fed.config import TrainConfig
    from secure_fed.run.trainer import Trainer

    run_dir = out / run_id
    if (run_dir / "model.pt").exists():  # reuse a finished run of an earlier invocation
        return run_dir, 0.0, json.loads((run_dir / "metrics.json").read_text())["final"]
    cfg = TrainConfig(**{**cfg_kw, "hardened": False, "out": str(out), "run_id": run_id})
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False, log=lambda s: None)
    trainer.run()
    return run_dir, time.perf_counter() - t0, trainer.history[-1]


def part_one_run(args: argparse.Namespace) -> dict[str, Any]:
    from secure_fed.audit.one_run import (
        audit_mechanism,
        audit_one_run,
        project_release,
        run_release_specs,
    )

    run_dir, train_s, final = _train({"release_noise_ratio": args.release_noise_ratio}, args.out, "default-dp")
    rows = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        res = audit_one_run(run_dir, seed=seed, canaries=args.canaries)
        s = res["summary"]
        rows.append({"seed": seed, "epsilon_hat": s["epsilon_hat"], "claimed": s["claimed_epsilon"],
                     "passed": res["passed"], "guesses": s["best_guesses"], "correct": s["best_correct"],
                     "noise_ratio_min": s["noise_ratio_min"], "noise_too_little_in": s["noise_too_little_in"],
                     "seconds": time.perf_counter() - t0})
        if not args.quiet:
            print(f"one-run seed {seed:>2}: eps-hat {s['epsilon_hat']:.3f} <= claimed {s['claimed_epsilon']:.3f}: "
                  f"{res['passed']}  ({rows[-1]['seconds']:.1f}s)", flush=True)
    specs, _, _ = run_release_specs(run_dir)
    claim = rows[0]["claimed"]
    broken = []

    def tenth(spec: Any) -> Any:
        return project_release(dataclasses.replace(spec, noise_multiplier=spec.noise_multiplier / 10))

    for seed in range(args.broken_seeds):
        res = audit_mechanism(specs, release=tenth, claimed=claim, canaries=args.canaries, seed=seed)
        broken.append({"seed": seed, "epsilon_hat": res["summary"]["epsilon_hat"], "claimed": claim,
                       "passed": res["passed"], "noise_ratio_min": res["summary"]["noise_ratio_min"]})
        if not args.quiet:
            print(f"broken seed {seed}: eps-hat {broken[-1]['epsilon_hat']:.3f} vs claimed {claim:.3f}: "
                  f"passed {res['passed']}", flush=True)
    return {"run": str(run_dir.name), "train_seconds": train_s, "final": final, "summary_seed0": audit_one_run(
        run_dir, seed=0, canaries=args.canaries)["summary"], "seeds": rows, "broken": broken}


def part_mia(args: argparse.Namespace, dp: bool) -> dict[str, Any]:
    from secure_fed.audit.membership import audit_membership

    kw: dict[str, Any] = {"imbalance": args.mia_imbalance, "local_epochs": args.mia_local_epochs}
    if args.mia_clients:
        kw.update(clients=args.mia_clients, cohort=args.mia_clients)
    if dp:
        kw.update(dp="sample", target_epsilon=args.mia_epsilon, release_noise_ratio=args.release_noise_ratio)
    else:
        kw.update(dp="off", target_epsilon=None)
    run_id = f"mia-dp-eps{args.mia_epsilon:g}" if dp else "mia-nodp"
    run_dir, train_s, final = _train(kw, args.out, run_id)
    t0 = time.perf_counter()
    res = audit_membership(run_dir, seed=0, shadow_runs=args.shadow_runs)
    s = res["summary"]
    if not args.quiet:
        print(f"{run_id}: test acc {final['accuracy']:.4f}; loss AUC {s['loss_auc']:.4f} "
              f"[{s['loss_auc_ci_low']:.4f}, {s['loss_auc_ci_high']:.4f}]"
              + (f"; LiRA AUC {s['lira_offline_auc']:.4f} [{s['lira_offline_auc_ci_low']:.4f}, "
                 f"{s['lira_offline_auc_ci_high']:.4f}]" if args.shadow_runs else ""), flush=True)
    return {"run": run_id, "train_seconds": train_s, "audit_seconds": time.perf_counter() - t0,
            "final": final, "summary": s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    ap.add_argument("--out", type=Path, default=Path("bench-audit"), help="folder for runs and JSON (default: bench-audit)")
    ap.add_argument("--seeds", type=int, default=20, help="one-run audit seeds (default: 20)")
    ap.add_argument("--broken-seeds", type=int, default=3, help="seeds of the 1/10-noise audit (default: 3)")
    ap.add_argument("--canaries", type=int, default=5000, help="canaries per one-run audit (default: 5000)")
    ap.add_argument("--shadow-runs", type=int, default=2, help="LiRA reference trainings (default: 2)")
    ap.add_argument("--mia-imbalance", type=float, default=50.0, help="long-tail ratio of the MIA runs (default: 50)")
    ap.add_argument("--mia-local-epochs", type=int, default=20, help="local epochs of the MIA runs (default: 20)")
    ap.add_argument("--mia-clients", type=int, default=0, help="clients (= cohort) of the MIA runs (default: 0, the run default 10)")
    ap.add_argument("--mia-epsilon", type=float, default=1.0, help="target epsilon of the DP run (default: 1.0)")
    ap.add_argument("--release-noise-ratio", type=float, default=None,
                    help="FedHPro's --release-noise-ratio in its DP runs (default: the project's default)")
    ap.add_argument("--quiet", action="store_true", help="no per-seed lines")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    for part in args.parts:
        t0 = time.perf_counter()
        if part == "one_run":
            result = part_one_run(args)
        else:
            result = part_mia(args, dp=part == "mia_dp")
        result["seconds"] = time.perf_counter() - t0
        result["command"] = " ".join(["python", "benchmarks/bench_audit_dp.py", *(argv or sys.argv[1:])])
        (args.out / f"{part}.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
