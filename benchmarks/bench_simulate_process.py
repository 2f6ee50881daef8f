"""Whole-process cost of one secure aggregation round: ``run_secure.py simulate`` against
Flower's SecAgg+ on the same workload, measured in the same run.

Each measurement is a fresh process: wall seconds from its start to its exit (interpreter
start and imports included) and its peak resident set size (``ru_maxrss`` from
``os.wait4``). Ours is ``python run_secure.py simulate ...`` exactly as a user runs it
(in-process clients, authenticated by default; ``--no-authenticated`` is measured as well,
since Flower's SecAgg+ signs nothing). Flower's is ``flower_secaggplus_round.py`` run by
``--flower-python``, an interpreter with Flower installed (keep it in its own virtual
environment: ``python -m venv DIR && DIR/bin/pip install flwr``); it drops exactly as
many clients as our round did, before their masked input, as ``--dropout-stage masked``.
Runs are interleaved (ours, Flower's, ours, ...) so both see the same machine load.

(k, t) when ``--neighbors`` is not given: what the training run chooses for this cohort
(``protocol.params.choose_graph_params`` at the dropout rate), as ``k auto``.

    python benchmarks/bench_simulate_process.py --flower-python DIR/bin/python
    python benchmarks/bench_simulate_process.py --flower-python DIR/bin/python --neighbors 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from protocol.params import choose_graph_params  # noqa: E402
from protocol.simulator import default_threshold  # noqa: E402


def measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of ``argv`` run to completion; the child is
    reaped with ``os.wait4``, whose resource usage is that child's own."""
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=null, cwd=REPO, env=env)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n{out.decode()[-2000:]}")
    return wall, int(usage.ru_maxrss) * 1024, out.decode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flower-python", default=None, help="interpreter with flwr installed (omit: ours only)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--length", type=int, default=100_000)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--neighbors", type=int, default=None, help="k (default: as the training run chooses)")
    ap.add_argument("--threshold", type=int, default=None, help="t (default: with k)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.neighbors is None:
        params = choose_graph_params(args.clients, dropout=args.dropout)
        k, t, how = params.k, params.t, "auto"
    else:
        k, t, how = args.neighbors, args.threshold or default_threshold(args.neighbors), "given"
    graph = "complete" if k == args.clients - 1 else "harary"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ours = [sys.executable, str(REPO / "run_secure.py"), "simulate", "--clients", str(args.clients),
            "--length", str(args.length), "--graph", graph, "--threshold", str(t),
            "--dropout", str(args.dropout), "--seed", str(args.seed), "--quiet"]
    if graph == "harary":
        ours += ["--neighbors", str(k)]
    variants = {"ours (authenticated)": ours, "ours (--no-authenticated)": [*ours, "--no-authenticated"]}
    rows: dict[str, list[tuple[float, int]]] = {name: [] for name in [*variants, "Flower SecAgg+"]}
    notes: dict[str, str] = {}
    print(f"n={args.clients} L={args.length} k={k} ({how}) t={t} dropout={args.dropout} "
          f"(before the masked input) seed={args.seed}", flush=True)
    for rep in range(args.repeats):
        dropped = None
        for name, argv in variants.items():
            wall, rss, out = measure(argv, env)
            if "OK: the unmasked sum equals the plaintext sum" not in out:
                raise RuntimeError(f"{name}: no verified sum:\n{out}")
            m = re.search(r"summed (\d+) of \d+ clients; dropped (\d+)", out)
            assert m is not None, out
            dropped = int(m.group(2))
            notes[name] = f"summed {m.group(1)}, dropped {dropped}"
            rows[name].append((wall, rss))
            print(f"  run {rep + 1} {name}: {wall:.2f} s, {rss / 2**20:.1f} MiB", flush=True)
        if args.flower_python:
            argv = [args.flower_python, str(REPO / "benchmarks" / "flower_secaggplus_round.py"),
                    "--clients", str(args.clients), "--length", str(args.length), "--neighbors", str(k),
                    "--threshold", str(t), "--drop-count", str(dropped), "--seed", str(args.seed)]
            wall, rss, out = measure(argv, {k_: v for k_, v in os.environ.items() if k_ != "PYTHONPATH"})
            res = json.loads(out.strip().splitlines()[-1])
            if not res["ok"]:
                raise RuntimeError(f"Flower's aggregate is wrong: {res}")
            notes["Flower SecAgg+"] = (f"summed {res['summed']}, dropped {res['dropped']}; in-process server "
                                       f"{res['server_seconds']:.2f} s, client median {res['client_median_seconds']:.3f} s")
            rows["Flower SecAgg+"].append((wall, rss))
            print(f"  run {rep + 1} Flower SecAgg+: {wall:.2f} s, {rss / 2**20:.1f} MiB ({notes['Flower SecAgg+']})",
                  flush=True)

    print("\n| implementation | wall s (min / median) | peak RSS MiB (max) | round |\n|---|---:|---:|---|")
    for name, vals in rows.items():
        if not vals:
            continue
        walls = [w for w, _ in vals]
        print(f"| {name} | {min(walls):.2f} / {statistics.median(walls):.2f} | "
              f"{max(r for _, r in vals) / 2**20:.1f} | {notes[name]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
