"""An active server against the real clients, over bytes (threat model of README).

Each test runs a malicious-server strategy from :mod:`tests.adversary` against real
:class:`SecAggClient` objects, then *attempts the recovery* of the target's exact input
from everything honest clients revealed (plus, for colluders, everything they hold), and
asserts that it fails, that honest clients refused with typed errors, and that no honest
client revealed a share it should not have.
"""

from __future__ import annotations

import pytest

from crypto.agreement import generate_keypair
from crypto.rng import KeystreamRNG
from crypto.signing import sign
from protocol.errors import (
    AuthenticationFailure,
    ConsistencyViolation,
    InvalidPublicKey,
    PolicyViolation,
    ProtocolError,
)
from protocol.messages import AdvertiseKeys
from protocol.params import choose_graph_params, tolerated_colluders
from protocol.policy import ClientPolicy
from protocol.runner import make_identities
from protocol.server import SecAggServer
from protocol.session import advertise_fields
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


# -- freshness, key substitution, low-order and non-canonical keys --------------------------
def _honest_neighbours(attack: Attack, v: int) -> list[int]:
    return [w for w in sorted(attack.graph.neighbors_of(v)) if w not in attack.colluders]


def test_same_round_replay_of_an_old_advertisement_is_refused() -> None:
    """Attempt 1 of round 5 (nonce N1) collected client 1's signed keys; attempt 2 of the
    same round id (fresh nonce N2) replays them without contacting client 1. Every honest
    neighbour refuses before sealing a share to the stale key, and so does an honest
    server; with the nonce reused, the same replay verifies (what the nonce is for)."""
    ident = make_identities(range(6), KeystreamRNG.from_seed(9, "ids"))
    n1, n2 = bytes(range(16)), bytes(range(1, 17))
    old = make_attack(6, 4, nonce=n1, identities=ident)
    old.advertise()
    stale = old.adverts[1]

    def replay(adverts: dict[int, AdvertiseKeys]) -> None:
        adverts[1] = stale

    new = make_attack(6, 4, nonce=n2, identities=ident, seed=4)
    new.advertise(rewrite=replay, skip=frozenset({1}))
    new.share()
    for v in _honest_neighbours(new, 1):
        if v != 1:
            assert new.refused.get(v) is AuthenticationFailure and v not in new.shares
    new.mask()
    assert not new.recovered(0)
    server = SecAggServer(new.config, {u: k.public for u, k in ident.items()})
    with pytest.raises(AuthenticationFailure):
        server.receive(stale.encode())

    same = make_attack(6, 4, nonce=n1, identities=ident, seed=4)
    same.advertise(rewrite=replay, skip=frozenset({1}))
    same.share()
    assert not same.refused and len(same.shares) == 5  # a reused nonce lets it through


def test_key_substitution_refused_when_authenticated() -> None:
    """The server swaps client 2's keys for its own (it knows their private halves) to
    read the shares sealed to 2: every honest client refuses before sealing anything."""
    attack = make_attack(5, 3)
    mine_c, mine_s = generate_keypair(bytes([7]) * 32), generate_keypair(bytes([8]) * 32)

    def substitute(adverts: dict[int, AdvertiseKeys]) -> None:
        a = adverts[2]
        adverts[2] = AdvertiseKeys(a.round_id, 2, mine_c.public, mine_s.public, a.signature)

    attack.advertise(rewrite=substitute)
    attack.share()
    assert {v: attack.refused.get(v) for v in (0, 1, 3, 4)} == dict.fromkeys(
        (0, 1, 3, 4), AuthenticationFailure)
    assert set(attack.shares) <= {2}  # nothing was sealed to the substituted key
    attack.mask()
    assert not attack.recovered(0)


def test_key_substitution_is_the_passive_model_and_the_default_policy_refuses_it() -> None:
    """Without authentication nothing can tell a substituted key (the passive-server
    model); a client with the default policy refuses such a round before making keys."""
    attack = make_attack(5, 3, authenticated=False)
    sub = generate_keypair(bytes([7]) * 32)

    def substitute(adverts: dict[int, AdvertiseKeys]) -> None:
        adverts[2] = AdvertiseKeys(adverts[2].round_id, 2, sub.public, adverts[2].s_pk)

    attack.advertise(rewrite=substitute)
    attack.share()
    assert set(attack.refused) == {2}  # only 2 sees its own keys altered...
    assert set(attack.shares) == {0, 1, 3, 4}  # ...the others seal shares to the substitute
    strict = make_attack(5, 3, authenticated=False, policy=ClientPolicy())
    strict.advertise()
    assert set(strict.refused.values()) == {PolicyViolation} and not strict.adverts


@pytest.mark.parametrize("bad", [
    bytes(32),  # u = 0
    (1).to_bytes(32, "little"),  # u = 1
    (325606250916557431795983626356110631294008115727848805560023387167927233504
     ).to_bytes(32, "little"),  # a point of order 8
    ((2**255 - 19) + 1).to_bytes(32, "little"),  # u = p + 1: non-canonical encoding of 1
])
def test_low_order_key_from_a_colluder_refused_before_any_share(bad: bytes) -> None:
    """Colluder 4 advertises a low-order masking key, correctly signed. Its neighbours
    refuse at the key broadcast, before any encrypted share leaves them."""
    attack = make_attack(5, 3, colluders=frozenset({4}))

    def low(adverts: dict[int, AdvertiseKeys]) -> None:
        a = adverts[4]
        sig = sign(attack.identities[4].private,
                   *advertise_fields(attack.config, 4, a.c_pk, bad))
        adverts[4] = AdvertiseKeys(a.round_id, 4, a.c_pk, bad, sig)

    attack.advertise(rewrite=low)
    attack.share()
    for v in (0, 1, 2, 3):
        assert attack.refused.get(v) is InvalidPublicKey and v not in attack.shares
    server = SecAggServer(attack.config, {u: k.public for u, k in attack.identities.items()})
    with pytest.raises(InvalidPublicKey):
        server.receive(attack.adverts[4].encode())


def test_high_bit_copy_of_a_key_is_a_duplicate() -> None:
    """Colluder 4 re-advertises honest client 2's masking key with the high bit set (the
    same X25519 key): refused as a repeated key, not accepted as a fresh one."""
    attack = make_attack(5, 3, colluders=frozenset({4}))

    def copy(adverts: dict[int, AdvertiseKeys]) -> None:
        a, theirs = adverts[4], adverts[2].s_pk
        twin = theirs[:31] + bytes([theirs[31] | 0x80])
        sig = sign(attack.identities[4].private,
                   *advertise_fields(attack.config, 4, a.c_pk, twin))
        adverts[4] = AdvertiseKeys(a.round_id, 4, a.c_pk, twin, sig)

    attack.advertise(rewrite=copy)
    attack.share()
    assert all(attack.refused.get(v) is not None and issubclass(attack.refused[v], ProtocolError)
               for v in (0, 1, 2, 3))
    assert set(attack.shares) <= {4}
