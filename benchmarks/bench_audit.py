"""Empirical privacy audits on digits, measured end to end on freshly trained runs.

Part ``inversion``: trains FedHPro on digits (10 clients, all 10 in every round, SecAgg+ with
no simulated dropout, so every secure sum covers 10 clients) once with DP off and once with
sample-level DP at target epsilon ``--epsilon`` (default 1), then runs the upload-inversion
audit (:func:`secure_fed.audit.inversion.audit_inversion`) on each finished run folder for
every audit seed in ``--seeds``. It reports, per run and model point (round 1 = the initial
model, and the final model):

* the attack on one client's plaintext upload: mean and worst cosine to the client's true
  class-mean features, mean relative L2, exact-count hit rate (all classes, and classes
  with fewer samples than the batch size), label-set precision / recall;
* the attack on the server's secure sum: the same metrics against each single client, the
  largest advantage over the population-mean baseline (mean cosine, worst client), and the
  cosine of the sum's estimate to the population's class means;
* the population-mean baseline itself, and the audit's wall time.

    python benchmarks/bench_audit.py --parts inversion --md benchmarks/results_audit_inversion.md

Every number in the markdown comes from this run; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("inversion",)


def _train(out: Path, run_id: str, rounds: int, seed: int, dp: dict[str, Any]) -> tuple[Path, float, dict[str, Any]]:
    from secure_fed.config import TrainConfig
    from secure_fed.run.trainer import Trainer

    cfg = TrainConfig(dataset="digits", algorithm="fedhpro", clients=10, cohort=10, rounds=rounds, secagg="secagg+",
                      dropout=0.0, seed=seed, hardened=False, out=str(out), run_id=run_id, **dp)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False, log=lambda s: None)
    trainer.run()
    final = trainer.history[-1]
    return out / run_id, time.perf_counter() - t0, {"accuracy": final["accuracy"], "epsilon": final.get("epsilon"),
                                                    "noise_multiplier": trainer.noise_multiplier}


def _point_row(run: str, res: dict[str, Any], seconds: float, seed: int) -> list[dict[str, Any]]:
    rows = []
    for p in res["raw"]["points"]:
        up, srv, base = (p["views"][v]["pooled"] for v in ("upload", "server", "baseline"))
        pop = p["population"]
        rows.append({
            "run": run, "seed": seed, "point": p["point"], "seconds": seconds, "summed": len(p["summed"]),
            "noise_std_sum": p["noise_std_sum"],
            "upload_cos": up["cosine_mean"], "upload_cos_min": up["cosine_min"], "upload_rel_l2": up["rel_l2_mean"],
            "upload_hits": up["count_hit_rate"], "upload_small_hits": up["small_count_hit_rate"],
            "upload_prec": up["label_precision"], "upload_rec": up["label_recall"],
            "server_cos": srv["cosine_mean"], "server_small_hits": srv["small_count_hit_rate"],
            "server_prec": srv["label_precision"], "server_rec": srv["label_recall"],
            "baseline_cos": base["cosine_mean"], "baseline_small_hits": base["small_count_hit_rate"],
            "advantage_max": max(p["advantage"].values()) if p["advantage"] else None,
            "population_cos": statistics.fmean(pop["cosine"]) if pop and pop["cosine"] else None,
        })
    return rows


def part_inversion(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from secure_fed.audit.inversion import audit_inversion

    runs = {
        "DP off": {"dp": "off", "target_epsilon": None},
        f"DP sample, epsilon {args.epsilon:g}": {"dp": "sample", "target_epsilon": args.epsilon,
                                                 "release_noise_ratio": args.release_noise_ratio},
    }
    trained, rows = {}, []
    for i, (label, dp) in enumerate(runs.items()):
        print(f"training: {label} ({args.rounds} rounds)", flush=True)
        path, secs, final = _train(out, f"inv{i}", args.rounds, args.train_seed, dp)
        trained[label] = {"seconds": secs, **final}
        for seed in args.seeds:
            t0 = time.perf_counter()
            res = audit_inversion(path, seed=seed, progress=False)
            rows.extend(_point_row(label, res, time.perf_counter() - t0, seed))
            print(f"  audit seed {seed}: {time.perf_counter() - t0:.1f}s", flush=True)
    return {"trained": trained, "rows": rows}


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.fmean(vals) if vals else None


def _markdown(args: argparse.Namespace, data: dict[str, Any], command: str) -> str:
    inv = data["inversion"]
    rows = inv["rows"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["point"]), []).append(r)
    lines = [
        "## Upload-inversion audit on digits", "",
        f"Command: `{command}`", "",
        f"Setup: FedHPro on digits, 10 clients, cohort 10, {args.rounds} rounds, SecAgg+ with no simulated "
        f"dropout (every sum covers 10 clients), training seed {args.train_seed}, reproducible mode; "
        f"audit seeds {', '.join(map(str, args.seeds))} (each row: mean over the audit seeds). "
        "Round 1 = the round replayed on the initial global model; final = the round after the last.", "",
        "| run | trained: accuracy / epsilon / noise multiplier | train s |",
        "|---|---|---|",
    ]
    for label, t in inv["trained"].items():
        lines.append(f"| {label} | {_f(t['accuracy'])} / {_f(t['epsilon'], 3)} / {_f(t['noise_multiplier'], 3)} | {t['seconds']:.0f} |")
    lines += ["", "One client's plaintext upload (what an insecure system exposes), mean over every summed client:", "",
              "| run | point | cosine mean | cosine worst | rel. L2 | exact counts | exact counts < batch | label P / R | audit s (both points) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (run, point), g in groups.items():
        lines.append(f"| {run} | {point} | {_f(_mean(g, 'upload_cos'))} | {_f(min(r['upload_cos_min'] for r in g))} | "
                     f"{_f(_mean(g, 'upload_rel_l2'))} | {_f(_mean(g, 'upload_hits'), 3)} | {_f(_mean(g, 'upload_small_hits'), 3)} | "
                     f"{_f(_mean(g, 'upload_prec'), 2)} / {_f(_mean(g, 'upload_rec'), 2)} | {_f(_mean(g, 'seconds'), 1)} |")
    lines += ["", "The server's secure sum of the 10 uploads, attacked for each single client, against the "
              "population-mean baseline (guessing the federation's class means):", "",
              "| run | point | sum: cosine to client | baseline: cosine to client | advantage, worst client | "
              "sum: exact counts < batch | baseline: exact counts < batch | sum: label P / R | sum: cosine to population means | noise std / entry of the sum |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (run, point), g in groups.items():
        lines.append(f"| {run} | {point} | {_f(_mean(g, 'server_cos'))} | {_f(_mean(g, 'baseline_cos'))} | "
                     f"{_f(max(r['advantage_max'] for r in g if r['advantage_max'] is not None), 5)} | "
                     f"{_f(_mean(g, 'server_small_hits'), 3)} | {_f(_mean(g, 'baseline_small_hits'), 3)} | "
                     f"{_f(_mean(g, 'server_prec'), 2)} / {_f(_mean(g, 'server_rec'), 2)} | {_f(_mean(g, 'population_cos'))} | "
                     f"{_f(_mean(g, 'noise_std_sum'), 3)} |")
    lines += ["", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which audits to measure")
    p.add_argument("--rounds", type=int, default=30, help="training rounds of each run")
    p.add_argument("--epsilon", type=float, default=1.0, help="target epsilon of the DP run")
    p.add_argument("--release-noise-ratio", type=float, default=None,
                   help="FedHPro's --release-noise-ratio in its DP runs (default: the project's default)")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the trained runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="audit seeds")
    p.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="write every measured row here")
    p.add_argument("--md", type=Path, default=None, help="write the markdown section here")
    p.add_argument("--from-json", type=Path, default=None, help="only re-render the markdown from a --json file")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # Opacus's secure-RNG notice in reproducible mode
    # The flags that decide the numbers (output locations do not); also rebuilt by --from-json.
    command = (f"python benchmarks/bench_audit.py --parts {' '.join(args.parts)} --rounds {args.rounds} "
               f"--epsilon {args.epsilon:g} --train-seed {args.train_seed} --seeds {' '.join(map(str, args.seeds))}")
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        ns = argparse.Namespace(**saved["args"])
        md = _markdown(ns, saved["data"], saved["command"])
        print(md)
        if args.md:
            args.md.write_text(md)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {}
        if "inversion" in args.parts:
            data["inversion"] = part_inversion(args, out)
    if args.json:
        saved_args = {k: v for k, v in vars(args).items() if k in ("parts", "rounds", "epsilon", "train_seed", "seeds")}
        args.json.write_text(json.dumps({"command": command, "args": saved_args, "data": data}, indent=1))
    md = _markdown(args, data, command) if "inversion" in data else ""
    print(md)
    if args.md:
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
