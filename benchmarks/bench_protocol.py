"""Benchmark of the SecAgg / SecAgg+ protocol (protocol/) on the issue's workloads.

Runs whole rounds in process (every message encoded and decoded as bytes) and reports,
per workload: server seconds spent unmasking (the stage after the masked input: share
reconstruction and mask removal) and in total, the median over clients of each client's
total compute seconds, and upload bytes per vector entry. The yardstick is the issue's
measurement of Flower's SecAgg+ on this machine (numbers quoted below, not re-measured
here); the ratio columns divide those by ours. A sweep over n reports server cost against
n for both graphs with an n log n fit.

    python benchmarks/bench_protocol.py            # default: a few minutes
    python benchmarks/bench_protocol.py --full     # adds n = 2,100 and the full n sweep
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from crypto.errors import ConfigError  # noqa: E402
from protocol.errors import ProtocolAbort  # noqa: E402
from protocol.params import choose_graph_params  # noqa: E402
from protocol.runner import RoundResult  # noqa: E402
from protocol.simulator import simulate  # noqa: E402

# Flower SecAgg+ on this machine, as stated in issue 5 (seconds).
YARDSTICK = {
    "secagg+ n=100 L=1e5 k=10": (5.1, 0.06),
    "secagg n=100 L=1e5 k=99": (193.0, 2.4),
    "secagg+ n=2100 L=1e3 k=88": (54.0, None),
    "secagg+ n=2100 L=1e3 k=10 no-drop": (54.0, None),
}
TARGET = {"secagg+ n=100 L=1e5 k=10": (20, 5), "secagg n=100 L=1e5 k=99": (50, 5),
          "secagg+ n=2100 L=1e3 k=88": (20, None), "secagg+ n=2100 L=1e3 k=10 no-drop": (20, None)}


@dataclass(frozen=True)
class Row:
    name: str
    n: int
    length: int
    k: int
    t: int
    auth: bool
    server_unmask: float
    server_total: float
    client_median: float
    masked_bytes_per_entry: float
    all_bytes_per_entry: float
    wall: float
    aborted: int  # seeds skipped because the round aborted (< t live holders for a client)


def client_totals(res: RoundResult) -> list[float]:
    """Each client's compute seconds summed over the stages it took part in."""
    acc: dict[int, float] = {}
    for st in res.stages:
        for u, s in st.client_seconds.items():
            acc[u] = acc.get(u, 0.0) + s
    return list(acc.values())


def measure(name: str, n: int, length: int, graph: str, k: int | None, t: int, auth: bool,
            seed: int, dropout: float = 0.2) -> Row:
    aborted = 0
    while True:
        t0 = time.perf_counter()
        try:
            sim = simulate(n, length, 32, graph, k, t, dropout, "masked", seed + aborted, auth)
            break
        except ProtocolAbort:  # some dropped client kept < t live neighbours: next seed
            aborted += 1
            if aborted >= 20:
                raise
    wall = time.perf_counter() - t0
    if not sim.ok:
        raise SystemExit(f"{name}: the unmasked sum does not match the plaintext sum")
    res = sim.result
    masked = res.stage("masked")
    per_client_up: dict[int, int] = {}
    for st in res.stages:
        for u, b in st.bytes_up.items():
            per_client_up[u] = per_client_up.get(u, 0) + b
    return Row(name, n, length, k or n - 1, t, auth, res.stage("unmask").server_seconds,
               sum(s.server_seconds for s in res.stages), statistics.median(client_totals(res)),
               statistics.median(masked.bytes_up.values()) / length,
               statistics.median(per_client_up.values()) / length, wall, aborted)


def best_of(repeats: int, *args: object) -> Row:
    """Runs a workload ``repeats`` times; each timing column keeps its minimum (the run
    least disturbed by other load on the machine), other columns come from the first run."""
    rows = [measure(*args) for _ in range(repeats)]  # type: ignore[arg-type]
    return replace(rows[0], **{f: min(getattr(r, f) for r in rows) for f in
                               ("server_unmask", "server_total", "client_median", "wall")})


def workload_table(rows: list[Row]) -> str:
    out = ["| workload | auth | t | aborted seeds | server unmask s | server total s | client median s |"
           " upload B/entry (masked / all) | yardstick server s / client s | speed-up server"
           " (unmask) / client | target |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ys, yc = YARDSTICK[r.name]
        ts, tc = TARGET[r.name]
        sp_s = f"{ys / r.server_unmask:.0f}x"
        sp_c = f"{yc / r.client_median:.1f}x" if yc else "-"
        yard = f"{ys:g} / {yc:g}" if yc else f"{ys:g} / -"
        target = f">= {ts}x / >= {tc}x" if tc else f">= {ts}x"
        out.append(f"| {r.name} | {'yes' if r.auth else 'no'} | {r.t} | {r.aborted} |"
                   f" {r.server_unmask:.3f} |"
                   f" {r.server_total:.3f} | {r.client_median:.4f} | "
                   f"{r.masked_bytes_per_entry:.4f} / {r.all_bytes_per_entry:.4f} | {yard} |"
                   f" {sp_s} / {sp_c} | {target} |")
    return "\n".join(out)


def sweep_params(n: int, graph: str) -> tuple[int | None, int]:
    """k and t of the sweep: the (k, t) helper at 20% dropout for SecAgg+ (2^-20 halting,
    relaxed to 2^-16 where infeasible); a strict majority threshold for the complete graph."""
    if graph == "complete":
        return None, n // 2 + 1
    for bits in (20.0, 16.0, 12.0):
        try:
            p = choose_graph_params(n, 0.2, halting_bits=bits)
        except ConfigError:
            continue
        if p.graph == "harary":
            return p.k, p.t
    k = n - 2 if n % 2 == 0 else n - 3
    return k, (k + 1) // 2 + 1


def sweep(ns: list[int], graph: str, length: int, auth: bool, seed: int) -> list[Row]:
    rows = []
    for n in ns:
        k, t = sweep_params(n, graph)
        rows.append(measure(f"{graph} n={n}", n, length, graph, k, t, auth, seed))
        print(f"  {graph} n={n} k={rows[-1].k} server {rows[-1].server_total:.3f} s",
              file=sys.stderr, flush=True)
    return rows


def fit_exponent(rows: list[Row], field: str) -> float:
    """Slope of log(server seconds) against log(n)."""
    x = np.log([r.n for r in rows])
    y = np.log([getattr(r, field) for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def sweep_table(rows: list[Row]) -> str:
    out = ["| graph | n | k | t | server total s | server unmask s | total / (n log2 n) us |"
           " client median s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = r.server_total / (r.n * math.log2(r.n)) * 1e6
        out.append(f"| {r.name.split()[0]} | {r.n} | {r.k} | {r.t} | {r.server_total:.3f} | "
                   f"{r.server_unmask:.3f} | {per:.1f} | {r.client_median:.4f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true",
                    help="add n = 2,100 and sweep n to 1,600 (SecAgg+) / 400 (complete)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per n = 100 workload (minimum per timing column kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep-length", type=int, default=1000, help="L in the n sweep")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()

    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}, load average {Path('/proc/loadavg').read_text().split()[:3]}")
    rows = []
    for auth in (False, True):
        rows.append(best_of(args.repeats, "secagg+ n=100 L=1e5 k=10", 100, 100_000, "harary",
                            10, 6, auth, args.seed))
        rows.append(best_of(args.repeats, "secagg n=100 L=1e5 k=99", 100, 100_000,
                            "complete", None, 51, auth, args.seed))
        if args.full:  # k=10 cannot survive 20% dropout at n=2100 with 2t > k+1: the
            # helper's k at 20% dropout, and k=10 without dropouts
            big = choose_graph_params(2100, 0.2)
            rows.append(best_of(1, f"secagg+ n=2100 L=1e3 k={big.k}", 2100, 1000,
                                "harary", big.k, big.t, auth, args.seed))
            rows.append(best_of(1, "secagg+ n=2100 L=1e3 k=10 no-drop", 2100, 1000,
                                "harary", 10, 6, auth, args.seed, 0.0))
        print(f"  workloads auth={auth} done", file=sys.stderr, flush=True)
    print("\n## Workloads (20% of clients drop before the masked input, b = 32)\n")
    print(workload_table(rows))
    if args.no_sweep:
        return 0
    plus_ns = [50, 100, 200, 400, 800, 1600] if args.full else [50, 100, 200, 400]
    full_ns = [50, 100, 200, 400] if args.full else [50, 100, 200]
    plus = sweep(plus_ns, "harary", args.sweep_length, False, args.seed)
    comp = sweep(full_ns, "complete", args.sweep_length, False, args.seed)
    print(f"\n## Server cost against n (L = {args.sweep_length}, unauthenticated, 20% drop "
          "before the masked input)\n")
    print(sweep_table(plus + comp))
    print(f"\nlog-log slope of server total seconds vs n: SecAgg+ "
          f"{fit_exponent(plus, 'server_total'):.2f}, complete "
          f"{fit_exponent(comp, 'server_total'):.2f} (n log n over this range ~ 1.1-1.2; "
          "n^2 = 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
