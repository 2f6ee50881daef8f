"""The HTML audit report: sections, embedded plots, escaping, chain verification, CLI exits."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from secure_fed.cli import report as report_cli
from secure_fed.report.html import render_report
from secure_fed.report.load import load_run, summed
from secure_fed.run.rundir import AuditLog, write_json

EVIL = "<script>alert('x')</script>"
STAGES = ("advertise", "share", "masked", "consistency", "unmask")
SECTIONS = {"privacy", "threat-model", "plots", "stop", "rounds", "environment",
            "audit-chain", "config"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- fake run folders ----------------------------------------------------------------------
def _config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "dataset": "digits", "algorithm": "fedhpro", "clients": 6, "cohort": 6, "rounds": 8,
        "seed": 7, "secagg": "secagg+", "neighbors": 4, "threshold": 3, "bits": 32,
        "authenticated": True, "dropout": 0.1, "dp": "sample",
        "noise_placement": "distributed", "mechanism": "discrete", "clip": 1.0,
        "noise_multiplier": 1.1, "target_epsilon": 2.0, "delta": 1e-5, "accountant": "rdp",
        "hardened": False,
        "environment": {"python": "3.11.2", "torch": "2.14.1", "opacus": "1.5.4",
                        "cryptography": "44.0.0", "numpy": "2.1.0", "platform": EVIL,
                        "device": "cpu"},
    }
    cfg.update(over)
    return cfg


def _dp_round(r: int, placement: str = "distributed") -> dict[str, Any]:
    cohort = list(range(6))
    alive = {s: cohort[: 6 - (1 if r % 2 and i >= 2 else 0)] for i, s in enumerate(STAGES)}
    eps = {acc: {"max": 0.5 * r * f, "per_client": {str(c): 0.5 * r * f - 0.01 * c
                                                    for c in cohort}}
           for acc, f in (("rdp", 1.0), ("prv", 0.8))}
    return {
        "kind": "round", "round": r, "algorithm": "fedhpro", "aggregator": "secagg+",
        "cohort": cohort, "survivors": alive, "dropped": [5] if r % 2 else [],
        "threshold": 3,
        "bytes": {s: {"up": 1000 * r + 10 * i, "down": 2000} for i, s in enumerate(STAGES)},
        "bytes_up_per_client": 5000.0 + 100 * r,
        "dp": {"unit": "sample", "placement": placement, "mechanism": "discrete",
               "noise_multiplier": 1.1, "clip": 1.0, "delta": 1e-5,
               "effective_noise_multiplier": 1.0 - 0.01 * r},
        "events": [{"mechanism": "gaussian", "noise_multiplier": 1.1, "sample_rate": 0.1,
                    "steps": 3, "subject": c} for c in cohort],
        "epsilon": eps, "aggregate_sha256": f"{r:064x}", "accuracy": 0.5 + 0.03 * r,
        "loss": 2.0 / r, "timings": {"total": 0.25 * r},
    }


def make_dp_run(root: Path, rounds: int = 4, **over: Any) -> Path:
    """A DP + SecAgg+ run that stopped on its budget before round ``rounds + 1``."""
    run = root / "dp-run"
    run.mkdir()
    write_json(run / "config.json", _config(**over))
    log = AuditLog(run / "audit.jsonl")
    for r in range(1, rounds + 1):
        log.append(_dp_round(r, over.get("noise_placement", "distributed")))
    log.append({"kind": "stop", "round": rounds + 1,
                "reason": f"target epsilon 2.0 would be exceeded: 2.5 after round {rounds + 1} "
                          + EVIL,
                "epsilon": _dp_round(rounds)["epsilon"]})
    return run


def make_plain_run(root: Path) -> Path:
    """A plaintext, non-DP run with nulls and one record in the older (kind-less) format."""
    run = root / "plain-run"
    run.mkdir()
    cfg = _config(secagg="off", dp="off", noise_placement=None, mechanism=None, clip=None,
                  noise_multiplier=None, target_epsilon=None, hardened=None, threshold=None,
                  rounds=3)
    del cfg["environment"]
    write_json(run / "config.json", cfg)
    log = AuditLog(run / "audit.jsonl")
    for r in (1, 2):
        log.append({"kind": "round", "round": r, "algorithm": "fedavg",
                    "aggregator": "plaintext", "cohort": [0, 1, 2],
                    "survivors": {"masked": [0, 1, 2]}, "dropped": [], "threshold": None,
                    "bytes": None, "bytes_up_per_client": None, "dp": None, "events": [],
                    "epsilon": None, "aggregate_sha256": None, "accuracy": 0.3 * r,
                    "loss": None, "timings": {}})
    log.append({"round": 3, "cohort": [0, 1, 2], "survivors": [0, 2], "accuracy": 0.7})
    return run


# -- parsing the page ------------------------------------------------------------------------
class Page(HTMLParser):
    """Collects what the tests look at: tags, section ids, images, links and text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.sections: set[str] = set()
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.chunks: list[str] = []
        self.skip = False  # inside <style> or <title>
        self.feed(text)
        self.close()
        self.text = " ".join(" ".join(self.chunks).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self.skip = tag in ("style", "title")
        if tag == "section":
            self.sections.add(a.get("id", ""))
        if tag == "img":
            self.images.append(a)
        self.urls += [v for k, v in a.items() if k in ("src", "href", "action", "poster")]

    def handle_endtag(self, tag: str) -> None:
        self.skip = False

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.chunks.append(data)


def _page(run: Path) -> Page:
    return Page(render_report(run).read_text(encoding="utf-8"))


def _args(run: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    report_cli.add_arguments(parser)
    return parser.parse_args([str(run)])


# -- the page --------------------------------------------------------------------------------
def test_dp_report_has_every_section_and_the_privacy_statement(tmp_path: Path) -> None:
    run = make_dp_run(tmp_path)
    out = render_report(run)
    assert out == run / "report.html"
    page = Page(out.read_text(encoding="utf-8"))
    assert SECTIONS <= page.sections
    assert page.tags.count("h1") == 1
    t = page.text
    # final spent budget (stop record): rdp 0.5*4 = 2, prv 0.8*2 = 1.6, worst client 0
    assert "ε = 2 at δ = 1e-05 by the RDP accountant" in t
    assert "ε = 1.6 at δ = 1e-05 by the PRV accountant" in t
    assert "maximum over the 6 accounted clients (worst: client 0)" in t
    assert t.index("by the RDP accountant") < t.index("by the PRV accountant")  # config's first
    assert "group privacy" in t
    assert "one sample (adding or removing one training example)" in t
    assert "discrete" in t and "distributed" in t
    assert "not a deployable guarantee" in t and "seed 7" in t
    assert "Stopped before round 5: target epsilon 2.0 would be exceeded" in t
    assert "0.96 / 0.96" in t  # effective noise multiplier last / lowest (1 - 0.01*4)
    for phrase in ("active server", "PKI", "t = 3", "k = 4", "probabilistic",
                   "what the server sees", "simulation", "final model are public",
                   "Participation is visible"):
        assert phrase in t, phrase
    assert "Audit chain: OK (5 records)" in t
    assert "2.14.1" in t and "44.0.0" in t  # environment versions


def test_every_plot_is_an_embedded_png_with_alt_text(tmp_path: Path) -> None:
    page = _page(make_dp_run(tmp_path))
    assert len(page.images) == 4  # epsilon, accuracy, survivors, bytes
    prefix = "data:image/png;base64,"
    for img in page.images:
        assert img["src"].startswith(prefix)
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert data[:8] == PNG_MAGIC
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300
        assert len(img.get("alt", "")) > 20
    alts = " ".join(i["alt"] for i in page.images)
    assert "(prv, rdp)" in alts and "target epsilon 2" in alts


def test_no_external_resources_and_no_scripts(tmp_path: Path) -> None:
    for run in (make_dp_run(tmp_path), make_plain_run(tmp_path)):
        raw = render_report(run).read_text(encoding="utf-8")
        page = Page(raw)
        assert page.urls and all(u.startswith("data:") for u in page.urls)
        assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
        assert "http://" not in raw and "https://" not in raw
        assert "url(" not in raw  # no CSS fetches either


def test_strings_from_the_files_are_escaped(tmp_path: Path) -> None:
    run = make_dp_run(tmp_path, dataset=EVIL)
    raw = render_report(run).read_text(encoding="utf-8")
    page = Page(raw)
    assert "<script" not in raw.lower()
    assert "script" not in page.tags
    assert page.text.count(EVIL) >= 3  # dataset, platform, stop reason: shown as text


def test_plaintext_run_with_nulls_says_no_dp(tmp_path: Path) -> None:
    run = make_plain_run(tmp_path)
    page = _page(run)
    assert SECTIONS <= page.sections
    t = page.text
    assert "No differential privacy." in t and "no formal privacy guarantee" in t
    assert "no differential privacy: no epsilon to plot" in t
    assert "No secure aggregation." in t and "Nothing protects an individual upload" in t
    assert "group privacy" not in t  # the privacy-unit caveat is for DP runs only
    assert "no byte counts recorded" in t
    assert len(page.images) == 2  # accuracy and survivors only
    assert "Not recorded." in t  # no environment
    data = load_run(run)
    assert [r["round"] for r in data.rounds] == [1, 2, 3]  # the kind-less record counts
    assert [summed(r) for r in data.rounds] == [3, 3, 2]  # its survivors are a plain list
    assert "complete: all 3 planned rounds ran" in t


def test_modes_change_the_statements(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    hard = _page(make_dp_run(tmp_path / "a", hardened=True, authenticated=False,
                             secagg="secagg", noise_placement="local"))
    soft = _page(make_dp_run(tmp_path / "b"))
    assert "Hardened run" in hard.text and "not a deployable guarantee" not in hard.text
    assert "honest-but-curious" in hard.text and "honest-but-curious" not in soft.text
    assert "every other cohort member" in hard.text and "probabilistic" not in hard.text
    assert "Noise is local" in hard.text and "Noise is distributed" in soft.text


def test_render_is_atomic_and_deterministic(tmp_path: Path) -> None:
    run = make_dp_run(tmp_path)
    first = render_report(run).read_bytes()
    second = render_report(run).read_bytes()
    assert first == second
    assert sorted(p.name for p in run.iterdir()) == ["audit.jsonl", "config.json",
                                                     "report.html"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from([EVIL, "secagg+", "masked", "rdp", "sample"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["max", "per_client", "up", "down", "masked", "rdp",
                                       "unit", "0", EVIL]), inner, max_size=3),
    max_leaves=8)
ROUND_FIELDS = ("round", "aggregator", "cohort", "survivors", "dropped", "threshold", "bytes",
                "bytes_up_per_client", "dp", "events", "epsilon", "aggregate_sha256",
                "accuracy", "loss", "timings", "reason")
CONFIG_FIELDS = ("rounds", "dp", "secagg", "hardened", "authenticated", "threshold",
                 "noise_placement", "target_epsilon", "delta", "dropout", "environment")


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(config=st.fixed_dictionaries({}, optional={k: JSON for k in CONFIG_FIELDS}),
       records=st.lists(st.fixed_dictionaries(
           {"kind": st.sampled_from(["round", "stop", "other"])},
           optional={k: JSON for k in ROUND_FIELDS}), max_size=4))
def test_any_json_values_render_escaped(tmp_path: Path, config: dict[str, Any],
                                        records: list[dict[str, Any]]) -> None:
    run = Path(tempfile.mkdtemp(dir=tmp_path))
    write_json(run / "config.json", config)
    (run / "audit.jsonl").touch()  # an empty log is a run that has not finished round 1
    log = AuditLog(run / "audit.jsonl")
    for rec in records:
        log.append(rec)
    raw = render_report(run).read_text(encoding="utf-8")
    page = Page(raw)
    assert "<script" not in raw.lower() and SECTIONS <= page.sections
    assert "Audit chain: OK" in page.text


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_values_matplotlib_cannot_scale_leave_a_sentence(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"rounds": 10**400, "dp": "sample"})
    log = AuditLog(tmp_path / "audit.jsonl")
    for r, big in ((1, 1e308), (2, -1e308)):
        log.append({"kind": "round", "round": r, "accuracy": big, "loss": 0.1,
                    "epsilon": {"rdp": {"max": big}}, "survivors": {"masked": [0]}})
    page = _page(tmp_path)
    assert page.text.count("could not be drawn from the logged values") == 2
    assert len(page.images) == 1  # the survivors plot still renders


# -- chain verification and the CLI ----------------------------------------------------------
def test_cli_ok(plain_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a real run folder: the hand-made ones above have no config record and made-up epsilons
    assert report_cli.run(_args(plain_run)) == 0
    out = capsys.readouterr().out
    assert str(plain_run / "report.html") in out and "audit chain: OK (3 records)" in out  # config, rounds 1-2


def test_cli_hand_made_run_without_config_record_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_dp_run(tmp_path)
    assert report_cli.run(_args(run)) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "record 1 is not the config record" in err


def _tamper(path: Path, index: int, **changes: Any) -> None:
    lines = path.read_text().splitlines()
    rec = json.loads(lines[index])
    rec.update(changes)
    lines[index] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")


def test_cli_tampered_record_exits_1_naming_it(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = make_dp_run(tmp_path)
    _tamper(run / "audit.jsonl", 1, accuracy=0.99)  # record 2 (round 2) edited
    assert report_cli.run(_args(run)) == 1
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert "\n" not in err and "record 3" in err and "record 2" in err
    assert str(run / "report.html") in cap.out and "OK" not in cap.out
    page = Page((run / "report.html").read_text(encoding="utf-8"))
    assert "Audit chain verification FAILED" in page.text and "record 3" in page.text
    assert str(tmp_path) not in page.text  # no path of the rendering machine in the page
    assert "0.99" in page.text  # still shown, flagged as unverified


@pytest.mark.parametrize("damage", ['[1, 2]', "not json at all"])
def test_damaged_line_fails_the_chain_without_crashing(tmp_path: Path, damage: str) -> None:
    run = make_dp_run(tmp_path)
    with open(run / "audit.jsonl", "a") as fh:
        fh.write(damage + "\n")
    assert report_cli.run(_args(run)) == 1
    data = load_run(run)
    assert not data.chain.ok and data.ignored == 1 and len(data.rounds) == 4


@pytest.mark.parametrize("remove", [None, "config.json", "audit.jsonl"])
def test_cli_missing_files_exit_2(tmp_path: Path, remove: str | None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = make_dp_run(tmp_path)
    if remove is None:
        shutil.rmtree(run)
    else:
        (run / remove).unlink()
    assert report_cli.run(_args(run)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and (remove or str(run)) in err
    assert not (run / "report.html").exists()


def test_cli_unreadable_config_exits_2(tmp_path: Path) -> None:
    run = make_dp_run(tmp_path)
    (run / "config.json").write_text("{not json")
    assert report_cli.run(_args(run)) == 2


# -- in a real browser (when one is installed) -------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_report_opens_in_headless_chromium(tmp_path: Path) -> None:
    report = render_report(make_dp_run(tmp_path))
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [str(_chromium()), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
             "--window-size=1200,3000", report.as_uri()],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": profile})
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    pixels = imread(shot)
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels[..., :3].std() > 0.05  # not a blank page
