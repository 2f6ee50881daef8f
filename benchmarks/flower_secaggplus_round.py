"""One round of Flower's SecAgg+ (``flwr.server.workflow.SecAggPlusWorkflow`` with
``flwr.client.mod.secaggplus_mod``), all clients in this process: the yardstick of
``bench_simulate_process.py``.

Runs under an interpreter that has Flower installed (``pip install flwr`` in a separate
virtual environment; this repo does not depend on Flower) and imports nothing from this
repo. The server side is Flower's own workflow object, called as Flower's
``DefaultWorkflow`` calls its fit workflow (a ``LegacyContext`` holding a FedAvg strategy,
the client manager and the round's config record). Its only dependency on the transport
is ``grid.send_and_receive``; :class:`InProcessGrid` answers it by passing each message to
its client's ``secaggplus_mod`` (with that client's own ``Context``, as a ClientApp with the
mod would), with no serialization. A client that drops (before its masked input, as
``run_secure.py simulate --dropout-stage masked``) sends no reply from that stage on,
which is how the workflow sees a dropout.

Each client uploads a float32 vector of ``--length`` entries drawn uniformly from [-1, 1]
(seeded per client); the round is checked: the aggregate the workflow hands to FedAvg
must equal the mean of the surviving clients' vectors to within Flower's quantization
error. Prints one JSON line: dropped clients, server seconds (wall time outside client
calls), the median over clients of each client's summed compute seconds, and the check.

    python flower_secaggplus_round.py --clients 100 --length 100000 --neighbors 74 \\
        --threshold 38 --dropout 0.2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Iterable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.supercore.task_identity import TaskIdentity


def client_input(node_id: int, length: int, seed: int) -> np.ndarray:
    """The vector node ``node_id`` uploads (regenerated on demand, never all held)."""
    return np.random.default_rng([seed, node_id]).uniform(-1.0, 1.0, length).astype(np.float32)


class InProcessGrid:
    """``send_and_receive`` of a Flower Grid, answered by the clients' mods in this process."""

    def __init__(self, node_ids: list[int], length: int, seed: int, dropped: set[int]) -> None:
        self.node_ids, self.length, self.seed, self.dropped = node_ids, length, seed, dropped
        self.contexts = {nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(),
                                      run_config={}) for nid in node_ids}
        self.client_seconds = dict.fromkeys(node_ids, 0.0)
        self.silent: set[int] = set()
        self.bytes_down = self.bytes_up = 0

    def _fit(self, msg: Message, ctxt: Context) -> Message:
        """The ClientApp behind the mod: returns this client's vector as its FitRes."""
        vec = client_input(ctxt.node_id, self.length, self.seed)
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vec]), num_examples=1, metrics={})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Each message travels as Flower's protobuf bytes both ways, as over its gRPC
        transport (the workflow reuses one content object for many messages, and the
        client's mod edits what it receives: a copy per client is what the wire gives)."""
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if nid in self.dropped and stage == Stage.COLLECT_MASKED_VECTORS:
                self.silent.add(nid)
            if nid in self.silent:
                continue
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's grids do on push
            down = message_to_proto(msg).SerializeToString()
            self.bytes_down += len(down)
            t0 = time.perf_counter()
            received = message_from_proto(ProtoMessage.FromString(down))
            reply = secaggplus_mod(received, self.contexts[nid], self._fit)
            up = message_to_proto(reply).SerializeToString()
            self.client_seconds[nid] += time.perf_counter() - t0
            self.bytes_up += len(up)
            replies.append(message_from_proto(ProtoMessage.FromString(up)))
        return replies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--length", type=int, default=100_000)
    ap.add_argument("--neighbors", type=int, required=True, help="k: Flower's num_shares is k + 1 (itself included)")
    ap.add_argument("--threshold", type=int, required=True, help="t: shares needed to reconstruct")
    ap.add_argument("--dropout", type=float, default=0.2, help="probability that a client drops before its masked input")
    ap.add_argument("--drop-count", type=int, default=None,
                    help="drop exactly this many clients (chosen at random) instead of each with --dropout")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    # what Flower's runtime sets for a ServerApp process before its workflow runs
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    n = args.clients
    node_ids = list(range(1, n + 1))  # Flower node ids are positive
    rng = np.random.default_rng([args.seed, 7])
    if args.drop_count is not None:
        dropped = {int(v) for v in rng.choice(node_ids, size=args.drop_count, replace=False)}
    else:
        dropped = {nid for nid, gone in zip(node_ids, rng.random(n) < args.dropout, strict=True) if gone}
    grid = InProcessGrid(node_ids, args.length, args.seed, dropped)

    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(GridClientProxy(nid, grid, run_id=1))  # type: ignore[arg-type]
    strategy = FedAvg(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n,
                      fraction_evaluate=0.0)
    context = LegacyContext(Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager)
    init = ndarrays_to_parameters([np.zeros(args.length, dtype=np.float32)])
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(init, keep_input=True)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})

    workflow = SecAggPlusWorkflow(num_shares=args.neighbors + 1, reconstruction_threshold=args.threshold)
    t0 = time.perf_counter()
    workflow(grid, context)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0

    survivors = [nid for nid in node_ids if nid not in grid.silent]
    out = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    got = parameters_to_ndarrays(out)[0].astype(np.float64)
    expected = np.zeros(args.length)
    for nid in survivors:
        expected += client_input(nid, args.length, args.seed)
    expected /= len(survivors)
    err = float(np.max(np.abs(got - expected)))
    client_total = sum(grid.client_seconds.values())
    print(json.dumps({
        "clients": n, "length": args.length, "num_shares": args.neighbors + 1, "threshold": args.threshold,
        "dropped": len(grid.silent), "summed": len(survivors),
        "round_seconds": wall, "bytes_up": grid.bytes_up, "bytes_down": grid.bytes_down, "server_seconds": wall - client_total,
        "client_median_seconds": statistics.median(grid.client_seconds.values()),
        "max_abs_error": err, "ok": err < 1e-2,
    }))
    return 0 if err < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
