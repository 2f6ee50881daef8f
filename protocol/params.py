"""Choosing SecAgg+ graph degree k and share threshold t (run by whoever configures a round).

Model. Each client's two secrets (s_sk_u, b_u) are Shamir-shared among its k graph
neighbours and itself (k + 1 holders) with threshold t. Clients drop out independently
with probability ``dropout`` (over the whole round); the adversary is the server plus a
``corrupt`` fraction of clients, each client independently corrupt.

Halting (correctness). Recovering a secret of client u needs t live holders. Counting only
u's k neighbours (u itself is gone when its s_sk is needed), the live count is
Binomial(k, 1 - dropout), so one client fails with probability
    f_halt(k, t) = P[Bin(k, 1 - dropout) < t] = sum_{i < t} C(k, i) q^i (1 - q)^(k - i),
    q = 1 - dropout,
and, by the union bound over the n clients, the round halts with probability at most
    P_halt <= n * f_halt(k, t)
(for the complete graph all clients share one holder set: P_halt <= f_halt(n - 1, t)).

Security. Honest holders reveal one kind of share per owner, never both; c corrupt holders
reveal both. The server learns both secrets of an honest u (hence x_u) only if
h_b + c >= t and h_s + c >= t with h_b + h_s <= k + 1 - c honest holders, which needs
c >= 2t - k - 1. With C ~ Binomial(k, corrupt) corrupt neighbours and the union bound,
    P_leak <= n * P[Bin(k, corrupt) >= 2t - k - 1].
(2t > k + 1 is always required, so that with no corrupt client it is impossible.)

Choice. For k = 2, 4, ... (even: the Harary graph is then defined for every n), take the
smallest t that meets the security target 2^-security_bits and stop at the first k whose
halting bound meets 2^-halting_bits. If no k < n - 1 works, fall back to the complete
graph (k = n - 1) or raise :class:`ConfigError` saying which input to relax.

Example (the test checks it): n = 100, dropout 0.2, corrupt 0, targets 2^-20 / 2^-40
gives a k with n * P[Bin(k, 0.8) < t] < 2^-20; a Monte Carlo run of the whole round
(random dropouts on the real graph) at a looser target confirms the bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from crypto.errors import ConfigError


def _log_pmf(k: int, i: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == k else -math.inf
    return (math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1)
            + i * math.log(p) + (k - i) * math.log1p(-p))


def _logsumexp(values: list[float]) -> float:
    top = max(values, default=-math.inf)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def binom_cdf_below(k: int, p: float, t: int) -> float:
    """P[Bin(k, p) < t] (exact summation in log space)."""
    return math.exp(_logsumexp([_log_pmf(k, i, p) for i in range(0, min(t, k + 1))]))


def binom_at_least(k: int, p: float, m: int) -> float:
    """P[Bin(k, p) >= m]."""
    return math.exp(_logsumexp([_log_pmf(k, i, p) for i in range(max(m, 0), k + 1)]))


def halting_bound(n: int, k: int, t: int, dropout: float) -> float:
    """Union bound n * P[Bin(k, 1 - dropout) < t] on the round halting (capped at 1).

    For the complete graph (k = n - 1) every client has the same holders, so the events
    coincide and no union factor is needed: P[Bin(n - 1, 1 - dropout) < t].

    With no dropout the round never halts (all k + 1 >= t holders of every secret are
    alive), even for t = k + 1, where the neighbours-only count above would say 1.
    """
    if dropout == 0.0:
        return 0.0
    factor = 1 if k >= n - 1 else n
    return min(1.0, factor * binom_cdf_below(k, 1.0 - dropout, t))


def leak_bound(n: int, k: int, t: int, corrupt: float) -> float:
    """Union bound n * P[Bin(k, corrupt) >= 2t - k - 1] on any input leaking (capped at 1);
    no union factor for the complete graph, where the corrupt count is one global event."""
    factor = 1 if k >= n - 1 else n
    return min(1.0, factor * binom_at_least(k, corrupt, 2 * t - k - 1))


def tolerated_colluders(k: int, t: int) -> int:
    """Largest number c of colluding neighbours per client that (k, t) tolerates against an
    active server: the largest c with c < 2t - k - 1 (-1 when even c = 0 is not safe)."""
    return 2 * t - k - 2


@dataclass(frozen=True, slots=True)
class GraphParams:
    """A (k, t) choice and the failure probabilities it guarantees (upper bounds)."""

    graph: str
    k: int
    t: int
    halting_probability: float
    leak_probability: float


def _smallest_secure_t(n: int, k: int, corrupt: float, security_bits: float) -> int | None:
    for t in range((k + 1) // 2 + 1, k + 2):
        if leak_bound(n, k, t, corrupt) <= 2.0 ** -security_bits:
            return t
    return None


def choose_graph_params(n: int, dropout: float = 0.2, corrupt: float = 0.0,
                        halting_bits: float = 20.0, security_bits: float = 40.0) -> GraphParams:
    """Smallest graph degree k (and its t) meeting both targets for a cohort of n clients.

    ``dropout`` and ``corrupt`` are probabilities in [0, 1); the targets are
    P_halt <= 2^-halting_bits and P_leak <= 2^-security_bits (see the module docstring for
    the arithmetic). Returns ``graph="complete"`` when only k = n - 1 works.
    """
    if n < 3:
        raise ConfigError(f"need a cohort of at least 3 clients, got {n}")
    if not (0.0 <= dropout < 1.0 and 0.0 <= corrupt < 1.0):
        raise ConfigError("dropout and corrupt must be probabilities in [0, 1)")
    candidates = [*range(2, n - 1, 2), n - 1]
    for k in candidates:
        t = _smallest_secure_t(n, k, corrupt, security_bits)
        if t is None:
            continue
        halt = halting_bound(n, k, t, dropout)
        if halt <= 2.0 ** -halting_bits:
            kind = "complete" if k == n - 1 else "harary"
            return GraphParams(kind, k, t, halt, leak_bound(n, k, t, corrupt))
    raise ConfigError(
        f"no (k, t) meets P_halt <= 2^-{halting_bits} and P_leak <= 2^-{security_bits} for "
        f"n={n}, dropout={dropout}, corrupt={corrupt}: lower the targets, the expected "
        "dropout or the corrupt fraction, or enlarge the cohort")


# -- thresholds from a stated adversary ---------------------------------------------------
GRAPH_CHOICES: tuple[str, ...] = ("auto", "complete", "harary")


def smallest_threshold(k: int, colluders: int, authenticated: bool) -> int:
    """Smallest t that keeps every input hidden from the server plus ``colluders`` colluding
    neighbours of a client, for k neighbours (may exceed k + 1: then no t works).

    Always t > (k + 1) / 2. Active server (authenticated rounds): c < 2t - k - 1, i.e.
    2t >= c + k + 2. Passive server (unauthenticated rounds, where nothing stops an active
    server from impersonating clients, so only the passive guarantee is stated): c < t.
    """
    t = (k + 1) // 2 + 1
    if authenticated:
        t = max(t, (colluders + k + 3) // 2)
    return max(t, colluders + 1)


@dataclass(frozen=True, slots=True)
class RoundParams:
    """The (k, t) of a round and the guarantee they deliver against the stated adversary.

    ``model``: ``active`` (authenticated: the server may deviate; inputs stay hidden unless
    more than ``colluders`` of a client's neighbours collude with it, c < 2t - k - 1) or
    ``passive`` (unauthenticated: the server follows the protocol; hidden unless t of a
    client's neighbours collude). ``halting_probability``: upper bound on the round halting
    with each client dropping independently with probability ``dropout``.
    ``leak_probability``: upper bound on some client having more than ``colluders``
    corrupt neighbours when each client is corrupt independently with probability
    ``corrupt`` (0 when ``corrupt`` is 0: the guarantee is then the worst-case one).
    """

    n: int
    graph: str
    k: int
    t: int
    colluders: int
    model: str
    dropout: float
    halting_probability: float
    corrupt: float
    leak_probability: float

    @property
    def authenticated(self) -> bool:
        return self.model == "active"

    @property
    def tolerated(self) -> int:
        """Colluding neighbours per client that (k, t) actually tolerates (>= the stated
        ``colluders``): 2t - k - 2 against an active server, t - 1 against a passive one."""
        return tolerated_colluders(self.k, self.t) if self.authenticated else self.t - 1

    def describe(self) -> str:
        """One line stating the delivered guarantee (for logs, the CLI and reports)."""
        c = self.tolerated
        who = f"{c} colluding neighbour{'s' if c != 1 else ''} per client"
        bound = (f"at most {who} (c < 2t - k - 1 = {2 * self.t - self.k - 1})"
                 if self.model == "active" else f"at most {who} (fewer than t = {self.t})")
        graph = "SecAgg (complete graph)" if self.graph == "complete" else "SecAgg+ (Harary)"
        article = "an" if self.model == "active" else "a"
        return (f"{graph}, n={self.n}, k={self.k}, t={self.t}: inputs hidden from {article} "
                f"{self.model} server with {bound}; halts with probability <= "
                f"{self.halting_probability:.3g} at {self.dropout:.0%} dropout")

    def to_dict(self) -> dict[str, object]:
        """Plain-data record (config.json, audit records)."""
        return {"n": self.n, "graph": self.graph, "k": self.k, "t": self.t,
                "max_colluders": self.colluders, "tolerated_colluders": self.tolerated,
                "model": self.model,
                "dropout": self.dropout, "halting_probability": self.halting_probability,
                "corrupt": self.corrupt, "leak_probability": self.leak_probability,
                "guarantee": self.describe()}


def _leak(n: int, k: int, t: int, corrupt: float, authenticated: bool) -> float:
    if corrupt == 0.0:
        return 0.0
    if authenticated:
        return leak_bound(n, k, t, corrupt)
    factor = 1 if k >= n - 1 else n
    return min(1.0, factor * binom_at_least(k, corrupt, t))


def _candidates(n: int, graph: str, neighbors: int | None) -> list[int]:
    if graph == "complete":
        return [n - 1]
    if neighbors is not None:
        if not 1 <= neighbors <= n - 1 or (neighbors % 2 == 1 and n % 2 == 1):
            raise ConfigError(f"neighbors must be in 1..{n - 1} (even for an odd cohort), "
                              f"got {neighbors}")
        return [neighbors]
    return [*range(2, n - 1, 2), n - 1] if graph == "auto" else list(range(2, n - 1, 2))


def round_params(n: int, dropout: float, max_colluders: int, authenticated: bool = True, *,
                 graph: str = "auto", neighbors: int | None = None,
                 halting_bits: float = 20.0, corrupt: float = 0.0,
                 threshold: int | None = None) -> RoundParams:
    """(k, t) for a cohort of n from a stated adversary and dropout target (server side,
    or whoever configures the round).

    ``max_colluders`` c: colluding clients among any client's neighbours that the round
    must tolerate (authenticated: against an active server, c < 2t - k - 1; otherwise the
    passive guarantee c < t). ``dropout``: each client's probability of dropping over the
    round; the round must halt with probability <= 2^-halting_bits. ``graph``: ``auto``
    (the smallest even Harary degree that meets both, else the complete graph),
    ``complete`` or ``harary`` (optionally with a fixed ``neighbors`` k). ``corrupt``: an
    optional per-client corruption probability, only for the recorded leak bound. Takes
    the smallest t meeting the colluder bound for each k (larger t only halts more) and
    the smallest k meeting the halting target. Raises :class:`ConfigError` naming what to
    change when nothing meets both.

    ``threshold``: an explicit t (a ``--threshold`` flag). k is chosen as without it; t
    must then be at least the t the colluder bound needs for that k (else
    :class:`ConfigError` naming the smallest t accepted), and the returned halting bound
    is the one of the explicit t (a larger t only halts more; it is not held to the
    halting target, the caller chose it).
    """
    if n < 3:
        raise ConfigError(f"need a cohort of at least 3 clients, got {n}")
    if not 0.0 <= dropout < 1.0 or not 0.0 <= corrupt < 1.0:
        raise ConfigError("dropout and corrupt must be probabilities in [0, 1)")
    if isinstance(max_colluders, bool) or not isinstance(max_colluders, int) or max_colluders < 0:
        raise ConfigError(f"max_colluders must be an integer >= 0, got {max_colluders!r}")
    if graph not in GRAPH_CHOICES:
        raise ConfigError(f"graph must be one of {GRAPH_CHOICES}, got {graph!r}")
    model = "active" if authenticated else "passive"
    best: tuple[float, int, int] | None = None  # (halting, k, t) of the best candidate
    for k in _candidates(n, graph, neighbors):
        t = smallest_threshold(k, max_colluders, authenticated)
        if t > k + 1:
            continue
        halt = halting_bound(n, k, t, dropout)
        if best is None or halt < best[0]:
            best = (halt, k, t)
        if halt <= 2.0 ** -halting_bits:
            kind = "complete" if k == n - 1 else "harary"
            if threshold is not None:
                t = _explicit_threshold(k, t, threshold, max_colluders, authenticated)
                halt = halting_bound(n, k, t, dropout)
            return RoundParams(n, kind, k, t, max_colluders, model, dropout, halt, corrupt,
                               _leak(n, k, t, corrupt, authenticated))
    raise ConfigError(_refusal(n, dropout, max_colluders, authenticated, graph, halting_bits,
                               best))


def _explicit_threshold(k: int, needed: int, threshold: int, c: int,
                        authenticated: bool) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ConfigError(f"threshold must be an integer, got {threshold!r}")
    if threshold > k + 1:
        raise ConfigError(f"--threshold {threshold} exceeds the k + 1 = {k + 1} holders of each "
                          f"secret (k={k}): use --threshold in {needed}..{k + 1} or drop it")
    if threshold < needed:
        got = tolerated_colluders(k, threshold) if authenticated else threshold - 1
        what = "an active" if authenticated else "a passive"
        reason = (f"is not a majority of the k + 1 = {k + 1} holders" if threshold <= (k + 1) // 2
                  else f"tolerates fewer than {c} colluders ({max(got, 0)} colluding neighbours "
                  f"against {what} server)")
        raise ConfigError(f"--threshold {threshold} with k={k} {reason}: use --threshold >= "
                          f"{needed} (or drop it), or lower --max-colluders")
    return threshold


def _refusal(n: int, dropout: float, c: int, authenticated: bool, graph: str,
             halting_bits: float, best: tuple[float, int, int] | None) -> str:
    what = "active" if authenticated else "passive"
    head = (f"no (k, t) tolerates {c} colluders against an {what} server and halts with "
            f"probability <= 2^-{halting_bits:g} at {dropout:.0%} dropout for n={n}")
    if best is None:
        need = c + 1  # t = k + 1 = n (every holder needed) tolerates c < n either way
        return (f"{head}: {c} colluders need a cohort of at least {need} clients; lower "
                "--max-colluders or enlarge the cohort")
    halt, k, t = best
    hint = f"the best is k={k}, t={t}, halting with probability <= {halt:.3g}"
    fix = "lower --max-colluders, enlarge the cohort, lower the expected dropout or loosen "
    fix += "the halting target (--halting-bits)"
    if graph != "auto":
        fix += ", or let the graph be chosen (graph='auto')"
    return f"{head} ({hint}): {fix}"
