"""What a prototype method's server did (ProtoNorm, FedSA, GFPL), from the rounds'
``server_step`` records: the report's per-round cell, the summary's total, and the notice at
the top when the server read no class in any round or GFPL's due calibrations never ran."""

from __future__ import annotations

from typing import Any

from secure_fed.report.load import RunData, _dict, _num, dp_enabled
from secure_fed.report.text import esc, fmt
from secure_fed.run.records import step_totals


def server_steps(run: RunData) -> list[dict[str, Any]]:
    """The ``server_step`` of every round that has one (ProtoNorm, FedSA, GFPL)."""
    return [_dict(r.get("server_step")) for r in run.rounds if r.get("server_step")]


STEP_UNUSED = {
    "protos": "no prototype was broadcast and the clients trained without the prototype loss",
    "anchors moved": "the anchors stayed where they started (random unit vectors)",
    "gaussians": "no class Gaussian was formed and no calibration on pseudo-features ran",
}


def step_banner(run: RunData) -> str:
    """A prototype method whose server read no class in any round, or whose scheduled
    calibrations never ran, says so at the top (what the system did, not what was asked)."""
    steps = server_steps(run)
    if not steps:
        return ""
    label = str(steps[-1].get("label"))
    if not any(int(_num(st.get("active")) or 0) for st in steps):
        why = ("under DP no class's summed release cleared the server's gate (its noisy count above 3 noise "
               "standard deviations and, for ProtoNorm and GFPL, more signal than noise)" if dp_enabled(run)
               else "no class had a positive summed count")
        return (f"<div class='warn' role='status'><strong>The server read no class in {len(steps)} rounds "
                f"({esc(label)} 0 every round):</strong> {esc(why)}, so "
                f"{esc(STEP_UNUSED.get(label, 'the server step did nothing'))}.</div>")
    due = [st for st in steps if st.get("calibration_due")]
    if due and not any(st.get("calibrated") for st in due):
        return (f"<div class='warn' role='status'><strong>The calibration never ran:</strong> it was due in "
                f"{len(due)} rounds and skipped in each, because no class cleared the gate in those rounds.</div>")
    return ""


def step_cell(rec: dict[str, Any]) -> str:
    """A prototype method's server step in a round: label k/C, and GFPL's calibration."""
    st = _dict(rec.get("server_step"))
    if not st:
        return "&ndash;"
    text = f"{esc(st.get('label'))} {fmt(st.get('active'))}/{fmt(st.get('num_classes'))}"
    if st.get("calibrated"):
        text += " <span class='note'>calibrated</span>"
    elif st.get("calibration_due"):
        text += " <span class='note'>calibration skipped</span>"
    return text


def step_summary(run: RunData) -> str | None:
    """``label: k of S class-rounds read`` over the run (and GFPL's calibrations), or None
    for a run without server steps."""
    steps = server_steps(run)
    if not steps:
        return None
    read, slots, done, due = step_totals(steps)
    text = f"{esc(steps[-1].get('label'))}: {read} of {slots} class-rounds read"
    if due is not None:
        text += f"; calibrated in {done} of {due} due rounds"
    return text
