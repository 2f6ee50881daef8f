"""Executor memory benchmark: peak resident memory of the Ray actors hosting training clients.

Runs ``train --executor ray`` (FedHPro, sample-level DP, SecAgg+, reproducible) for a few
rounds, each case in a fresh process with its own local Ray instance, and reports per
actor: ``ru_maxrss`` (peak RSS) right after the actors are built and after the rounds,
the anonymous (heap) part of the resident memory at the end, and the bytes of data
shards the actor holds; and the driver's peak RSS.

``--baseline-tree DIR`` runs every case a second time with the project's modules taken
from DIR (an export of an earlier revision, e.g. ``git archive REV | tar -x -C DIR``),
so before/after are measured in one invocation on the same machine state.

    python benchmarks/bench_executor.py                                   # digits + mnist5k
    python benchmarks/bench_executor.py --baseline-tree DIR --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def _status(field: str) -> int:
    """A /proc/self/status memory field of the calling process, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _actor_memory(self: Any) -> dict[str, Any]:  # runs inside an actor (via __ray_call__)
    role = getattr(self, "role", None)
    kit = getattr(role, "kit", None)
    shards = getattr(role, "shards", None)
    if shards is None:  # an actor holding a whole trainer
        trainer = getattr(role, "trainer", None)
        shards = {i: s for i, s in enumerate(trainer.shards)} if trainer is not None else {}
    held = sum(s.x.nbytes + s.y.nbytes for s in shards.values())
    return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_anon": _status("RssAnon"), "shard_bytes": held, "clients": len(shards),
            "kit": kit is not None}


def run_case(dataset: str, clients: int, rounds: int, workers: int) -> dict[str, Any]:
    """One training run on Ray (in this process); the measurements as a dict."""
    from secure_fed.config import TrainConfig
    from secure_fed.run.trainer import Trainer

    cfg = TrainConfig(dataset=dataset, clients=clients, cohort=min(clients, 10), rounds=rounds,
                      hardened=False, seed=0, executor="ray", workers=workers, out="unused",
                      target_epsilon=None, noise_multiplier=1.0)
    t = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    try:
        ray = t.executor._ray  # type: ignore[union-attr]
        actors = t.remote.actors  # type: ignore[union-attr]
        built = ray.get([a.__ray_call__.remote(_actor_memory) for a in actors])
        t.run()
        done = ray.get([a.__ray_call__.remote(_actor_memory) for a in actors])
    finally:
        t.close()
    return {"dataset": dataset, "clients": clients, "rounds": rounds, "workers": workers,
            "train_samples": int(sum(len(p) for p in t.parts)),
            "accuracy": t.history[-1]["accuracy"], "built": built, "done": done,
            "driver_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _subprocess_case(tree: Path | None, dataset: str, clients: int, rounds: int,
                     workers: int) -> dict[str, Any]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", dataset, str(clients),
           str(rounds), str(workers)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                         cwd=str(tree or ROOT))
    if out.returncode != 0:
        raise SystemExit(f"case {dataset} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _row(label: str, r: dict[str, Any]) -> str:
    def mib(key: str, when: str, digits: int = 0) -> str:
        return " / ".join(f"{a[key] / MIB:.{digits}f}" for a in r[when])

    return (f"| {r['dataset']} ({r['train_samples']} samples, {r['clients']} clients) | {label} | "
            f"{mib('peak_rss', 'built')} | {mib('peak_rss', 'done')} | {mib('rss_anon', 'done')} | "
            f"{mib('shard_bytes', 'done', 1)} | {r['driver_peak_rss'] / MIB:.0f} | {r['accuracy']:.4f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"],
                   help="datasets to run (default: digits mnist5k)")
    p.add_argument("--clients", type=int, default=20, help="clients per run (default: 20)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per run (default: 2)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (default: 2)")
    p.add_argument("--baseline-tree", type=Path, default=None,
                   help="also run every case with the modules of this source tree (default: none)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    p.add_argument("--one", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:  # child process: one case, JSON on stdout
        ds, n, r, w = args.one
        print(json.dumps(run_case(ds, int(n), int(r), int(w))))
        return 0
    rows, raw = [], []
    for ds in args.datasets:
        trees = ([("before", args.baseline_tree)] if args.baseline_tree else []) + [("after", None)]
        for label, tree in trees:
            res = _subprocess_case(tree, ds, args.clients, args.rounds, args.workers)
            raw.append({"label": label, **res})
            rows.append(_row(label, res))
            print(rows[-1], flush=True)
    print("\n| case | code | actor peak RSS after build (MiB) | actor peak RSS after rounds (MiB) "
          "| actor heap at end (MiB) | shards held (MiB) | driver peak RSS (MiB) | accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json is not None:
        from secure_fed.run.rundir import write_json

        write_json(args.json, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
