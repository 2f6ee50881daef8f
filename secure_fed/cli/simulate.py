"""``run_secure.py simulate``: the secure aggregation protocol alone, checked against plaintext.

Runs one seeded SecAgg / SecAgg+ round (every message encoded and decoded as bytes) with
the clients in this process (``--executor local``) or in Ray actors (``--executor ray``;
the server stays here either way), shows a progress bar while clients work, prints a
per-stage table (client median seconds, server seconds, bytes up/down, server memory: its
peak under tracemalloc with ``--memory``, else its resident state)
and compares the unmasked sum with the plaintext sum of the summed clients' inputs. Exit
status: 0 on a match, 1 on a mismatch, 3 if the round aborted (fewer than t survivors), 2
for a bad flag value.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from protocol.dropout import STAGES
from protocol.errors import ProtocolAbort
from protocol.runner import RoundResult
from protocol.simulator import SimulationResult, simulate
from secure_fed.aggregation.secagg import choose_round
from secure_fed.config import DEFAULT_HALTING_BITS, DEFAULT_MAX_COLLUDERS
from secure_fed.errors import ConfigError
from secure_fed.executor import add_arguments as add_executor_arguments
from secure_fed.executor import make_executor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the ``simulate`` subcommand."""
    parser.add_argument("--clients", type=int, default=20, help="cohort size n")
    parser.add_argument("--length", type=int, default=1000, help="entries per input vector L")
    parser.add_argument("--bits", type=int, default=32, help="ring Z_{2^bits} of the sum (1..64)")
    parser.add_argument("--graph", choices=("complete", "harary"), default="complete",
                        help="complete = SecAgg; harary = SecAgg+ with --neighbors per client")
    parser.add_argument("--neighbors", type=int, default=None,
                        help="k, graph neighbours per client (harary only; default: chosen "
                             "from --max-colluders, --dropout and --halting-bits)")
    parser.add_argument("--threshold", type=int, default=None,
                        help="t, shares needed to reconstruct (default: the smallest meeting "
                             "--max-colluders; a smaller one is refused)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="probability that each client drops, all of them at the stage "
                             "--dropout-stage (unlike train's --dropout, which draws each "
                             "dropping client's stage uniformly)")
    parser.add_argument("--dropout-stage", choices=STAGES, default="masked",
                        help="stage before which dropping clients go silent")
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs, keys and dropouts")
    parser.add_argument("--authenticated", action=argparse.BooleanOptionalAction, default=True,
                        help="Ed25519-signed key advertisements and a consistency round "
                             "(protects against an active server); as in train")
    parser.add_argument("--unauthenticated", dest="authenticated", action="store_false",
                        help=argparse.SUPPRESS)  # deprecated spelling of --no-authenticated
    parser.add_argument("--max-colluders", type=int, default=DEFAULT_MAX_COLLUDERS,
                        help="c: colluding neighbours per client to tolerate; (k, t) not given "
                             "are chosen from it, --dropout and --halting-bits, as in train")
    parser.add_argument("--halting-bits", type=float, default=DEFAULT_HALTING_BITS,
                        help="the round may halt with probability at most 2^-bits at --dropout")
    parser.add_argument("--memory", action="store_true",
                        help="trace the server's peak memory with tracemalloc (slows the server; "
                             "without it the table's memory column counts resident state only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_arguments(parser)


def _progress_bar(quiet: bool) -> tuple[Callable[[str, int, int], None] | None,
                                         Callable[[], None]]:
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(total=total, desc=f"{stage:>11}", unit="client", leave=False,
                               file=sys.stderr)
        bars[stage].update(done - bars[stage].n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


MEMORY_COLUMNS = {True: "peak server MiB (tracemalloc)",
                  False: "server resident MiB (peak not traced; see --memory)"}
"""Header of the memory column, by whether tracemalloc traced the round."""


def format_table(result: RoundResult, traced: bool = True) -> str:
    """Markdown table of the per-stage accounting; ``traced``: tracemalloc was on."""
    lines = ["| stage | survivors | client median s | server s | bytes up | bytes down |"
             f" {MEMORY_COLUMNS[traced]} |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in result.stages:
        lines.append(f"| {s.stage} | {s.survivors} | {s.client_median_seconds:.4f} | "
                     f"{s.server_seconds:.4f} | {s.total_up:,} | {s.total_down:,} | "
                     f"{_mib(s.server_peak_bytes)} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the simulation; returns the process exit status."""
    if args.server_workers < 1:
        raise ConfigError(f"--server-workers: must be >= 1 (1 = the server's own process; got {args.server_workers})")
    authenticated = args.authenticated
    # (k, t) and the guarantee: chosen exactly as train chooses them (--graph harary: SecAgg+)
    params = choose_round(args.clients, args.graph, args.neighbors, args.threshold, args.dropout,
                          args.max_colluders, authenticated, args.halting_bits)
    print(f"guarantee: {params.describe()}" + ("" if authenticated else
          "; unauthenticated: passive server only"), flush=True)
    executor = make_executor(args.executor, args.ray_address, args.workers)
    update, close = _progress_bar(args.quiet)
    try:
        sim: SimulationResult = simulate(
            args.clients, args.length, args.bits, params.graph,
            None if params.graph == "complete" else params.k, params.t,
            args.dropout, args.dropout_stage, args.seed, authenticated,
            progress=update, trace_memory=args.memory,
            pool_factory=executor.simulation_pool_factory(), server_workers=args.server_workers)
    except ProtocolAbort as exc:
        close()
        print(f"round aborted: {exc}", file=sys.stderr)
        return 3
    finally:
        executor.close()
    close()
    res = sim.result
    print(format_table(res, traced=args.memory))
    print(f"summed {len(res.summed)} of {args.clients} clients; dropped {len(res.dropped)}")
    if sim.ok:
        print(f"OK: the unmasked sum equals the plaintext sum mod 2^{args.bits}")
        return 0
    print("MISMATCH: the unmasked sum differs from the plaintext sum", file=sys.stderr)
    return 1


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="simulate")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
