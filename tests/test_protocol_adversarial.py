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
from crypto.mac import mac
from crypto.rng import KeystreamRNG
from crypto.signing import sign
from protocol.commitments import commitment
from protocol.errors import (
    AuthenticationFailure,
    ConsistencyViolation,
    InvalidPublicKey,
    PolicyViolation,
    ProtocolError,
)
from protocol.messages import AdvertiseKeys, NeighborKey
from protocol.params import choose_graph_params, tolerated_colluders
from protocol.policy import ClientPolicy
from protocol.runner import make_identities
from protocol.server import SecAggServer
from protocol.session import advertise_fields, confirmation_fields, survivors_digest
from tests.adversary import (
    Attack,
    SplitPlan,
    advertised,
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
    plan = mask_isolation_plan(advertised(attack), attack.config.cohort, t, target)
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
    assert mask_isolation_plan(advertised(attack), attack.config.cohort, t, 0) is None


def test_mask_isolation_unauthenticated_refused_before_unmasking() -> None:
    """Without the consistency round, the same check runs before any share is revealed."""
    attack = make_attack(10, 5, "harary", 8, authenticated=False)
    plan = mask_isolation_plan(advertised(attack), attack.config.cohort, 5, 0)
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
    g = advertised(probe)
    colluders = _colluders_near(g.order, target, g.neighbors_of(target), c)
    attack = make_attack(n, t, graph, k, colluders=colluders)
    g = advertised(attack)  # same clients' randomness: the same graph as the probe's
    assert g.order == probe.graph.order  # colluders are placed where the attacker wants
    plan = split_view_plan(g, attack.config.cohort, t, target, colluders, best_effort)
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


def _relayed(attack: Attack, w: int, v: int, survivors: tuple[int, ...]) -> bytes | None:
    """w's genuine tag on this set, but addressed to another of its neighbours."""
    for x, tag in sorted(attack.confirms.get(w, {}).get(survivors, {}).items()):
        if x != v:
            return tag
    return None


def _other_set(attack: Attack, w: int, v: int, survivors: tuple[int, ...]) -> bytes | None:
    """w's genuine tag to v, on the survivor set w was shown instead."""
    for shown, tags in attack.confirms.get(w, {}).items():
        if shown != survivors and v in tags:
            return tags[v]
    return None


def _reflected(attack: Attack, w: int, v: int, survivors: tuple[int, ...]) -> bytes | None:
    """v's own tag to w (same pair key, the other direction), passed off as w's to v."""
    return attack.confirms.get(v, {}).get(survivors, {}).get(w)


def _random(attack: Attack, w: int, v: int, survivors: tuple[int, ...]) -> bytes:
    return KeystreamRNG.from_seed(w * 1000 + v, "forge").bytes(32)


def _oracle(attack: Attack, w: int, v: int, survivors: tuple[int, ...]) -> bytes | None:
    """Control, not an attack: the genuine tag, made with w's key read out of its client
    (which the server never has): shows the test fails if confirmations could be made."""
    state = attack.clients[w].state
    key = getattr(state, "confirm_keys", {}).get(v)
    return None if key is None else mac(key, *confirmation_fields(
        attack.session, w, v, survivors_digest(survivors)))


def _forged_split(n: int, graph: str, k: int, t: int, forge: object) -> tuple[Attack, int,
                                                                               frozenset[int]]:
    """No colluder. The attacker tells t - 1 of the target's neighbours (``side``) that the
    target dropped (set B = cohort minus the target: they would reveal shares of its
    masking key) and every other client that all survived (set A). A client of ``side``
    has fewer than t - 1 genuine confirmations of B, so the attacker passes off tags it
    can make (``forge``) as the others'."""
    attack = make_attack(n, t, graph, k)
    g = advertised(attack)
    target = attack.config.cohort[0]
    side = frozenset(sorted(g.neighbors_of(target))[: t - 1])
    every = attack.config.cohort
    b = tuple(v for v in every if v != target)
    attack.forge = forge  # type: ignore[assignment]
    attack.run({v: (b if v in side else every) for v in every})
    return attack, target, side


def _key_share_revealed(attack: Attack, owner: int) -> bool:
    return any(owner in {o for o, _ in msg.key_shares} for msg in attack.revealed.values())


@pytest.mark.parametrize("forge", [_relayed, _other_set, _reflected, _random],
                         ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("n,graph,k,t", [(5, "complete", 4, 3), (12, "harary", 4, 3),
                                         (16, "harary", 6, 4), (10, "harary", 8, 5),
                                         (12, "harary", 5, 4)])
def test_split_view_cannot_forge_a_confirmation(forge: object, n: int, graph: str, k: int,
                                                 t: int) -> None:
    """Survivor confirmations are MACs under keys only the two clients of a pair hold:
    whatever the attacker passes off as a missing one (an honest tag addressed to another
    client, one on the other survivor set, the recipient's own tag reflected, random
    bytes), the clients told the target dropped refuse before revealing anything, so no
    share of the target's masking key leaves an honest client. A tag that does not
    verify is a ConsistencyViolation; too few tags, an abort."""
    attack, target, side = _forged_split(n, graph, k, t, forge)
    assert side and side <= set(attack.refused)
    assert all(issubclass(e, ProtocolError) for e in attack.refused.values())
    assert not _key_share_revealed(attack, target)
    assert not attack.recovered(target)
    attack.check_reveals()
    if forge is not _relayed:  # the other three always hand a side client a bad tag
        assert ConsistencyViolation in {attack.refused[v] for v in side}


@pytest.mark.parametrize("n,graph,k,t", [(5, "complete", 4, 3), (16, "harary", 6, 4)])
def test_split_view_with_genuine_confirmations_is_accepted(n: int, graph: str, k: int,
                                                           t: int) -> None:
    """The control of the test above: had the attacker the pair keys, the side clients
    would accept set B and reveal shares of the target's masking key (fewer than t of
    them here, which is why the input still stays hidden: the count bound)."""
    attack, target, side = _forged_split(n, graph, k, t, _oracle)
    assert not side & set(attack.refused)
    assert _key_share_revealed(attack, target)


# -- freshness, key substitution, low-order and non-canonical keys --------------------------
def _honest_neighbours(attack: Attack, v: int) -> list[int]:
    return [w for w in sorted(attack.graph.neighbors_of(v)) if w not in attack.colluders]


def test_same_round_replay_of_an_old_advertisement_is_refused() -> None:
    """Attempt 1 of round 5 (nonce N1) collected client 1's signed keys and commitment,
    and its reveal r_1; attempt 2 of the same round id (fresh nonce N2) replays them
    without contacting client 1. Replayed as they are, r_1 does not open the commitment
    under attempt 2's config and every honest client refuses at the graph stage; with a
    commitment the attacker can open in attempt 2 under the old signature, every honest
    neighbour refuses the signature before sealing a share to the stale key; so does an
    honest server. With the nonce reused, the same replay verifies (what the nonce is for)."""
    ident = make_identities(range(6), KeystreamRNG.from_seed(9, "ids"))
    n1, n2 = bytes(range(16)), bytes(range(1, 17))
    old = make_attack(6, 4, nonce=n1, identities=ident)
    old.advertise()
    stale, r1 = old.adverts[1], old.reveals[1]

    def replay(adverts: dict[int, AdvertiseKeys]) -> None:
        adverts[1] = stale

    new = make_attack(6, 4, nonce=n2, identities=ident, seed=4)
    new.advertise(rewrite=replay, skip=frozenset({1}), reveals={1: r1})
    assert {new.refused.get(v) for v in new.honest if v != 1} == {ConsistencyViolation}
    assert set(new.refused_stage.values()) == {"graph"} and new.graph is not None
    new.share()
    assert not new.shares  # nobody reached the share stage

    mine = bytes([5]) * 16  # the attacker's own r for client 1, committed in attempt 2

    def recommit(adverts: dict[int, AdvertiseKeys]) -> None:
        com = commitment(new.config.digest(), 1, mine)
        adverts[1] = AdvertiseKeys(stale.round_id, 1, stale.c_pk, stale.s_pk, com,
                                   stale.signature)

    new = make_attack(6, 4, nonce=n2, identities=ident, seed=4)
    new.advertise(rewrite=recommit, skip=frozenset({1}), reveals={1: mine})
    assert not new.refused and new.graph is not None  # the reveals open every commitment
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
    same.advertise(rewrite=replay, skip=frozenset({1}), reveals={1: r1})
    same.share()
    assert not same.refused and len(same.shares) == 5  # a reused nonce lets it through


_MINE_C, _MINE_S = generate_keypair(bytes([7]) * 32), generate_keypair(bytes([8]) * 32)


def _substitute(adverts: dict[int, AdvertiseKeys]) -> None:
    """The attacker's keys for client 2 (it knows their private halves), under 2's
    signature and commitment: it cannot sign for 2."""
    a = adverts[2]
    adverts[2] = AdvertiseKeys(a.round_id, 2, _MINE_C.public, _MINE_S.public, a.commitment,
                               a.signature)


def _substitute_leaf(rcpt: int, entries: list[NeighborKey]) -> list[NeighborKey]:
    """The attacker's keys for client 2 in NeighborKeys, with 2's real Merkle path: a
    forged path, as no leaf with these keys is in the committed tree."""
    return [NeighborKey(2, _MINE_C.public, _MINE_S.public, e.signature, e.path)
            if e.client_id == 2 else e for e in entries]


@pytest.mark.parametrize("where", ["path", "tree"])
def test_key_substitution_refused_when_authenticated(where: str) -> None:
    """The server swaps client 2's keys for its own to read the shares sealed to 2:
    either in NeighborKeys under 2's committed path (``path``: the leaf is not in the
    tree), or in the key tree it commits to, shown to everybody but 2, which sees the
    honest tree (``tree``: the leaf is in the tree, 2's signature does not cover it).
    Every honest client refuses before sealing anything."""
    attack = make_attack(5, 3)
    if where == "path":
        attack.advertise()
        attack.share(rewrite=_substitute_leaf)
    else:
        attack.advertise(rewrite=_substitute, honest_view=frozenset({2}))
        attack.share()
    assert {v: attack.refused.get(v) for v in (0, 1, 3, 4)} == dict.fromkeys(
        (0, 1, 3, 4), AuthenticationFailure)
    assert set(attack.shares) <= {2}  # nothing was sealed to the substituted key
    attack.mask()
    assert not attack.recovered(0)


def test_key_substitution_is_the_passive_model_and_the_default_policy_refuses_it() -> None:
    """Without authentication nothing but client 2 itself can tell a substituted key
    (the passive-server model): shown the substituted tree, 2 refuses its commitment
    proof (and without its reveal the round cannot reach the graph); shown the honest
    tree while the others see the substitute, nobody refuses and the others seal shares
    to the substitute. A client with the default policy refuses such a round before
    making keys."""
    attack = make_attack(5, 3, authenticated=False)
    attack.advertise(rewrite=_substitute)
    assert attack.refused == {2: ConsistencyViolation} and attack.refused_stage[2] == "commit"
    assert attack.graph is None  # 2 did not reveal: no graph, no share
    attack = make_attack(5, 3, authenticated=False)
    attack.advertise(rewrite=_substitute, honest_view=frozenset({2}))
    attack.share()
    assert not attack.refused  # only 2 could see its own keys altered, and it was not shown
    assert set(attack.shares) == {0, 1, 2, 3, 4}  # 0, 1, 3, 4 sealed shares to the substitute
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
    """Colluder 4 advertises a low-order masking key, correctly signed and committed in
    the key tree. Its neighbours refuse it in NeighborKeys, before any encrypted share
    leaves them; an honest server refuses the advertisement itself."""
    attack = make_attack(5, 3, colluders=frozenset({4}))

    def low(adverts: dict[int, AdvertiseKeys]) -> None:
        a = adverts[4]
        sig = sign(attack.identities[4].private,
                   *advertise_fields(attack.config, 4, a.c_pk, bad, a.commitment))
        adverts[4] = AdvertiseKeys(a.round_id, 4, a.c_pk, bad, a.commitment, sig)

    attack.advertise(rewrite=low)
    assert attack.graph is not None and not set(attack.refused) - {4}
    attack.share()
    for v in (0, 1, 2, 3):
        assert attack.refused.get(v) is InvalidPublicKey and v not in attack.shares
        assert attack.refused_stage[v] == "share"
    server = SecAggServer(attack.config, {u: k.public for u, k in attack.identities.items()})
    with pytest.raises(InvalidPublicKey):
        server.receive(attack.adverts[4].encode())


@pytest.mark.parametrize("high_bit", [True, False])
def test_high_bit_copy_of_a_key_is_a_duplicate(high_bit: bool) -> None:
    """Colluder 4 re-advertises honest client 2's masking key, signed and committed:
    with the high bit set (the same X25519 key, non-canonical) or as the same bytes. Never
    accepted as a fresh key: the non-canonical copy is refused as such before the
    duplicate check (which compares canonical keys), the exact copy as a repeated key."""
    attack = make_attack(5, 3, colluders=frozenset({4}))

    def copy(adverts: dict[int, AdvertiseKeys]) -> None:
        a, theirs = adverts[4], adverts[2].s_pk
        twin = theirs[:31] + bytes([theirs[31] | 0x80]) if high_bit else theirs
        sig = sign(attack.identities[4].private,
                   *advertise_fields(attack.config, 4, a.c_pk, twin, a.commitment))
        adverts[4] = AdvertiseKeys(a.round_id, 4, a.c_pk, twin, a.commitment, sig)

    attack.advertise(rewrite=copy)
    assert attack.graph is not None
    attack.share()
    assert all(attack.refused.get(v) is not None and issubclass(attack.refused[v], ProtocolError)
               for v in (0, 1, 2, 3))
    expected = InvalidPublicKey if high_bit else ProtocolError
    assert {attack.refused[v] for v in (0, 1, 2, 3)} == {expected}
    assert set(attack.shares) <= {4}
