"""The secure aggregation guarantee a run delivered, for report.html's threat-model part.

Read from config.json's ``secure_aggregation`` (protocol.params.RoundParams.to_dict(),
written by the trainer), else from the last round record's ``guarantee``.
"""

from __future__ import annotations

from typing import Any

from secure_fed.report.load import RunData, _list, last_with
from secure_fed.report.text import esc


def guarantee_of(run: RunData) -> dict[str, Any] | None:
    """The delivered guarantee (protocol.params.RoundParams.to_dict()): config.json's, else
    the last round record's."""
    g = run.config.get("secure_aggregation")
    if not isinstance(g, dict):
        rec = last_with(run.rounds, "guarantee")
        g = rec.get("guarantee") if rec is not None else None
    return g if isinstance(g, dict) and g.get("guarantee") else None


def guarantee_text(run: RunData) -> str:
    g = guarantee_of(run)
    if g is None:
        return ("This run recorded no colluder bound (it predates --max-colluders): the "
                "threshold paragraph below is all it states.")
    text = (f"<strong>{esc(str(g['guarantee']))}.</strong> The run asked for at most "
            f"<strong>c = {esc(str(g.get('max_colluders')))}</strong> colluding neighbours per "
            f"client (--max-colluders); (k, t) were chosen from c, the expected dropout and the "
            f"halting target by protocol.params.round_params.")
    if g.get("model") == "active":
        text += (" Every client held a policy refusing, before any secret left it, a config "
                 "that was unauthenticated, had no fresh round nonce or tolerated fewer "
                 "colluders.")
    if g.get("model") == "passive":
        text += (" <strong>Passive server only</strong> (--no-authenticated): against a "
                 "server that deviates from the protocol the run promises nothing.")
    restarted = sum(len(_list(r.get("restarts"))) for r in run.rounds)
    if restarted:
        text += (f" {restarted} protocol round{'s were' if restarted != 1 else ' was'} restarted "
                 "after a reveal-stage dropout (fresh keys, nonce and graph among the clients "
                 "still alive); the audit log records each.")
    return text
