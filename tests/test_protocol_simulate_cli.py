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
                                "--dropout-stage", "share", "--seed", "4", "--quiet"))
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
                                "--quiet", "--unauthenticated"))
    assert rc == 3
    assert "aborted" in capsys.readouterr().err
