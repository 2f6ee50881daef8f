"""One-run DP audit: the Steinke-Nasr-Jagielski bound against independent derivations, and
the audit of this project's release mechanism (correct, and with the noise cut tenfold)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from secure_fed.audit.one_run import (
    ReleaseSpec,
    audit_mechanism,
    audit_one_run,
    claimed_epsilon,
    epsilon_lower_bound,
    p_value_bound,
    project_release,
)
from secure_fed.audit.runner import validate_result
from secure_fed.config import TrainConfig
from secure_fed.errors import ConfigError
from secure_fed.run.trainer import Trainer


# -- the bound ---------------------------------------------------------------------------------
def _bound_by_definition(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The theorem's bound written out term by term with exact binomial coefficients."""
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(u: int) -> float:  # P[Bin(r, q) >= u]
        return sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(max(u, 0), r + 1))

    alpha = max(((f(v - i) - f(v)) / i for i in range(1, m + 1)), default=0.0)
    return min(f(v) + 2 * m * delta * alpha, 1.0)


@pytest.mark.parametrize(("m", "r", "v", "eps", "delta"), [
    (20, 20, 17, 1.0, 1e-3), (30, 12, 12, 2.5, 1e-2), (40, 40, 25, 0.3, 1e-5), (10, 6, 0, 1.0, 0.1),
    (50, 50, 50, 4.0, 0.0), (15, 10, 7, 0.0, 0.02),
])
def test_p_value_matches_the_theorem_written_out(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value_bound(m, r, v, eps, delta) == pytest.approx(_bound_by_definition(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("r", "v"), [(100, 100), (100, 80), (1000, 700), (10, 9), (500, 260)])
def test_delta_zero_is_the_clopper_pearson_bound(r: int, v: int) -> None:
    # delta = 0: P[Bin(r, q) >= v] = I_q(v, r - v + 1), so the smallest q not rejected is the
    # Clopper-Pearson lower limit beta.ppf(p, v, r - v + 1), and eps-hat = logit of it.
    expected = max(0.0, float(special.logit(stats.beta.ppf(0.05, v, r - v + 1))))
    assert epsilon_lower_bound(r, r, v, 0.0, 0.05) == pytest.approx(expected, abs=1e-7)


def test_all_correct_closed_form() -> None:
    # v = r, delta = 0: q^r < p  <=>  eps < logit(p^(1/r)).
    for r in (5, 50, 2000):
        assert epsilon_lower_bound(r, r, r, 0.0, 0.05) == pytest.approx(float(special.logit(0.05 ** (1 / r))), abs=1e-7)


def test_one_guess_with_delta_closed_form() -> None:
    # m = r = v = 1: bound = q + 2 delta (1 - q) < p  <=>  q < (p - 2 delta) / (1 - 2 delta).
    p, delta = 0.9, 0.05
    assert epsilon_lower_bound(1, 1, 1, delta, p) == pytest.approx(float(special.logit((p - 2 * delta) / (1 - 2 * delta))), abs=1e-7)
    assert epsilon_lower_bound(1, 1, 1, 0.01, 0.05) == 0.0  # q >= 1/2 > (p - 2 delta) / (1 - 2 delta)


def test_monotone_in_correct_guesses_delta_and_confidence() -> None:
    m, r = 1000, 400
    by_v = [epsilon_lower_bound(m, r, v, 1e-5) for v in range(200, 401, 20)]
    assert all(a <= b + 1e-9 for a, b in zip(by_v, by_v[1:], strict=False)) and by_v[-1] > by_v[0]
    by_delta = [epsilon_lower_bound(m, r, 350, d) for d in (0.0, 1e-6, 1e-5, 1e-4, 1e-3)]
    assert all(a >= b - 1e-9 for a, b in zip(by_delta, by_delta[1:], strict=False)) and by_delta[0] > by_delta[-1]
    by_p = [epsilon_lower_bound(m, r, 350, 1e-5, p) for p in (0.001, 0.01, 0.05, 0.2)]
    assert all(a <= b + 1e-9 for a, b in zip(by_p, by_p[1:], strict=False))
    assert epsilon_lower_bound(m, r, 200, 1e-5) == 0.0  # half right: no evidence at all


def test_epsilon_hat_is_rejected_and_a_bit_more_is_not() -> None:
    m, r, v, delta, p = 2000, 600, 540, 1e-4, 0.05
    e = epsilon_lower_bound(m, r, v, delta, p)
    assert e > 0 and p_value_bound(m, r, v, e, delta) < p <= p_value_bound(m, r, v, e + 0.011, delta)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError):
        p_value_bound(10, 5, 6, 1.0, 0.0)
    with pytest.raises(ConfigError):
        epsilon_lower_bound(10, 5, 4, 0.0, 1.5)


# -- the mechanism -------------------------------------------------------------------------------
SPEC = ReleaseSpec(mechanism="discrete", placement="distributed", unit="sample", noise_multiplier=1.07,
                   clip=1.0, delta=1e-5, threshold=5, cohort=10, survivors=9, bits=32, secure=True,
                   blocks=(("feat_grad", (1500,), 500.0), ("class_count", (500,), 500.0)))
MIXED_BOUNDS = dataclasses.replace(SPEC, blocks=(("feat_grad", (1500,), 500.0), ("class_count", (500,), 250.0)))


def _broken(spec: ReleaseSpec):  # the same code with a tenth of the noise the accountant assumes
    return project_release(dataclasses.replace(spec, noise_multiplier=spec.noise_multiplier / 10))


def test_correct_mechanism_never_exceeds_the_claim_over_20_seeds() -> None:
    claim = claimed_epsilon(SPEC.event(), SPEC.delta)
    assert 2.0 < claim < 5.0
    for seed in range(20):
        out = audit_mechanism(SPEC, canaries=2000, seed=seed)
        assert out["summary"]["claimed_epsilon"] == pytest.approx(claim)
        assert out["summary"]["epsilon_hat"] <= claim, seed
        assert out["passed"] is True and out["summary"]["noise_too_little_in"] is None


def test_tenth_of_the_noise_is_caught() -> None:
    for seed in range(3):
        out = audit_mechanism(SPEC, release=_broken, canaries=2000, seed=seed)
        s = out["summary"]
        assert s["epsilon_hat"] > s["claimed_epsilon"]
        assert out["passed"] is False
        assert s["noise_ratio_min"] < 0.2 and s["noise_too_little_in"]


@pytest.mark.parametrize("spec", [
    dataclasses.replace(SPEC, mechanism="gaussian", placement="local", secure=False, threshold=1),
    # float noise under SecAgg is credited one client's share: local placement, so that share is the
    # whole sigma * C and a tenth of it is within the audit's reach with a canary in every coordinate
    # (a distributed share, sigma * C / sqrt(t), claims an epsilon no canary count here can refute)
    dataclasses.replace(SPEC, mechanism="gaussian", placement="local"),
    dataclasses.replace(SPEC, unit="client", placement="local"),
])
def test_other_placements_and_mechanisms(spec: ReleaseSpec) -> None:
    good = audit_mechanism(spec, canaries=2000, seed=7)
    bad = audit_mechanism(spec, release=_broken, canaries=2000, seed=7)
    assert good["passed"] is True and good["summary"]["noise_too_little_in"] is None
    # float noise under SecAgg: the ledger credits one client's share (the codec clamps and rounds
    # each noised upload), so the sum carries sqrt(survivors) times the accounted noise
    credited = spec.survivors ** 0.5 if spec.mechanism == "gaussian" and spec.secure else 1.0
    assert 0.9 * credited < good["summary"]["noise_ratio_min"] < 1.1 * credited
    assert bad["passed"] is False


def test_discrete_noise_is_as_accounted_in_every_block() -> None:
    out = audit_mechanism(MIXED_BOUNDS, canaries=1000, seed=5)
    assert out["summary"]["noise_too_little_in"] is None


def _half_noise_in_count(spec: ReleaseSpec):  # class_count keeps half the noise it should
    base = project_release(spec)
    sl = slice(1500, 2000)

    def release(contributions: np.ndarray, rng):  # type: ignore[no-untyped-def]
        views = base(contributions, rng)
        clean = contributions.sum(0, keepdims=True) if views.shape[0] == 1 else contributions
        views[:, sl] = clean[:, sl] + 0.5 * (views[:, sl] - clean[:, sl])
        return views

    return release


def test_noise_check_sees_a_block_with_less_noise() -> None:
    out = audit_mechanism(MIXED_BOUNDS, release=_half_noise_in_count, canaries=1000, seed=5)
    check = out["raw"]["noise_check"]
    assert check["class_count"]["too_little_noise"] and check["class_count"]["ratio"] < 0.6
    assert not check["feat_grad"]["too_little_noise"] and 0.9 < check["feat_grad"]["ratio"] < 1.1


def test_deterministic_under_a_seed_and_result_shape() -> None:
    a = audit_mechanism(SPEC, canaries=600, seed=3)
    b = audit_mechanism(SPEC, canaries=600, seed=3)
    assert a["raw"]["scores"] == b["raw"]["scores"] and a["summary"] == b["summary"]
    assert a["name"] == "one_run" and isinstance(a["passed"], bool)
    json.dumps(a)  # plain JSON all the way down
    for plot in a["plots"]:
        assert {"title", "xlabel", "ylabel", "xscale", "yscale", "series"} <= set(plot)
        for s in plot["series"]:
            assert len(s["x"]) == len(s["y"])
    assert len(a["raw"]["scores"]) == 600 == len(a["raw"]["included"])


def test_too_many_canaries_for_the_release() -> None:
    with pytest.raises(ConfigError):
        audit_mechanism(SPEC, canaries=SPEC.dim + 1, seed=0)


# -- a run directory -----------------------------------------------------------------------------
TINY = dict(clients=4, cohort=3, rounds=2, batch_size=64, rounds_of_hp=2, meta_steps=2, meta_per_class=2,
            secagg="secagg", dropout=0.0, noise_multiplier=1.0, target_epsilon=None, hardened=False)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(**{**TINY, "out": str(out), "run_id": "dp"})
    Trainer(cfg, progress=False, log=lambda s: None).run()
    return out / "dp"


def test_audit_of_a_run_directory(dp_run: Path) -> None:
    # FedHPro's per-class release is C x C + C = 110 entries a round: 2 rounds hold 220 canaries
    a = audit_one_run(dp_run, seed=11, canaries=200)
    b = audit_one_run(dp_run, seed=11, canaries=200)
    s = a["summary"]
    assert a == b
    assert s["claim_source"] == "ledger journal" and s["journal_matches_mechanism"] is True
    assert s["releases"] == 2 and s["canaries"] == 200 and s["mechanism"] == "discrete"
    assert s["epsilon_hat"] <= s["claimed_epsilon"] and a["passed"] is True
    assert validate_result("one-run", a)["summary"] == s  # the audit runner's contract
    # the claim is the journaled release event with its subsampling removed
    journal = [json.loads(line) for line in (dp_run / "ledger_journal.jsonl").read_text().splitlines()]
    ev = next(e for e in journal[0]["events"] if e["label"] == "per_class_release")
    assert ev["sample_rate"] < 1.0 and a["raw"]["events"][0]["sample_rate"] == 1.0
    with pytest.raises(ConfigError):
        audit_one_run(dp_run, seed=1, releases=5)


def test_run_without_dp_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig(dp="off", target_epsilon=None).to_dict()))
    out = audit_one_run(tmp_path, seed=0)
    assert out["passed"] is None and "skipped" in out["summary"]


def test_missing_files_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json"):
        audit_one_run(tmp_path, seed=0)


def test_scores_separate_when_the_noise_is_tiny() -> None:
    spec = dataclasses.replace(SPEC, noise_multiplier=0.01)
    out = audit_mechanism(spec, canaries=400, seed=0)
    scores, inc = np.array(out["raw"]["scores"]), np.array(out["raw"]["included"], dtype=bool)
    assert scores[inc].min() > scores[~inc].max()
    assert out["passed"] is True  # the claim follows the (tiny) noise: still consistent
