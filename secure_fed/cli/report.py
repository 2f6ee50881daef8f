"""``run_secure.py report RUN_DIR``: re-render a run's ``report.html`` and verify its audit log.

Runs on the operator's side from the run folder's ``config.json`` and ``audit.jsonl``
alone. Prints the report path and ``audit chain: OK (N records)``. Exit status: 0 when the
chain verifies, config.json is the one its first record hashes and every recorded epsilon is
what the run's accountants give for the ledger events in the chain; 1 when not (the report is
still written and shows the failure; a one-line message on stderr names the record); 2 when the folder,
``config.json`` or ``audit.jsonl`` is missing or config.json is unreadable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from secure_fed.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``report`` arguments on ``parser``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                        help="run folder holding config.json and audit.jsonl "
                             "(report.html is written there)")


def run(args: argparse.Namespace) -> int:
    """Render the report and check the chain; 0 OK, 1 broken chain, 2 missing/unreadable files."""
    from secure_fed.report.html import render  # matplotlib: only when a report is rendered

    try:
        out = render(args.run_dir)
    except (OSError, ConfigError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {out.path}")
    if not out.chain.ok:
        print(f"report: audit chain BROKEN: {out.chain.message}", file=sys.stderr)
        return 1
    if out.evidence is not None and not out.evidence.ok:
        print(f"report: evidence FAILED: {out.evidence.message}", file=sys.stderr)
        return 1
    print(f"audit chain: {out.chain.message}")
    return 0


__all__ = ["add_arguments", "run"]
