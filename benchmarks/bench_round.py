"""Seconds per training round of the secure, DP round against its plaintext baselines.

digits, 10 clients all in the cohort, FedHPro, no dropout. Four modes run in ONE process
with one torch thread, interleaved round by round (round r of every mode before round r+1
of any, the mode order rotating each round) so that they share the machine's load fairly:

- ``plain``: no SecAgg, no DP;
- ``dp``: sample-level DP, local float Gaussian noise, no SecAgg;
- ``secagg+``: SecAgg+ (authenticated), no DP;
- ``dp+secagg+``: sample-level DP with distributed discrete-Gaussian noise inside SecAgg+.

DP uses a fixed ``--noise-multiplier`` (no epsilon target, so no planning). A round's
seconds are the trainer's (cohort selection to evaluation, everything included); round 1
of every run is warm-up and skipped. Medians pool every measured round of every repeat
(repeat i uses seed i). The per-stage table of the DP + SecAgg+ mode comes from the
aggregator's :class:`Aggregate` metadata: client median seconds and server seconds per
protocol stage, and bytes up/down per stage summed over the cohort. The machine's load
average (1, 5, 15 min) is printed before and after: other processes slow every mode, and
only the interleaved ratios stay comparable between runs.

    python benchmarks/bench_round.py --rounds 12 --repeats 3 --json round.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secure_fed.aggregation.layout import Aggregate, Aggregator, ClientWork, VectorLayout  # noqa: E402
from secure_fed.config import TrainConfig  # noqa: E402
from secure_fed.run.trainer import Trainer  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "plain": {"secagg": "off", "dp": "off"},
    "dp": {"secagg": "off", "dp": "sample", "noise_placement": "local", "mechanism": "gaussian"},
    "secagg+": {"secagg": "secagg+", "dp": "off"},
    "dp+secagg+": {"secagg": "secagg+", "dp": "sample", "noise_placement": "distributed", "mechanism": "discrete"},
}


class RecordingAggregator:
    """Wraps the trainer's aggregator (server side of the harness): times each ``aggregate``
    call (client work + protocol, seconds) and keeps each Aggregate's metadata."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds: list[float] = []
        self.metas: list[Mapping[str, Any]] = []

    def aggregate(self, round_id: int, layout: VectorLayout, work: Mapping[int, ClientWork]) -> Aggregate:
        t0 = time.perf_counter()
        agg = self.inner.aggregate(round_id, layout, work)
        self.seconds.append(time.perf_counter() - t0)
        self.metas.append(agg.meta)
        return agg


class RecordingTrainer(Trainer):
    """A Trainer whose aggregator (rebuilt when the noise is installed) is recorded."""

    def _make_aggregator(self) -> Aggregator:
        return RecordingAggregator(super()._make_aggregator())

    @property
    def recorder(self) -> RecordingAggregator:
        assert isinstance(self.aggregator, RecordingAggregator)
        return self.aggregator


def build(mode: str, seed: int, args: argparse.Namespace) -> RecordingTrainer:
    cfg = TrainConfig(
        dataset="digits", algorithm="fedhpro", clients=10, cohort=10, rounds=args.rounds, dropout=0.0,
        noise_multiplier=args.noise_multiplier, target_epsilon=None, hardened=args.hardened,
        threads=1, seed=seed, **MODES[mode],
    )
    return RecordingTrainer(cfg, progress=False, log=lambda s: None, write_outputs=False)


def run_interleaved(args: argparse.Namespace, modes: list[str]) -> dict[str, list[RecordingTrainer]]:
    """Every repeat builds one trainer per mode, then runs them round by round, rotating."""
    out: dict[str, list[RecordingTrainer]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        trainers = {m: build(m, rep, args) for m in modes}
        for r in range(1, args.rounds + 1):
            k = (r + rep) % len(modes)
            for m in modes[k:] + modes[:k]:
                trainers[m].run(until=r)
        for m in modes:
            out[m].append(trainers[m])
        print(f"repeat {rep} done", file=sys.stderr, flush=True)
    return out


def summarize(trainers: list[RecordingTrainer]) -> dict[str, Any]:
    """Median seconds per round (and of the aggregate call) over rounds >= 2 of every run."""
    rounds = [h["seconds"] for tr in trainers for h in tr.history[1:]]
    agg = [s for tr in trainers for s in tr.recorder.seconds[1:]]
    return {
        "round_median": statistics.median(rounds), "round_min": min(rounds), "round_max": max(rounds),
        "aggregate_median": statistics.median(agg), "rounds_measured": len(rounds),
        "accuracy_last": [tr.history[-1]["accuracy"] for tr in trainers],
        "noise_multiplier": trainers[0].noise_multiplier,
        "bytes_up_per_client": trainers[0].history[-1].get("bytes_up_per_client"),
    }


def stage_table(trainers: list[RecordingTrainer]) -> dict[str, dict[str, float]]:
    """Per protocol stage: medians over rounds >= 2 of client-median s, server s, bytes up/down."""
    metas = [m for tr in trainers for m in tr.recorder.metas[1:]]
    stages = list(metas[0]["seconds"])
    return {
        st: {
            "client_median_s": statistics.median(m["seconds"][st]["client_median"] for m in metas),
            "server_s": statistics.median(m["seconds"][st]["server"] for m in metas),
            "bytes_up": statistics.median(m["bytes"][st]["up"] for m in metas),
            "bytes_down": statistics.median(m["bytes"][st]["down"] for m in metas),
        }
        for st in stages
    }


def report(summary: dict[str, dict[str, Any]], stages: dict[str, dict[str, float]] | None) -> list[str]:
    base = summary["plain"]["round_median"]
    lines = ["| mode | median s/round | min-max | median s in aggregate (clients + protocol) | "
             "x plain | up KiB/client | final acc (per repeat) |", "|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        up = s["bytes_up_per_client"]
        lines.append(f"| {m} | {s['round_median']:.3f} | {s['round_min']:.3f}-{s['round_max']:.3f} | "
                     f"{s['aggregate_median']:.3f} | {s['round_median'] / base:.2f} | "
                     f"{'-' if up is None else f'{up / 1024:.1f}'} | "
                     f"{', '.join(f'{a:.3f}' for a in s['accuracy_last'])} |")
    if "dp" in summary and "dp+secagg+" in summary:
        r = summary["dp+secagg+"]["round_median"] / summary["dp"]["round_median"]
        lines += ["", f"SecAgg+ overhead (DP+SecAgg+)/(DP only) = {r:.2f} (target <= 1.25: {'met' if r <= 1.25 else 'MISSED'})"]
    if "dp" in summary:
        r = summary["dp"]["round_median"] / base
        lines += [f"DP overhead (DP only)/(plain) = {r:.2f} (target <= 2.0: {'met' if r <= 2.0 else 'MISSED'})"]
    if "secagg+" in summary:
        lines += [f"SecAgg+ without DP / plain = {summary['secagg+']['round_median'] / base:.2f}"]
    if stages:
        lines += ["", "Per protocol stage, DP + SecAgg+ (medians over measured rounds; bytes summed over the cohort):",
                  "", "| stage | client median s | server s | bytes up | bytes down |", "|---|---|---|---|---|"]
        for st, v in stages.items():
            lines.append(f"| {st} | {v['client_median_s']:.4f} | {v['server_s']:.4f} | "
                         f"{v['bytes_up']:.0f} | {v['bytes_down']:.0f} |")
    return lines


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def _fmt_load(load: list[float] | None) -> str:
    return "n/a" if load is None else "/".join(f"{x:.2f}" for x in load)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--rounds", type=int, default=12, help="rounds per run (round 1 is skipped as warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode (repeat i uses seed i)")
    ap.add_argument("--noise-multiplier", type=float, default=2.0)
    ap.add_argument("--hardened", action="store_true", help="OS CSPRNG randomness (default: seeded, repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    if "plain" not in args.modes:
        ap.error("--modes must include plain (the baseline of every ratio)")
    warnings.filterwarnings("ignore")

    t0 = time.perf_counter()
    load_before = _load()
    runs = run_interleaved(args, args.modes)
    load_after = _load()
    summary = {m: summarize(trs) for m, trs in runs.items()}
    stages = stage_table(runs["dp+secagg+"]) if "dp+secagg+" in runs else None
    if args.json:
        raw = {"summary": summary, "stages": stages, "load_average": [load_before, load_after],
               "rounds": {m: [[h["seconds"] for h in tr.history] for tr in trs] for m, trs in runs.items()},
               "aggregate_seconds": {m: [tr.recorder.seconds for tr in trs] for m, trs in runs.items()}}
        args.json.write_text(json.dumps(raw, indent=2))
    print(f"digits, FedHPro, 10 clients all in the cohort, dropout 0, {args.rounds} rounds x {args.repeats} repeats "
          f"per mode (round 1 skipped), noise multiplier {args.noise_multiplier}, "
          f"{'hardened' if args.hardened else 'seeded'} randomness, 1 torch thread; wall {time.perf_counter() - t0:.0f} s; "
          f"load average {_fmt_load(load_before)} before, {_fmt_load(load_after)} after\n")
    print("\n".join(report(summary, stages)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
