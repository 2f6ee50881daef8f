"""``run_secure.py sweep``: a grid of training runs and the privacy-utility plot over them.

``--grid FILE`` reads a TOML file with a ``[grid]`` table (key = [values]) and an optional
``[base]`` table (key = value); ``--set key=v1,v2,...`` and ``--fix key=v`` add to it or
override it. Keys are ``train`` options (``target-epsilon`` or ``target_epsilon``). Every
combination is a run folder under ``OUT/runs/``; ``OUT/sweep.csv`` and ``OUT/sweep.html``
hold the table and the plot. Running the same command again skips finished runs and resumes
interrupted ones. Exit status: 0 when every run finished, 1 when some failed (they are
retried by the next invocation), 2 for a bad flag, grid key or value, 130 when interrupted.

This module imports nothing heavy: ``run_secure.py --help`` loads it for every command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLE = "benchmarks/grids/privacy_utility.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the ``sweep`` subcommand."""
    parser.add_argument("--grid", type=Path, default=None, metavar="FILE",
                        help=f"TOML file: [grid] key = [values] to sweep, [base] key = value fixed (e.g. {EXAMPLE})")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="sweep a train option over these values (repeatable; overrides the file)")
    parser.add_argument("--fix", dest="fixes", action="append", default=[], metavar="KEY=V",
                        help="fix a train option for every run (repeatable; overrides the file)")
    parser.add_argument("--out", type=Path, default=Path("sweep"),
                        help="folder for sweep.csv, sweep.html and runs/<run-id>/")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: one run after another in this process; ray: one Ray task (1 CPU) per run")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="Ray cluster to join (e.g. auto or ray://host:10001; --out must be on a filesystem "
                             "every node sees); without it a local Ray limited to this machine's CPUs")
    parser.add_argument("--workers", type=int, default=0,
                        help="runs at the same time under --executor ray (0 = as many as Ray has CPUs; "
                             "a local Ray gets at most this machine's CPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-run lines")


def run(args: argparse.Namespace) -> int:
    """Run the sweep; returns the process exit status (ConfigError propagates: exit 2)."""
    from secure_fed.report.grid import CSV_NAME, HTML_NAME, load_grid
    from secure_fed.report.sweep import run_sweep

    grid = load_grid(args.grid, args.sets, args.fixes)
    try:
        res = run_sweep(grid, args.out, executor=args.executor, ray_address=args.ray_address,
                        workers=args.workers, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"sweep: interrupted; finished runs are kept and {args.out / CSV_NAME} lists them. "
              "Run the same command again to resume.", file=sys.stderr)
        return 130
    acts = res.actions()
    done = sum(r.status in ("complete", "budget-stopped") for r in res.rows)
    print(f"sweep: {done}/{len(res.rows)} runs finished ("
          + ", ".join(f"{n} {a}" for a, n in sorted(acts.items())) + ")")
    print(f"sweep: table {args.out / CSV_NAME}, plot {args.out / HTML_NAME}")
    for row in res.failed:
        print(f"sweep: FAILED {row.spec.run_dir}: {row.result.get('note')}", file=sys.stderr)
    return 1 if res.failed else 0


__all__ = ["add_arguments", "run"]
