"""Masking graphs from public randomness, and the (k, t) helper checked by Monte Carlo."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from crypto.errors import ConfigError
from crypto.rng import KeystreamRNG
from protocol.config import ProtocolConfig
from protocol.graph import build_graph
from protocol.params import (
    binom_cdf_below,
    choose_graph_params,
    halting_bound,
    leak_bound,
    round_params,
)
from protocol.simulator import simulate


def _exact_cdf_below(k: int, p: Fraction, t: int) -> Fraction:
    return sum((math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(t)), Fraction(0))


@pytest.mark.parametrize("n,k", [(10, 2), (11, 4), (12, 5), (50, 10), (101, 20)])
def test_harary_graph_is_k_regular_symmetric_and_public(n: int, k: int) -> None:
    cfg = ProtocolConfig(3, tuple(range(n)), 4, 32, k // 2 + 1 + 1, "harary", k)
    seed = bytes(32)
    g = build_graph(cfg, cfg.cohort, seed)
    for u in range(n):
        nb = g.neighbors_of(u)
        assert len(nb) == k and u not in nb
        assert all(u in g.neighbors_of(v) for v in nb)
    same = build_graph(ProtocolConfig(4, tuple(range(n)), 4, 32, k // 2 + 2, "harary", k),
                       cfg.cohort, seed)  # the seed decides, not the config's round id
    assert [same.neighbors_of(u) for u in range(n)] == [g.neighbors_of(u) for u in range(n)]
    other = build_graph(cfg, cfg.cohort, b"\1" * 32)
    assert [other.neighbors_of(u) for u in range(n)] != [g.neighbors_of(u) for u in range(n)]


@pytest.mark.parametrize("m,k", [(5, 3), (9, 3), (11, 5), (41, 7)])
def test_harary_odd_degree_on_an_odd_committed_set_is_symmetric(m: int, k: int) -> None:
    """Odd k needs an even cohort, but the graph is built over the clients that committed
    (one may not advertise): on an odd set every client gets k + 1 neighbours, and each
    neighbour relation goes both ways (a client must accept every share sent to it)."""
    cfg = ProtocolConfig(3, tuple(range(m + 1)), 4, 32, (k + 1) // 2 + 1, "harary", k)
    committed = tuple(range(1, m + 1))
    g = build_graph(cfg, committed, bytes(32))
    for u in committed:
        nb = g.neighbors_of(u)
        assert len(nb) == k + 1 and u not in nb
        assert all(u in g.neighbors_of(v) for v in nb)


def test_harary_odd_degree_needs_even_cohort() -> None:
    with pytest.raises(ConfigError, match="use k=6"):
        ProtocolConfig(0, tuple(range(11)), 4, 32, 4, "harary", 5)


def test_binomial_tail_matches_exact_rationals() -> None:
    for k, p, t in [(10, 0.8, 6), (40, 0.8, 22), (74, 0.8, 38), (7, 0.5, 1)]:
        exact = float(_exact_cdf_below(k, Fraction(p).limit_denominator(1000), t))
        assert binom_cdf_below(k, p, t) == pytest.approx(exact, rel=1e-9)


def test_helper_at_20_percent_dropout_and_n_100_halts_below_2_pow_minus_20() -> None:
    p = choose_graph_params(100, dropout=0.2)
    assert p.graph == "harary" and p.k < 99 and 2 * p.t > p.k + 1
    exact = 100 * _exact_cdf_below(p.k, Fraction(4, 5), p.t)  # independent arithmetic
    assert exact < Fraction(1, 2**20)
    assert p.halting_probability == pytest.approx(float(exact), rel=1e-9)
    smaller = choose_graph_params(100, dropout=0.2, halting_bits=10)
    assert smaller.k < p.k  # the helper returns the smallest degree meeting the target
    assert halting_bound(100, p.k - 2, (p.k - 2 + 1) // 2 + 1, 0.2) > 2.0**-20


def test_helper_refuses_impossible_targets() -> None:
    with pytest.raises(ConfigError, match="lower the targets"):
        choose_graph_params(20, dropout=0.5, corrupt=0.3)


def test_leak_bound_grows_with_corruption() -> None:
    assert leak_bound(1000, 40, 30, 0.0) == 0.0
    assert 0 < leak_bound(1000, 40, 30, 0.05) < leak_bound(1000, 40, 30, 0.2)


def _halts(graph_sets: list[frozenset[int]], alive: np.ndarray, t: int) -> bool:
    """Whether some client's secret the server needs keeps fewer than t live holders."""
    for u, nb in enumerate(graph_sets):
        live = sum(bool(alive[v]) for v in nb) + (1 if alive[u] else 0)
        needed = alive[u] or any(alive[v] for v in nb)
        if needed and live < t:
            return True
    return False


def test_monte_carlo_halting_rate_below_the_bound() -> None:
    """At a looser target (2^-4) the bound must dominate the simulated halting rate, and the
    per-client binomial it is built from must match simulation."""
    n, dropout = 100, 0.2
    p = choose_graph_params(n, dropout=dropout, halting_bits=4)
    cfg = ProtocolConfig(0, tuple(range(n)), 1, 32, p.t, "harary", p.k)
    g = build_graph(cfg, cfg.cohort, bytes(32))
    sets = [g.neighbors_of(u) for u in range(n)]
    rng = KeystreamRNG.from_seed(11, "monte-carlo")
    trials, halts, per_client, per_total = 3000, 0, 0, 0
    for _ in range(trials):
        alive = ~rng.bernoulli(dropout, n)
        halts += _halts(sets, alive, p.t)
        counts = [sum(bool(alive[v]) for v in sets[u]) for u in range(5)]
        per_client += sum(c < p.t for c in counts)
        per_total += 5
    rate = halts / trials
    sd = math.sqrt(p.halting_probability * (1 - p.halting_probability) / trials)
    assert rate <= p.halting_probability + 4 * sd + 1e-3
    f = binom_cdf_below(p.k, 1 - dropout, p.t)
    sd1 = math.sqrt(f * (1 - f) / per_total)
    assert abs(per_client / per_total - f) <= 5 * sd1 + 1e-3
    assert halts > 0  # the looser target is loose enough to observe failures at all


# -- round_params: thresholds from a stated adversary --------------------------------------
@pytest.mark.parametrize("n,dropout,c,auth,bits", [
    (10, 0.1, 1, True, 6), (10, 0.1, 0, True, 4), (100, 0.2, 0, True, 20),
    (100, 0.2, 2, True, 20), (1000, 0.05, 3, True, 20), (60, 0.1, 4, False, 10),
    (12, 0.05, 1, True, 5)])
def test_round_params_meets_the_colluder_bound_and_the_halting_target(
        n: int, dropout: float, c: int, auth: bool, bits: float) -> None:
    p = round_params(n, dropout, c, auth, halting_bits=bits)
    assert 2 * p.t > p.k + 1 and p.t <= p.k + 1
    if auth:
        assert c < 2 * p.t - p.k - 1 and p.model == "active"
        assert c + 1 >= 2 * (p.t - 1) - p.k - 1 or 2 * (p.t - 1) <= p.k + 1  # t is minimal
    else:
        assert c < p.t and p.model == "passive"
    assert p.tolerated >= c
    exact = _exact_cdf_below(p.k, Fraction(1) - Fraction(dropout).limit_denominator(10**6), p.t)
    factor = 1 if p.graph == "complete" else n
    assert float(factor * exact) <= 2.0 ** -bits
    assert p.halting_probability == pytest.approx(float(min(1, factor * exact)), rel=1e-6)
    ProtocolConfig(0, tuple(range(n)), 1, 32, p.t, p.graph,
                   None if p.graph == "complete" else p.k, auth)  # a valid config


def test_round_params_for_the_default_digits_cohort() -> None:
    """10 clients, 10% dropout, one colluder: the complete graph with t = 6 (the Harary
    k = 8 graph would need t = 6 too, and halts far more often)."""
    p = round_params(10, 0.1, 1, halting_bits=6)
    assert (p.graph, p.k, p.t, p.tolerated) == ("complete", 9, 6, 1)
    assert halting_bound(10, 8, 6, 0.1) > p.halting_probability
    record = p.to_dict()
    assert record["max_colluders"] == 1 and record["model"] == "active"
    assert record["guarantee"] == p.describe() and "\n" not in p.describe()
    assert "k=9, t=6" in p.describe() and "active server" in p.describe()


def test_round_params_more_colluders_need_a_larger_threshold() -> None:
    ts = [round_params(100, 0.2, c).t - round_params(100, 0.2, c).k // 2 for c in range(4)]
    ks = [round_params(100, 0.2, c) for c in range(4)]
    assert all(p.tolerated >= c for c, p in enumerate(ks))
    assert ts == sorted(ts)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=10, dropout=0.1, max_colluders=2, halting_bits=6), "lower --max-colluders"),
    (dict(n=5, dropout=0.1, max_colluders=5), "cohort of at least 6"),
    (dict(n=10, dropout=0.1, max_colluders=1, halting_bits=20), "loosen the halting target"),
    (dict(n=12, dropout=0.1, max_colluders=1, graph="harary", neighbors=4, halting_bits=5),
     "graph='auto'"),
])
def test_round_params_refuses_what_cannot_meet_both(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        round_params(**kwargs)


def test_round_params_passive_model_is_weaker_than_active() -> None:
    active, passive = round_params(40, 0.1, 3, True), round_params(40, 0.1, 3, False)
    assert passive.model == "passive" and passive.t <= active.t
    assert "passive server" in passive.describe()


def test_round_params_leak_bound_with_a_corrupt_fraction() -> None:
    p = round_params(100, 0.2, 2, corrupt=0.01)
    assert 0 < p.leak_probability == pytest.approx(leak_bound(100, p.k, p.t, 0.01))
    assert round_params(100, 0.2, 2).leak_probability == 0.0


def test_simulate_chooses_k_and_t_with_round_params_when_not_given() -> None:
    sim = simulate(20, 3, graph="harary", dropout=0.1, max_colluders=1, halting_bits=4, seed=2)
    p = round_params(20, 0.1, 1, graph="harary", halting_bits=4)
    assert sim.ok and sim.params == p and p.graph == "harary"
    assert sim.result.survivors  # the round ran on that (k, t)
    auto = simulate(20, 3, graph="harary", dropout=0.1, halting_bits=4, seed=2)
    assert auto.ok and auto.params is not None and auto.params.colluders == 0
    with pytest.raises(ConfigError, match="tolerates fewer than 1 colluders"):
        simulate(12, 3, graph="harary", neighbors=4, threshold=3, max_colluders=1,
                 dropout=0.1, halting_bits=0)
