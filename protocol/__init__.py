"""protocol layer of secure_fed: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

Client and server state machines speaking versioned binary messages, with dropout recovery,
authenticated key advertisement and a consistency round. Entry points:

* :func:`run_secure_round` -- one in-process round (clients hold inputs, the server bytes);
* :func:`simulate` -- a seeded, self-checking round for the ``simulate`` CLI and tests;
* :class:`SecAggClient` / :class:`SecAggServer` -- the two sides, one message at a time;
* :func:`round_params` -- (k, t) from a stated number of colluders and a dropout target,
  with the guarantee it delivers (:class:`RoundParams`); :func:`choose_graph_params` --
  the older chooser from a corrupt *fraction*;
* :class:`ClientPolicy` -- the weakest config a client agrees to (checked at ``start``).
"""

from protocol.client import SecAggClient
from protocol.config import PROTOCOL_VERSION, ProtocolConfig
from protocol.dropout import STAGES, DropoutSchedule
from protocol.identities import make_identities
from protocol.params import GraphParams, RoundParams, choose_graph_params, round_params
from protocol.policy import ClientPolicy
from protocol.runner import RoundResult, StageStats, run_secure_round
from protocol.server import SecAggServer, Stage
from protocol.simulator import SimulationResult, simulate

__all__ = [
    "PROTOCOL_VERSION",
    "STAGES",
    "DropoutSchedule",
    "ClientPolicy",
    "GraphParams",
    "ProtocolConfig",
    "RoundParams",
    "RoundResult",
    "SecAggClient",
    "SecAggServer",
    "SimulationResult",
    "Stage",
    "StageStats",
    "choose_graph_params",
    "make_identities",
    "round_params",
    "run_secure_round",
    "simulate",
]
