"""``run_secure.py audit``: flags, exit codes, audit_results.json and the report's audit section."""

from __future__ import annotations

import base64
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secure_fed.audit import runner
from secure_fed.cli.main import build_parser, main
from secure_fed.config import TrainConfig
from secure_fed.errors import AuditFailed, ConfigError
from secure_fed.run.rundir import AuditLog, file_sha256

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script>"


def _fake_result(passed: bool | None, **extra: Any) -> dict[str, Any]:
    return {
        "name": "membership",
        "summary": {"AUC": 0.73, "TPR at 1% FPR": 0.05, "note": EVIL, "verdict": "made up for the test"},
        "passed": passed,
        "plots": [{"title": "ROC " + EVIL, "xlabel": "false positive rate", "ylabel": "true positive rate",
                   "xscale": "log", "yscale": "log",
                   "series": [{"label": "loss threshold", "x": [1e-3, 1e-2, 0.1, 1.0], "y": [2e-3, 3e-2, 0.3, 1.0]},
                              {"label": "chance", "x": [1e-3, 1.0], "y": [1e-3, 1.0]}]}],
        "raw": {"scores": np.arange(3.0), "bad": math.nan, **extra},
    }


@pytest.fixture
def fake_audit(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Installs a fake 'membership' audit module; returns the dict its calls are logged in."""
    calls: dict[str, Any] = {"passed": False}
    mod = types.ModuleType("fake_membership_audit")

    def audit_membership(run_dir: Path, *, seed: int | None = None, shadow_runs: int = 0, targets: int | None = None,
                         attack: str | None = None, ratio: Any = None) -> dict[str, Any]:
        given = {"targets": targets, "attack": attack, "ratio": ratio}
        calls.update(run_dir=run_dir, seed=seed, shadow_runs=shadow_runs,
                     options={k: v for k, v in given.items() if v is not None})
        if calls.get("raise"):
            raise RuntimeError("audit crashed")
        return _fake_result(calls["passed"])

    mod.audit_membership = audit_membership  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_membership_audit", mod)
    monkeypatch.setitem(runner.AUDITS, "membership", ("fake_membership_audit", "audit_membership"))
    return calls


def _fake_run(tmp: Path) -> Path:
    """A run folder with config.json and a one-round audit.jsonl (enough for the report)."""
    run = tmp / "fake"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig(rounds=1).to_dict()))
    log = AuditLog(run / "audit.jsonl")
    log.append({"kind": "config", "config_sha256": file_sha256(run / "config.json")})
    log.append({"kind": "round", "round": 1, "accuracy": 0.5, "cohort": [0, 1, 2]})
    return run


def _section(page: str) -> str:
    start = page.index("<section id='audits'>")
    return page[start : page.index("</section>", start)]


def _images(html: str) -> list[bytes]:
    out = []
    for chunk in html.split("data:image/png;base64,")[1:]:
        out.append(base64.b64decode(chunk.split("'", 1)[0]))
    return out


@pytest.fixture(scope="module")
def small_run(meta_run: Path) -> Path:
    """This module's copy of the session's finished SecAgg+ run without DP, with its report
    (--classifier meta: the weight block the inversion attack reads travels only then)."""
    from secure_fed.report.html import render_report

    render_report(meta_run)
    return meta_run


def test_help_documents_every_flag_with_its_default() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    audit = sub.choices["audit"]  # type: ignore[attr-defined]
    text = " ".join(audit.format_help().split())
    for action in audit._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        if action.option_strings:
            assert action.option_strings[0] in text
    assert "(default: inversion,one-run,membership)" in text
    assert "(default: 0)" in text and "(default: 0.05)" in text and "(default: first,final)" in text


def test_inversion_then_a_failing_audit_keeps_all_evidence(small_run: Path, fake_audit: dict[str, Any],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(small_run), "--which", "inversion", "--inversion-points", "first", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "inversion: passed" in out and "audit_results.json" in out
    data = json.loads((small_run / "audit_results.json").read_text())
    inv = data["audits"]["inversion"]
    assert inv["seed"] == 0 and inv["result"]["passed"] is True and data["passed"] is True
    first = inv["result"]["raw"]["points"][0]
    assert first["point"] == "first" and first["views"]["upload"]["pooled"]["cosine_mean"] >= 0.99
    page = (small_run / "report.html").read_text()
    sec = _section(page)
    assert page.index("id='privacy'") < page.index("id='audits'") < page.index("id='threat-model'")
    assert "Upload inversion" in sec and "round 1 (initial model)" in sec
    assert len(_images(sec)) == 2 and all(img.startswith(PNG_MAGIC) for img in _images(sec))

    # a failing audit: exit 1, one line on stderr, results and report written first, inversion kept
    assert main(["audit", str(small_run), "--which", "membership", "--shadow-runs", "2", "--seed", "5", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "FAILED" in err and "membership" in err
    assert fake_audit["seed"] == 5 and fake_audit["shadow_runs"] == 2 and fake_audit["options"] == {}
    data = json.loads((small_run / "audit_results.json").read_text())
    assert set(data["audits"]) == {"inversion", "membership"} and data["passed"] is False
    assert data["audits"]["membership"]["result"]["raw"] == {"scores": [0.0, 1.0, 2.0], "bad": None}
    sec = _section((small_run / "report.html").read_text())
    assert "Membership inference" in sec and "FAILED" in sec and len(_images(sec)) == 3


def test_fake_result_renders_as_table_and_escaped_log_plot(tmp_path: Path, fake_audit: dict[str, Any]) -> None:
    run = _fake_run(tmp_path)
    fake_audit["passed"] = None
    runner.run_audits(run, "membership", seed=1, progress=False)
    page = (run / "report.html").read_text()
    sec = _section(page)
    assert EVIL not in page and "&lt;script&gt;" in sec
    assert "0.73" in sec and "Measured only" in sec
    imgs = _images(sec)
    assert len(imgs) == 1 and imgs[0].startswith(PNG_MAGIC)
    assert "2 series: loss threshold; chance" in sec  # the alt text names the series


def test_options_reach_only_their_audit(tmp_path: Path, fake_audit: dict[str, Any]) -> None:
    run = _fake_run(tmp_path)
    fake_audit["passed"] = True
    argv = ["audit", str(run), "--which", "membership", "--option", "membership.targets=12",
            "--option", "membership.attack=loss", "--option", "membership.ratio=[1, 2]", "--quiet"]
    assert main(argv) == 0
    assert fake_audit["options"] == {"targets": 12, "attack": "loss", "ratio": [1, 2]}


@pytest.mark.parametrize("argv, words", [
    (["--which", "bogus"], "unknown audit"),
    (["--which", ""], "at least one audit"),
    (["--which", "membership", "--option", "membership:x"], "AUDIT.KEY=VALUE"),
    (["--which", "membership", "--option", "inversion.points=first"], "not selected"),
])
def test_bad_input_exits_2(tmp_path: Path, fake_audit: dict[str, Any], argv: list[str], words: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path)
    assert main(["audit", str(run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (run / "audit_results.json").exists()


def test_bad_flag_values_and_missing_folder_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(tmp_path), "--seed", "-1"])
    assert exc.value.code == 2
    assert main(["audit", str(tmp_path / "missing"), "--which", "inversion"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_missing_audit_module_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path)
    monkeypatch.setitem(runner.AUDITS, "one-run", ("secure_fed.audit.no_such_module", "audit_one_run"))
    assert main(["audit", str(run), "--which", "inversion,one-run"]) == 2
    err = capsys.readouterr().err
    assert "'one-run' audit is not available" in err
    assert not (run / "audit_results.json").exists()  # nothing ran: the check comes first


def test_an_audit_error_keeps_the_finished_results(small_run: Path, tmp_path: Path, fake_audit: dict[str, Any]) -> None:
    run = _fake_run(tmp_path)
    fake_audit.update(passed=True)
    runner.run_audits(run, "membership", progress=False)
    fake_audit.update({"raise": True})
    with pytest.raises(RuntimeError, match="audit crashed"):
        runner.run_audits(run, "membership", progress=False)
    kept = json.loads((run / "audit_results.json").read_text())
    assert kept["audits"]["membership"]["result"]["passed"] is True


def test_audit_failed_is_raised_after_writing(tmp_path: Path, fake_audit: dict[str, Any]) -> None:
    run = _fake_run(tmp_path)
    with pytest.raises(AuditFailed, match="membership"):
        runner.run_audits(run, ["membership"], progress=False)
    assert json.loads((run / "audit_results.json").read_text())["audits"]["membership"]["result"]["passed"] is False
    assert "FAILED" in _section((run / "report.html").read_text())


@pytest.mark.parametrize("bad, words", [
    ({"summary": {}, "passed": None}, "'name'"),
    ({"name": "x", "summary": {"a": [1]}, "passed": None}, "'summary'"),
    ({"name": "x", "summary": {}, "passed": "yes"}, "'passed'"),
    ({"name": "x", "summary": {}, "passed": None, "plots": [{"title": "t", "xlabel": "x", "ylabel": "y",
                                                            "series": [{"label": "s", "x": [1], "y": []}]}]}, "equal length"),
    ({"name": "x", "summary": {}, "passed": None, "plots": [{"title": "t", "xlabel": "x", "ylabel": "y",
                                                            "xscale": "symlog", "series": []}]}, "xscale"),
    ({"name": "x", "summary": {}, "passed": None, "raw": {"obj": object()}}, "not JSON-serializable"),
])
def test_result_contract_is_checked(bad: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        runner.validate_result("x", bad)


def test_unreadable_results_file_does_not_break_the_report(tmp_path: Path) -> None:
    from secure_fed.report.html import render_report

    run = _fake_run(tmp_path)
    (run / "audit_results.json").write_text("{not json")
    sec = _section(render_report(run).read_text())
    assert "could not be read" in sec
    assert runner.read_results(run) is None


def test_options_an_audit_cannot_take_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}
    mod = types.ModuleType("fake_one_run_audit")

    def audit_one_run(run_dir: Path, *, seed: int | None = None, canaries: int = 10,
                      progress: bool | None = None) -> dict[str, Any]:
        seen.update(canaries=canaries, progress=progress)
        return {"name": "one-run", "summary": {"epsilon-hat": 0.5}, "passed": True, "plots": [], "raw": {}}

    mod.audit_one_run = audit_one_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_one_run_audit", mod)
    monkeypatch.setitem(runner.AUDITS, "one-run", ("fake_one_run_audit", "audit_one_run"))
    run = _fake_run(tmp_path)
    assert main(["audit", str(run), "--which", "one-run", "--option", "one-run.bogus=1"]) == 2
    assert "has no option 'bogus' (it takes: canaries)" in capsys.readouterr().err
    assert not seen
    assert main(["audit", str(run), "--which", "one-run", "--option", "one-run.canaries=5", "--quiet"]) == 0
    assert seen == {"canaries": 5, "progress": False}  # --quiet reaches audits that declare progress


class _FirstAuditStarted(Exception):
    pass


def _recording_audit(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """Installs a fake audit under ``name`` that records its call, then stops the run (so
    the audit after it never runs); returns the record."""
    started: list[str] = []
    mod = types.ModuleType(f"fake_first_audit_{name.replace('-', '_')}")

    def audit(run_dir: Path, *, seed: int | None = None) -> dict[str, Any]:
        started.append(name)
        raise _FirstAuditStarted(name)

    mod.audit = audit  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(runner.AUDITS, name, (mod.__name__, "audit"))
    return started


@pytest.mark.parametrize("first, last, typo, right", [
    ("membership", "inversion", "inversion.point=first", {"points": "first"}),
    ("membership", "one-run", "one-run.canary=100", {"canaries": 100}),
    ("one-run", "membership", "membership.max-sample=50", {"max_samples": 50}),
])
def test_a_typo_in_the_last_audits_option_stops_before_the_first_audit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        first: str, last: str, typo: str, right: dict[str, Any]) -> None:
    started = _recording_audit(monkeypatch, first)
    run = _fake_run(tmp_path)
    assert main(["audit", str(run), "--which", f"{first},{last}", "--option", typo, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    key = typo.split(".")[1].split("=")[0].replace("-", "_")
    assert len(err.splitlines()) == 1 and f"the {last} audit has no option {key!r}" in err
    assert started == [] and not (run / "audit_results.json").exists() and not (run / "report.html").exists()
    # spelled right, the same selection gets past the check and the first audit starts
    with pytest.raises(_FirstAuditStarted):
        runner.run_audits(run, [first, last], options={last: right}, progress=False)
    assert started == [first]


def test_every_audit_names_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    for name in runner.AUDITS:
        params = inspect.signature(runner.load_audit(name)).parameters.values()
        assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params), name
        assert runner._options_of(runner.load_audit(name)), name  # each audit takes some option
    mod = types.ModuleType("fake_catch_all_audit")

    def audit_one_run(run_dir: Path, *, seed: int | None = None, **options: Any) -> dict[str, Any]:
        raise AssertionError("must not run")

    mod.audit_one_run = audit_one_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_catch_all_audit", mod)
    monkeypatch.setitem(runner.AUDITS, "one-run", ("fake_catch_all_audit", "audit_one_run"))
    with pytest.raises(ConfigError, match=r"takes \*\*options; an audit must name every option"):
        runner.load_audit("one-run")


@pytest.mark.parametrize("option, words", [
    ("membership.seed=3", "membership.seed is set by --seed"),
    ("membership.shadow-runs=3", "membership.shadow_runs is set by --shadow-runs"),
])
def test_runner_arguments_are_not_options(tmp_path: Path, fake_audit: dict[str, Any], option: str, words: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path)
    assert main(["audit", str(run), "--which", "membership", "--option", option, "--quiet"]) == 2
    assert words in capsys.readouterr().err and "run_dir" not in fake_audit


def test_an_option_the_audit_requires_must_be_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("fake_required_option_audit")

    def audit_one_run(run_dir: Path, *, seed: int | None = None, canaries: int) -> dict[str, Any]:
        raise AssertionError("must not run")

    mod.audit_one_run = audit_one_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_required_option_audit", mod)
    monkeypatch.setitem(runner.AUDITS, "one-run", ("fake_required_option_audit", "audit_one_run"))
    started = _recording_audit(monkeypatch, "membership")
    run = _fake_run(tmp_path)
    with pytest.raises(ConfigError, match="the one-run audit cannot be called with these options .*'canaries'"):
        runner.run_audits(run, ["membership", "one-run"], progress=False)
    assert started == [] and not (run / "audit_results.json").exists()
