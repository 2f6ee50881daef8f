"""The command-line entry as a user runs it: light subcommands, every ``--help``, quiet on a
closed pipe.

Each case runs ``python run_secure.py ...`` in a fresh interpreter: what a subcommand
imports is only observable in a process that has imported nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from secure_fed.cli.main import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "opacus", "ray", "matplotlib")
"""Libraries that only training, accounting, Ray and plotting need (each costs seconds and
hundreds of MB to import)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _imported(stderr: str) -> set[str]:
    """Top-level packages named in ``-X importtime``'s report on stderr."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _run(*argv: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, str(ROOT / "run_secure.py"), *argv],
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300,
                          check=False)


def test_simulate_runs_a_round_without_importing_torch() -> None:
    proc = _run("simulate", "--clients", "6", "--length", "20", "--graph", "harary",
                "--neighbors", "4", "--dropout", "0.2", "--quiet", importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK: the unmasked sum equals the plaintext sum" in proc.stdout
    imported = _imported(proc.stderr)
    assert "protocol" in imported  # the report is read right: the round's own package is in it
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_building_the_parser_imports_nothing_heavy() -> None:
    proc = _run("--help", importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "simulate" in proc.stdout and "budget" in proc.stdout
    assert not _imported(proc.stderr) & set(HEAVY)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand(command: str) -> None:
    proc = _run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: run_secure.py {command}")
    assert proc.stderr == ""


@pytest.mark.parametrize("argv", [
    ("budget", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "10"),
    ("simulate", "--clients", "5", "--length", "10", "--quiet"),
])
def test_a_closed_stdout_ends_quietly(argv: tuple[str, ...]) -> None:
    """``run_secure.py ... | head -0``: the reader is gone before the first line is written."""
    proc = subprocess.Popen([sys.executable, "-W", "ignore", str(ROOT / "run_secure.py"), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=_env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the child has even started Python: its writes must fail
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == "", err
    assert rc == 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


def test_a_broken_pipe_of_the_command_itself_is_not_swallowed(monkeypatch: pytest.MonkeyPatch,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    """Only a closed stdout ends quietly: stdout here is open (a file), so the error is
    the command's own (e.g. a dead worker process) and must surface."""
    from secure_fed.cli.main import main

    def broken(args: object) -> int:
        raise BrokenPipeError("a worker's pipe")

    monkeypatch.setattr("secure_fed.cli.simulate.run", broken)
    with pytest.raises(BrokenPipeError):
        main(["simulate"])
