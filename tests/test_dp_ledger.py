"""PrivacyLedger: replay, subjects, check-then-commit enforcement, dropout-aware events."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dp.errors import ConfigError, PrivacyBudgetExceeded
from dp.events import DiscreteGaussianEvent, GaussianEvent
from dp.ledger import PrivacyLedger

DELTA = 1e-5


def _mixed_ledger() -> PrivacyLedger:
    led = PrivacyLedger()
    for r in range(3):
        for k in ("0", "1"):
            led.append(GaussianEvent(1.1 + 0.1 * r, 0.05, 20, subject=k, label="dpsgd", round=r))
        led.append(GaussianEvent(2.0, 0.2, 1, subject="0", label="per_class_release", round=r))
    led.append(DiscreteGaussianEvent(800.0, 7, 120.0, 900.0, 64, 0.2, 1, subject="1"))
    led.append(GaussianEvent(4.0, 1.0, 1, "none", "client", "all", "telemetry"))
    return led


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_json_replay_reproduces_every_epsilon_bit_for_bit(accountant: str) -> None:
    led = _mixed_ledger()
    if accountant == "prv":  # PRV handles Gaussian events only
        led = PrivacyLedger(e for e in led.events if isinstance(e, GaussianEvent)
                            and e.round in (-1, 0))
    text = led.to_json()
    again = PrivacyLedger.from_json(text)
    assert again.events == led.events
    assert again.epsilons(DELTA, accountant) == led.epsilons(DELTA, accountant)
    assert again.to_json() == text
    json.loads(text)  # plain JSON


def test_subjects_compose_their_own_and_the_all_events() -> None:
    led = _mixed_ledger()
    assert led.subjects() == ["0", "1"]
    eps = led.epsilons(DELTA)
    assert set(eps) == {"0", "1"}
    only_all = led.epsilon(DELTA, "all")
    assert 0 < only_all < min(eps.values())
    assert led.max_epsilon(DELTA) == max(eps.values())
    assert led.epsilon(DELTA, "7") == only_all  # a client with no events of its own


def test_events_are_immutable_and_validated() -> None:
    ev = GaussianEvent(1.0, 0.1, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.steps = 4  # type: ignore[misc]
    for bad in (dict(noise_multiplier=0.0, sample_rate=0.1), dict(noise_multiplier=1.0,
                sample_rate=0.5, sampling="none"), dict(noise_multiplier=1.0, sample_rate=1.5),
                dict(noise_multiplier=1.0, sample_rate=0.1, steps=0)):
        with pytest.raises(ConfigError):
            GaussianEvent(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DiscreteGaussianEvent(1.0, 0, 1.0, 1.0, 1, 1.0, 1, "none")


def test_malformed_json_is_refused_whole() -> None:
    good = json.loads(_mixed_ledger().to_json())
    good["events"][2]["steps"] = -1
    for text in ("{", json.dumps({"version": 9, "events": []}), json.dumps(good),
                 json.dumps({"version": 1, "events": [{"kind": "laplace"}]})):
        with pytest.raises(ConfigError):
            PrivacyLedger.from_json(text)


def test_would_exceed_is_a_dry_run_and_charge_is_check_then_commit() -> None:
    led = PrivacyLedger([GaussianEvent(1.0, 0.01, 100, subject="3")])
    before = led.to_json()
    big = [GaussianEvent(0.7, 1.0, 50, "none", subject="3")]
    assert led.would_exceed(big, 2.0, DELTA)
    assert led.to_json() == before
    with pytest.raises(PrivacyBudgetExceeded):
        led.charge(big, 2.0, DELTA)
    assert led.to_json() == before
    small = [GaussianEvent(1.0, 0.01, 1, subject="3")]
    led.charge(small, 2.0, DELTA)
    assert len(led) == 2


def test_enforcement_stops_between_step_100_and_1000_never_above_target() -> None:
    led = PrivacyLedger()
    step = GaussianEvent(1.0, 0.01, 1, subject="0")
    reported = []
    stopped_at = None
    for i in range(1, 1001):
        try:
            led.charge([step], 2.0, DELTA)
        except PrivacyBudgetExceeded:
            stopped_at = i
            break
        if i % 50 == 0 or i == 100:
            reported.append(led.max_epsilon(DELTA))
    assert stopped_at is not None and 100 < stopped_at < 1000
    assert led.max_epsilon(DELTA) <= 2.0 and max(reported) <= 2.0
    assert reported[1] == pytest.approx(1.2141452107864754, rel=1e-9)  # step 100
    assert PrivacyLedger([step] * stopped_at).max_epsilon(DELTA) > 2.0


def test_distributed_event_records_the_survivors_noise_not_the_plan() -> None:
    planned = GaussianEvent.from_shares(0.5, survivors=10, sensitivity=1.0, sample_rate=0.1)
    actual = GaussianEvent.from_shares(0.5, survivors=6, sensitivity=1.0, sample_rate=0.1)
    assert actual.noise_multiplier == pytest.approx(0.5 * 6**0.5)
    assert PrivacyLedger([actual]).max_epsilon(DELTA) > PrivacyLedger([planned]).max_epsilon(DELTA)
    few = DiscreteGaussianEvent(300.0, 6, 100.0, 800.0, 64, 0.1)
    many = DiscreteGaussianEvent(300.0, 10, 100.0, 800.0, 64, 0.1)
    assert PrivacyLedger([few]).max_epsilon(DELTA) > PrivacyLedger([many]).max_epsilon(DELTA)


def test_max_epsilon_with_fallback_redoes_everyone_with_rdp() -> None:
    led = _mixed_ledger()  # has a discrete Gaussian event: PRV cannot account it
    eps, used, note = led.max_epsilon_with_fallback(DELTA, "prv")
    assert used == "rdp" and note and eps == led.max_epsilon(DELTA, "rdp")
    g = PrivacyLedger(e for e in led.events if isinstance(e, GaussianEvent) and e.round < 1)
    eps2, used2, note2 = g.max_epsilon_with_fallback(DELTA, "prv")
    assert used2 == "prv" and note2 is None and eps2 < g.max_epsilon(DELTA, "rdp")


def test_ledger_refuses_non_events_atomically() -> None:
    led = PrivacyLedger()
    with pytest.raises(ConfigError):
        led.extend([GaussianEvent(1.0, 0.1), "not an event"])  # type: ignore[list-item]
    assert len(led) == 0
