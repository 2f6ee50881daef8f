"""Shared helper for the tests of ``run_secure.py budget``: run it in process."""

from __future__ import annotations

import argparse
import contextlib
import io

from secure_fed.cli import budget as budget_cli


def run_budget(*argv: str) -> tuple[int, str, str]:
    """``budget`` with ``argv``: (exit status, stdout, stderr)."""
    parser = argparse.ArgumentParser()
    budget_cli.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = budget_cli.run(parser.parse_args(list(argv)))
    return rc, out.getvalue(), err.getvalue()
