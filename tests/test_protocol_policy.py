"""ClientPolicy: a client refuses a config below its policy at start(), before any key."""

from __future__ import annotations

import numpy as np
import pytest

from crypto.errors import ConfigError
from protocol.client import SecAggClient
from protocol.client_states import AdvertiseKeysState
from protocol.config import ProtocolConfig, fresh_nonce
from protocol.errors import PolicyViolation, ProtocolError
from protocol.params import round_params
from protocol.policy import DEFAULT_POLICY, ClientPolicy
from protocol.runner import make_identities


def _client(cfg: ProtocolConfig, policy: ClientPolicy | None) -> SecAggClient:
    ident = make_identities(cfg.cohort)
    pub = {u: k.public for u, k in ident.items()}
    return SecAggClient(0, cfg, np.zeros(cfg.length, dtype=np.uint32),
                        ident[0] if cfg.authenticated else None,
                        pub if cfg.authenticated else None, policy=policy)


def _refuses(cfg: ProtocolConfig, policy: ClientPolicy | None, match: str) -> None:
    client = _client(cfg, policy)
    with pytest.raises(PolicyViolation, match=match):
        client.start()
    assert isinstance(client.state, AdvertiseKeysState)  # no key pair was even made


def test_default_policy_requires_authentication() -> None:
    assert DEFAULT_POLICY.require_authentication
    cfg = ProtocolConfig(0, tuple(range(5)), 4, 32, 3, authenticated=False)
    _refuses(cfg, None, "requires authentication")
    assert _client(cfg, ClientPolicy.permissive()).start()  # explicit, for simulations
    assert _client(ProtocolConfig(0, tuple(range(5)), 4, 32, 3, nonce=fresh_nonce()), None).start()


def test_default_policy_requires_a_round_nonce() -> None:
    assert DEFAULT_POLICY.require_nonce and not ClientPolicy.permissive().require_nonce
    _refuses(ProtocolConfig(0, tuple(range(5)), 4, 32, 3), None, "nonce")


def test_min_colluders_refuses_todays_digits_default_and_accepts_round_params() -> None:
    policy = ClientPolicy(min_colluders=1)
    weak = ProtocolConfig(0, tuple(range(10)), 4, 32, 5, "harary", 8)  # tolerates c = 0
    _refuses(weak, policy, "tolerates 0 colluders")
    p = round_params(10, 0.1, 1, halting_bits=6)
    good = ProtocolConfig(0, tuple(range(10)), 4, 32, p.t, p.graph, None)
    assert _client(good, policy).start()


@pytest.mark.parametrize("policy,cfg,match", [
    (ClientPolicy(require_nonce=True), ProtocolConfig(0, (0, 1, 2), 4, 32, 2), "nonce"),
    (ClientPolicy(min_threshold=4), ProtocolConfig(0, tuple(range(5)), 4, 32, 3), "raise t"),
    (ClientPolicy(max_cohort=4), ProtocolConfig(0, tuple(range(5)), 4, 32, 3), "smaller cohort"),
    (ClientPolicy(min_bits=16), ProtocolConfig(0, tuple(range(5)), 4, 8, 3), "8 bits"),
])
def test_each_policy_minimum_is_enforced(policy: ClientPolicy, cfg: ProtocolConfig,
                                         match: str) -> None:
    _refuses(cfg, policy, match)


def test_nonce_satisfies_the_policy_and_changes_the_digest() -> None:
    base = ProtocolConfig(0, (0, 1, 2), 4, 32, 2)
    fresh = ProtocolConfig(0, (0, 1, 2), 4, 32, 2, nonce=fresh_nonce())
    assert fresh.digest() != base.digest()
    assert _client(fresh, ClientPolicy(require_nonce=True)).start()
    with pytest.raises(ConfigError, match="nonce"):
        ProtocolConfig(0, (0, 1, 2), 4, 32, 2, nonce=b"short")


def test_policy_violation_is_a_protocol_error_and_policies_validate() -> None:
    assert issubclass(PolicyViolation, ProtocolError)
    with pytest.raises(ConfigError):
        ClientPolicy(min_colluders=-1)
    with pytest.raises(ConfigError):
        ClientPolicy(min_bits=33, max_bits=32)
