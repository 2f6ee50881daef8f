"""``run_secure.py budget`` when the PRV accountant fails: it says so and reports RDP.

The failure is observed, not predicted: the CLI runs Opacus's PRV accountant and checks
its answer. The fast tests make Opacus fail in each way it can (inf, nan, a negative
number, an exception) on a small plan; the slow test runs the real failing plan (noise
0.6, rate 1, 1000 steps, where Opacus returns inf after ~30 s and ~6 GB) end to end.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant as OpacusPRV
from opacus.accountants import RDPAccountant as OpacusRDP

import dp.accountants as acc
from secure_fed.config import DEFAULT_RELEASE_NOISE_RATIO, TrainConfig
from secure_fed.run.trainer import Trainer
from tests.budget_helpers import run_budget

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]
PLAN = ("--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "100")


def _rdp(z: float, q: float, t: int) -> float:
    a = OpacusRDP()
    a.history = [(z, q, t)]
    return float(a.get_epsilon(delta=1e-5))


def _raise(exc: BaseException):  # noqa: ANN202 - a get_epsilon stand-in
    def get_epsilon(self: object, delta: float, eps_error: float) -> float:
        raise exc
    return get_epsilon


FAILURES = [
    (lambda self, delta, eps_error: math.inf, "it returned epsilon = inf"),
    (lambda self, delta, eps_error: math.nan, "it returned epsilon = nan"),
    (lambda self, delta, eps_error: -0.5, "it returned epsilon = -0.5"),
    (_raise(RuntimeError("Cannot compute epsilon")), "it raised RuntimeError: Cannot compute"),
    (_raise(MemoryError()), "it raised MemoryError"),
]


@pytest.mark.parametrize("fake,why", FAILURES)
def test_text_output_says_prv_failed_and_reports_rdp(monkeypatch: pytest.MonkeyPatch,
                                                     fake: object, why: str) -> None:
    monkeypatch.setattr(OpacusPRV, "get_epsilon", fake)
    rc, out, err = run_budget(*PLAN, "--accountant", "prv")
    lines = out.splitlines()
    assert rc == 0 and err == "" and len(lines) == 2
    assert lines[0].startswith("PRV accountant failed for this plan (") and why in lines[0]
    assert lines[0].endswith("using RDP")
    assert "(rdp;" in lines[1] and "inf" not in lines[1] and "nan" not in lines[1]
    eps = float(lines[1].split("=")[1].split()[0])
    assert eps == pytest.approx(_rdp(1.0, 0.01, 100), rel=1e-5)


def test_json_output_names_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpacusPRV, "get_epsilon", FAILURES[0][0])
    rc, out, _ = run_budget(*PLAN, "--accountant", "prv", "--json")
    res = json.loads(out)
    assert rc == 0 and res["accountant"] == "rdp" and res["requested_accountant"] == "prv"
    assert "epsilon = inf" in res["note"]
    assert res["epsilon"] == pytest.approx(_rdp(1.0, 0.01, 100), rel=1e-6)


def test_working_prv_prints_no_failure_line() -> None:
    rc, out, _ = run_budget(*PLAN, "--accountant", "prv")
    assert rc == 0 and len(out.splitlines()) == 1 and "(prv;" in out


def test_inf_far_past_exp_underflow_explains_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where RDP puts epsilon past ~745 (float64 exp(-t) underflows) the note says so."""
    monkeypatch.setattr(OpacusPRV, "get_epsilon", FAILURES[0][0])
    monkeypatch.setattr(acc, "available_memory_bytes", lambda: 2.0**50)  # nothing allocated
    rc, out, _ = run_budget("--noise-multiplier", "0.6", "--sample-rate", "1", "--steps", "1000",
                      "--accountant", "prv")
    assert rc == 0 and "underflows: RDP gives 1.64e+03" in out.splitlines()[0]
    rc, out, _ = run_budget("--noise-multiplier", "0.6", "--sample-rate", "1", "--steps", "300",
                      "--accountant", "prv")  # RDP ~555: inf is not explained by underflow
    assert rc == 0 and "epsilon = inf)" in out.splitlines()[0]


def test_run_plan_form_falls_back_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpacusPRV, "get_epsilon", FAILURES[3][0])
    rc, out, _ = run_budget("--rounds", "3", "--samples-per-client", "200", "--release-rate", "0.1",
                      "--noise-multiplier", "1.5", "--accountant", "prv", "--json")
    res = json.loads(out)
    assert rc == 0 and res["final_epsilon_prv"] is None
    assert res["note"].startswith("PRV accountant failed for this plan (it raised RuntimeError")
    assert len(res["epsilon_per_round_rdp"]) == 3


def test_a_grid_too_large_for_memory_is_refused_without_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acc, "available_memory_bytes", lambda: 2.0**31)  # may use 1 GiB
    rc, out, _ = run_budget(*PLAN, "--accountant", "prv")  # 3.5e4 points: runs
    assert rc == 0 and "(prv;" in out

    def never(self: object, delta: float, eps_error: float) -> float:
        raise AssertionError("PRV must not run")  # would show as "it raised AssertionError"

    monkeypatch.setattr(OpacusPRV, "get_epsilon", never)
    rc, out, _ = run_budget("--noise-multiplier", "0.6", "--sample-rate", "1", "--steps", "1000",
                      "--accountant", "prv")
    first, second = out.splitlines()
    assert rc == 0 and "(not run: its grid of 3.53e+07 points needs ~6.57 GiB, more than the 1 GiB" in first
    assert "(rdp;" in second


def test_trainer_run_survives_a_failing_prv_and_records_rdp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpacusPRV, "get_epsilon", FAILURES[3][0])
    cfg = TrainConfig(clients=3, cohort=3, rounds=2, batch_size=64, rounds_of_hp=5,
                      meta_steps=10, meta_per_class=5, secagg="off", dp="sample",
                      noise_placement="local", mechanism="gaussian", noise_multiplier=2.0,
                      target_epsilon=None, accountant="prv", hardened=False, out="unused")
    tr = Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False)
    tr.run()
    assert len(tr.history) == 2
    eps = tr.epsilons()
    assert eps is not None and eps["prv"]["note"].startswith("PRV accountant failed")
    assert eps["prv"]["max"] == eps["rdp"]["max"] > 0  # the PRV column holds RDP's value
    assert tr.history[-1]["epsilon"] == eps["rdp"]["max"]
    assert all(math.isfinite(h["train_loss"]) for h in tr.history)  # DP-SGD batch losses


@pytest.mark.slow
def test_real_prv_failure_through_run_secure() -> None:
    """noise 0.6, rate 1, 1000 steps: Opacus's PRV returns inf; the CLI reports RDP."""
    argv = ["--noise-multiplier", "0.6", "--sample-rate", "1", "--steps", "1000"]
    proc = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "run_secure.py"), "budget",
                           *argv, "--accountant", "prv"], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first.startswith("PRV accountant failed for this plan") and first.endswith("using RDP")
    assert "(rdp;" in second and "inf" not in second
    assert float(second.split("=")[1].split()[0]) == pytest.approx(_rdp(0.6, 1.0, 1000), rel=1e-5)
    pts = acc.prv_grid_points([(0.6, 1.0, 1000)], 1e-5)
    avail = acc.available_memory_bytes()
    if avail is not None and pts * acc.PRV_BYTES_PER_POINT <= avail / 2:
        assert "it returned epsilon = inf" in first and "underflows" in first


def test_run_plan_form_takes_the_budget_split() -> None:
    """--release-noise-ratio: the printed noise is DP-SGD's, and a noisier release leaves
    DP-SGD less noise for the same target."""
    plan = ("--rounds", "5", "--samples-per-client", "200", "--release-rate", "0.5",
            "--target-epsilon", "4", "--json")
    rc1, out1, _ = run_budget(*plan, "--release-noise-ratio", "1")
    rc3, out3, _ = run_budget(*plan, "--release-noise-ratio", "3")
    one, three = json.loads(out1), json.loads(out3)
    assert rc1 == rc3 == 0 and three["plan"]["release_noise_ratio"] == 3.0
    assert three["noise_multiplier"] < one["noise_multiplier"]
    assert max(three["epsilon_per_round_rdp"]) <= 4.0 + 1e-9
    # the default is train's: split where the plan has both a release and DP-SGD steps
    _, out, _ = run_budget(*plan)
    assert json.loads(out)["plan"]["release_noise_ratio"] == DEFAULT_RELEASE_NOISE_RATIO
    _, out, _ = run_budget("--rounds", "5", "--release-rate", "0.5", "--target-epsilon", "4", "--json")
    assert json.loads(out)["plan"]["release_noise_ratio"] == 1.0  # no DP-SGD steps: one mechanism
    rc, _, err = run_budget(*plan, "--release-noise-ratio", "0")
    assert rc == 2 and "--release-noise-ratio" in err


@pytest.mark.parametrize("fake,why", FAILURES[:4])
def test_noise_search_reports_rdp_where_prv_fails(monkeypatch: pytest.MonkeyPatch, fake: object, why: str) -> None:
    """Form (b) with PRV failing at every noise: the noise is RDP's, labelled rdp, and the
    note says PRV failed for this plan and how."""
    monkeypatch.setattr(OpacusPRV, "get_epsilon", fake)
    rc, out, _ = run_budget("--target-epsilon", "2", "--sample-rate", "0.01", "--steps", "100",
                      "--accountant", "prv", "--json")
    res = json.loads(out)
    _, rdp_out, _ = run_budget("--target-epsilon", "2", "--sample-rate", "0.01", "--steps", "100", "--json")
    assert rc == 0 and res["accountant"] == "rdp" and res["requested_accountant"] == "prv"
    assert res["note"].startswith("PRV accountant failed for this plan") and why in res["note"]
    # RDP's root (to the search's tolerance; the PRV search brackets around it differently)
    assert res["noise_multiplier"] == pytest.approx(json.loads(rdp_out)["noise_multiplier"], rel=1e-6)


def test_noise_search_with_working_prv_says_prv() -> None:
    rc, out, _ = run_budget("--target-epsilon", "2", "--sample-rate", "0.01", "--steps", "100",
                      "--accountant", "prv", "--json")
    res = json.loads(out)
    assert rc == 0 and res["accountant"] == "prv" and res["note"] is None
