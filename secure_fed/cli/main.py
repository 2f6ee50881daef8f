"""Command line of secure_fed (``python run_secure.py`` / ``secure-fed``).

Subcommands, one module each in this package: ``train`` (the default when no subcommand is
given), ``simulate`` (the secure aggregation protocol alone), ``budget`` (privacy accounting
for a plan), ``report``, ``audit`` and ``sweep``. A fault (bad value, unreadable or unwritable
file, another process writing the run folder) ends in one line on stderr naming the file or
flag and exit status 2, never a traceback; ``--debug`` (before the subcommand) re-raises it. Each module registers its flags and runs
its command; heavy libraries (torch training, matplotlib, Ray) are imported when a command
runs, not when the parser is built. Every flag is in
``--help`` with its default; a bad value exits with status 2 and a one-line message that
names the flag.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from secure_fed.cli import audit, budget, report, simulate, sweep, train
from secure_fed.errors import SecureFedError

COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "train": (train, "train FedHPro or a baseline"),
    "simulate": (simulate, "run the secure aggregation protocol alone and check its sum"),
    "budget": (budget, "privacy accounting: epsilon for a plan, or the noise for a target"),
    "report": (report, "re-render a run's report.html and verify its audit chain"),
    "audit": (audit, "empirical privacy audits of a finished run (inversion, one-run DP audit, membership inference)"),
    "sweep": (sweep, "a grid of training runs and the privacy-utility plot over them"),
}
"""Every subcommand: its module (``add_arguments(parser)``, ``run(args) -> exit status``) and help."""
SUBCOMMANDS = tuple(COMMANDS)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default, except on aliases that share another flag's destination."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse._StoreConstAction | argparse._StoreFalseAction) and action.dest in ("hardened", "target_epsilon"):
            return action.help
        if action.dest == "release_noise_ratio":  # its help states the default, which depends on --dp and --algorithm
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run_secure.py",
        description="secure_fed: DP-noised, securely aggregated FedHPro. With no subcommand, runs `train` with its defaults.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, (module, helptext) in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=helptext, formatter_class=_Formatter))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(argv) and argv[0] == "--debug"
    rest = argv[1:] if debug else argv
    if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
        argv = [*(["--debug"] if debug else []), "train", *rest]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("give a subcommand (train, simulate, budget, report, audit, sweep)")
    try:
        status = int(COMMANDS[args.command][0].run(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a pipe of the command's own (a worker process, Ray), not the user's
        return _stdout_closed()
    except SecureFedError as exc:
        if args.debug:
            raise
        print(f"run_secure.py: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug:
            raise
        where = exc.filename if exc.filename is not None else "a file"
        print(f"run_secure.py: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("run_secure.py: interrupted; the last complete round is checkpointed (use --resume)", file=sys.stderr)
        return 130


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or stdout without a descriptor
        return True


def _stdout_closed() -> int:
    """The reader of stdout went away (``... | head -1``): stop quietly, as a killed-by-SIGPIPE
    command would (status 128 + SIGPIPE), with no traceback from the final flush either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in a test)
        pass
    return 128 + int(getattr(signal, "SIGPIPE", 13))
