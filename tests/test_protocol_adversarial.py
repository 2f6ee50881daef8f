"""An active server against the real clients, over bytes (threat model of README).

Each test runs a malicious-server strategy from :mod:`tests.adversary` against real
:class:`SecAggClient` objects, then *attempts the recovery* of the target's exact input
from everything honest clients revealed (plus, for colluders, everything they hold), and
asserts that it fails, that honest clients refused with typed errors, and that no honest
client revealed a share it should not have.
"""

from __future__ import annotations

import pytest

from protocol.errors import ConsistencyViolation, ProtocolError
from protocol.params import choose_graph_params, tolerated_colluders
from tests.adversary import (
    Attack,
    SplitPlan,
    make_attack,
    mask_isolation_plan,
    run_isolation,
    run_split,
    split_view_plan,
)

# (n, graph, k, t): even and odd k, complete and Harary, the default digits run
# (10 clients, Harary k=8, t=5), and the default threshold t = floor((k+1)/2) + 1.
_AUTO = choose_graph_params(100, dropout=0.2)
ISOLATION_GRID = [
    (10, "harary", 8, 5),    # the default digits configuration
    (5, "complete", 4, 3),   # complete graph, odd cohort (even k)
    (12, "harary", 4, 3),
    (16, "harary", 6, 4),
    (100, _AUTO.graph, _AUTO.k, _AUTO.t),  # auto (k, t) at n=100
]


@pytest.mark.parametrize("n,graph,k,t", ISOLATION_GRID)
def test_mask_isolation_recovers_nothing(n: int, graph: str, k: int, t: int) -> None:
    """Forward target u only t - 1 shares, declare those peers dropped and list u's other
    neighbours as survivors. Without the paper's ConsistencyCheck this recovers x_u."""
    length = 2 if n >= 50 else 4
    attack = make_attack(n, t, graph, k, length=length)
    target = attack.config.cohort[0]
    plan = mask_isolation_plan(attack.graph, attack.config.cohort, t, target)
    assert plan is not None  # even k with t = k/2 + 1: the plan exists
    run_isolation(attack, plan)
    assert not attack.recovered(target)
    assert attack.refused.get(target) is ConsistencyViolation
    assert attack.refused_stage[target] == "consistency"  # before it signed anything
    assert target not in attack.revealed
    attack.check_reveals()


@pytest.mark.parametrize("n,graph,k,t", [(11, "complete", 10, 7), (12, "harary", 5, 4)])
def test_mask_isolation_has_no_plan_with_odd_k_or_higher_t(n: int, graph: str, k: int,
                                                           t: int) -> None:
    attack = make_attack(n, t, graph, k)
    assert mask_isolation_plan(attack.graph, attack.config.cohort, t, 0) is None


def test_mask_isolation_unauthenticated_refused_before_unmasking() -> None:
    """Without the consistency round, the same check runs before any share is revealed."""
    attack = make_attack(10, 5, "harary", 8, authenticated=False)
    plan = mask_isolation_plan(attack.graph, attack.config.cohort, 5, 0)
    assert plan is not None
    run_isolation(attack, plan)
    assert attack.refused.get(0) is ConsistencyViolation
    assert attack.refused_stage[0] == "unmask" and 0 not in attack.revealed
    assert not attack.recovered(0)
    attack.check_reveals()


SPLIT_GRID = [
    (5, "complete", 4),
    (10, "complete", 9),  # round_params(10, 0.1, max_colluders=1): the proposed default
    (10, "harary", 8),
    (12, "harary", 4),
    (16, "harary", 6),
    (12, "harary", 5),
]


def _colluders_near(attack_graph_order: tuple[int, ...], target: int, nb: frozenset[int],
                    c: int) -> frozenset[int]:
    """c of the target's neighbours, nearest first on the ring (most shared neighbours)."""
    order = list(attack_graph_order)
    pos = order.index(target)
    ranked = sorted(nb, key=lambda v: min((order.index(v) - pos) % len(order),
                                          (pos - order.index(v)) % len(order)))
    return frozenset(ranked[:c])


def _split_attack(n: int, graph: str, k: int, t: int, c: int, best_effort: bool = False
                  ) -> tuple[Attack, SplitPlan | None, int]:
    probe = make_attack(n, t, graph, k)
    target = probe.config.cohort[0]
    colluders = _colluders_near(probe.graph.order, target, probe.graph.neighbors_of(target), c)
    attack = make_attack(n, t, graph, k, colluders=colluders)
    plan = split_view_plan(attack.graph, attack.config.cohort, t, target, colluders,
                           best_effort)
    return attack, plan, target


@pytest.mark.parametrize("n,graph,k", SPLIT_GRID)
def test_split_view_with_up_to_c_colluders_recovers_nothing(n: int, graph: str, k: int) -> None:
    """For every t and every c <= the tolerated number (c < 2t - k - 1): no split view the
    honest clients accept reaches t holders on both sides, and the closest one the
    attacker can stage, run against the real clients anyway, does not give it the input
    (clients that see too few confirmations refuse with typed errors)."""
    ran = 0
    for t in range((k + 1) // 2 + 1, k + 2):
        c_max = tolerated_colluders(k, t)
        for c in range(0, c_max + 1):
            attack, plan, target = _split_attack(n, graph, k, t, c)
            assert plan is None  # no accepted split reaches t on both sides
            attack, plan, target = _split_attack(n, graph, k, t, c, best_effort=True)
            if plan is None:
                continue
            ran += 1
            run_split(attack, plan)
            assert not attack.recovered(target), (n, k, t, c)
            attack.check_reveals()
            assert all(issubclass(e, ProtocolError) for e in attack.refused.values())
    assert ran > 0


@pytest.mark.parametrize("n,graph,k,t", [(5, "complete", 4, 3), (5, "complete", 4, 4),
                                         (12, "harary", 4, 3), (16, "harary", 6, 4),
                                         (10, "harary", 8, 5), (10, "complete", 9, 6)])
def test_split_view_with_c_plus_one_colluders_recovers_the_input(n: int, graph: str, k: int,
                                                                 t: int) -> None:
    """The bound is tight: with 2t - k - 1 colluding neighbours (one more than tolerated) a
    split view that every honest client accepts recovers the target's exact input."""
    c = tolerated_colluders(k, t) + 1  # (10, harary, 8, 5), today's digits run: c + 1 = 1
    attack, plan, target = _split_attack(n, graph, k, t, c)
    assert plan is not None
    run_split(attack, plan)
    assert not attack.refused  # every honest client accepted its view
    attack.check_reveals()  # honest clients followed the rules...
    assert attack.recovered(target)  # ...and still the input leaks: c is the bound
