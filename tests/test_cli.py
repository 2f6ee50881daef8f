"""Command line: every flag documented with its default, one-line errors naming the flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from secure_fed.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _train_parser():  # type: ignore[no-untyped-def]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]  # type: ignore[attr-defined]


def test_every_train_flag_is_in_help_with_its_default() -> None:
    p = _train_parser()
    text = " ".join(p.format_help().split())
    for action in p._actions:
        if action.dest in ("help",):
            continue
        flag = action.option_strings[0]
        assert flag in text, flag
        assert action.help, f"{flag} has no help text"
    assert "(default: 0.5)" in text  # --alpha
    assert "(default: digits)" in text


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--alpha", "0"], "--alpha"),
        (["--alpha", "-1"], "--alpha"),
        (["--cohort", "20", "--clients", "10"], "--cohort"),
        (["--dataset", "nope"], "--dataset"),
        (["--rounds", "0"], "--rounds"),
        (["--algorithm", "fedfoo"], "--algorithm"),
        (["--device", "cuda:7"], "--device"),
        (["--server-workers", "0"], "--server-workers"),
        (["--release-noise-ratio", "2", "--algorithm", "fedavg"], "--release-noise-ratio"),
    ],
)
def test_bad_values_exit_2_with_one_line_naming_the_flag(argv: list[str], flag: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_secure.py"), "train", "--out", str(tmp_path), "--quiet", *argv],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert flag in lines[0]
    assert "Traceback" not in proc.stderr


def test_no_subcommand_means_train(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_train(args):  # type: ignore[no-untyped-def]
        seen["rounds"] = args.rounds
        return 0

    monkeypatch.setattr("secure_fed.cli.train.run", fake_train)
    assert main([]) == 0 and seen["rounds"] == 30
    assert main(["--rounds", "2"]) == 0 and seen["rounds"] == 2
