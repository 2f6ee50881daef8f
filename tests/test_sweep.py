"""Sweeps: grid parsing and its errors, a 2x2x2 privacy-utility sweep on digits that is
interrupted and resumed, the CLI, and the same runs as Ray tasks."""

from __future__ import annotations

import base64
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from secure_fed.cli.main import main
from secure_fed.errors import ConfigError
from secure_fed.report.grid import CSV_NAME, HTML_NAME, MARKER, Grid, expand, load_grid
from secure_fed.report.sweep import Row, SweepResult, run_sweep
from secure_fed.run.rundir import read_audit, verify_chain
from secure_fed.run.trainer import Trainer

# Small enough for CI: 6 clients, 2 rounds, one minibatch per client (one DP-SGD plan, so
# the noise is planned once per run), few matching steps; reproducible noise so that the
# same configuration gives the same numbers in any process.
BASE = """
[base]
dataset = "digits"
clients = 6
cohort = 6
rounds = 2
batch-size = 2000
lr = 0.5
rounds-of-hp = 3
meta-steps = 5
meta-per-class = 5
dropout = 0.0
hardened = false
"""
GRID = """
[grid]
target-epsilon = [4, 8]
alpha = [0.1, 0.5]
seed = [0, 1]
""" + BASE


def _toml(tmp: Path, text: str) -> Path:
    path = tmp / "grid.toml"
    path.write_text(text)
    return path


def _csv(out: Path) -> list[dict[str, str]]:
    with open(out / CSV_NAME, newline="") as fh:
        return list(csv.DictReader(fh))


# -- grid parsing ----------------------------------------------------------------------------
def test_grid_file_types_and_overrides(tmp_path: Path) -> None:
    path = _toml(tmp_path, GRID + 'secagg = "secagg+"\nthreshold = "none"\n')
    grid = load_grid(path)
    assert grid.keys == ["target_epsilon", "alpha", "seed"]
    assert dict(grid.axes)["target_epsilon"] == (4.0, 8.0)
    assert all(isinstance(v, float) for v in dict(grid.axes)["target_epsilon"])
    assert grid.base["batch_size"] == 2000 and grid.base["hardened"] is False
    assert grid.base["threshold"] is None and grid.base["secagg"] == "secagg+"
    assert grid.size == 8

    # --set adds or replaces an axis (and un-fixes the key); --fix pins one
    grid = load_grid(path, ["algorithm=fedhpro,fedavg", "rounds=1,2"], ["seed=3", "margin=off"])
    assert grid.keys == ["target_epsilon", "alpha", "algorithm", "rounds"]
    assert grid.base["seed"] == 3 and grid.base["margin"] is False and "rounds" not in grid.base
    assert grid.size == 16

    grid = load_grid(None, ["noise-multiplier=none,1.5", "dp=off,sample"])
    assert dict(grid.axes) == {"noise_multiplier": (None, 1.5), "dp": ("off", "sample")}


@pytest.mark.parametrize("sets, fixes, fragment", [
    (["alpah=0.1,0.5"], [], "alpah"),
    (["alpha=0.1,abc"], [], "alpha needs float values"),
    (["rounds=2.5"], [], "rounds needs int values"),
    (["margin=maybe"], [], "margin needs bool values"),
    (["alpha=0.1,0.1"], [], "alpha lists the value 0.1 twice"),
    (["out=a,b"], [], "'out' is set by the sweep"),
    (["alpha=0.1"], ["executor=ray"], "'executor' is set by the sweep"),
    (["alpha"], [], "--set: expected key=value"),
    ([], ["seed=1"], "nothing to sweep"),
    (["alpha=0.1"], ["lr=fast"], "lr needs float values"),
    (["alpha=nan"], [], "alpha needs float values"),
])
def test_bad_set_and_fix_name_the_key(sets: list[str], fixes: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_grid(None, sets, fixes)


@pytest.mark.parametrize("text, fragment", [
    ("[grid]\nalpha = 0.5\n", "needs a list of values"),
    ("[grid]\nalpha = []\n", "alpha has no values"),
    ("[grid]\nalpha = [0.1, true]\n", "alpha needs float values"),
    ("[grid]\nseed = [0, 1.5]\n", "seed needs int values"),
    ("[grid]\nclients = [4]\n[base]\nclients = 6\n", "clients is both swept"),
    ("[grid]\nalpha = [0.1]\n[extra]\nx = 1\n", "unknown tables ['extra']"),
    ("[grid]\nwidth = [1, 2]\n", "unknown key 'width'"),
    ("[grid\nalpha = [0.1]\n", "not valid TOML"),
    ("[grid]\nalpha = [0.1]\n[base]\nrun-id = \"x\"\n", "'run-id' is set by the sweep"),
])
def test_bad_grid_files(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_grid(_toml(tmp_path, text))


def test_combination_checked_by_train_config_and_ids_are_deterministic(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--alpha: must be > 0 .*alpha=0\.0"):
        expand(load_grid(None, ["alpha=0,0.5"]), tmp_path)
    grid = load_grid(_toml(tmp_path, GRID))
    a, b = expand(grid, tmp_path / "x"), expand(grid, tmp_path / "y")
    assert [s.run_dir.name for s in a] == [s.run_dir.name for s in b]  # found again by a re-run
    assert len({s.run_dir.name for s in a}) == 8
    assert a[0].run_dir.name.startswith("target_epsilon=4.0_alpha=0.1_seed=0-")
    assert a[0].config.run_id == a[0].run_dir.name and a[0].config.out == str(tmp_path / "x" / "runs")
    changed = expand(load_grid(_toml(tmp_path, GRID), fixes=["lr=0.25"]), tmp_path / "x")
    assert changed[0].run_dir.name != a[0].run_dir.name  # another fixed value: other runs


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "o")
    assert main(["sweep", "--set", "alpah=0.1", "--out", out]) == 2
    assert "unknown key 'alpah'" in capsys.readouterr().err
    assert main(["sweep", "--set", "alpha=0.1,x", "--out", out]) == 2
    assert "alpha needs float values (got 'x')" in capsys.readouterr().err
    assert main(["sweep", "--grid", str(tmp_path / "missing.toml"), "--out", out]) == 2
    assert "--grid: cannot read" in capsys.readouterr().err
    assert main(["sweep", "--set", "alpha=0.1", "--workers", "2", "--out", out]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["sweep", "--set", "alpha=0.1", "--ray-address", "auto", "--out", out]) == 2
    assert "--ray-address: needs --executor ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["sweep", "--set", "alpha=0.1", "--executor", "ray", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[ray]"' in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_help_lists_every_flag_with_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    for flag in ("--grid", "--set", "--fix", "--out", "--executor", "--ray-address", "--workers", "--quiet"):
        assert flag in text
    assert "(default: local)" in text and "(default: sweep)" in text


def test_failed_runs_are_reported_and_retried(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # digits has 1,437 training samples: 800 clients is refused by the trainer (not by the
    # config check), so both runs fail at run time without training anything.
    argv = ["sweep", "--set", "clients=800,900", "--fix", "dp=off", "--fix", "secagg=off", "--out",
            str(tmp_path), "--quiet"]
    assert main(argv) == 1
    assert "FAILED" in capsys.readouterr().err
    rows = _csv(tmp_path)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "--clients" in rows[0]["note"] and rows[0]["accuracy"] == ""
    assert "No run has finished yet" in (tmp_path / HTML_NAME).read_text()
    assert main(argv) == 1  # a failed run is not "finished": the next invocation tries again


# -- the 2x2x2 digits sweep, interrupted and resumed -----------------------------------------
class _StopAfter:
    def __init__(self, n: int) -> None:
        self.n = n
        self.seen: list[Row] = []

    def __call__(self, row: Row) -> None:
        self.seen.append(row)
        if len(self.seen) == self.n:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("sweep")
    grid = load_grid(_toml(tmp, GRID))
    out = tmp / "out"
    stop = _StopAfter(3)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, out, progress=False, on_finish=stop)
    first_csv = _csv(out)
    specs = expand(grid, out)
    markers = {s.run_dir: (s.run_dir / MARKER).stat().st_mtime_ns for s in specs[:3]}
    # run 4 was killed after its first round (checkpoint at round 1, no result);
    # run 5 was killed before its first checkpoint (a folder with a stray file)
    specs[3].run_dir.mkdir(parents=True)
    Trainer(specs[3].config, progress=False, log=lambda s: None, run_dir=specs[3].run_dir).run(until=1)
    (specs[4].run_dir).mkdir(parents=True)
    (specs[4].run_dir / "audit.jsonl").write_text('{"round": 1, "trunc')
    finished = run_sweep(grid, out, progress=False)
    return {"grid": grid, "out": out, "specs": specs, "first_csv": first_csv, "markers": markers,
            "result": finished, "grid_path": tmp / "grid.toml"}


def test_interrupted_sweep_left_complete_tables(sweep: dict[str, Any]) -> None:
    rows = sweep["first_csv"]
    assert len(rows) == 8  # all runs listed, progress visible
    assert [r["status"] for r in rows] == ["complete"] * 3 + ["pending"] * 5
    assert rows[3]["accuracy"] == "" and rows[0]["accuracy"] != ""


def test_resume_skips_finished_and_resumes_interrupted(sweep: dict[str, Any]) -> None:
    res: SweepResult = sweep["result"]
    assert [r.action for r in res.rows] == ["skipped"] * 3 + ["resumed", "restarted", "ran", "ran", "ran"]
    for run_dir, mtime in sweep["markers"].items():
        assert (run_dir / MARKER).stat().st_mtime_ns == mtime  # not run again
    resumed = res.rows[3].spec.run_dir
    recs = list(read_audit(resumed / "audit.jsonl"))
    assert [r["round"] for r in recs if r["kind"] == "round"] == [1, 2]  # nothing lost or repeated
    assert [r["kind"] for r in recs] == ["config", "round", "resume", "round"]  # the resume is appended
    assert verify_chain(resumed / "audit.jsonl") == 4
    restarted = res.rows[4].spec.run_dir
    assert verify_chain(restarted / "audit.jsonl") == 3  # config, rounds 1-2
    for row in res.rows:  # every one a normal run folder
        for name in ("config.json", "metrics.json", "audit.jsonl", "checkpoint.pt", "report.html", "model.pt"):
            assert (row.spec.run_dir / name).exists(), (row.spec.run_dir, name)


def test_sweep_csv_has_every_run(sweep: dict[str, Any]) -> None:
    rows = _csv(sweep["out"])
    assert len(rows) == 8
    assert list(rows[0])[:3] == ["target_epsilon", "alpha", "seed"]
    combos = {(r["target_epsilon"], r["alpha"], r["seed"]) for r in rows}
    assert combos == {(t, a, s) for t in ("4.0", "8.0") for a in ("0.1", "0.5") for s in ("0", "1")}
    for r in rows:
        assert r["status"] == "complete" and r["rounds"] == "2" and r["delta"] == "1e-05"
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        eps = float(r["epsilon"])
        assert 0.0 < eps <= float(r["target_epsilon"])  # spent, within the target
        metrics = json.loads((sweep["out"] / r["run_dir"] / "metrics.json").read_text())
        assert float(r["accuracy"]) == metrics["final"]["accuracy"]
        assert eps == metrics["final"]["epsilon"]
        assert float(r["seconds"]) > 0 and float(r["train_seconds"]) > 0
    spent = {t: {float(r["epsilon"]) for r in rows if r["target_epsilon"] == t} for t in ("4.0", "8.0")}
    assert max(spent["4.0"]) < min(spent["8.0"])


def test_sweep_html_embeds_the_plot_and_table(sweep: dict[str, Any]) -> None:
    text = (sweep["out"] / HTML_NAME).read_text()
    m = re.search(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert m is not None
    assert base64.b64decode(m.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "alpha=0.1: epsilon" in text and "alpha=0.5: epsilon" in text  # one line per alpha
    assert text.count("<td>complete</td>") == 8
    assert "Accuracy against epsilon spent" in text


def test_cli_rerun_finds_every_run(sweep: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    before = (sweep["out"] / CSV_NAME).read_text()
    assert main(["sweep", "--grid", str(sweep["grid_path"]), "--out", str(sweep["out"]), "--quiet"]) == 0
    assert "8/8 runs finished (8 skipped)" in capsys.readouterr().out
    assert (sweep["out"] / CSV_NAME).read_text() == before


# -- Ray -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local(ray_session: Any) -> Any:
    """The session's local Ray instance (tests/conftest.py)."""
    return ray_session


def test_ray_tasks_match_local_runs(ray_local: Any, sweep: dict[str, Any], tmp_path: Path) -> None:
    # two of the local runs again, as Ray tasks in another folder: the same run ids and the
    # same numbers (including the run that was resumed after being interrupted locally)
    grid = Grid((("target_epsilon", (4.0,)), ("alpha", (0.1, 0.5)), ("seed", (1,))), sweep["grid"].base)
    res = run_sweep(grid, tmp_path, executor="ray", workers=2, progress=False)
    assert [r.action for r in res.rows] == ["ran", "ran"]
    local = {r.spec.run_dir.name: r.result for r in sweep["result"].rows}
    for row in res.rows:
        assert row.spec.run_dir.parent == tmp_path / "runs"
        theirs = local[row.spec.run_dir.name]
        for key in ("accuracy", "epsilon", "rounds", "status"):
            assert row.result[key] == theirs[key], key
    assert len(_csv(tmp_path)) == 2
    assert run_sweep(grid, tmp_path, executor="ray", progress=False).actions() == {"skipped": 2}


def test_hardened_restart_counts_a_release_made_before_the_first_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from secure_fed.report.sweep import execute_run

    grid = load_grid(_toml(tmp_path, "[grid]\nseed = [0]\n" + BASE.replace("hardened = false", "hardened = true")),
                     fixes=["target-epsilon=none", "noise-multiplier=2.0"])
    spec = expand(grid, tmp_path)[0]

    def killed(self: Trainer, round_id: int) -> None:  # dies after round 1's sum was released
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            execute_run(spec.config.to_dict(), str(spec.run_dir))
    assert not (spec.run_dir / "checkpoint.pt").exists()
    out = execute_run(spec.config.to_dict(), str(spec.run_dir))
    assert out["action"] == "restarted" and out["result"]["status"] == "complete"
    ledger = json.loads(torch.load(spec.run_dir / "checkpoint.pt", weights_only=False)["ledger"])
    rounds = [e["round"] for e in ledger["events"]]
    assert rounds.count(1) == 2 * rounds.count(2) > 0  # the lost release of round 1 is counted
    recs = list(read_audit(spec.run_dir / "audit.jsonl"))  # ... and recorded, after the config record
    assert [r["kind"] for r in recs] == ["config", "resume", "round", "round"]
    assert recs[1]["recovered_releases"] == [1] and recs[1]["charged"]
    assert verify_chain(spec.run_dir / "audit.jsonl") == 4


def test_result_columns_from_metrics() -> None:
    from secure_fed.config import TrainConfig
    from secure_fed.report.sweep import _result

    cfg = TrainConfig(target_epsilon=2.0)
    rounds = [{"round": 1, "accuracy": 0.5, "epsilon": 1.2, "seconds": 1.0},
              {"round": 2, "aborted": "too few survivors", "accuracy": 0.5, "epsilon": 1.2, "seconds": 0.5}]
    stopped = {"round": 3, "reason": "target epsilon 2.0 would be exceeded by round 3",
               "epsilon": {"rdp": {"max": 1.2}}}
    r = _result(cfg, {"rounds": rounds, "stopped": stopped}, 7.0)
    assert r["status"] == "budget-stopped" and r["rounds"] == 2 and r["epsilon"] == 1.2
    assert r["accuracy"] == 0.5 and r["train_seconds"] == 1.5 and r["seconds"] == 7.0
    assert "would be exceeded" in r["note"] and "1 round(s) aborted" in r["note"]
    stopped_at_once = _result(cfg, {"rounds": [], "stopped": {**stopped, "round": 1, "epsilon": None}}, 1.0)
    assert stopped_at_once["accuracy"] is None and stopped_at_once["rounds"] == 0
    plain = _result(TrainConfig(dp="off", target_epsilon=None), {"rounds": rounds[:1], "stopped": None}, 2.0)
    assert plain["status"] == "complete" and plain["epsilon"] is None and plain["delta"] is None


def test_plot_groups_lines_and_draws_runs_without_dp(tmp_path: Path) -> None:
    from secure_fed.report.sweep import html_text, points

    grid = load_grid(None, ["dp=off,sample", "target-epsilon=2,4", "seed=0,1,2"])
    rows = [Row(s) for s in expand(grid, tmp_path)]
    for row in rows:
        p = row.spec.params
        eps = None if p["dp"] == "off" else p["target_epsilon"] * 0.9 + 0.01 * p["seed"]
        row.result = {"status": "complete", "accuracy": 0.5 + 0.1 * (p["dp"] == "off") + 0.01 * p["seed"],
                      "epsilon": eps, "rounds": 3}
    rows[-1].result = {"status": "failed", "note": "boom"}  # dp=sample, eps 4, seed 2
    with_eps, no_dp = points(grid, rows)
    assert sorted((p.group, p.setting, len(p.accuracies)) for p in with_eps) == [
        ((("dp", "sample"),), (("target_epsilon", 2.0),), 3), ((("dp", "sample"),), (("target_epsilon", 4.0),), 2)]
    at4 = next(p for p in with_eps if p.setting == (("target_epsilon", 4.0),))
    assert at4.x == pytest.approx(3.6 + 0.005) and at4.y == pytest.approx(0.505)
    assert [(p.group, len(p.accuracies)) for p in no_dp] == [((("dp", "off"),), 6)]  # one reference line
    text = html_text(grid, rows, tmp_path)
    assert "dp=off without DP: accuracy" in text and "dp=sample: epsilon 1.81" in text
    assert "data:image/png;base64," in text and text.count("<td>failed</td>") == 1


@pytest.mark.parametrize("name", ["privacy_utility.toml", "budget_split.toml"])
def test_the_shipped_grids_expand_to_valid_runs(name: str, tmp_path: Path) -> None:
    """The example grids in benchmarks/grids load and every combination is a config train
    accepts (nothing runs)."""
    grid = load_grid(Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / name)
    specs = expand(grid, tmp_path)
    assert len(specs) == len({s.run_dir for s in specs}) >= 8
    if name == "budget_split.toml":
        ratios = {s.params["release_noise_ratio"] for s in specs}
        assert ratios == {1.0, 3.0, 10.0}
