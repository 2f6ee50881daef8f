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

A/B against a previous implementation (``--baseline DIR``, DIR holding that version's
``protocol/`` and ``crypto/``, e.g. from ``git archive <rev> protocol crypto``): every
workload's server input is recorded as bytes during its measured run and replayed,
interleaved, ``--replays`` times through the baseline server, the current server with one
process and the current server with ``--workers`` processes, each replay in a fresh
Python process; each cell keeps its minimum. The n = 100 workloads are also simulated
whole in the baseline tree for its per-client cost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from crypto.errors import ConfigError  # noqa: E402
from protocol.errors import ProtocolAbort  # noqa: E402
from protocol.params import choose_graph_params, round_params  # noqa: E402
from protocol.runner import RoundResult  # noqa: E402
from protocol.server import SecAggServer  # noqa: E402
from protocol.simulator import simulate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Flower SecAgg+ on this machine, as stated in issue 5 (seconds).
YARDSTICK = {
    "secagg+ n=100 L=1e5 k=10": (5.1, 0.06),
    # k and t from round_params for --max-colluders at 20% dropout: compared with Flower's
    # k = 10 round (which tolerates no colluder against an active server), so a larger k
    # only makes ours do more work than the yardstick's
    "secagg+ n=100 L=1e5 k auto": (5.1, 0.06),
    "secagg n=100 L=1e5 k=99": (193.0, 2.4),
    "secagg+ n=2100 L=1e3 k=88": (54.0, None),
    "secagg+ n=2100 L=1e3 k=10 no-drop": (54.0, None),
}
TARGET = {"secagg+ n=100 L=1e5 k=10": (20, 5), "secagg+ n=100 L=1e5 k auto": (20, 5), "secagg n=100 L=1e5 k=99": (50, 5),
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
    transcript: dict = field(default_factory=dict, repr=False, compare=False)
    # stage -> median over clients of that stage's compute seconds
    client_stages: dict = field(default_factory=dict, compare=False)


def client_totals(res: RoundResult) -> list[float]:
    """Each client's compute seconds summed over the stages it took part in."""
    acc: dict[int, float] = {}
    for st in res.stages:
        for u, s in st.client_seconds.items():
            acc[u] = acc.get(u, 0.0) + s
    return list(acc.values())


@contextmanager
def recording(log: dict) -> Iterator[None]:
    """Record what every SecAggServer built inside the block receives: its config and
    identity keys, then (stage, bytes) per message and (stage, None) per finish_stage.
    The last server built wins (an aborted seed's round is replaced by the next)."""
    cls = SecAggServer
    init, receive, finish = cls.__init__, cls.receive, cls.finish_stage

    def rec_init(self, config, identity_keys=None, **kw):  # type: ignore[no-untyped-def]
        log.clear()
        c = config
        log.update(config=(c.round_id, c.cohort, c.length, c.bits, c.threshold, c.graph,
                           c.neighbors, c.authenticated),
                   identity_keys=dict(identity_keys) if identity_keys else None, log=[])
        init(self, config, identity_keys, **kw)

    def rec_receive(self, data):  # type: ignore[no-untyped-def]
        log["log"].append((self.stage.value, bytes(data)))
        return receive(self, data)

    def rec_finish(self):  # type: ignore[no-untyped-def]
        log["log"].append((self.stage.value, None))
        out = finish(self)
        if self.total is not None:
            log["total"] = self.total.copy()
        return out

    cls.__init__, cls.receive, cls.finish_stage = rec_init, rec_receive, rec_finish  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__init__, cls.receive, cls.finish_stage = init, receive, finish  # type: ignore[method-assign]


def measure(name: str, n: int, length: int, graph: str, k: int | None, t: int, auth: bool,
            seed: int, dropout: float = 0.2, record: bool = False) -> Row:
    aborted = 0
    log: dict = {}
    while True:
        t0 = time.perf_counter()
        try:
            if record:
                with recording(log):
                    sim = simulate(n, length, 32, graph, k, t, dropout, "masked",
                                   seed + aborted, auth)
            else:
                sim = simulate(n, length, 32, graph, k, t, dropout, "masked", seed + aborted,
                               auth)
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
               statistics.median(per_client_up.values()) / length, wall, aborted, log,
               {st.stage: st.client_median_seconds for st in res.stages if st.client_seconds})


def best_of(repeats: int, *args: object, record: bool = False) -> Row:
    """Runs a workload ``repeats`` times; each timing column keeps its minimum (the run
    least disturbed by other load on the machine), other columns come from the first run
    (whose server input is recorded if ``record``)."""
    rows = [measure(*args, record=record and i == 0)  # type: ignore[arg-type,misc]
            for i in range(repeats)]
    stages = {s: min(r.client_stages.get(s, float("inf")) for r in rows)
              for s in rows[0].client_stages}
    return replace(rows[0], client_stages=stages,
                   **{f: min(getattr(r, f) for r in rows) for f in
                      ("server_unmask", "server_total", "client_median", "wall")})


def workload_table(rows: list[Row]) -> str:
    out = ["| workload | auth | t | aborted seeds | server unmask s | server total s | client median s |"
           " upload B/entry (masked / all) | yardstick server s / client s | speed-up server"
           " (unmask) / client | target |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = r.name.split(" (")[0]  # "k auto (k=.., c=..)" rows share one yardstick
        ys, yc = YARDSTICK[base]
        ts, tc = TARGET[base]
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


def stage_table(rows: list[Row]) -> str:
    """Per workload, each stage's median client milliseconds (minimum over repeats)."""
    stages: list[str] = []  # in round order: the row with the most stages first
    for r in sorted(rows, key=lambda r: -len(r.client_stages)):
        stages += [s for s in r.client_stages if s not in stages]
    out = ["| workload | auth | " + " | ".join(stages) + " |",
           "|---|---|" + "---:|" * len(stages)]
    for r in rows:
        cells = [f"{r.client_stages[s] * 1e3:.2f}" if s in r.client_stages else "-"
                 for s in stages]
        out.append(f"| {r.name} | {'yes' if r.auth else 'no'} | " + " | ".join(cells) + " |")
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


def sweep(ns: list[int], graph: str, length: int, auth: bool, seed: int,
          replays: int = 0) -> list[Row]:
    """One round per n; with ``replays`` > 0 its server input is also replayed that many
    times (fresh processes, current code, one process) and the server columns keep the
    minimum over the run and the replays (the sweep rounds are too long to repeat)."""
    rows = []
    for n in ns:
        k, t = sweep_params(n, graph)
        row = measure(f"{graph} n={n}", n, length, graph, k, t, auth, seed, record=replays > 0)
        if replays > 0:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "round.pkl"
                path.write_bytes(pickle.dumps(row.transcript))
                best = Replay()
                for _ in range(replays):
                    best.add(_python(_REPLAY, str(REPO), str(path), "1"))
            row = replace(row, server_unmask=min(row.server_unmask, best.unmask_wall),
                          server_total=min(row.server_total, best.total_wall), transcript={})
        rows.append(row)
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


# -- A/B replay against a previous implementation ----------------------------------------

_REPLAY = r"""
import json, pickle, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from protocol.config import ProtocolConfig
import protocol.server as S
tr = pickle.load(open(sys.argv[2], "rb"))
workers = int(sys.argv[3])
warm = 0.0
if workers > 1:
    w = time.perf_counter(); S.prepare_workers(workers); warm = time.perf_counter() - w
server = S.SecAggServer(ProtocolConfig(*tr["config"]), tr["identity_keys"],
                        **({"workers": workers} if workers > 1 else {}))
wall, cpu = {}, {}
for stage, data in tr["log"]:
    w, c = time.perf_counter(), time.process_time()
    if data is None:
        server.finish_stage()
    else:
        server.receive(data)
    wall[stage] = wall.get(stage, 0.0) + time.perf_counter() - w
    cpu[stage] = cpu.get(stage, 0.0) + time.process_time() - c
ok = server.total is not None and bool(np.array_equal(server.total, tr["total"]))
print(json.dumps({"wall": wall, "cpu": cpu, "ok": ok, "warm": warm}))
"""

_CLIENTS = r"""
import json, statistics, sys
sys.path.insert(0, sys.argv[1])
from protocol.errors import ProtocolAbort
from protocol.simulator import simulate
n, length, graph, k, t, auth, seed, dropout = json.loads(sys.argv[2])
while True:
    try:
        sim = simulate(n, length, 32, graph, k, t, dropout, "masked", seed, auth)
        break
    except ProtocolAbort:
        seed += 1
acc = {}
for st in sim.result.stages:
    for u, s in st.client_seconds.items():
        acc[u] = acc.get(u, 0.0) + s
print(json.dumps({"ok": sim.ok, "client_median": statistics.median(acc.values())}))
"""


@dataclass
class Replay:
    """Minimum over replays of one server variant on one recorded round (seconds)."""

    unmask_wall: float = math.inf
    total_wall: float = math.inf
    unmask_cpu: float = math.inf
    total_cpu: float = math.inf
    runs: int = 0

    def add(self, out: dict) -> None:
        if not out["ok"]:
            raise SystemExit("a replayed round did not reproduce the recorded sum")
        self.unmask_wall = min(self.unmask_wall, out["wall"]["unmask"])
        self.total_wall = min(self.total_wall, sum(out["wall"].values()))
        self.unmask_cpu = min(self.unmask_cpu, out["cpu"]["unmask"])
        self.total_cpu = min(self.total_cpu, sum(out["cpu"].values()))
        self.runs += 1


def _python(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"replay failed: {proc.stderr.strip().splitlines()[-1:]}")
    out: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def replay_ab(rows: list[Row], baseline: Path, replays: int, workers: int
              ) -> dict[str, dict[str, Replay]]:
    """Replay each row's recorded server input through three server variants, interleaved
    (baseline, current 1 process, current ``workers`` processes), ``replays`` rounds."""
    variants = [("baseline", baseline, 1), ("current", REPO, 1)]
    if workers > 1:
        variants.append((f"current x{workers}", REPO, workers))
    out: dict[str, dict[str, Replay]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            path = Path(tmp) / f"round{i}.pkl"
            path.write_bytes(pickle.dumps(row.transcript))
            key = f"{row.name} auth={'yes' if row.auth else 'no'}"
            cells = out[key] = {name: Replay() for name, _, _ in variants}
            for _ in range(replays):
                for name, tree, w in variants:
                    cells[name].add(_python(_REPLAY, str(tree), str(path), str(w)))
            path.unlink()
            print(f"  replayed {key}", file=sys.stderr, flush=True)
    return out


def clients_ab(row: Row, baseline: Path, repeats: int, seed: int) -> tuple[float, float]:
    """Client median of whole rounds simulated in the baseline tree and in this one, each in
    a fresh process, interleaved; minimum over ``repeats`` rounds each."""
    graph = "complete" if row.k == row.n - 1 else "harary"
    args = json.dumps([row.n, row.length, graph, None if graph == "complete" else row.k,
                       row.t, row.auth, seed, 0.2])
    base, cur = math.inf, math.inf
    for _ in range(repeats):
        base = min(base, _python(_CLIENTS, str(baseline), args)["client_median"])
        cur = min(cur, _python(_CLIENTS, str(REPO), args)["client_median"])
    return base, cur


def ab_table(ab: dict[str, dict[str, Replay]]) -> str:
    names = list(next(iter(ab.values())))
    head = " | ".join(f"{n} unmask s" for n in names) + " | " + " | ".join(
        f"{n} total s" for n in names)
    out = [f"| workload | {head} | unmask speed-up (1 process / {names[-1]}) |",
           "|---|" + "---:|" * (2 * len(names) + 1)]
    for key, cells in ab.items():
        base = cells["baseline"]
        um = " | ".join(f"{c.unmask_wall:.3f}" for c in cells.values())
        tot = " | ".join(f"{c.total_wall:.3f}" for c in cells.values())
        sp = (f"{base.unmask_wall / cells['current'].unmask_wall:.2f}x / "
              f"{base.unmask_wall / cells[names[-1]].unmask_wall:.2f}x")
        out.append(f"| {key} | {um} | {tot} | {sp} |")
    out.append("")
    out.append("CPU seconds of the server process (for the multi-process variant: the main "
               "process only):")
    out.append("")
    out.append("| workload | " + " | ".join(f"{n} unmask cpu s" for n in names) + " | "
               + " | ".join(f"{n} total cpu s" for n in names) + " |")
    out.append("|---|" + "---:|" * (2 * len(names)))
    for key, cells in ab.items():
        out.append(f"| {key} | " + " | ".join(f"{c.unmask_cpu:.3f}" for c in cells.values())
                   + " | " + " | ".join(f"{c.total_cpu:.3f}" for c in cells.values()) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--full", action="store_true",
                    help="add n = 2,100 and sweep n to 1,600 (SecAgg+) / 400 (complete)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per n = 100 workload (minimum per timing column kept)")
    ap.add_argument("--seed", type=int, default=0, help="first simulation seed")
    ap.add_argument("--sweep-length", type=int, default=1000, help="L in the n sweep")
    ap.add_argument("--no-sweep", action="store_true", help="skip the server-cost sweep over n")
    ap.add_argument("--only", choices=("all", "n100", "n2100"), default="all",
                    help="run only the n = 100 or only the n = 2,100 workloads (n2100 implies "
                         "--full for the workloads)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="directory with a previous version's protocol/ and crypto/: adds "
                         "the A/B replay tables")
    ap.add_argument("--replays", type=int, default=3,
                    help="replays per server variant in the A/B table (minimum kept)")
    ap.add_argument("--sweep-replays", type=int, default=2,
                    help="replays of each sweep round's server input (minimum kept; 0: none)")
    ap.add_argument("--max-colluders", type=int, default=1,
                    help="c of the 'k auto' workload: (k, t) = protocol.params.round_params("
                         "100, 0.2, c, halting_bits=--halting-bits), as train and simulate choose them")
    ap.add_argument("--halting-bits", type=float, default=6.0,
                    help="halting target of the 'k auto' workload (train's default)")
    ap.add_argument("--workers", type=int, default=2,
                    help="processes of the multi-process server variant in the A/B table")
    args = ap.parse_args()
    if args.baseline is not None and not (args.baseline / "protocol" / "server.py").is_file():
        print(f"bench_protocol: --baseline {args.baseline} has no protocol/server.py; pass a "
              "directory holding a previous version's protocol/ and crypto/", file=sys.stderr)
        return 2
    record = args.baseline is not None

    def loadavg() -> str:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])

    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} cores, load average {loadavg()}")
    rows = []
    for auth in (False, True):
        if args.only != "n2100":
            rows.append(best_of(args.repeats, "secagg+ n=100 L=1e5 k=10", 100, 100_000,
                                "harary", 10, 6, auth, args.seed, record=record))
            auto = round_params(100, 0.2, args.max_colluders, auth, graph="auto",
                                halting_bits=args.halting_bits)
            rows.append(best_of(args.repeats, f"secagg+ n=100 L=1e5 k auto (k={auto.k}, "
                                f"c={args.max_colluders})", 100, 100_000, auto.graph,
                                None if auto.graph == "complete" else auto.k, auto.t, auth,
                                args.seed, record=record))
            rows.append(best_of(args.repeats, "secagg n=100 L=1e5 k=99", 100, 100_000,
                                "complete", None, 51, auth, args.seed, record=record))
        if args.full or args.only == "n2100":  # k=10 cannot survive 20% dropout at n=2100
            # with 2t > k+1: the helper's k at 20% dropout, and k=10 without dropouts
            big = choose_graph_params(2100, 0.2)
            rows.append(best_of(1, f"secagg+ n=2100 L=1e3 k={big.k}", 2100, 1000,
                                "harary", big.k, big.t, auth, args.seed, record=record))
            rows.append(best_of(1, "secagg+ n=2100 L=1e3 k=10 no-drop", 2100, 1000,
                                "harary", 10, 6, auth, args.seed, 0.0, record=record))
        print(f"  workloads auth={auth} done (load average {loadavg()})", file=sys.stderr,
              flush=True)
    print("\n## Workloads (20% of clients drop before the masked input, b = 32)\n")
    print(workload_table(rows))
    print("\n## Client median ms per stage (median over the clients of a round, minimum "
          "over repeats; a client's total above is its own sum, so the columns need not "
          "add up to it)\n")
    print(stage_table(rows))
    print(f"\nload average after the workloads: {loadavg()}")
    if args.baseline is not None:
        ab = replay_ab(rows, args.baseline, args.replays, args.workers)
        print(f"\n## A/B: server replays of each recorded round (minimum of {args.replays}; "
              f"load average now {loadavg()})\n")
        print(ab_table(ab))
        small = [r for r in rows if r.n == 100]
        if small:
            print("\n## A/B: client median s (n = 100, whole rounds in fresh processes, "
                  f"interleaved, minimum of {args.repeats} rounds each)\n")
            print("| workload | auth | baseline | current | speed-up |")
            print("|---|---|---:|---:|---:|")
            for r in small:
                b, c = clients_ab(r, args.baseline, args.repeats, args.seed)
                print(f"| {r.name} | {'yes' if r.auth else 'no'} | {b:.4f} | {c:.4f} | "
                      f"{b / c:.2f}x |")
        print(f"\nload average at the end of the A/B: {loadavg()}")
    if args.no_sweep or args.only != "all":
        return 0
    plus_ns = [50, 100, 200, 400, 800, 1600] if args.full else [50, 100, 200, 400]
    full_ns = [50, 100, 200, 400] if args.full else [50, 100, 200]
    plus = sweep(plus_ns, "harary", args.sweep_length, False, args.seed, args.sweep_replays)
    comp = sweep(full_ns, "complete", args.sweep_length, False, args.seed, args.sweep_replays)
    print(f"\n## Server cost against n (L = {args.sweep_length}, unauthenticated, 20% drop "
          "before the masked input; server columns: minimum of the run and "
          f"{args.sweep_replays} replays of its server input)\n")
    print(sweep_table(plus + comp))
    print(f"\nlog-log slope of server total seconds vs n: SecAgg+ "
          f"{fit_exponent(plus, 'server_total'):.2f}, complete "
          f"{fit_exponent(comp, 'server_total'):.2f} (n log n over this range ~ 1.1-1.2; "
          "n^2 = 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
