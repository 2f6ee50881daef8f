"""``run_secure.py budget``'s output: a readable table by default, JSON on request, and
errors under one prefix (``run_secure.py budget: error:``, as argparse's own)."""

from __future__ import annotations

import json

import pytest

from secure_fed.cli.budget import ERROR_PREFIX
from secure_fed.cli.main import main
from tests.budget_helpers import run_budget

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PLAN = ("--rounds", "4", "--samples-per-client", "120", "--release-rate", "0.5",
        "--target-epsilon", "4")


def _table(text: str, header: str) -> dict[str, str]:
    """The two-column markdown table under ``header`` in ``text``, as a dict."""
    lines = text.splitlines()
    start = lines.index(header) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        key, value = (c.strip() for c in line.strip("|").split("|"))
        rows[key] = value
    return rows


def test_plan_prints_tables_that_agree_with_the_json() -> None:
    rc, text, err = run_budget(*PLAN)
    rc_json, raw, _ = run_budget(*PLAN, "--json")
    assert rc == rc_json == 0, err
    res = json.loads(raw)
    assert "{" not in text and "'" not in text  # no Python dict or repr on the screen
    plan = _table(text, "| plan | value |")
    assert plan["rounds"] == "4"
    assert plan["noise multiplier (DP-SGD)"] == f"{res['noise_multiplier']:.6g}"
    assert plan["release noise multiplier"] == \
        f"{res['noise_multiplier'] * res['plan']['release_noise_ratio']:.6g}"
    assert plan["DP-SGD steps per round"].startswith(f"{res['plan']['local_steps_per_round']} at rate")
    assert plan["target epsilon"] == "4" and plan["delta"] == "1e-05"
    rounds = _table(text, "| round | epsilon (rdp) |")
    assert rounds == {str(r): f"{e:.4f}" for r, e in enumerate(res["epsilon_per_round_rdp"], 1)}


def test_json_is_one_object_on_request() -> None:
    rc, raw, _ = run_budget("--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "10", "--json")
    assert rc == 0 and len(raw.splitlines()) == 1
    assert json.loads(raw)["form"] == "epsilon"


@pytest.mark.parametrize("argv, says", [
    (("--noise-multiplier", "1"), "--sample-rate"),
    (("--rounds", "3", "--noise-multiplier", "1", "--cohort", "40"), "--cohort"),
    (("--rounds", "3", "--noise-multiplier", "1"), "releases nothing"),
])
def test_an_error_is_one_line_with_one_prefix(argv: tuple[str, ...], says: str) -> None:
    rc, out, err = run_budget(*argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(ERROR_PREFIX) and says in err
    assert err.count("budget:") == 1, err


def test_through_the_entry_point_argparse_errors_read_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "--noise-multiplier", "1"]) == 2
    ours = capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["budget", "--steps", "x"])
    theirs = capsys.readouterr().err
    assert exc.value.code == 2
    assert ours.startswith(ERROR_PREFIX) and theirs.startswith(ERROR_PREFIX)
