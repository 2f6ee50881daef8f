"""Benchmark the crypto/ hot paths against baselines measured in the same run.

* Mask expansion: ``crypto.prg.expand`` / ``expand_into`` of L uint32 words versus the raw
  AES-CTR keystream of ``cryptography`` over 4 L zero bytes, same key size, two ways (see
  :func:`bench_masks`). Target: throughput ratio >= 0.7. For reference only, numpy's non-cryptographic
  ``RandomState`` (what some SecAgg implementations use for masks) is timed too.
* Shamir: share 2 secrets t-of-n and reconstruct them from t random survivors (cold
  Lagrange cache). Target: under 0.5 s for n = 1000, t = 600.

Run: ``python benchmarks/bench_crypto.py`` (prints a markdown table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto import shamir  # noqa: E402
from crypto.prg import expand, expand_into  # noqa: E402
from crypto.rng import KeystreamRNG, random_bytes  # noqa: E402


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function, timing them round-robin so load drifts hit all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_masks(length: int, repeats: int, key_bytes: int) -> list[tuple[str, float, str]]:
    """Rows (name, seconds, note) for one key size.

    Two raw baselines from ``cryptography``: A = ``encryptor().update(zeros)`` over a
    preallocated zero buffer (returns fresh bytes, like ``expand`` returns a fresh
    array) and B = ``update_into`` a preallocated, reused output buffer (no allocation at
    all: pure cipher speed). Ratios are raw time / our time (>= 0.7 is the target).
    """
    seed = random_bytes(key_bytes)
    nbytes = 4 * length
    zeros, sink = bytes(nbytes), bytearray(nbytes + 16)
    out = np.zeros(length, dtype=np.uint32)
    state = np.random.RandomState(12345)  # reference only: NOT a cryptographic PRG

    def cipher() -> CipherContext:
        return Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()

    aes = f"AES-{8 * key_bytes}-CTR"
    raw_a, raw_b = f"raw {aes}: A = update(zeros)", f"raw {aes}: B = update_into(reused buf)"
    fns: dict[str, Callable[[], object]] = {
        raw_a: lambda: cipher().update(zeros),
        raw_b: lambda: cipher().update_into(zeros, sink),
        f"expand ({aes}, fresh array)": lambda: expand(seed, length, 32),
        f"expand_into, sign=+1 ({aes}, in place)": lambda: expand_into(seed, out, 1),
        "numpy RandomState.randint (NOT crypto)": lambda: state.randint(
            0, 2**32, size=length, dtype=np.uint32
        ),
    }
    med = _interleaved(fns, repeats)
    rows = []
    for name, t in med.items():
        note = f"{nbytes / 1e9 / t:.2f} GB/s"
        if not name.startswith("raw"):
            note += f", ratio vs A {med[raw_a] / t:.2f}x, vs B {med[raw_b] / t:.2f}x"
        rows.append((name, t, note))
    return rows


def bench_shamir(n: int, t: int, secrets: int, repeats: int) -> list[tuple[str, float, str]]:
    """Rows for sharing ``secrets`` 32-byte secrets t-of-n and reconstructing them."""
    values = [random_bytes(32) for _ in range(secrets)]
    picker = KeystreamRNG.hardened()
    share_times, rec_times, total_times = [], [], []
    for _ in range(repeats):
        shamir._lagrange_cached.cache_clear()
        start = time.perf_counter()
        shares = shamir.share_secrets(values, t, range(1, n + 1))
        mid = time.perf_counter()
        order = picker.permutation(n)[:t]
        survivors = [shares[int(i) + 1] for i in order]
        got = shamir.reconstruct(survivors, t, 32)
        end = time.perf_counter()
        if got != values:
            raise SystemExit("Shamir reconstruction failed")
        share_times.append(mid - start)
        rec_times.append(end - mid)
        total_times.append(end - start)
    tag = f"{secrets} secrets, n={n}, t={t}"
    total = statistics.median(total_times)
    return [
        (f"Shamir share ({tag})", statistics.median(share_times), "client side"),
        (f"Shamir reconstruct ({tag}, cold cache)", statistics.median(rec_times), "server side"),
        (f"Shamir share + reconstruct ({tag})", total, f"target < 0.5 s: {total < 0.5}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=10**6, help="mask length L (uint32)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats (median)")
    parser.add_argument("--n", type=int, default=1000, help="Shamir share holders")
    parser.add_argument("--t", type=int, default=600, help="Shamir threshold")
    parser.add_argument("--secrets", type=int, default=2, help="secrets shared per client")
    parser.add_argument("--shamir-repeats", type=int, default=5)
    args = parser.parse_args()

    rows = bench_masks(args.length, args.repeats, 16) + bench_masks(args.length, args.repeats, 32)
    rows += bench_shamir(args.n, args.t, args.secrets, args.shamir_repeats)
    print(f"L = {args.length} uint32 words ({4 * args.length / 1e6:.1f} MB), median of repeats\n")
    print("| operation | median time (ms) | note |")
    print("|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {1e3 * seconds:.2f} | {note} |")


if __name__ == "__main__":
    main()
