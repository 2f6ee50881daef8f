"""Planning: root finding for the noise, run plans, the budget CLI forms."""

from __future__ import annotations

import json
import math

import pytest
from opacus.accountants.utils import get_noise_multiplier

from dp.accountants import RDPAccountant
from dp.errors import ConfigError
from dp.events import GaussianEvent
from dp.planning import (
    RunPlan,
    epsilon_per_round,
    noise_for_plan,
    noise_for_target,
    plan_epsilon,
    plan_events,
    round_events,
)
from tests.budget_helpers import run_budget

DELTA = 1e-5


@pytest.mark.parametrize("target,q,t", [(1.0, 0.01, 1000), (4.0, 0.1, 100), (8.0, 1.0, 1)])
def test_noise_for_target_is_the_smallest_safe_noise(target: float, q: float, t: int) -> None:
    def make(z: float) -> list:
        return [GaussianEvent(z, q, t, "none" if q == 1.0 else "poisson")]

    z = noise_for_target(make, target, DELTA)
    acc = RDPAccountant()
    assert acc.epsilon(make(z), DELTA) <= target < acc.epsilon(make(z * (1 - 1e-4)), DELTA)
    ref = get_noise_multiplier(target_epsilon=target, target_delta=DELTA, sample_rate=q,
                               steps=t, accountant="rdp", epsilon_tolerance=0.001)
    assert z == pytest.approx(ref, rel=0.02)


def test_run_plan_events_and_participation() -> None:
    plan = RunPlan(rounds=4, cohort_rate=0.5, release_rate=0.1, local_steps=30, local_rate=0.05)
    evs = round_events(plan, 1.3, subject="2", round_index=1)
    assert [e.label for e in evs] == ["per_class_release", "dpsgd"]
    assert evs[1].steps == 30 and evs[1].sample_rate == 0.05 and evs[0].subject == "2"
    assert len(plan_events(plan, 1.3)) == 8
    exp = RunPlan(rounds=4, cohort_rate=0.5, release_rate=0.1, participation="expected")
    assert len(plan_events(exp, 1.3)) == 2
    per = epsilon_per_round(plan, 1.3, DELTA)
    assert len(per) == 4 and all(a < b for a, b in zip(per, per[1:], strict=False))
    assert per[-1] == plan_epsilon(plan, 1.3, DELTA)
    z = noise_for_plan(plan, 3.0, DELTA)
    assert plan_epsilon(plan, z, DELTA) <= 3.0 < plan_epsilon(plan, z * 0.999, DELTA)
    actual = round_events(plan, 1.3, release_noise_multiplier=0.9)[0]
    assert actual.noise_multiplier == 0.9
    with pytest.raises(ConfigError):
        RunPlan(rounds=3)


def test_cli_form_a_and_b_text_and_json() -> None:
    rc, out, _ = run_budget("--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "100")
    assert rc == 0 and "epsilon = 1.21415" in out
    rc, out, _ = run_budget("--target-epsilon", "1.2141452107864754", "--sample-rate", "0.01",
                      "--steps", "100", "--json")
    res = json.loads(out)
    assert rc == 0 and res["noise_multiplier"] == pytest.approx(1.0, rel=1e-5)


def test_cli_form_c_prints_epsilon_per_round() -> None:
    argv = ["--rounds", "5", "--clients", "10", "--cohort", "4", "--local-epochs", "2",
            "--batch-size", "32", "--samples-per-client", "300", "--release-rate", "0.1",
            "--noise-multiplier", "1.5"]
    rc, out, _ = run_budget(*argv, "--json")
    res = json.loads(out)
    assert rc == 0 and len(res["epsilon_per_round_rdp"]) == 5
    assert res["plan"]["local_rate"] == 1 / math.ceil(300 / 32)
    assert res["plan"]["local_steps_per_round"] == 2 * 10
    rc, out, _ = run_budget(*argv[:-2], "--target-epsilon", "4.0", "--accountant", "prv", "--json")
    res = json.loads(out)
    # planned for PRV: PRV's epsilon is within the target; RDP, the looser bound, is above it
    assert rc == 0 and res["final_epsilon_prv"] is not None and res["final_epsilon_prv"] <= 4.0
    assert res["epsilon_per_round_rdp"][-1] >= res["final_epsilon_prv"]
    rc, out, _ = run_budget(*argv)
    assert rc == 0 and "| 5 |" in out


def test_cli_reports_missing_flags() -> None:
    rc, _, err = run_budget("--noise-multiplier", "1.0")
    assert rc == 2 and "--sample-rate" in err
    rc, _, err = run_budget("--rounds", "3", "--noise-multiplier", "1.0")
    assert rc == 2 and "releases nothing" in err


def test_prv_planning_finds_its_own_root_without_falling_back() -> None:
    # PRV is tighter than RDP, so the noise it plans is smaller, and it is PRV's own root:
    # PRV's epsilon is within the target there and above it just below (no RDP fallback).
    from dp.accountants import PRVAccountant

    def events(z: float) -> list[GaussianEvent]:
        return [GaussianEvent(z, 0.01, 1000)]

    z_rdp = noise_for_target(events, 2.0, DELTA, "rdp")
    z_prv = noise_for_target(events, 2.0, DELTA, "prv")
    prv = PRVAccountant()
    assert z_prv < z_rdp
    assert prv.epsilon(events(z_prv), DELTA) <= 2.0 < prv.epsilon(events(z_prv * 0.99), DELTA)
