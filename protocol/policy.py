"""Client policy: the weakest round config a client agrees to take part in (client side).

The server writes the round's :class:`ProtocolConfig`; an honest client must not take its
word for the guarantee. Each client holds a frozen :class:`ClientPolicy` and checks the
config against it in :meth:`protocol.client.SecAggClient.start`, before any key or share
leaves it, raising :class:`PolicyViolation` that names what to change.

The default policy is the sound one for an active server: authentication (signed keys
and the consistency round) and a fresh round nonce are required, and the config must tolerate ``min_colluders``
colluding neighbours per client (c < 2t - k - 1, see :mod:`protocol.params`). Plaintext
or unauthenticated simulations pass :meth:`ClientPolicy.permissive` explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.errors import ConfigError
from protocol.config import ProtocolConfig
from protocol.errors import PolicyViolation
from protocol.params import tolerated_colluders


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """Minimums a client demands of a round's config (client side; frozen).

    ``require_authentication``: refuse unauthenticated rounds (without signatures an
    active server can impersonate every other client). ``require_nonce``: refuse a config
    without a fresh round nonce. ``min_colluders``: the config's (k, t) must keep inputs
    hidden from an active server plus this many colluding neighbours, i.e.
    ``min_colluders < 2t - k - 1``. ``min_threshold``: smallest t accepted.
    ``max_cohort``: largest cohort accepted (None: any). ``min_bits``/``max_bits``: the
    ring widths accepted (bits).
    """

    require_authentication: bool = True
    require_nonce: bool = False
    min_colluders: int = 0
    min_threshold: int = 2
    max_cohort: int | None = None
    min_bits: int = 1
    max_bits: int = 64

    def __post_init__(self) -> None:
        if self.min_colluders < 0 or self.min_threshold < 1:
            raise ConfigError("ClientPolicy: min_colluders must be >= 0 and min_threshold >= 1")
        if self.max_cohort is not None and self.max_cohort < 2:
            raise ConfigError("ClientPolicy: max_cohort must be >= 2 (or None for any)")
        if not 1 <= self.min_bits <= self.max_bits <= 64:
            raise ConfigError("ClientPolicy: need 1 <= min_bits <= max_bits <= 64")

    @classmethod
    def permissive(cls) -> ClientPolicy:
        """Accept any valid config, unauthenticated ones included (simulations, tests of
        the passive-server model); never the default."""
        return cls(require_authentication=False, require_nonce=False, min_threshold=1)

    def check(self, config: ProtocolConfig) -> None:
        """Raise :class:`PolicyViolation` if ``config`` is below this policy."""
        if self.require_authentication and not config.authenticated:
            raise PolicyViolation("client policy requires authentication: run the round "
                                  "authenticated, or give the client a permissive policy")
        if self.require_nonce and not config.nonce:
            raise PolicyViolation("client policy requires a fresh round nonce: set "
                                  "ProtocolConfig.nonce = protocol.config.fresh_nonce()")
        if config.threshold < self.min_threshold:
            raise PolicyViolation(f"threshold t={config.threshold} is below the client's "
                                  f"minimum {self.min_threshold}: raise t")
        c = tolerated_colluders(config.degree, config.threshold)
        if c < self.min_colluders:
            raise PolicyViolation(
                f"(k={config.degree}, t={config.threshold}) tolerates {c} colluders against an "
                f"active server (c < 2t - k - 1), the client requires {self.min_colluders}: "
                "raise t or choose (k, t) with protocol.params.round_params")
        if self.max_cohort is not None and config.n > self.max_cohort:
            raise PolicyViolation(f"cohort of {config.n} exceeds the client's maximum "
                                  f"{self.max_cohort}: use a smaller cohort")
        if not self.min_bits <= config.bits <= self.max_bits:
            raise PolicyViolation(f"ring of {config.bits} bits is outside the client's range "
                                  f"{self.min_bits}..{self.max_bits}")


DEFAULT_POLICY = ClientPolicy(require_nonce=True)
"""The policy a client holds when none is given: authenticated rounds with a fresh round
nonce only (a config without a nonce lets a same-round advertisement be replayed)."""
