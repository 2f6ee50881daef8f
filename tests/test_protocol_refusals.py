"""Typed refusals: every attack or misuse raises a ProtocolError subclass and changes nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from crypto.shamir import Share
from protocol import messages as m
from protocol.errors import (
    AuthenticationFailure,
    ConsistencyViolation,
    MalformedMessage,
    ProtocolAbort,
    ProtocolError,
    ReplayError,
)
from protocol.server import SecAggServer, Stage
from protocol.vectors import pack
from tests.protocol_helpers import Round, make_round


def _finish(rnd: Round) -> np.ndarray:
    while rnd.server.stage not in (Stage.DONE, Stage.ABORTED):
        rnd.step()
    assert rnd.server.total is not None
    return rnd.server.total


def _expected(rnd: Round) -> list[int]:
    acc = sum(rnd.inputs[u].astype(object) for u in rnd.server.survivors["masked"])
    return [int(v) % (1 << rnd.config.bits) for v in acc]


def _to_stage(rnd: Round, steps: int) -> None:
    for _ in range(steps):
        rnd.step()


def _refused_then_recovers(rnd: Round, u: int, bad: bytes, err: type[Exception]) -> None:
    """Client u refuses ``bad`` with ``err``, keeps its state, and the round still finishes."""
    before = rnd.clients[u].state
    with pytest.raises(err):
        rnd.clients[u].receive(bad)
    assert rnd.clients[u].state is before
    assert [int(v) for v in _finish(rnd)] == _expected(rnd)


# -- survivors < t ----------------------------------------------------------------------
def test_client_refuses_survivor_set_smaller_than_t() -> None:
    rnd = make_round(n=6, t=4)
    _to_stage(rnd, 5)  # pending: ConsistencyRequest
    req = m.decode(rnd.down[0])
    assert isinstance(req, m.ConsistencyRequest)
    small = dataclasses.replace(req, survivors=(0, 1, 2)).encode()
    _refused_then_recovers(rnd, 0, small, ProtocolAbort)


def test_client_refuses_unmask_with_fewer_than_t_neighbour_confirmations() -> None:
    rnd = make_round(n=6, t=4)
    _to_stage(rnd, 6)  # pending: UnmaskRequest
    req = m.decode(rnd.down[0])
    assert isinstance(req, m.UnmaskRequest)
    few = dataclasses.replace(req, confirmations=req.confirmations[:2]).encode()
    _refused_then_recovers(rnd, 0, few, ProtocolAbort)


# -- both shares of one client ------------------------------------------------------------
def test_client_refuses_second_unmask_request() -> None:
    rnd = make_round(n=5, t=3, authenticated=False)
    _to_stage(rnd, 5)  # pending: UnmaskRequest (unauthenticated: no consistency round)
    first = m.decode(rnd.down[0])
    assert isinstance(first, m.UnmaskRequest)
    rnd.clients[0].receive(rnd.down[0])  # reveals b-shares of survivors 0..4
    asking_keys = dataclasses.replace(first, survivors=(0, 1, 2)).encode()  # 3, 4 "dropped"
    with pytest.raises(ConsistencyViolation):
        rnd.clients[0].receive(asking_keys)  # would reveal s_sk shares of 3 and 4 too
    assert rnd.clients[0].state.name == "Done"


def test_client_refuses_survivor_set_without_itself() -> None:
    rnd = make_round(n=5, t=3, authenticated=False)
    _to_stage(rnd, 5)
    req = m.decode(rnd.down[0])
    assert isinstance(req, m.UnmaskRequest)
    bad = dataclasses.replace(req, survivors=(1, 2, 3, 4)).encode()
    _refused_then_recovers(rnd, 0, bad, ConsistencyViolation)


def test_honest_client_never_reveals_both_kinds() -> None:
    rnd = make_round(n=7, t=4)
    _to_stage(rnd, 4)
    rnd.step(skip=frozenset({5, 6}))  # 5 and 6 drop before the masked input
    rnd.step()
    rnd.step()
    for data in rnd.up.values():
        msg = m.decode(data)
        assert isinstance(msg, m.UnmaskShares)
        assert {o for o, _ in msg.key_shares} == {5, 6}
        assert {o for o, _ in msg.self_shares} == {0, 1, 2, 3, 4}


# -- different survivor sets -------------------------------------------------------------
def test_two_survivor_sets_detected_by_consistency_check() -> None:
    rnd = make_round(n=6, t=4)
    _to_stage(rnd, 5)
    reqs = {v: m.decode(rnd.down[v]) for v in range(6)}
    assert all(isinstance(r, m.ConsistencyRequest) for r in reqs.values())
    # the server shows client 1 a set without client 5 (to learn 5's key), the others all
    other = (0, 1, 2, 3, 4)
    confs = {v: m.decode(rnd.clients[v].receive(
        rnd.down[v] if v != 1 else dataclasses.replace(reqs[1], survivors=other).encode()))
        for v in range(6)}
    assert all(isinstance(c, m.ConsistencyConfirm) for c in confs.values())
    to0 = tuple((v, dict(confs[v].tags)[0]) for v in range(1, 6))  # type: ignore[union-attr]
    req0 = reqs[0]
    assert isinstance(req0, m.ConsistencyRequest)
    honest = m.UnmaskRequest(req0.session_id, 0, req0.survivors, to0)
    # client 1's genuine tag to client 0 confirms the other set: client 0 refuses
    before = rnd.clients[0].state
    with pytest.raises(ConsistencyViolation):
        rnd.clients[0].receive(honest.encode())
    assert rnd.clients[0].state is before
    # without client 1's tag client 0 still has t - 1 = 3 confirmations and proceeds
    rnd.clients[0].receive(dataclasses.replace(honest, confirmations=to0[1:]).encode())
    assert rnd.clients[0].state.name == "Done"
    # client 2's own tag to client 0, reflected back to 2 as if 0 had sent it (the pair
    # shares one key), does not verify: both ids are bound in the tag
    req2 = reqs[2]
    assert isinstance(req2, m.ConsistencyRequest)
    reflected = tuple((v, dict(confs[0].tags)[2] if v == 0 else dict(confs[v].tags)[2])
                      for v in (0, 3, 4, 5))  # type: ignore[union-attr]
    ok = m.UnmaskRequest(req2.session_id, 2, req2.survivors, reflected)
    flipped = tuple((v, dict(confs[2].tags)[0] if v == 0 else tag) for v, tag in reflected)
    with pytest.raises(ConsistencyViolation):
        rnd.clients[2].receive(dataclasses.replace(ok, confirmations=flipped).encode())
    rnd.clients[2].receive(ok.encode())
    # and client 1 refuses an unmask request whose set differs from what it confirmed
    with pytest.raises(ConsistencyViolation):
        rnd.clients[1].receive(m.UnmaskRequest(req0.session_id, 1, req0.survivors, ()).encode())


# -- replays -----------------------------------------------------------------------------
def test_replay_from_another_round_refused() -> None:
    old, new = make_round(round_id=3, seed=1), make_round(round_id=4, seed=1)
    old_adv = old.clients[0].start()
    with pytest.raises(ReplayError):
        new.server.receive(old_adv)
    assert new.server.stage is Stage.ADVERTISE and not new.server.survivors
    old.up = {0: old_adv} | {u: c.start() for u, c in old.clients.items() if u}
    for d in old.up.values():
        old.server.receive(d)
    old.down = old.server.finish_stage()
    new.step()
    _refused_then_recovers(new, 2, old.down[2], ReplayError)


def test_replay_from_another_session_refused() -> None:
    a, b = make_round(seed=1), make_round(seed=2)  # same config, other keys: other session
    _to_stage(a, 4)
    _to_stage(b, 4)
    assert a.server.session != b.server.session
    _refused_then_recovers(b, 1, a.down[1], ReplayError)  # a's shares sent to b's client
    c, d = make_round(seed=3), make_round(seed=4)
    _to_stage(c, 4)
    _to_stage(d, 4)
    masked_c = c.clients[0].receive(c.down[0])
    with pytest.raises(ReplayError):
        d.server.receive(masked_c)


# -- tampering ---------------------------------------------------------------------------
def test_tampered_share_ciphertext_refused() -> None:
    rnd = make_round(n=5, t=3)
    _to_stage(rnd, 4)  # pending: ShareKeysBroadcast
    msg = m.decode(rnd.down[0])
    assert isinstance(msg, m.ShareKeysBroadcast)
    sender, ct = msg.ciphertexts[0]
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    bad = dataclasses.replace(msg, ciphertexts=((sender, flipped),) + msg.ciphertexts[1:])
    _refused_then_recovers(rnd, 0, bad.encode(), AuthenticationFailure)


def test_share_ciphertext_relabelled_to_another_sender_refused() -> None:
    rnd = make_round(n=5, t=3)
    _to_stage(rnd, 4)
    msg = m.decode(rnd.down[0])
    assert isinstance(msg, m.ShareKeysBroadcast)
    (s1, c1), (s2, c2) = msg.ciphertexts[:2]
    swapped = dataclasses.replace(msg, ciphertexts=((s1, c2), (s2, c1)) + msg.ciphertexts[2:])
    _refused_then_recovers(rnd, 0, swapped.encode(), AuthenticationFailure)


def test_tampered_key_advertisement_refused() -> None:
    rnd = make_round(n=5, t=3)
    adv = m.decode(rnd.clients[0].start())
    assert isinstance(adv, m.AdvertiseKeys)
    forged = dataclasses.replace(adv, s_pk=bytes(31) + b"\x09")
    with pytest.raises(AuthenticationFailure):
        rnd.server.receive(forged.encode())
    rnd.server.receive(adv.encode())  # the genuine one is still accepted


# -- malformed masked vectors --------------------------------------------------------------
@pytest.mark.parametrize("length,bits", [(7, 16), (9, 16), (8, 15), (8, 32)])
def test_masked_vector_of_wrong_length_or_width_refused(length: int, bits: int) -> None:
    rnd = make_round(n=5, length=8, bits=16, t=3)
    _to_stage(rnd, 4)
    good = m.decode(rnd.clients[0].receive(rnd.down[0]))
    assert isinstance(good, m.MaskedInput)
    bad = m.MaskedInput(good.session_id, 0, bits, length,
                        pack(np.zeros(length, dtype=np.uint32), bits))
    with pytest.raises(MalformedMessage):
        rnd.server.receive(bad.encode())
    assert 0 not in rnd.server._u3
    rnd.server.receive(good.encode())


# -- ids -----------------------------------------------------------------------------------
def test_duplicate_and_unknown_ids_refused_by_server() -> None:
    rnd = make_round(n=5, t=3)
    adv = rnd.clients[0].start()
    rnd.server.receive(adv)
    with pytest.raises(ProtocolError, match="duplicate"):
        rnd.server.receive(adv)
    stranger = m.AdvertiseKeys(rnd.config.round_id, 99, b"a" * 32, b"b" * 32, b"c" * 32,
                               b"s" * 64)
    with pytest.raises(ProtocolError, match="unknown"):
        rnd.server.receive(stranger.encode())


def test_unknown_id_in_reveal_list_refused_by_client() -> None:
    rnd = make_round(n=5, t=3)
    _to_stage(rnd, 2)  # pending: RevealBroadcast
    msg = m.decode(rnd.down[0])
    assert isinstance(msg, m.RevealBroadcast)
    bad = dataclasses.replace(msg, ids=msg.ids[:-4] + (77).to_bytes(4, "big"))
    _refused_then_recovers(rnd, 0, bad.encode(), ConsistencyViolation)


def test_share_from_non_neighbour_refused() -> None:
    rnd = make_round(n=8, t=3, graph="harary", k=2)
    _to_stage(rnd, 4)
    msg = m.decode(rnd.down[0])
    assert isinstance(msg, m.ShareKeysBroadcast)
    stranger = next(v for v in range(8) if v != 0 and v not in {s for s, _ in msg.ciphertexts})
    bad = dataclasses.replace(msg, ciphertexts=tuple(sorted(
        msg.ciphertexts + ((stranger, msg.ciphertexts[0][1]),))))
    _refused_then_recovers(rnd, 0, bad.encode(), ProtocolError)


def test_server_refuses_unmask_shares_of_the_wrong_kind() -> None:
    rnd = make_round(n=5, t=3)
    _to_stage(rnd, 6)
    good = m.decode(rnd.clients[0].receive(rnd.down[0]))
    assert isinstance(good, m.UnmaskShares)
    as_keys = dataclasses.replace(good, self_shares=good.self_shares[1:],
                                  key_shares=good.self_shares[:1])
    with pytest.raises(ProtocolError):
        rnd.server.receive(as_keys.encode())
    foreign = dataclasses.replace(good, self_shares=((0, Share(9, (1,))),) + good.self_shares[1:])
    with pytest.raises(ProtocolError):
        rnd.server.receive(foreign.encode())
    rnd.server.receive(good.encode())


# -- every invalid (state, message) pair ---------------------------------------------------
def _one_of_each(rnd: Round) -> list[bytes]:
    """A structurally valid message of every type, bound to this round where possible."""
    sid = rnd.server.session or bytes(32)
    ct = b"x" * m.CIPHERTEXT_BYTES
    return [
        m.AdvertiseKeys(rnd.config.round_id, 0, b"a" * 32, b"b" * 32, b"c" * 32,
                        b"s" * 64).encode(),
        m.CommitProof(rnd.config.round_id, 0, 5, 0, bytes(32), bytes(32), (), ()).encode(),
        m.Reveal(rnd.config.round_id, 0, bytes(16)).encode(),
        m.RevealBroadcast(rnd.config.round_id, bytes(4), bytes(16)).encode(),
        m.GraphConfirm(rnd.config.round_id, 0, bytes(32)).encode(),
        m.NeighborKeys(rnd.config.round_id, 0, ()).encode(),
        m.ShareKeys(sid, 0, ((1, ct),)).encode(),
        m.ShareKeysBroadcast(sid, 0, ((1, ct),)).encode(),
        m.MaskedInput(sid, 0, rnd.config.bits, rnd.config.length,
                      pack(np.zeros(rnd.config.length, np.uint32), rnd.config.bits)).encode(),
        m.ConsistencyRequest(sid, 0, (0, 1, 2)).encode(),
        m.ConsistencyConfirm(sid, 0, ((1, b"z" * 32),)).encode(),
        m.UnmaskRequest(sid, 0, (0, 1, 2)).encode(),
        m.UnmaskShares(sid, 0, ((0, Share(1, (1,))),), ()).encode(),
    ]


CLIENT_ACCEPTS = ["", "CommitProof", "RevealBroadcast", "NeighborKeys", "ShareKeysBroadcast",
                  "ConsistencyRequest", "UnmaskRequest", "UnmaskRequest"]
LAST = len(CLIENT_ACCEPTS) - 1


@pytest.mark.parametrize("steps", range(LAST + 1))
def test_every_invalid_client_state_message_pair(steps: int) -> None:
    rnd = make_round(n=5, t=3)
    for _ in range(min(steps, LAST)):
        rnd.step()
    if steps == LAST:
        assert rnd.clients[0].state.name == "Done"
    client = rnd.clients[0]
    for data in _one_of_each(rnd):
        name = type(m.decode(data)).__name__
        if name == CLIENT_ACCEPTS[steps] and steps < LAST:
            continue  # the one valid type (its content is checked by other tests)
        before = client.state
        with pytest.raises(ProtocolError):
            client.receive(data)
        assert client.state is before
    if steps == 0:
        client.start()
        with pytest.raises(ProtocolError):
            client.start()


SERVER_ACCEPTS = ["AdvertiseKeys", "Reveal", "GraphConfirm", "ShareKeys", "MaskedInput",
                  "ConsistencyConfirm", "UnmaskShares", ""]


@pytest.mark.parametrize("steps", range(len(SERVER_ACCEPTS)))
def test_every_invalid_server_stage_message_pair(steps: int) -> None:
    rnd = make_round(n=5, t=3)
    _to_stage(rnd, steps)
    server: SecAggServer = rnd.server
    stage = server.stage
    for data in _one_of_each(rnd):
        if type(m.decode(data)).__name__ == SERVER_ACCEPTS[steps]:
            continue
        with pytest.raises(ProtocolError):
            server.receive(data)
        assert server.stage is stage
    if stage is Stage.DONE:
        with pytest.raises(ProtocolError):
            server.finish_stage()
        return
    # the round still completes after all those refusals
    assert [int(v) for v in _finish(rnd)] == _expected(rnd)
