"""Scale benchmark: one SecAgg+ ``simulate`` round of many clients on the Ray executor.

Workload (issue 7): n = 10,000 clients, L = 10^5 entries in Z_{2^32}, SecAgg+ with the
(k, t) that :func:`protocol.params.choose_graph_params` picks for 5% dropout, 5% of the
clients dropping just before the masked input (the case that makes the server recover
their pairwise masks), authenticated mode. Each worker count runs in a fresh process
(its own local Ray instance limited to that many CPUs), so peak-memory figures are per
run. Reported per run: the bytes down per client of the key distribution (the commit
proof, O(log n); the reveal list shared by all, 20 bytes per client; the neighbours' keys
with Merkle paths, O(k log n)), wall seconds of the whole command (Ray start included) and of the
round (actors started, round, plaintext check), whether the unmasked sum equals the
plaintext sum, the driver's peak memory (the driver is the server: it holds no client):
private heap sampled every 0.2 s, and ``ru_maxrss``, which also counts touched pages of
Ray's shared object store; each worker's ``ru_maxrss``; the per-stage table; and the
machine's load average before and after (other processes share the CPUs); and the CPU
seconds the server (during the round) and the workers used, whose sum over the round's
wall time is the number of cores the run actually got. The speedup is the round time
with 1 worker over the round time with 2.

    python benchmarks/bench_scale.py                                  # the issue's workload
    python benchmarks/bench_scale.py --clients 1000 --workers 1 2     # smaller
    python benchmarks/bench_scale.py --json scale.json                # also the raw numbers
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.params import choose_graph_params  # noqa: E402
from protocol.simulator import simulate  # noqa: E402
from secure_fed.cli.simulate import format_table  # noqa: E402
from secure_fed.executor import make_executor  # noqa: E402
from secure_fed.run.rundir import write_json  # noqa: E402

GIB = 1 << 30
KEY_STAGES = ("advertise", "reveal", "graph")  # what replaced the broadcast of all n keys


class MemorySampler:
    """Peak private (anonymous) resident memory of this process, sampled every 0.2 s.

    ``ru_maxrss`` also counts pages of Ray's shared-memory object store that the process
    has touched while reading replies; ``RssAnon`` in /proc/self/status is the process's
    own heap, so its peak is the server's memory proper.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def rss_anon() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_anon())
            self._stop.wait(0.2)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_anon())


def _cpu_self() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def run_one(workers: int, clients: int, length: int, dropout: float, seed: int) -> dict:
    """One round in this process (the server) with ``workers`` Ray actors (the clients)."""
    t_start = time.perf_counter()
    params = choose_graph_params(clients, dropout=dropout)
    executor = make_executor("ray", None, workers)
    t_ray, cpu0 = time.perf_counter(), _cpu_self()
    try:
        with MemorySampler() as mem:
            sim = simulate(clients, length, 32, params.graph, params.k, params.t, dropout,
                           "masked", seed, True, pool_factory=executor.simulation_pool_factory())
        t_round = time.perf_counter()
        worker_rss = executor.worker_peak_rss()  # type: ignore[attr-defined]
        worker_cpu = executor.worker_cpu_seconds()  # type: ignore[attr-defined]
    finally:
        executor.close()
    res = sim.result
    return {
        "workers": workers, "clients": clients, "length": length, "dropout": dropout,
        "graph": params.graph, "k": params.k, "t": params.t, "ok": sim.ok,
        "summed": len(res.summed), "dropped": len(res.dropped),
        "ray_start_seconds": t_ray - t_start, "round_seconds": t_round - t_ray,
        "wall_seconds": time.perf_counter() - t_start,
        "server_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "server_peak_private_bytes": mem.peak,
        "server_estimated_peak_bytes": max(s.server_peak_bytes for s in res.stages),
        "server_seconds": sum(s.server_seconds for s in res.stages),
        "worker_peak_rss_bytes": worker_rss, "worker_cpu_seconds": worker_cpu,
        "server_cpu_seconds": _cpu_self() - cpu0, "table": format_table(res, traced=False),
        "key_download_per_client": {s.stage: s.total_down / clients for s in res.stages
                                    if s.stage in KEY_STAGES},
    }


def _child(workers: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", str(workers), "--clients", str(args.clients),
           "--length", str(args.length), "--dropout", str(args.dropout), "--seed", str(args.seed)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rec = json.loads(out.strip().splitlines()[-1])
    rec["process_seconds"] = time.perf_counter() - t0
    rec["load_before"], rec["load_after"] = load_before, os.getloadavg()
    return rec


def _markdown(recs: list[dict], argv: list[str]) -> str:
    first = recs[0]
    lines = [
        f"`python benchmarks/bench_scale.py {' '.join(argv)}`".replace("  ", " "),
        "",
        f"n = {first['clients']:,}, L = {first['length']:,}, {first['graph']} k = {first['k']}, "
        f"t = {first['t']}, dropout {first['dropout']:.0%} before the masked input, "
        f"{os.cpu_count()} CPUs",
        "",
        "| workers | exact sum | summed | process s | round s | server s | server CPU s |"
        " worker CPU s | cores used | server peak private GiB | server peak RSS GiB |"
        " worker peak RSS GiB | load avg before / after |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in recs:
        workers_rss = ", ".join(f"{b / GIB:.2f}" for b in r["worker_peak_rss_bytes"])
        lines.append(
            f"| {r['workers']} | {'yes' if r['ok'] else 'NO'} | {r['summed']:,} | "
            f"{r['process_seconds']:.1f} | {r['round_seconds']:.1f} | {r['server_seconds']:.1f} | "
            f"{r['server_cpu_seconds']:.0f} | {' + '.join(f'{c:.0f}' for c in r['worker_cpu_seconds'])} | "
            f"{(r['server_cpu_seconds'] + sum(r['worker_cpu_seconds'])) / r['round_seconds']:.2f} | "
            f"{r['server_peak_private_bytes'] / GIB:.2f} | "
            f"{r['server_peak_rss_bytes'] / GIB:.2f} | {workers_rss} | "
            f"{' '.join(f'{x:.2f}' for x in r['load_before'])} / "
            f"{' '.join(f'{x:.2f}' for x in r['load_after'])} |")
    by = {r["workers"]: r for r in recs}
    if 1 in by and 2 in by:
        lines += ["", f"speedup 1 -> 2 workers (round seconds): "
                      f"{by[1]['round_seconds'] / by[2]['round_seconds']:.2f}x"]
    for r in recs:
        down = r["key_download_per_client"]
        lines += ["", f"key distribution, bytes down per client ({r['workers']} worker(s)): "
                      + ", ".join(f"{s} {down[s]:,.0f}" for s in KEY_STAGES if s in down)
                      + " (commit proof, the shared reveal list, the neighbours' keys)"]
        lines += ["", f"stages, {r['workers']} worker(s):", "", r["table"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=10_000, help="cohort size n")
    p.add_argument("--length", type=int, default=100_000, help="entries per vector L")
    p.add_argument("--dropout", type=float, default=0.05, help="dropout rate (masked stage)")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs, keys and dropouts")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts")
    p.add_argument("--json", default=None, help="also write the raw numbers to this file")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.clients, args.length, args.dropout, args.seed)))
        return 0
    recs = [_child(w, args) for w in args.workers]
    print(_markdown(recs, argv))
    if args.json:
        write_json(Path(args.json), recs)
    return 0 if all(r["ok"] for r in recs) else 1


if __name__ == "__main__":
    sys.exit(main())
