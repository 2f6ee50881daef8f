"""The ``simulate`` subcommand: table, verification and exit statuses."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import protocol.simulator as simulator
from protocol.simulator import SimulationResult
from secure_fed.cli import simulate as simulate_cli


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_simulate_prints_table_and_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    rc = simulate_cli.run(_args("--clients", "12", "--length", "50", "--graph", "harary",
                                "--neighbors", "4", "--threshold", "3", "--max-colluders", "0", "--dropout", "0.2",
                                "--dropout-stage", "share", "--seed", "4", "--quiet",
                                "--memory"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "| advertise |" in out and "| unmask |" in out and "peak server MiB" in out
    assert "OK: the unmasked sum equals the plaintext sum" in out


def test_simulate_exits_nonzero_on_mismatch(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    real = simulator.simulate

    def corrupted(*a: object, **kw: object) -> SimulationResult:
        sim = real(*a, **kw)  # type: ignore[arg-type]
        bad = sim.expected.copy()
        bad[0] ^= np.uint32(1)
        return SimulationResult(sim.result, bad)

    monkeypatch.setattr(simulate_cli, "simulate", corrupted)
    assert simulate_cli.run(_args("--clients", "5", "--length", "3", "--quiet")) == 1
    assert "MISMATCH" in capsys.readouterr().err


def test_simulate_reports_abort(capsys: pytest.CaptureFixture[str]) -> None:
    rc = simulate_cli.run(_args("--clients", "6", "--length", "3", "--dropout", "0.95",
                                "--quiet", "--no-authenticated"))
    assert rc == 3
    assert "aborted" in capsys.readouterr().err


def test_memory_is_traced_only_on_request(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[bool] = []
    real = simulator.simulate

    def spy(*a: object, **kw: object) -> SimulationResult:
        seen.append(bool(kw["trace_memory"]))
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(simulate_cli, "simulate", spy)
    assert simulate_cli.run(_args("--clients", "5", "--length", "3", "--quiet")) == 0
    assert "peak not traced; see --memory" in capsys.readouterr().out
    assert simulate_cli.run(_args("--clients", "5", "--length", "3", "--quiet", "--memory")) == 0
    out = capsys.readouterr().out
    assert "peak server MiB (tracemalloc)" in out and "not traced" not in out
    assert seen == [False, True]


@pytest.mark.parametrize("argv, authenticated", [
    ((), True), (("--authenticated",), True), (("--no-authenticated",), False),
    (("--unauthenticated",), False),  # the old spelling, kept as a hidden alias
])
def test_authentication_is_spelled_as_in_train(argv: tuple[str, ...], authenticated: bool) -> None:
    assert _args(*argv).authenticated is authenticated


def test_help_says_what_dropout_means_here_and_hides_the_old_flags() -> None:
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--authenticated, --no-authenticated" in text and "--memory" in text
    assert "--unauthenticated" not in text and "--no-memory" not in text
    assert "at the stage --dropout-stage" in text and "train's --dropout" in text
