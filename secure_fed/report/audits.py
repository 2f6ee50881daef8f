"""The report's section on the empirical privacy audits (``run_secure.py audit``): each
audit's verdict, summary tables and plots, read from ``audit_results.json``."""

from __future__ import annotations

from typing import Any

from secure_fed.report.load import RunData, _dict, _list, _num
from secure_fed.report.plots import plot_audit
from secure_fed.report.text import esc, fmt, section

AUDIT_TITLES = {"inversion": "Upload inversion", "one-run": "One-run DP audit",
                "membership": "Membership inference"}



def _verdict(passed: Any) -> str:
    if passed is True:
        return "<p class='ok'><strong>Passed.</strong></p>"
    if passed is False:
        return "<p class='bad' role='alert'><strong>FAILED</strong>: see the verdict below.</p>"
    return "<p class='note'>Measured only: this audit checks no claim here.</p>"


def _audit_value(v: Any) -> str:
    return fmt(v, 6) if isinstance(v, float) else fmt(v)


def summary_tables(summary: dict[str, Any]) -> str:
    """An audit's summary: keys ``"GROUP: metric"`` shared by two or more groups become one
    table (a row per metric, a column per group); every other key a two-column row."""
    groups: dict[str, dict[str, Any]] = {}
    for k, v in summary.items():
        group, sep, metric = str(k).partition(": ")
        if sep and metric:
            groups.setdefault(group, {})[metric] = v
    multi = {g: m for g, m in groups.items() if len(m) >= 2}
    if len(multi) < 2:
        multi = {}
    grouped = {f"{g}: {m}" for g, ms in multi.items() for m in ms}
    plain = [(k, v) for k, v in summary.items() if k not in grouped and not isinstance(v, dict | list)]
    html_out = ""
    if multi:
        metrics = list(dict.fromkeys(m for ms in multi.values() for m in ms))
        head = "<th scope='col'>metric</th>" + "".join(f"<th scope='col'>{esc(g)}</th>" for g in multi)
        body = "".join(
            f"<tr><th scope='row'>{esc(m)}</th>"
            + "".join(f"<td>{_audit_value(multi[g].get(m))}</td>" for g in multi) + "</tr>"
            for m in metrics)
        html_out += f"<div class='scroll'><table class='grid'><tr>{head}</tr>{body}</table></div>"
    rows = "".join(f"<tr><th scope='row'>{esc(k)}</th><td>{_audit_value(v)}</td></tr>" for k, v in plain)
    return html_out + (f"<table class='kv'>{rows}</table>" if rows else "")


def _audit_block(name: str, entry: dict[str, Any]) -> str:
    result = _dict(entry.get("result"))
    title = AUDIT_TITLES.get(name, name)
    summary = {str(k): v for k, v in _dict(result.get("summary")).items()}
    summary.update({"seed": entry.get("seed"), "seconds": _num(entry.get("seconds"))})
    figs = []
    for spec in _list(result.get("plots")):
        try:
            plot = plot_audit(_dict(spec))
        except (ValueError, ArithmeticError) as exc:
            figs.append(f"<p class='missing'>A plot could not be drawn ({esc(exc)}).</p>")
            continue
        if plot is not None:
            figs.append(plot.html())
    return f"<h3>{esc(title)}</h3>{_verdict(result.get('passed'))}{summary_tables(summary)}{''.join(figs)}"


def audits_section(run: RunData) -> str:
    """Results of ``run_secure.py audit`` (audit_results.json), or nothing if never run."""
    data = run.audits
    if data is None:
        return ""
    if "error" in data:
        body = f"<p class='bad'>The audit results could not be read: {esc(data['error'])}.</p>"
        return section("audits", "Empirical privacy audits", body)
    intro = ("<p>Attacks run against this run's own uploads, releases and model "
             "(<code>run_secure.py audit</code>): evidence of what an attacker recovers, next to "
             "the accountant's claim above. Raw scores are in <code>audit_results.json</code>.</p>")
    audits = _dict(data.get("audits"))
    order = [n for n in AUDIT_TITLES if n in audits] + sorted(set(audits) - set(AUDIT_TITLES))
    blocks = "".join(_audit_block(str(n), _dict(audits[n])) for n in order)
    if not blocks:
        blocks = "<p class='missing'>No audit results recorded.</p>"
    return section("audits", "Empirical privacy audits", intro + blocks)
