"""Benchmark dp/: per-class clipped gradient sums and integer-noise throughput.

Clipping: per-sample clipped per-class gradient sums of a linear head (features, weight
and bias gradients, flat clipping, count coordinate) at batch 100, against baselines
measured in the same run: plain autograd (one forward/backward of the summed cross-entropy
w.r.t. f, W, b of the same batch: no per-sample work), plain autograd per class (the same
per-class sums, unclipped) and Opacus (GradSampleModule hooks + flat clipping + per-class
sums of the clipped per-sample gradients). Two batches: a *class* batch (100 samples of one
class, the per-class batch of the algorithm, DESIGN section 2) and a *mixed* batch (labels
uniform over the C classes, which writes up to C blocks of the C x (C*dim + C) release).
The methods take turns (interleaved repeats of 10 calls, each block after one untimed call);
a ratio is the median over repeats of the method's time over plain autograd's in the same
repeat, so drifts in machine speed cancel.

The ``--classifier fedavg`` release (the default) is only the per-class residual sums U
(C x C) and the count coordinate (:func:`dp.clipping.per_class_residual_sums`, logits
included in its time); the joint release above is what ``--classifier meta`` used to need.

Noise: samples/s of the exact discrete Gaussian sampler and the float Gaussian in
hardened mode (AES-CTR keystream keyed from the OS).

    python benchmarks/bench_dp.py [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from crypto.rng import KeystreamRNG
from dp.clipping import (
    per_class_clipped_sums,
    per_class_residual_sums,
    residual_release_norm,
    zero_sums,
)
from dp.mechanisms import DiscreteGaussianMechanism, GaussianMechanism
from secure_fed.privacy.upload import UploadSpec


def _plain(f: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
    f = f.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(f @ w.T + b, y, reduction="sum").backward()


def _plain_per_class(f: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
                     ) -> None:
    """The same per-class sums, unclipped, by autograd: one backward per class present."""
    w = w.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    for c in torch.unique(y).tolist():
        fc = f[y == c].detach().requires_grad_(True)
        torch.nn.functional.cross_entropy(fc @ w.T + b, y[y == c], reduction="sum").backward()
        w.grad = b.grad = None


class _Head(torch.nn.Module):
    def __init__(self, dim: int, n_cls: int) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(dim))
        self.fc = torch.nn.Linear(dim, n_cls)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f + self.shift)


def _opacus_fn(dim: int, n_cls: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    from opacus import GradSampleModule

    gsm = GradSampleModule(_Head(dim, n_cls), loss_reduction="sum")

    def run(f: torch.Tensor, y: torch.Tensor) -> None:
        for p in gsm.parameters():
            p.grad_sample = None
            p.grad = None
        torch.nn.functional.cross_entropy(gsm(f), y, reduction="sum").backward()
        gs = [p.grad_sample.reshape(len(f), -1) for p in gsm.parameters()]
        norms = torch.stack([g.norm(dim=1) for g in gs], 1).norm(dim=1)
        factor = (1.0 / (norms + 1e-6)).clamp(max=1.0)
        for g in gs:  # per-class sums of the clipped per-sample gradients
            torch.zeros(n_cls, g.shape[1]).index_add_(0, y, g * factor[:, None])

    return run


def _interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, inner: int
                       ) -> dict[str, list[float]]:
    """Seconds per call of each method, one entry per repeat; the methods take turns."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(3):
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved: load changes hit every method alike
            fn()  # untimed: the previous method's allocations and cache traffic settle first
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t) / inner)
    return times


def _ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over repeats of each method's time over ``base``'s in the same repeat (pairs
    taken a few milliseconds apart, so drifts in machine speed cancel)."""
    return {k: statistics.median(a / b for a, b in zip(v, times[base], strict=True))
            for k, v in times.items()}


TARGETS = {(256, 10): 2.5, (512, 100): 1.5}  # the bounds, x plain, class batch


def bench_clipping(repeats: int) -> list[str]:
    rows = ["| head | batch | plain autograd (ms) | plain autograd, per class | "
            "Opacus hooks + flat clip | ours, fresh release | ours, into the release | "
            "zero the release (once per round) | residual release U (--classifier fedavg) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    spec = UploadSpec("sample", 1.0, 1)
    sens, count = spec.release_sensitivity, spec.count_coordinate
    assert abs(residual_release_norm(count) - sens) < 1e-12
    verdicts = []
    for dim, n_cls in ((256, 10), (512, 100)):
        for batch in ("class", "mixed"):
            g = torch.Generator().manual_seed(0)
            f = torch.randn(100, dim, generator=g)
            if batch == "class":  # the algorithm's per-class batch: 100 samples of class 3
                y = torch.full((100,), 3, dtype=torch.long)
            else:  # labels uniform over the C classes
                y = torch.randint(0, n_cls, (100,), generator=g)
            w = torch.randn(n_cls, dim, generator=g) * 0.05
            b = torch.zeros(n_cls)
            opa = _opacus_fn(dim, n_cls)
            release = zero_sums(n_cls, dim)
            fns: dict[str, Callable[[], object]] = {
                "plain": lambda f=f, y=y, w=w, b=b: _plain(f, y, w, b),
                "plain_pc": lambda f=f, y=y, w=w, b=b: _plain_per_class(f, y, w, b),
                "opacus": lambda f=f, y=y, o=opa: o(f, y),
                "ours": lambda f=f, y=y, w=w, b=b: per_class_clipped_sums(
                    f, y, w, b, 1.0, 1.0),
                "ours_into": lambda f=f, y=y, w=w, b=b, r=release: per_class_clipped_sums(
                    f, y, w, b, 1.0, 1.0, into=r),
                # The release's C x C x dim weight block, zeroed: the client does this once
                # per round (its buffer), not once per class batch.
                "zero": lambda r=release: r.weight.zero_(),
                "residual": lambda f=f, y=y, w=w, b=b: per_class_residual_sums(f @ w.T + b, y, sens, count),
            }
            times = _interleaved_times(fns, repeats, inner=10)
            t = _ratios(times, "plain")
            p = statistics.median(times["plain"])
            rows.append(f"| Linear({dim}, {n_cls}) | {batch} | {p * 1e3:.3f} | "
                        f"{t['plain_pc']:.2f}x | {t['opacus']:.2f}x | "
                        f"{t['ours']:.2f}x | {t['ours_into']:.2f}x | "
                        f"{t['zero']:.2f}x | {t['residual']:.2f}x |")
            if (dim, n_cls) == (512, 100):
                verdicts.append(f"Linear(512, 100), {batch} batch, residual release (--classifier fedavg): "
                                f"{t['residual']:.2f}x plain, target <= 1.5x: "
                                f"{'holds' if t['residual'] <= 1.5 else 'DOES NOT HOLD'}")
            if batch == "class":
                r, bound = t["ours_into"], TARGETS[(dim, n_cls)]
                verdicts.append(f"Linear({dim}, {n_cls}), class batch into the release: "
                                f"{r:.2f}x plain, target <= {bound}x: "
                                f"{'holds' if r <= bound else 'DOES NOT HOLD'}")
    return rows + [""] + verdicts


def bench_noise(repeats: int) -> list[str]:
    rows = ["| mechanism (hardened) | scale | samples/s |", "|---|---:|---:|"]
    n = 1_000_000
    rng = KeystreamRNG.hardened()
    cases: list[tuple[str, float, DiscreteGaussianMechanism | GaussianMechanism]] = [
        ("discrete Gaussian (exact)", s, DiscreteGaussianMechanism(s)) for s in (1.0, 1e2, 1e5)
    ]
    cases.append(("float Gaussian (4-normal sum)", 1.0, GaussianMechanism(1.0)))
    for name, scale, mech in cases:
        ts = []
        for _ in range(max(3, repeats // 10)):
            t = time.perf_counter()
            mech.sample(n, rng)
            ts.append(time.perf_counter() - t)
        rows.append(f"| {name} | {scale:g} | {n / statistics.median(ts):.3g} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="interleaved repeats per method")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--skip-noise", action="store_true", help="clipping only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print("\n".join(bench_clipping(args.repeats)))
    if not args.skip_noise:
        print()
        print("\n".join(bench_noise(args.repeats)))


if __name__ == "__main__":
    main()
