"""FedHPro against its controls: FedAvg and the random-anchor arm, plaintext and under DP.

Arms (``--arms``): ``fedavg``; ``fedhpro`` (the product's defaults for FedHPro); ``random``
(``--hp-control random``: the same release uploaded and charged, fixed N(0, 1) anchors,
never matched); the other prototype methods ``fedproto``, ``protonorm``, ``fedsa``, ``gfpl`` with
the product's defaults (not in the default set).
An arm the product refuses in a mode (e.g. FedProto under DP) is recorded as refused,
with the product's one-line reason, and shown so in the report. Modes (``--modes``): ``plain`` (``--secagg off --dp off``) and ``epsN``
(``--dp sample`` at target epsilon N with the defaults: SecAgg+ with 10% dropout,
distributed discrete noise, the default release noise ratio). Every run uses seeded
randomness (``hardened=False``), so the arms pair by seed (same partition, same initial
model, same dropouts).

Per run (one JSON file in ``--out``, written when the run ends; a file already there is
not run again, so an interrupted benchmark resumes where it stopped):

* accuracy per round; the score is the mean over the last 10 rounds;
* FedHPro arms: matched class-rounds after round 2, hyper-prototype movement; under DP the
  per-round cosine of the noised release to the clean one (``bench_release.py``'s
  instrument) and the noise multipliers;
* the FedAvg arm: a shadow server that watches the run without touching it. Every round it
  takes the cohort's exact residual sums U on the broadcast model (what a plaintext FedHPro
  client uploads), forms U W and matches hyper-prototypes from the same N(0, 1) start with
  the product's ``match_hyper_prototypes`` and schedule. At the end it scores the
  nearest-hyper-prototype accuracy (class of the nearest unit class mean of the anchors,
  the means the HP losses use) of the matched anchors and of the random start on the test
  features of the FedAvg model, which was never pulled toward either;
* every arm: the same nearest-hyper-prototype accuracy of its own broadcast anchors on its
  own model's test features (pulled toward them in the FedHPro and random arms).

``--report`` prints the tables from the files in ``--out``: the arms (mean of the last 10
rounds, mean and standard deviation over seeds), the paired gaps per seed with a 95%
t-interval over seeds, the release cosine per epsilon and the nearest-hyper-prototype
accuracies.

    PYTHONPATH=. python benchmarks/bench_fedhpro.py --datasets digits --modes plain eps8 \\
        --seeds 0 1 2 --rounds 50 --out fedhpro_runs --jobs 2
    PYTHONPATH=. python benchmarks/bench_fedhpro.py --arms fedhpro --modes eps1 eps4 --out fedhpro_runs
    PYTHONPATH=. python benchmarks/bench_fedhpro.py --out fedhpro_runs --report
    PYTHONPATH=. python benchmarks/bench_fedhpro.py --out fedhpro_runs --summary   # one table, all cells
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ARMS: dict[str, dict[str, Any]] = {
    "fedavg": {"algorithm": "fedavg"},
    "fedhpro": {"algorithm": "fedhpro"},
    "random": {"algorithm": "fedhpro", "hp_control": "random"},
    "fedproto": {"algorithm": "fedproto"},
    "protonorm": {"algorithm": "protonorm"},
    "fedsa": {"algorithm": "fedsa"},
    "gfpl": {"algorithm": "gfpl"},
}
DEFAULT_ARMS = ["fedavg", "fedhpro", "random"]
LAST = 10  # the score: mean accuracy over the last LAST rounds


def mode_settings(mode: str) -> dict[str, Any]:
    """TrainConfig settings of a mode name: ``plain`` or ``epsN`` (DP at target epsilon N)."""
    if mode == "plain":
        return {"secagg": "off", "dp": "off", "target_epsilon": None}
    if mode.startswith("eps"):
        return {"target_epsilon": float(mode[3:])}  # the rest: the defaults (sample, SecAgg+, discrete)
    raise SystemExit(f"--modes: {mode!r} is neither 'plain' nor 'epsN' (e.g. eps8)")


def run_name(dataset: str, mode: str, arm: str, seed: int) -> str:
    return f"{dataset}_{mode}_{arm}_s{seed}"


class ShadowMatcher:
    """Hyper-prototype matching on a FedAvg run, never broadcast (see the module docstring)."""

    def __init__(self, trainer: Any) -> None:
        import torch

        from secure_fed.fl.matching import init_hyper_prototypes
        from secure_fed.run.trainer import derive_seed

        cfg = trainer.cfg
        self.cfg, self.num_classes = cfg, trainer.num_classes
        gen = torch.Generator(device="cpu").manual_seed(derive_seed(cfg.seed, 1))  # FedHProServer's start
        dim = int(trainer.server.model.feature_dim)
        self.start = init_hyper_prototypes(trainer.num_classes, cfg.length_of_hp, dim, gen, trainer.device)
        self.p = self.start.clone()
        self.matched = torch.zeros(trainer.num_classes, dtype=torch.bool, device=trainer.device)
        self.movement: list[float] = []
        self.u: dict[tuple[int, int], Any] = {}
        self._wrap(trainer)

    def _wrap(self, trainer: Any) -> None:
        import dataclasses

        import torch

        from secure_fed.fl.client import extract_features
        from secure_fed.fl.fedhpro import _residual_sums
        from secure_fed.fl.matching import match_hyper_prototypes

        inner = trainer.program.round_fn

        def recording(bc: Any, shard: Any, model: Any, ctx: Any) -> Any:
            model.load_state_dict(bc.model_state)
            feats = extract_features(model, shard.x)
            w, b = bc.model_state["classifier.weight"], bc.model_state["classifier.bias"]
            u, _ = _residual_sums(feats @ w.T + b, feats, shard.y, self.num_classes, False)
            self.u[(bc.round_id, shard.client_id)] = u
            return inner(bc, shard, model, ctx)

        trainer.program = dataclasses.replace(trainer.program, round_fn=recording)
        apply = trainer.server.apply

        def shadow_apply(agg: Any, bc: Any) -> dict[str, float]:
            summed = list(agg.meta.get("summed", []))
            u = sum(self.u.pop((agg.round_id, c)) for c in summed)
            for key in [k for k in self.u if k[0] <= agg.round_id]:
                del self.u[key]
            w = bc.model_state["classifier.weight"].to(self.p.device)
            b = bc.model_state["classifier.bias"].to(self.p.device)
            g_feat = torch.as_tensor(u, dtype=torch.float32, device=self.p.device) @ w
            active = g_feat.norm(dim=1) > 0
            before = self.p
            self.p = match_hyper_prototypes(before, w, b, g_feat, active, steps=self.cfg.rounds_of_hp, lr=self.cfg.hp_lr)
            self.matched |= active
            self.movement.append(float((self.p - before).norm() / before.norm()))
            return apply(agg, bc)

        trainer.server.apply = shadow_apply  # type: ignore[method-assign]


def nhp_accuracy(model: Any, x: Any, y: Any, p: Any, classes: Any = None) -> float:
    """Accuracy of the nearest unit class mean of hyper-prototypes ``p`` (C x L x dim) on the
    features of ``model`` (test set), over the samples of ``classes`` (bool C; None: all),
    candidates restricted to ``classes``."""
    import torch.nn.functional as F

    from secure_fed.fl.client import extract_features
    from secure_fed.fl.losses import normalized_hp_means

    feats = F.normalize(extract_features(model, x), dim=1)
    sims = feats @ normalized_hp_means(p.to(feats.device)).T
    if classes is not None:
        classes = classes.to(feats.device)
        sims = sims.masked_fill(~classes, float("-inf"))
        keep = classes[y]
        feats, sims, y = feats[keep], sims[keep], y[keep]
    return float((sims.argmax(dim=1) == y).float().mean()) if y.numel() else float("nan")


def feature_health(model: Any, x: Any) -> dict[str, float]:
    """The final global model's test features (non-negative: after a ReLU): their mean L2
    norm and the fraction of feature units that are 0 on every test input (dead)."""
    import torch

    from secure_fed.fl.client import extract_features

    with torch.no_grad():
        f = extract_features(model, x)
    return {"feature_norm": float(f.norm(dim=1).mean()), "dead_units": float((f.amax(dim=0) <= 0).float().mean())}


def claim(out: Path, name: str) -> bool:
    """Take the run ``name`` for this process (a ``.claim`` file holding its pid), so that
    several invocations on one ``--out`` share the work; False if it is done or taken by a
    live process."""
    if (out / f"{name}.json").exists():
        return False
    path = out / f"{name}.claim"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or "0"), 0)
                return False  # a live process runs it
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # its process died: take it over
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def run_job(job: dict[str, Any]) -> dict[str, Any] | None:
    """Run ``job`` unless another process has it; write its JSON file and return it."""
    out, name = Path(job["out"]), run_name(job["dataset"], job["mode"], job["arm"], job["seed"])
    if not claim(out, name):
        return None
    try:
        r = one_run(job)
        tmp = out / f"{name}.tmp"
        tmp.write_text(json.dumps(r))
        tmp.replace(out / f"{name}.json")
        return r
    finally:
        (out / f"{name}.claim").unlink(missing_ok=True)


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    from bench_release import record_release_cosines

    from secure_fed.config import TrainConfig
    from secure_fed.errors import ConfigError
    from secure_fed.fl.fedhpro import FedHProServer
    from secure_fed.run.trainer import Trainer

    settings = {**ARMS[job["arm"]], **mode_settings(job["mode"]), **job["common"],
                "dataset": job["dataset"], "seed": job["seed"], "rounds": job["rounds"]}
    try:
        cfg = TrainConfig(**settings)
    except ConfigError as e:  # the product refuses this arm in this mode: record why
        return {"dataset": job["dataset"], "mode": job["mode"], "arm": job["arm"], "seed": job["seed"],
                "settings": settings, "refused": str(e)}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    tr = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    p_start = tr.server.hyper_prototypes.detach().clone() if isinstance(tr.server, FedHProServer) else None
    cosines = record_release_cosines(tr) if cfg.splits_budget else None
    shadow = ShadowMatcher(tr) if cfg.algorithm == "fedavg" else None
    tr.run()
    accs = [r["accuracy"] for r in tr.history]
    out: dict[str, Any] = {
        "dataset": job["dataset"], "mode": job["mode"], "arm": job["arm"], "seed": job["seed"],
        "settings": settings, "accuracy": accs, "last10": float(np.mean(accs[-LAST:])), "final": accs[-1],
        "swing_last20": float(np.mean(np.abs(np.diff(accs[-20:])))) if len(accs) > 1 else 0.0,
        "aborted_rounds": sum(1 for r in tr.history if r.get("aborted")),
        "epsilon": tr.history[-1].get("epsilon"), "sigma": tr.noise_multiplier or None,
        "release_sigma": (tr.noise_multiplier * cfg.release_ratio()) if cfg.splits_budget else None,
        "seconds": time.perf_counter() - t0, "load_start": load0, "load_end": os.getloadavg()[0],
    }
    model, tx, ty = tr.server.model, tr.test_x, tr.test_y
    out.update(feature_health(model, tx))
    if isinstance(tr.server, FedHProServer):
        late = [r["hp"] for r in tr.history if "hp" in r and r["round"] > 2]
        out["matched_after_2"] = sum(len(h["matched_classes"]) for h in late) / max(sum(h["num_classes"] for h in late), 1)
        out["hp_movement"] = [r["hp"]["hp_movement"] for r in tr.history if "hp" in r]
        p_end = tr.server.hyper_prototypes.detach()
        out["hp_movement_total"] = float((p_end - p_start).norm() / p_start.norm())
        mask = tr.server.broadcast_mask()
        out["own_nhp"] = nhp_accuracy(model, tx, ty, tr.server.hyper_prototypes, mask) if bool(mask.any()) else None
        out["own_nhp_classes"] = int(mask.sum())
        out["summary"] = tr.hp_summary()
    steps = [r["server_step"] for r in tr.history if "server_step" in r]
    if steps:  # what the prototype method's server did each round (the round line's field)
        out["server_steps"] = steps
    if cosines is not None:
        out["cosines"] = cosines
        out["cosine_median"] = statistics.median(cosines) if cosines else None
    if shadow is not None:
        out["shadow"] = {
            "matched_classes": int(shadow.matched.sum()),
            "nhp_matched": nhp_accuracy(model, tx, ty, shadow.p, shadow.matched),
            "nhp_random_start": nhp_accuracy(model, tx, ty, shadow.start, shadow.matched),
            "movement_total": float((shadow.p - shadow.start).norm() / shadow.start.norm()),
            "movement_per_round": shadow.movement,
        }
    tr.close()
    return out


def progress_line(r: dict[str, Any], done: int, total: int) -> str:
    if "refused" in r:
        return f"[{done}/{total}] {run_name(r['dataset'], r['mode'], r['arm'], r['seed'])} refused: {r['refused']}"
    bits = [f"[{done}/{total}] {run_name(r['dataset'], r['mode'], r['arm'], r['seed'])}",
            f"last10 {r['last10']:.4f}", f"final {r['final']:.4f}"]
    if r.get("matched_after_2") is not None:
        bits.append(f"matched {r['matched_after_2']:.3f}")
    if r.get("cosine_median") is not None:
        bits.append(f"cosine {r['cosine_median']:.3f}")
    if r.get("shadow"):
        bits.append(f"shadow nhp {r['shadow']['nhp_matched']:.3f} vs start {r['shadow']['nhp_random_start']:.3f}")
    if r.get("epsilon") is not None:
        bits.append(f"eps {r['epsilon']:.2f}")
    bits.append(f"{r['seconds']:.0f} s, load {r['load_start']:.1f}-{r['load_end']:.1f}")
    return ", ".join(bits)


# ------------------------------------------------------------------ report


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean and the two-sided 95% Student-t interval over the values (seeds)."""
    from scipy import stats

    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan")
    h = float(stats.t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / len(xs) ** 0.5
    return m, m - h, m + h


def largest_step(r: dict[str, Any]) -> float:
    acc = r["accuracy"][-20:]
    return max((abs(x - y) for x, y in zip(acc, acc[1:], strict=False)), default=0.0)


def server_step_summary(r: dict[str, Any]) -> str:
    """``seed s: k/R class-rounds read`` (the classes the server read, summed over rounds),
    plus ``calibrated m of d due rounds`` for GFPL."""
    from secure_fed.run.records import step_totals

    read, slots, done, due = step_totals(r["server_steps"])
    text = f"seed {r['seed']}: {read}/{slots} class-rounds read"
    if due is not None:
        text += f", calibrated {done} of {due} due rounds"
    return text


def load_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def report(results: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["mode"]), {}).setdefault(r["arm"], {})[r["seed"]] = r
    for (dataset, mode), arms in sorted(groups.items()):
        any_run = next(iter(next(iter(arms.values())).values()))
        s = any_run["settings"]
        hp = "".join(f", {k.replace('_', '-')} {s[k]}" for k in ("hp_lr", "rounds_of_hp") if k in s)
        print(f"\n#### {dataset}, {mode}: {s['clients']} clients, alpha {s['alpha']}, {s['local_epochs']} local epochs, "
              f"lr {s['lr']}, momentum {s['momentum']}, {s['rounds']} rounds{hp}\n")
        print("| arm | seeds | mean acc, last 10 (mean ± sd over seeds) | per seed | final acc | "
              "swing, last 20 rounds (mean / largest abs change between rounds) | matched after round 2 | release cosine (median) | "
              "DP-SGD sigma | release sigma | epsilon | s/run |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for arm in (a for a in ARMS if a in arms):
            rs = [arms[arm][k] for k in sorted(arms[arm])]
            if any("refused" in r for r in rs):
                why = next(r["refused"] for r in rs if "refused" in r)
                print(f"| {arm} | {sorted(arms[arm])} | refused by the product: {why} | - | - | - | - | - | - | - | - | - |")
                continue
            sc = [r["last10"] for r in rs]
            sd = statistics.stdev(sc) if len(sc) > 1 else 0.0
            per = ", ".join(f"{r['seed']}: {r['last10']:.4f}" for r in rs)
            matched = [r["matched_after_2"] for r in rs if r.get("matched_after_2") is not None]
            cos = [r["cosine_median"] for r in rs if r.get("cosine_median") is not None]
            eps = [r["epsilon"] for r in rs if r.get("epsilon") is not None]
            sig = [r["sigma"] for r in rs if r.get("sigma")]
            rsig = [r["release_sigma"] for r in rs if r.get("release_sigma")]
            print(f"| {arm} | {sorted(arms[arm])} | {statistics.mean(sc):.4f} ± {sd:.4f} | {per} | "
                  f"{statistics.mean(r['final'] for r in rs):.4f} | {statistics.mean(r['swing_last20'] for r in rs):.4f} / {max(largest_step(r) for r in rs):.4f} | "
                  f"{f'{statistics.mean(matched):.3f}' if matched else '-'} | {f'{statistics.mean(cos):.3f}' if cos else '-'} | "
                  f"{f'{min(sig):.2f}-{max(sig):.2f}' if sig else '-'} | {f'{min(rsig):.1f}-{max(rsig):.1f}' if rsig else '-'} | "
                  f"{f'{max(eps):.2f}' if eps else '-'} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
        health = [(arm, arms[arm][k]) for arm in sorted(arms) for k in sorted(arms[arm]) if "feature_norm" in arms[arm][k]]
        if health:
            print("\nFinal model's test features (mean L2 norm, dead units): " + "; ".join(
                f"{arm} seed {r['seed']}: {r['feature_norm']:.3f}, {r['dead_units']:.2f}" for arm, r in health))
        for arm in sorted(arms):
            recs = [arms[arm][k] for k in sorted(arms[arm]) if arms[arm][k].get("server_steps")]
            if recs:
                print(f"\n{arm}: server step per seed: " + "; ".join(server_step_summary(r) for r in recs))
        pairs = [(a, "fedavg") for a in ARMS if a not in ("fedavg", "random")] + [("fedhpro", "random"), ("random", "fedavg")]
        for a, b in pairs:
            if a not in arms or b not in arms:
                continue
            seeds = sorted(k for k in set(arms[a]) & set(arms[b])
                           if "refused" not in arms[a][k] and "refused" not in arms[b][k])
            if not seeds:
                continue
            gaps = [100 * (arms[a][k]["last10"] - arms[b][k]["last10"]) for k in seeds]
            m, lo, hi = t_interval(gaps)
            print(f"\n{a} - {b} (points, mean of the last 10 rounds, paired by seed): "
                  + ", ".join(f"seed {k}: {g:+.2f}" for k, g in zip(seeds, gaps, strict=True))
                  + f"; mean {m:+.2f}, 95% t-interval over {len(seeds)} seeds [{lo:+.2f}, {hi:+.2f}]")
        if "fedavg" in arms and any(r.get("shadow") for r in arms["fedavg"].values()):
            print("\nNearest-hyper-prototype accuracy on the FedAvg model's test features (shadow matching, never broadcast):\n")
            print("| seed | classes matched | matched anchors | random start | anchor movement from the start |")
            print("|---:|---:|---:|---:|---:|")
            for k in sorted(arms["fedavg"]):
                sh = arms["fedavg"][k]["shadow"]
                print(f"| {k} | {sh['matched_classes']} | {sh['nhp_matched']:.4f} | {sh['nhp_random_start']:.4f} | "
                      f"{sh['movement_total']:.4f} |")
        moved = [(arm, k, r["hp_movement_total"]) for arm in arms for k, r in sorted(arms[arm].items())
                 if r.get("hp_movement_total") is not None]
        if moved:
            print("\nHyper-prototype movement over the run, |P_end - P_start| / |P_start|:",
                  "; ".join(f"{arm} seed {k}: {m:.4f}" for arm, k, m in moved))
        own = [(arm, k, r) for arm in arms for k, r in sorted(arms[arm].items()) if r.get("own_nhp") is not None and r["own_nhp_classes"] > 1]  # 1 class: trivially 1
        if own:
            print("\nNearest-hyper-prototype accuracy of each arm's broadcast anchors on its own model (pulled toward them):",
                  "; ".join(f"{arm} seed {k}: {r['own_nhp']:.4f} ({r['own_nhp_classes']} classes)" for arm, k, r in own))


def summary(results: list[dict[str, Any]]) -> None:
    """One table over every (dataset, mode) in the results: per arm the score (mean ± sd over
    seeds) and the gap to FedAvg paired by seed (mean and 95% t-interval, points)."""
    cells: dict[tuple[str, str], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in results:
        cells.setdefault((r["dataset"], r["mode"]), {}).setdefault(r["arm"], {})[r["seed"]] = r
    cols = sorted(cells)
    print("| method | " + " | ".join(f"{d} {m}" for d, m in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for arm in ARMS:
        if not any(arm in cells[c] for c in cols):
            continue
        row = []
        for c in cols:
            runs = cells[c].get(arm)
            if not runs:
                row.append("not run")
                continue
            if any("refused" in r for r in runs.values()):
                row.append("refused")
                continue
            sc = [runs[k]["last10"] for k in sorted(runs)]
            cell = f"{statistics.mean(sc):.4f} ± {statistics.stdev(sc) if len(sc) > 1 else 0.0:.4f}"
            base = cells[c].get("fedavg", {})
            seeds = sorted(k for k in runs if k in base and "refused" not in base[k])
            if arm != "fedavg" and seeds:
                m, lo, hi = t_interval([100 * (runs[k]["last10"] - base[k]["last10"]) for k in seeds])
                cell += f" ({m:+.2f} [{lo:+.2f}, {hi:+.2f}])"
            row.append(cell + ("" if len(sc) == 3 else f", {len(sc)} seeds"))
        print(f"| {arm} | " + " | ".join(row) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits"])
    ap.add_argument("--modes", nargs="+", default=["plain", "eps8"], help="plain and/or epsN (DP at target epsilon N)")
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS),
                    help=f"default: {' '.join(DEFAULT_ARMS)}")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--local-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--hp-lr", type=float, default=None, help="FedHPro's --hp-lr (default: the product's)")
    ap.add_argument("--rounds-of-hp", type=int, default=None, help="FedHPro's --rounds-of-hp (default: the product's)")
    ap.add_argument("--out", type=Path, default=Path("fedhpro_runs"), help="one JSON per run; finished runs are skipped")
    ap.add_argument("--jobs", type=int, default=2, help="parallel worker processes (1 torch thread each)")
    ap.add_argument("--report", action="store_true", help="only print the tables from --out")
    ap.add_argument("--summary", action="store_true",
                    help="only print one table over every dataset and mode in --out: score and gap to FedAvg per arm")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report or args.summary:
        (summary if args.summary else report)(load_results(args.out))
        return 0
    common = {"clients": args.clients, "cohort": args.clients, "alpha": args.alpha, "local_epochs": args.local_epochs,
              "lr": args.lr, "momentum": args.momentum, "hardened": False, "threads": 1}
    if args.hp_lr is not None:  # one folder per schedule: run names do not carry it
        common["hp_lr"] = args.hp_lr
    if args.rounds_of_hp is not None:
        common["rounds_of_hp"] = args.rounds_of_hp
    jobs = [{"dataset": d, "mode": m, "arm": a, "seed": s, "rounds": args.rounds, "common": common, "out": str(args.out)}
            for d in args.datasets for m in args.modes for s in args.seeds for a in args.arms]
    for j in jobs:
        mode_settings(j["mode"])  # reject a bad mode name before any run starts
    todo = [j for j in jobs if not (args.out / f"{run_name(j['dataset'], j['mode'], j['arm'], j['seed'])}.json").exists()]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {args.out}, {len(todo)} to run, {args.jobs} at a time "
          "(runs another invocation holds are left to it)", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_job, j): j for j in todo}
        for done, fut in enumerate(as_completed(futures), 1):
            j = futures[fut]
            name = run_name(j["dataset"], j["mode"], j["arm"], j["seed"])
            try:
                r = fut.result()
            except Exception as e:  # one failed run must not lose the others
                print(f"[{done}/{len(todo)}] {name} FAILED: {type(e).__name__}: {e}", flush=True)
                continue
            print(progress_line(r, done, len(todo)) if r else f"[{done}/{len(todo)}] {name}: done or running elsewhere",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
