"""``run_secure.py audit RUN_DIR``: empirical privacy audits of a finished run.

Runs the audits named by ``--which`` on the run folder, writes every result (summaries,
plots and raw scores) to ``RUN_DIR/audit_results.json``, re-renders ``RUN_DIR/report.html``
with an "Empirical privacy audits" section, and prints one line per audit. Exit status: 0
when no audit failed; 1 when an audit's check failed (the results and the report are still
written; a one-line message on stderr says which and why) or the run's evidence does not hold
(its audit chain does not verify, config.json is not the one the chain recorded, or a recorded
epsilon disagrees with its ledger events: nothing is audited); 2 for bad input (not a run
folder, unknown or unavailable audit, bad option values).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from secure_fed.errors import AuditFailed, ConfigError

DEFAULT_WHICH = "inversion,one-run,membership"


def _max_advantage(value: str) -> float | None:
    if value.strip().lower() == "none":
        return None
    try:
        out = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or 'none' (got {value!r})") from None
    if not out >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or 'none' (got {value!r})")
    return out


def _nonnegative(value: str) -> int:
    try:
        out = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {value!r})") from None
    if out < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {value!r})")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``audit`` arguments on ``parser``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                        help="finished run folder (config.json, checkpoint.pt, audit.jsonl); "
                             "audit_results.json and report.html are written there")
    parser.add_argument("--which", default=DEFAULT_WHICH,
                        help="comma-separated audits to run: inversion (analytic attack on per-class "
                             "uploads), one-run (one-run epsilon lower bound of the release mechanism), "
                             "membership (membership inference on the final model)")
    parser.add_argument("--seed", type=_nonnegative, default=0,
                        help="seed of every audit's own randomness (replayed rounds, canaries, shadow "
                             "runs): the same seed gives the same results")
    parser.add_argument("--shadow-runs", type=_nonnegative, default=0,
                        help="membership: reference models trained for the reference-model attack "
                             "(0 = loss-threshold attack only)")
    parser.add_argument("--inversion-points", default="first,final",
                        help="inversion: model points whose round is replayed and attacked: first (round 1, "
                             "the initial model) and/or final (the round after the last)")
    parser.add_argument("--inversion-max-advantage", type=_max_advantage, default=0.05,
                        help="inversion: under secure aggregation, fail if the attack on the server's sum "
                             "beats the population-mean baseline for some client by more than this mean "
                             "cosine ('none' = measure only)")
    parser.add_argument("--option", action="append", default=[], metavar="AUDIT.KEY=VALUE",
                        help="extra keyword option for one audit, repeatable (VALUE is read as JSON, "
                             "else as a string; dashes in KEY become underscores), e.g. one-run.canaries=1000")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _options(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    if "inversion" in names:
        out["inversion"].update(points=args.inversion_points, max_advantage=args.inversion_max_advantage)
    for item in args.option:
        key, sep, raw = item.partition("=")
        audit, dot, name = key.partition(".")
        if not sep or not dot or not audit or not name:
            raise ConfigError(f"--option: expected AUDIT.KEY=VALUE (got {item!r})")
        if audit not in out:
            raise ConfigError(f"--option: audit {audit!r} is not selected by --which ({', '.join(names)})")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[audit][name.replace("-", "_")] = value
    return {k: v for k, v in out.items() if v}


def run(args: argparse.Namespace) -> int:
    """Run the audits; 0 all passed or measured, 1 an audit failed, 2 bad input."""
    from secure_fed.audit.runner import RESULTS_NAME, parse_which, run_audits
    from secure_fed.run.evidence import AuditChainError, EvidenceError

    try:
        names = parse_which(args.which)
        run_audits(args.run_dir, names, seed=args.seed, shadow_runs=args.shadow_runs,
                             options=_options(args, names), progress=not args.quiet, log=print)
    except AuditFailed as exc:
        print(f"audit: FAILED: {exc}", file=sys.stderr)
        return 1
    except (AuditChainError, EvidenceError) as exc:
        print(f"audit: refused: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, OSError) as exc:
        print(f"audit: error: {exc}", file=sys.stderr)
        return 2
    print(f"audit: results in {Path(args.run_dir) / RESULTS_NAME}; report {Path(args.run_dir) / 'report.html'}")
    return 0


__all__ = ["add_arguments", "run"]
