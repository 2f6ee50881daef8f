"""The HTML audit report of a run (``runs/<id>/report.html``), rendered from its files alone.

Runs on the operator's side (the server or whoever holds the run folder), after or during
training: it reads ``config.json`` and ``audit.jsonl`` (and ``audit_results.json`` when
``run_secure.py audit`` has written one) and nothing else, verifies the audit log's hash
chain with :func:`secure_fed.run.rundir.verify_chain`, and writes one self-contained HTML file
(inline CSS, matplotlib PNGs embedded as base64 data URIs, no scripts, no external
resources; a Content-Security-Policy forbids them too). Every string taken from the files is
HTML-escaped. A broken chain does not stop the report: it is shown at the top and in the
chain section, and the figures are marked as coming from an unverified log.

Units: epsilon at the logged delta; bytes are bytes (plots scale to KiB/MiB); times seconds.
"""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_fed.report.audits import audits_section
from secure_fed.report.guarantee import guarantee_text
from secure_fed.report.load import (
    REPORT_NAME,
    UNITS,
    ChainStatus,
    RunData,
    _dict,
    _finite,
    _list,
    _num,
    aggregator,
    dp_enabled,
    epsilons,
    last_with,
    load_run,
    summed,
)
from secure_fed.report.plots import plots
from secure_fed.report.steps import step_banner, step_cell, step_summary
from secure_fed.report.text import esc, fmt, fmt_bytes, ids, kv_table
from secure_fed.report.text import section as _section
from secure_fed.run.rundir import atomic_write_bytes


# -- sections --------------------------------------------------------------------------------
def _status(run: RunData) -> str:
    planned = _num(run.config.get("rounds"))
    done = max((int(x) for r in run.rounds if (x := _finite(r.get("round"))) is not None),
               default=0)
    if run.stops:
        return f"stopped early, before round {fmt(run.stops[-1].get('round'))}"
    if planned is not None and done >= planned:
        return f"complete: all {planned:.0f} planned rounds ran"
    if planned is not None:
        return f"incomplete: {done} of {planned:.0f} rounds logged (interrupted or still running)"
    return f"{done} rounds logged"


def stop_banner(stop: dict[str, Any]) -> str:
    """The highlighted box of a stop record."""
    eps = "; ".join(f"{esc(a)} &epsilon; = {fmt(e)}" for a, e in epsilons(stop).items())
    spent = f"<br>Budget spent at the stop: {eps}." if eps else ""
    return (f"<div class='stop' role='status'><strong>Stopped before round "
            f"{fmt(stop.get('round'))}: {fmt(stop.get('reason', 'no reason recorded'))}</strong>"
            f"{spent}</div>")


def summary_section(run: RunData) -> str:
    """Title block: what ran, how it ended, and the chain status up front."""
    c = run.config
    final = next((r for r in reversed(run.rounds) if _num(r.get("accuracy")) is not None), None)
    rows = [
        ("run", run.name), ("dataset", c.get("dataset")), ("algorithm", c.get("algorithm")),
        ("clients / cohort per round", f"{c.get('clients', '?')} / {c.get('cohort', '?')}"),
        ("rounds", _status(run)), ("seed", c.get("seed")),
        ("aggregation", aggregator(run)),
        ("differential privacy", f"unit {c.get('dp')}" if dp_enabled(run) else "off"),
        ("final accuracy", None if final is None
         else f"{final['accuracy']:.4f} (round {final.get('round')})"),
    ]
    banners = "".join(stop_banner(s) for s in run.stops) + hp_banner(run) + step_banner(run)
    hps = [_dict(r.get("hp")) for r in run.rounds if r.get("hp")]
    if hps:
        got = sum(len(_list(h.get("matched_classes"))) for h in hps)
        slots = sum(int(_num(h.get("num_classes")) or 0) for h in hps)
        gate = (" (the others' noisy counts did not clear the server's gate of 3 noise standard deviations)"
                if 0 < got < slots and dp_enabled(run) else "")
        rows.append(("hyper-prototypes matched", f"{got} of {slots} class-rounds{gate}"))
    if (step_total := step_summary(run)) is not None:
        rows.append(("prototype server step", step_total))
    if not run.chain.ok:
        banners = (f"<div class='bad' role='alert'><strong>Audit chain verification FAILED: "
                   f"{esc(run.chain.message)}.</strong> Everything below comes from an "
                   f"unverified log.</div>") + banners
    elif run.evidence is not None and not run.evidence.ok:
        banners = (f"<div class='bad' role='alert'><strong>Evidence check FAILED: "
                   f"{esc(run.evidence.message)}.</strong> The chain verifies, but its records do not "
                   f"hold together: the epsilon and configuration below are not trustworthy.</div>") + banners
    return f"<header><h1>Audit report: {esc(run.name)}</h1>{banners}{kv_table(rows)}</header>"


def _privacy_numbers(run: RunData) -> list[str]:
    """Sentences with epsilon per accountant, delta and the worst client."""
    last = last_with([*run.rounds, *run.stops], "epsilon")
    dp = _dict((last_with(run.rounds, "dp") or {}).get("dp"))
    delta = dp.get("delta", run.config.get("delta"))
    if last is None:
        return [f"No epsilon has been recorded yet (delta = {fmt(delta)})."]
    out = []
    first = run.config.get("accountant")  # the one the stopping rule used, listed first
    for acc, v in sorted(_dict(last.get("epsilon")).items(), key=lambda kv: (kv[0] != first,
                                                                             kv[0])):
        v = _dict(v) if isinstance(v, dict) else {"max": v}
        per = {k: e for k, e in _dict(v.get("per_client")).items() if _num(e) is not None}
        worst = max(per, key=lambda k: per[k]) if per else None
        who = (f", the maximum over the {len(per)} accounted clients (worst: client "
               f"{esc(worst)})" if worst is not None else ", the maximum over clients")
        out.append(f"<strong>&epsilon; = {fmt(_num(v.get('max')))}</strong> at "
                   f"&delta; = {fmt(delta)} by the {esc(acc).upper()} accountant{who}.")
    where = "the stop record" if last.get("kind") == "stop" else f"round {fmt(last.get('round'))}"
    out.append(f"Budget spent as of {where}.")
    return out


def _noise_rows(run: RunData) -> list[tuple[str, Any]]:
    c = run.config
    dp = _dict((last_with(run.rounds, "dp") or {}).get("dp"))
    eff = [x for r in run.rounds
           if (x := _num(_dict(r.get("dp")).get("effective_noise_multiplier"))) is not None]
    unit = dp.get("unit", c.get("dp"))
    return [
        ("privacy unit", UNITS.get(str(unit), unit)),
        ("mechanism", dp.get("mechanism", c.get("mechanism"))),
        ("noise placement", dp.get("placement", c.get("noise_placement"))),
        ("noise multiplier (configured)", dp.get("noise_multiplier", c.get("noise_multiplier"))),
        ("release noise multiplier (x release noise ratio)",
         f"{dp['release_noise_multiplier']:.4g} (x {dp.get('release_noise_ratio', 1.0):g})"
         if _num(dp.get("release_noise_multiplier")) is not None else None),
        ("effective release noise multiplier (survivors summed), last / lowest",
         f"{eff[-1]:.4g} / {min(eff):.4g}" if eff else None),
        ("clip norm C", dp.get("clip", c.get("clip"))),
        ("target epsilon", c.get("target_epsilon")),
        ("accountant for the stopping rule", c.get("accountant")),
    ]


def _randomness(run: RunData) -> str:
    hardened = run.config.get("hardened")
    if hardened is True:
        return ("<p class='ok'><strong>Hardened run:</strong> noise was drawn from the "
                "operating system's CSPRNG, so nobody can regenerate it.</p>")
    said = "This run was" if hardened is False else "The config does not say it was hardened, "
    return (f"<p class='warn'><strong>Reproducible run, not a deployable guarantee.</strong> "
            f"{said} run with seeded noise (seed {fmt(run.config.get('seed'))}) so that it "
            f"can be replayed. This is for experiments only: anyone who knows the seed can "
            f"regenerate the noise and subtract it, which voids the guarantee above.</p>")


def privacy_section(run: RunData) -> str:
    """The privacy statement, or a plain "no differential privacy" when DP is off."""
    if not dp_enabled(run):
        secagg = aggregator(run) != "plaintext"
        hidden = (" Secure aggregation hid each client's upload from the server, but the "
                  "sum itself and everything computed from it were released without "
                  "noise." if secagg else "")
        body = (f"<p class='warn'><strong>No differential privacy.</strong> This run added no "
                f"calibrated noise, so it has no formal privacy guarantee and no &epsilon;: "
                f"the aggregates, the model updates and the final model may reveal "
                f"information about individual training examples.{hidden}</p>")
        return _section("privacy", "Privacy statement", body)
    nums = "".join(f"<p>{s}</p>" for s in _privacy_numbers(run))
    body = nums + kv_table(_noise_rows(run)) + _randomness(run) + _per_client(run)
    return _section("privacy", "Privacy statement", body)


def _per_client(run: RunData) -> str:
    last = last_with([*run.rounds, *run.stops], "epsilon")
    if last is None:
        return ""
    rows = []
    for acc, v in _dict(last.get("epsilon")).items():
        for cid, e in sorted(_dict(_dict(v).get("per_client")).items(), key=lambda kv: str(kv[0])):
            rows.append(f"<tr><td>{esc(acc)}</td><td>{esc(cid)}</td><td>{fmt(_num(e))}</td></tr>")
    if not rows:
        return ""
    return ("<details><summary>Epsilon per client</summary><table class='grid'><tr>"
            "<th>accountant</th><th>client</th><th>&epsilon;</th></tr>"
            + "".join(rows) + "</table></details>")


def _threshold(run: RunData) -> str:
    t = run.config.get("threshold")
    if t is None:
        seen = sorted({str(r["threshold"]) for r in run.rounds if r.get("threshold") is not None})
        t = "/".join(seen) if seen else None
    return esc(t) if t is not None else "t (protocol default)"


def _neighbors(run: RunData) -> str:
    k = run.config.get("neighbors")
    if k is None:
        seen = sorted({str(r["neighbors"]) for r in run.rounds if r.get("neighbors") is not None})
        k = "/".join(seen) if seen else "?"
    return esc(k)


def _server_text(run: RunData, agg: str) -> str:
    if agg == "plaintext":
        guard = ("Only noise that a client adds itself (local placement) protects an "
                 "individual upload from the server." if dp_enabled(run) else
                 "Nothing protects an individual upload from the server.")
        return ("<strong>No secure aggregation.</strong> The server receives every client's "
                f"upload in the clear. {guard}")
    graph = ("every other cohort member" if agg == "secagg" else
             f"its k = {_neighbors(run)} neighbours in a random graph")
    base = (f"<strong>Secure aggregation ({esc(agg)})</strong>: each client shares its masking "
            f"secrets with {graph}, and the server learns only the sum of the inputs of the "
            f"clients that survive to the end of the round.")
    if run.config.get("authenticated") is True:
        return (base + " <strong>Authenticated mode:</strong> this holds even against an "
                "<em>active</em> server, one that drops, delays or forges messages and lies "
                "about who dropped out, because clients sign their keys and confirm the survivor "
                "set to each other (consistency check). It assumes a PKI: every client's long-term Ed25519 "
                "verification key reaches the others through a channel the server does not "
                "control. If the server can substitute keys, this mode gives no more than the "
                "unauthenticated one.")
    return (base + " <strong>Unauthenticated mode:</strong> this holds only against an "
            "<em>honest-but-curious</em> server, one that follows the protocol but studies "
            "what it receives. An active server can pose as clients (their keys are not "
            "signed) and so learn an individual client's input.")


def _threshold_text(run: RunData, agg: str) -> str:
    t = _threshold(run)
    plus = (" SecAgg+ picks the graph from public randomness, so its guarantee is "
            "probabilistic: it holds with high probability when the fraction of colluding "
            "clients is small (Bell et al., CCS 2020), not for every coalition."
            if agg == "secagg+" else "")
    return (f"Secrets are Shamir-shared with threshold <strong>t = {t}</strong>. Any t "
            f"share-holders of one client together can rebuild its masks: a server that "
            f"colludes with t or more of them can unmask that client's individual input. With "
            f"fewer than t colluders a server that follows the protocol learns only the sum (one "
            f"that deviates needs fewer: c < 2t - k - 1, as stated above), from which the colluding "
            f"clients can subtract their own inputs: what is revealed is the sum of the honest "
            f"survivors. A round with fewer than t survivors aborts and reveals nothing; a "
            f"released sum can cover as few as t clients.{plus}")


def _dp_text(run: RunData, agg: str) -> str:
    if not dp_enabled(run):
        return ("No differential privacy: nothing bounds what the released sums and models "
                "reveal about an individual example.")
    place = _noise_rows(run)[2][1]
    text = ("Differential privacy covers <em>what the server sees</em>: the noised aggregate "
            "and everything computed from it (hyper-prototypes, meta classifier, global "
            "model). Secure aggregation adds no noise; it hides the individual uploads.")
    if place == "distributed":
        text += (" Noise is <strong>distributed</strong>: each client adds only a share, "
                 "sized so that any t survivors together carry the full noise. The guarantee "
                 "toward the server therefore also relies on secure aggregation hiding each "
                 "upload and on clients adding their shares honestly; clients colluding with "
                 "the server know their own shares, which lowers the effective noise (logged "
                 "per round as the effective noise multiplier).")
    elif place == "local":
        text += (" Noise is <strong>local</strong>: every client adds the full noise itself, "
                 "so each upload is private on its own, even without secure aggregation.")
    if agg == "plaintext" and place != "local":
        text += (" <strong>Without secure aggregation and with non-local noise, individual "
                 "uploads reach the server unprotected by the stated guarantee.</strong>")
    return text


def _dropout_text(run: RunData) -> str:
    p = run.config.get("dropout")
    if not _num(p):
        return (f"Dropout rate {fmt(p)}: no dropouts were simulated; clients that stop "
                f"answering in a real deployment are handled by the same recovery path.")
    return (f"Dropout rate {fmt(p)}: clients were removed at random protocol stages by the "
            f"simulator. This exercises the recovery path; it is a simulation, not a "
            f"measurement of a real network, and dropouts an attacker causes on purpose are "
            f"the active-server case above.")


NOT_PROTECTED = (
    "<ul><li>The global model of every round and the final model are public to every "
    "participating client and to anyone they give it to; DP, when on, bounds what they "
    "reveal, secure aggregation does not.</li>"
    "<li>Participation is visible: the server knows which clients were selected and which "
    "dropped at which stage, and this log records it.</li>"
    "<li>Message sizes and timing are visible to the server and the network.</li>"
    "<li>The audit chain detects an edited, inserted or removed record, except at the end of "
    "the log: removing or editing the last records is detectable only against a copy of the "
    "chain head kept elsewhere.</li></ul>")


def _unit_item(run: RunData) -> str:
    if not dp_enabled(run):
        return "</ul>"
    return ("<li>The guarantee is per privacy unit: at unit &lsquo;one sample&rsquo;, a person "
            "with many examples in the data is protected only by group privacy, which is "
            "weaker; at unit &lsquo;one client&rsquo;, a person whose data is spread over "
            "several clients is protected only by group privacy as well.</li></ul>")


def threat_section(run: RunData) -> str:
    """Threat model and trust assumptions in plain words, for this run's configuration."""
    agg = aggregator(run)
    items = [("Server", _server_text(run, agg))]
    if agg != "plaintext":
        items.append(("Delivered guarantee", guarantee_text(run)))
        items.append(("Threshold and collusion", _threshold_text(run, agg)))
    items += [("Differential privacy and secure aggregation", _dp_text(run, agg)),
              ("Dropouts", _dropout_text(run)),
              ("What is not protected", NOT_PROTECTED.replace("</ul>", _unit_item(run)))]
    body = "".join(f"<h3>{esc(title)}</h3><div class='para'>{text}</div>"
                   for title, text in items)
    return _section("threat-model", "Threat model and trust assumptions", body)


def plots_section(run: RunData) -> str:
    """The four figures, each an embedded PNG, or a sentence saying why it is absent."""
    parts = [p.html() if p is not None else f"<p class='missing'>{esc(why)}.</p>"
             for why, p in plots(run)]
    note = ("" if run.chain.ok else
            "<p class='bad'>These figures come from a log whose chain did not verify.</p>")
    return _section("plots", "Plots", note + "".join(parts))


ROUND_COLUMNS = ("round", "aggregator", "cohort", "summed", "dropped", "t", "epsilon",
                 "accuracy", "loss", "hp matched", "matching loss before / after", "hp movement", "server step",
                 "up / client", "up total", "down total", "events",
                 "seconds", "aggregate SHA-256")


def _bytes_total(rec: dict[str, Any], way: str) -> int | None:
    vals = [_num(_dict(v).get(way)) for v in _dict(rec.get("bytes")).values()]
    nums = [v for v in vals if v is not None]
    return int(sum(nums)) if nums else None


def hp_cells(rec: dict[str, Any]) -> list[str]:
    """FedHPro's matching in a round: matched k/C (and which), the mean matching loss
    1 - cos over the matched classes before and after, and the relative movement of P."""
    hp = _dict(rec.get("hp"))
    if not hp:
        return ["&ndash;"] * 3
    matched = _list(hp.get("matched_classes"))
    k = f"{len(matched)}/{fmt(hp.get('num_classes'))}"
    if matched:
        k += f" <span class='note'>({ids(matched)})</span>"
    if hp.get("control") not in (None, "none"):
        k += f" <span class='note'>control {esc(hp.get('control'))}</span>"
    loss = (f"{fmt(_num(hp.get('matching_loss_before')))} / {fmt(_num(hp.get('matching_loss_after')))}"
            if matched else "&ndash;")
    return [k, loss, fmt(_num(hp.get("hp_movement")))]


def hp_banner(run: RunData) -> str:
    """A FedHPro run in which no class was ever matched says so at the top."""
    hps = [_dict(r.get("hp")) for r in run.rounds if r.get("hp")]
    if not hps or any(_list(h.get("matched_classes")) for h in hps):
        return ""
    control = hps[-1].get("control")
    why = ("the control arm 'random' never matches: the clients trained toward fixed random anchors"
           if control == "random" else
           "no class's release cleared the server's count gate, so no hyper-prototype was learned "
           "and the clients trained without HP losses")
    return (f"<div class='warn' role='status'><strong>No class was ever matched in {len(hps)} "
            f"rounds:</strong> {esc(why)}.</div>")


def round_row(rec: dict[str, Any]) -> str:
    """One table row of a round record (every cell escaped)."""
    eps = "<br>".join(f"{esc(a)} {fmt(e)}" for a, e in epsilons(rec).items()) or "&ndash;"
    digest = rec.get("aggregate_sha256")
    cells = [
        fmt(rec.get("round")) + (" (re-run)" if rec.get("rerun") is True else ""), fmt(rec.get("aggregator")),
        fmt(len(_list(rec.get("cohort"))) if "cohort" in rec else None), fmt(summed(rec)),
        ids(rec.get("dropped")), fmt(rec.get("threshold")), eps,
        fmt(_num(rec.get("accuracy"))), fmt(_num(rec.get("loss"))), *hp_cells(rec), step_cell(rec),
        fmt_bytes(rec.get("bytes_up_per_client")), fmt_bytes(_bytes_total(rec, "up")),
        fmt_bytes(_bytes_total(rec, "down")),
        fmt(len(_list(rec.get("events"))) if "events" in rec else None),
        fmt(_num(_dict(rec.get("timings")).get("total")), 3),
        f"<code title='{esc(digest)}'>{esc(str(digest)[:12])}</code>" if digest else "&ndash;",
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def rounds_section(run: RunData) -> str:
    """The per-round table, with stop records as highlighted rows at their place."""
    head = "".join(f"<th scope='col'>{esc(c)}</th>" for c in ROUND_COLUMNS)
    rows = [round_row(r) for r in run.rounds]
    rows += [f"<tr class='stoprow'><td colspan='{len(ROUND_COLUMNS)}'>Stopped before round "
             f"{fmt(s.get('round'))}: {fmt(s.get('reason', 'no reason recorded'))}</td></tr>"
             for s in run.stops]
    if not rows:
        return _section("rounds", "Rounds", "<p class='missing'>No rounds recorded.</p>")
    legend = ("<p class='note'>summed: clients whose inputs are in the sum (the record's summed list); "
              "re-run: the round was run again after a crash (see Resumes); "
              "hp matched: FedHPro classes whose release cleared the gate and were matched "
              "that round; matching loss: mean 1 - cos over them; hp movement: |P_new - P_old| / |P_old|; "
              "server step: ProtoNorm (protos), FedSA (anchors moved), GFPL (gaussians): classes the server read "
              "that round (under DP: whose noisy release cleared the gate), and whether GFPL's due calibration ran; "
              "epsilon: max over clients per accountant; events: privacy ledger events added "
              "that round; up/down total: all clients, all stages.</p>")
    table = f"<div class='scroll'><table class='grid'><tr>{head}</tr>{''.join(rows)}</table></div>"
    return _section("rounds", "Rounds", legend + table)


def resumes_section(run: RunData) -> str:
    """Every resume of the run, as the chain recorded it (what it re-ran, recovered and charged)."""
    if not run.resumes:
        return _section("resumes", "Resumes", "<p>The run was never resumed.</p>")
    head = "".join(f"<th scope='col'>{c}</th>" for c in (
        "after round", "re-run rounds", "releases recovered from the journal", "events charged",
        "events uncharged", "rounds extended", "&epsilon; after"))
    rows = []
    for r in run.resumes:
        eps = "<br>".join(f"{esc(a)} {fmt(e)}" for a, e in epsilons(r).items()) or "&ndash;"
        ext = _dict(r.get("extended_rounds"))
        cells = [fmt(r.get("from_round")), ids(r.get("rerun_rounds")), ids(r.get("recovered_releases")),
                 fmt(len(_list(r.get("charged")))), fmt(len(_list(r.get("uncharged")))),
                 f"{fmt(ext.get('from'))} &rarr; {fmt(ext.get('to'))}" if ext else "&ndash;", eps]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    legend = ("<p class='note'>A hardened release interrupted before its checkpoint spent privacy with noise "
              "that is not drawn again: it is charged here (events charged). A reproducible re-run redraws "
              "the identical release, so the earlier record's events are uncharged and it counts once.</p>")
    return _section("resumes", "Resumes", legend + f"<table class='grid'><tr>{head}</tr>{''.join(rows)}</table>")


OUTPUTS_NOTE = (
    "<p>Differentially private: what reached the server (the noised, securely summed uploads) and "
    "everything computed from it: the global model (model.pt), the accuracy and epsilon in audit.jsonl "
    "and this report's figures. Operator-only, not covered by the guarantee: partition.json (each "
    "client's exact class histogram), metrics.json (raw training loss and personalized accuracy, "
    "measured on the clients' data by the harness) and checkpoint.pt (the server state and the "
    "history with those values). Do not publish them as outputs of the DP run.</p>")


def stop_section(run: RunData) -> str:
    """Why the run ended early, or that it did not."""
    if run.stops:
        return _section("stop", "Early stop", "".join(stop_banner(s) for s in run.stops))
    return _section("stop", "Early stop", f"<p>No stop record: {esc(_status(run))}.</p>")


def environment_section(run: RunData) -> str:
    """Library versions, platform and device recorded at the start of the run."""
    env = _dict(run.config.get("environment"))
    body = kv_table(sorted(env.items())) if env else "<p class='missing'>Not recorded.</p>"
    return _section("environment", "Environment", body)


def chain_section(run: RunData) -> str:
    """The audit chain verification result and the chain head to compare with a copy."""
    ch = run.chain
    if ch.ok:
        res = f"<p class='ok'><strong>Audit chain: OK ({ch.records} records).</strong></p>"
    else:
        res = (f"<p class='bad'><strong>Audit chain: FAILED.</strong> {esc(ch.message)}. "
               f"A record that does not chain to the previous one means the previous record "
               f"was edited, or records were removed, inserted or reordered there.</p>")
    ev = run.evidence
    if ev is not None:
        res += ("<p class='ok'>Evidence: config.json is the one the chain recorded and every recorded "
                "&epsilon; re-derives from the chain's ledger events.</p>" if ev.ok else
                f"<p class='bad'><strong>Evidence: FAILED.</strong> {esc(ev.message)}.</p>")
    rows = [("chain head (SHA-256 of the last record)", ch.head),
            ("round records", len(run.rounds)), ("stop records", len(run.stops)),
            ("other or unreadable lines (ignored)", run.ignored)]
    return _section("audit-chain", "Audit chain", res + kv_table(rows))


def config_section(run: RunData) -> str:
    """Every configuration field, as written to config.json."""
    rows = sorted((k, v) for k, v in run.config.items() if k != "environment")
    return _section("config", "Configuration",
                    f"<details><summary>All {len(rows)} fields</summary>{kv_table(rows)}</details>")


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
 max-width:1100px;margin:2em auto;padding:0 1.2em;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
 padding-bottom:.2em;margin-top:1.8em}h3{font-size:1.02em;margin:1.1em 0 .3em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;text-align:left;
 vertical-align:top}table.kv th{font-weight:600;color:#444;white-space:nowrap}
table.grid{font-size:.85em}table.grid td{white-space:nowrap}table.grid td,table.grid th{border:1px solid #ddd}
table.grid th{background:#f4f4f6}table.grid tr:nth-child(even) td{background:#fafafa}
.scroll{overflow-x:auto}code{font-size:.9em}
.stop{background:#fff4d6;border-left:5px solid #d99a00;padding:.6em .9em;margin:.6em 0}
tr.stoprow td{background:#fff4d6 !important;font-weight:600}
.bad{background:#fde8e8;border-left:5px solid #c62828;padding:.6em .9em;margin:.6em 0}
.warn{background:#fff8e1;border-left:5px solid #f0b400;padding:.6em .9em}
.ok{background:#e8f5e9;border-left:5px solid #2e7d32;padding:.6em .9em}
.missing,.note{color:#666;font-style:italic}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}details{margin:.5em 0}summary{cursor:pointer}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_html(run: RunData) -> str:
    """The whole page as a string (no I/O)."""
    body = "".join([
        summary_section(run), privacy_section(run), audits_section(run), threat_section(run),
        plots_section(run),
        stop_section(run), rounds_section(run), resumes_section(run),
        _section("outputs", "Which outputs are private", OUTPUTS_NOTE), environment_section(run), chain_section(run),
        config_section(run),
    ])
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Audit report: {esc(run.name)}</title><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")


@dataclass(frozen=True)
class Rendered:
    """Where the report went and what the chain check found."""

    path: Path
    chain: ChainStatus
    evidence: ChainStatus | None = None


def render(run_dir: Path) -> Rendered:
    """Render ``run_dir/report.html`` atomically; returns its path and the chain status.

    Raises FileNotFoundError (missing folder, config.json or audit.jsonl) or ConfigError
    (config.json unreadable). A broken chain is not an error here: see ``chain.ok``.
    """
    run = load_run(Path(run_dir))
    out = Path(run_dir) / REPORT_NAME
    atomic_write_bytes(out, render_html(run).encode("utf-8"))
    return Rendered(out, run.chain, run.evidence)


def render_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from config.json and audit.jsonl alone; returns its path."""
    return render(run_dir).path


__all__ = ["Rendered", "render", "render_html", "render_report"]
