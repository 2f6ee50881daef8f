"""Benchmark: batched server-side gradient matching vs the per-class Python loop.

Times ``secure_fed.fl.matching.match_hyper_prototypes`` (all classes in one batched step) and
``tests.reference.matching_reference.ref_match_hyper_prototypes`` (a Python loop over classes
with autograd ``create_graph``, the official code's structure) on the same inputs, in
one run, on CPU and on CUDA if present; optionally the same for the meta prototypes.
Prints a markdown table with the median wall time of a full match and the speedup.

Usage: python benchmarks/bench_matching.py [--classes 100 --length 5 --dim 256 --steps 30]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secure_fed.fl.matching import (  # noqa: E402
    hp_feature_gradients,
    match_hyper_prototypes,
    match_meta_prototypes,
    meta_classifier_gradients,
)
from tests.reference.matching_reference import (  # noqa: E402
    ref_match_hyper_prototypes,
    ref_match_meta_prototypes,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    """Classifier with logits of order 1, standard normal prototypes, and client-gradient
    SUMS built from 20 random features per class near the class direction."""
    C, dim = args.classes, args.dim
    g = torch.Generator().manual_seed(args.seed)
    W = 3.0 * torch.randn(C, dim, generator=g) / math.sqrt(dim)
    b = 0.1 * torch.randn(C, generator=g)
    real = torch.randn(C, 20, dim, generator=g) + 2.0 * F.normalize(W, dim=-1).unsqueeze(1)
    GW, Gb = meta_classifier_gradients(real, W, b)
    tensors = {
        "W": W, "b": b,
        "P": torch.randn(C, args.length, dim, generator=g),
        "M": torch.randn(C, args.meta_length, dim, generator=g),
        "G": hp_feature_gradients(real, W, b) * 20, "GW": GW * 20, "Gb": Gb * 20,
        "active": torch.rand(C, generator=g) < 0.9,
    }
    return {k: v.to(device) for k, v in tensors.items()}


def _row(task: str, device: torch.device, batched: Callable[[], torch.Tensor],
         loop: Callable[[], torch.Tensor], repeats: int) -> str:
    diff = (batched() - loop()).abs().max().item()
    t_batched = _median_seconds(batched, device, repeats)
    t_loop = _median_seconds(loop, device, repeats)
    return (f"| {task} | {device.type} | {t_batched * 1e3:.1f} | {t_loop * 1e3:.1f} | "
            f"{t_loop / t_batched:.1f}x | {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100, help="number of classes C")
    parser.add_argument("--length", type=int, default=5, help="hyper-prototype rows L")
    parser.add_argument("--meta-length", type=int, default=50, help="meta-prototype rows R")
    parser.add_argument("--dim", type=int, default=256, help="feature dimension")
    parser.add_argument("--steps", type=int, default=30, help="SGD steps per match")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--meta", action="store_true", help="also time meta-prototype matching")
    parser.add_argument("--meta-repeats", type=int, default=1, help="timed runs for --meta")
    parser.add_argument("--no-cuda", action="store_true", help="CPU only even if CUDA exists")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is steadier on a busy host")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"C={args.classes}, L={args.length}, R={args.meta_length}, dim={args.dim}, "
          f"steps={args.steps}, lr={args.lr}, median of {args.repeats} "
          f"(meta: {args.meta_repeats}), load average {os.getloadavg()[0]:.1f}\n")
    print("| task | device | batched (ms) | per-class loop (ms) | speedup | max abs diff |")
    print("|---|---|---|---|---|---|")
    kw = {"steps": args.steps, "lr": args.lr}
    for device in devices:
        x = _inputs(args, device)
        hp = (x["P"], x["W"], x["b"], x["G"], x["active"])
        print(_row("hyper-prototypes", device, partial(match_hyper_prototypes, *hp, **kw),
                   partial(ref_match_hyper_prototypes, *hp, **kw), args.repeats))
        if args.meta:
            mp = (x["M"], x["W"], x["b"], x["GW"], x["Gb"], x["active"])
            print(_row("meta prototypes", device, partial(match_meta_prototypes, *mp, **kw),
                       partial(ref_match_meta_prototypes, *mp, **kw), args.meta_repeats))

if __name__ == "__main__":
    main()
