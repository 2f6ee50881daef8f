"""Benchmark: wall time of one digits FL round (K clients x 1 local epoch) per model.

Measures what the SmallCNN costs on a CPU relative to a baseline measured in the same run
(multinomial logistic regression on the same pixels, same loop), with and without Opacus
per-sample gradients (GradSampleModule, the expensive part of DP-SGD). Local training only:
no SecAgg, no DP noise, no server work. Prints a markdown table.

    python benchmarks/bench_models.py --clients 10 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from opacus import GradSampleModule
from torch import nn

from secure_fed.device import configure_cpu_threads, resolve_device, to_device
from secure_fed.fl.data import load_dataset, make_partition
from secure_fed.fl.models import build_model


class LogReg(nn.Module):
    """Baseline: flatten + one linear layer (64 -> 10 for digits)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flat(x))


def local_epoch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, per_sample: bool
) -> None:
    """One pass over a client's data with SGD (per-sample gradients if asked)."""
    net: nn.Module = GradSampleModule(model) if per_sample else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    perm = torch.randperm(x.shape[0])
    for start in range(0, x.shape[0], batch):
        idx = perm[start : start + batch]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    if per_sample:
        net._close()  # type: ignore[operator]  # remove Opacus hooks


def one_round(
    make: Callable[[], nn.Module],
    parts: list[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    per_sample: bool,
) -> float:
    """Seconds for every client to copy the global model and train one local epoch."""
    global_model = make()
    start = time.perf_counter()
    for idx in parts:
        local = copy.deepcopy(global_model)
        local_epoch(local, x[idx], y[idx], batch, per_sample)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = default)")
    parser.add_argument("--no-per-sample", action="store_true", help="skip the Opacus rows")
    args = parser.parse_args()
    configure_cpu_threads(args.threads or None)

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    data = load_dataset("digits")
    x, y = to_device((data.train_x, data.train_y), device)
    parts = [
        torch.as_tensor(p)
        for p in make_partition(
            data.train_y.numpy(), args.clients, "dirichlet", args.alpha, seed=args.seed
        )
    ]

    def cnn() -> nn.Module:
        return to_device(build_model("digits", 10, data.input_shape), device)

    def logreg() -> nn.Module:
        return to_device(LogReg(64, 10), device)

    variants = [("logreg (baseline)", logreg, False), ("SmallCNN", cnn, False)]
    if not args.no_per_sample:
        variants += [
            ("logreg + per-sample grads", logreg, True),
            ("SmallCNN + per-sample grads", cnn, True),
        ]
    rows = []
    for name, make, per_sample in variants:
        one_round(make, parts, x, y, args.batch, per_sample)  # warm-up
        times = [one_round(make, parts, x, y, args.batch, per_sample) for _ in range(args.repeats)]
        rows.append((name, statistics.median(times)))
    base = rows[0][1]
    print(
        f"digits, {args.clients} clients x 1 local epoch, batch {args.batch}, "
        f"{x.shape[0]} training samples, device {device}, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}\n"
    )
    print("| model | seconds per round | ratio to logreg |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} | {sec / base:.1f}x |")


if __name__ == "__main__":
    main()
