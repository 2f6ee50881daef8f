"""Run folders a checker can trust, and one-line errors on every fault (issue 15).

The evidence: the audit chain starts with config.json's hash, a resume is appended (never a
rewrite), ``report`` and ``audit`` re-derive every recorded epsilon from the chain's ledger
events. One writer per run folder. Every file-system or data fault of train, resume, report
and audit ends in exit status 2 (1: evidence refused) and one line naming the file, with no
traceback. The CLI runs in-process; the lock holder is a real second process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secure_fed.cli.main import main
from secure_fed.config import TrainConfig
from secure_fed.run import rundir
from secure_fed.run.rundir import RunFolderError, load_torch, read_audit, verify_chain
from secure_fed.run.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--clients", "4", "--cohort", "4", "--batch-size", "32", "--rounds-of-hp", "3", "--meta-steps", "5",
        "--meta-per-class", "5", "--dropout", "0", "--reproducible", "--seed", "1", "--quiet"]
SMALL: dict[str, Any] = dict(clients=4, cohort=4, batch_size=32, rounds_of_hp=3, meta_steps=5, meta_per_class=5, dropout=0.0, seed=1)


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def _records(run: Path) -> list[dict[str, Any]]:
    return list(read_audit(run / "audit.jsonl"))


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-round DP run (SecAgg+, discrete noise planned for target epsilon 8)."""
    out = tmp_path_factory.mktemp("dp-runs")
    assert main(["train", *TINY, "--rounds", "2", "--dp", "sample", "--target-epsilon", "8",
                 "--out", str(out), "--run-id", "dp"]) == 0
    return out / "dp"


# -- evidence ------------------------------------------------------------------------------
def test_edited_epsilon_makes_report_exit_1_naming_the_record(dp_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(dp_run, tmp_path / "r")
    lines = (run / "audit.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])  # the last record: no later record chains to it
    true_eps = last["epsilon"]["rdp"]["max"]
    assert true_eps > 1
    last["epsilon"]["rdp"]["max"] = 0.5
    lines[-1] = json.dumps(last, sort_keys=True, separators=(",", ":"))
    (run / "audit.jsonl").write_text("\n".join(lines) + "\n")
    assert verify_chain(run / "audit.jsonl") == 3  # the hash chain alone cannot see it
    capsys.readouterr()
    assert main(["report", str(run)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "record 3 (round 2)" in line and "0.5" in line
    page = (run / "report.html").read_text()
    assert "Evidence check FAILED" in page
    assert main(["audit", str(run), "--which", "membership", "--quiet"]) == 1
    assert "record 3 (round 2)" in _one_line(capsys.readouterr().err)


def test_config_json_of_another_run_is_refused(dp_run: Path, finished_plain_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(dp_run, tmp_path / "r")
    shutil.copy(finished_plain_run / "config.json", run / "config.json")
    capsys.readouterr()
    assert main(["report", str(run)]) == 1
    assert "config.json" in _one_line(capsys.readouterr().err)
    assert main(["audit", str(run), "--which", "membership", "--quiet"]) == 1
    assert "config.json" in _one_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "config.json" in _one_line(capsys.readouterr().err)


def test_audit_refuses_a_run_whose_chain_does_not_verify(finished_plain_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished_plain_run, tmp_path / "r")
    lines = (run / "audit.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["accuracy"] = 0.99
    lines[1] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    (run / "audit.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["audit", str(run), "--which", "membership", "--quiet"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "refused" in line and "record 3" in line
    assert not (run / "audit_results.json").exists()


def _kill_after(tmp_path: Path, run_id: str, hardened: bool, before_audit: bool) -> tuple[Trainer, bytes]:
    """Rounds 1-2 checkpointed, then round 3 released (journal) and, unless ``before_audit``,
    recorded, and the process dies before its checkpoint. Returns the config and the chain."""
    cfg = TrainConfig(**SMALL, rounds=3, secagg="secagg+", dp="sample", noise_multiplier=2.0, target_epsilon=None,
                      hardened=hardened, out=str(tmp_path), run_id=run_id)
    first = Trainer(cfg, progress=False, log=lambda s: None)
    first.run(until=2)
    first._checkpoint = lambda round_id: None  # type: ignore[method-assign]
    if before_audit:
        first.audit = None  # killed between the journal write and the audit write
    first.run_round(3)
    first.close()
    return first, (tmp_path / run_id / "audit.jsonl").read_bytes()


@pytest.mark.parametrize("hardened", [True, False], ids=["hardened", "reproducible"])
def test_resume_after_a_kill_between_audit_write_and_checkpoint_appends(
        tmp_path: Path, hardened: bool, capsys: pytest.CaptureFixture[str]) -> None:
    first, before = _kill_after(tmp_path, "k", hardened, before_audit=False)
    run = tmp_path / "k"
    assert [r["kind"] for r in _records(run)] == ["config", "round", "round", "round"]
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    after = (run / "audit.jsonl").read_bytes()
    assert after.startswith(before)  # appended: the earlier round-3 record is still there, unchanged
    recs = _records(run)
    assert [r["kind"] for r in recs] == ["config", "round", "round", "round", "resume", "round"]
    resume, redo = recs[4], recs[5]
    assert resume["from_round"] == 2 and resume["rerun_rounds"] == [3] and redo["rerun"] is True
    if hardened:  # the first release's noise is not drawn again: it stays charged
        assert resume["recovered_releases"] == [3] and resume["uncharged"] == []
    else:  # the re-run redraws the identical release: counted once
        assert resume["recovered_releases"] == [] and len(resume["uncharged"]) == len(recs[3]["events"])
    capsys.readouterr()
    assert main(["report", str(run)]) == 0  # every epsilon re-derives from the chain's events
    page = (run / "report.html").read_text()
    assert "3 (re-run)" in page and "id='resumes'" in page


def test_hardened_release_interrupted_before_its_record_is_its_own_record_and_in_the_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _kill_after(tmp_path, "h", True, before_audit=True)
    run = tmp_path / "h"
    assert [r["kind"] for r in _records(run)] == ["config", "round", "round"]  # round 3 only in the journal
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "round(s) [3]" in capsys.readouterr().out  # said on the console
    recs = _records(run)
    assert [r["kind"] for r in recs] == ["config", "round", "round", "resume", "round"]
    resume = recs[3]
    assert resume["recovered_releases"] == [3] and resume["charged"]
    assert {e["round"] for e in resume["charged"]} == {3}
    assert resume["epsilon"]["rdp"]["max"] > recs[2]["epsilon"]["rdp"]["max"]  # it costs privacy
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    section = page[page.index("id='resumes'"):]
    assert "Resumes" in section and "<td>3</td>" in section


def test_a_budget_stop_is_a_record_whose_epsilon_re_derives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, "--rounds", "5", "--dp", "sample", "--noise-multiplier", "1", "--target-epsilon", "4",
                 "--out", str(tmp_path), "--run-id", "s"]) == 0
    recs = _records(tmp_path / "s")
    assert recs[-1]["kind"] == "stop" and recs[-1]["epsilon"]["rdp"]["max"] <= 4
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s")]) == 0


# -- one writer per run folder ---------------------------------------------------------------
def _hold_lock(folder: Path) -> subprocess.Popen[str]:
    code = ("import sys; from pathlib import Path; from secure_fed.run.rundir import RunLock; "
            f"lock = RunLock(Path({str(folder)!r})); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused(finished_plain_run: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").mkdir()
    holder = _hold_lock(tmp_path / "x")  # another process is training into out/x
    try:
        assert main(["train", *TINY, "--rounds", "1", "--dp", "off", "--out", str(tmp_path), "--run-id", "x"]) == 2
        assert "another process is writing" in _one_line(capsys.readouterr().err)
        assert os.listdir(tmp_path / "x") == [".lock"]  # nothing written
    finally:
        holder.communicate("")
    run = _copy(finished_plain_run, tmp_path / "running")
    before = (run / "audit.jsonl").read_bytes()
    holder = _hold_lock(run)  # --resume of a run that is still running
    try:
        assert main(["train", "--resume", str(run), "--rounds", "3", "--quiet"]) == 2
        assert "another process is writing" in _one_line(capsys.readouterr().err)
        assert (run / "audit.jsonl").read_bytes() == before
    finally:
        holder.communicate("")


# -- faults: one line, no traceback ----------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_corrupt_checkpoint_exits_2_with_one_line(finished_plain_run: Path, tmp_path: Path, damage: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished_plain_run, tmp_path / "r")
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    random_bytes = np.random.default_rng(17).bytes(4096)  # fixed: the load_torch test below sweeps seeds
    ckpt.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "random": random_bytes}[damage])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "checkpoint.pt" in _one_line(capsys.readouterr().err)
    assert main(["audit", str(run), "--which", "inversion", "--inversion-points", "final", "--quiet"]) == 2
    assert "checkpoint.pt" in _one_line(capsys.readouterr().err)


def test_load_torch_turns_any_damage_into_a_run_folder_error(finished_plain_run: Path, tmp_path: Path) -> None:
    """Random and bit-flipped bytes raise many exception types inside torch.load
    (UnpicklingError, ValueError, UnicodeDecodeError, OverflowError, MemoryError, ...): every one
    must come out as a RunFolderError naming the file, never a traceback."""
    data = (finished_plain_run / "checkpoint.pt").read_bytes()
    path = tmp_path / "checkpoint.pt"
    rng = np.random.default_rng(0)
    for i in range(400):
        if i % 2:
            damaged = rng.bytes(int(rng.integers(1, 8192)))
        else:  # a real checkpoint with a few bytes changed: the zip container or the pickle breaks
            buf = bytearray(data)
            for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 16))):
                buf[int(pos)] = int(rng.integers(0, 256))
            damaged = bytes(buf)
        path.write_bytes(damaged)
        try:
            load_torch(path)
        except RunFolderError as exc:
            assert str(path) in str(exc)
        # a flip that lands in tensor data (not the container) still loads: that is the
        # config hash's and the chain's job, not the decoder's


@pytest.mark.parametrize("run_id", ["../x", "", ".", "..", "a/b"])
def test_run_id_must_be_a_plain_name(tmp_path: Path, run_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["train", *TINY, "--dp", "off", "--out", str(out), "--run-id", run_id]) == 2
    assert "--run-id" in _one_line(capsys.readouterr().err)
    assert not out.exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, name", [
    (["--delta", "1.5"], "--delta"), (["--delta", "nan"], "--delta"),
    (["--target-epsilon", "inf"], "--target-epsilon"), (["--target-epsilon", "nan"], "--target-epsilon"),
    (["--target-epsilon", "0"], "--target-epsilon"), (["--threads", "-1"], "--threads"),
])
def test_bad_values_are_refused_before_any_folder(tmp_path: Path, flags: list[str], name: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["train", *TINY, *flags, "--out", str(out), "--run-id", "r"]) == 2
    assert name in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_delta_above_one_over_n_warns_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, "--rounds", "1", "--dp", "sample", "--no-target", "--noise-multiplier", "1",
                 "--delta", "0.5", "--out", str(tmp_path), "--run-id", "r"]) == 0
    out = capsys.readouterr().out
    assert "warning: --delta 0.5 is above 1/n" in out


def test_resume_refuses_conflicting_flags_by_name(finished_plain_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished_plain_run, tmp_path / "r")
    before = (run / "audit.jsonl").read_bytes()
    assert main(["train", "--resume", str(run), "--clip", "5", "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--clip 5.0" in line and "conflict" in line
    assert (run / "audit.jsonl").read_bytes() == before


def test_resume_rounds_extends_the_run(finished_plain_run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished_plain_run, tmp_path / "r")
    assert main(["train", "--resume", str(run), "--rounds", "3", "--quiet"]) == 0
    assert [r["round"] for r in json.loads((run / "metrics.json").read_text())["rounds"]] == [1, 2, 3]
    recs = _records(run)
    assert [r["kind"] for r in recs] == ["config", "round", "round", "resume", "round"]
    assert recs[3]["extended_rounds"] == {"from": 2, "to": 3}
    assert json.loads((run / "config.json").read_text())["rounds"] == 3
    capsys.readouterr()
    assert main(["report", str(run)]) == 0  # the new config.json's hash is in the resume record


def test_resume_rounds_beyond_the_target_is_refused_with_the_reason(dp_run: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(dp_run, tmp_path / "r")
    before = (run / "audit.jsonl").read_bytes()
    assert main(["train", "--resume", str(run), "--rounds", "400", "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--rounds" in line and "would exceed --target-epsilon 8" in line
    assert (run / "audit.jsonl").read_bytes() == before and json.loads((run / "config.json").read_text())["rounds"] == 2


def test_invalid_config_json_on_resume(finished_plain_run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished_plain_run, tmp_path / "r")
    (run / "config.json").write_text("{not json")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "config.json" in _one_line(capsys.readouterr().err)


def test_binary_audit_log(finished_plain_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished_plain_run, tmp_path / "r")
    (run / "audit.jsonl").write_bytes(os.urandom(2048).replace(b"\n", b"\xff") + b"\n")
    capsys.readouterr()
    assert main(["report", str(run)]) == 1
    assert "audit.jsonl" in _one_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "audit.jsonl" in _one_line(capsys.readouterr().err)


def test_out_pointing_at_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["train", *TINY, "--dp", "off", "--out", str(tmp_path / "file"), "--run-id", "r"]) == 2
    assert "--out" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_a_write_the_os_refuses_names_the_file(tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(fh: Any, data: bytes) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(rundir, "_write_fully", refuse)
    assert main(["train", *TINY, "--rounds", "1", "--dp", "off", "--out", str(tmp_path), "--run-id", "r"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(tmp_path / "r") in line and os.strerror(code) in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(["train", *TINY, "--dp", "off", "--out", str(out), "--run-id", "r"]) == 2
        assert str(out / "r") in _one_line(capsys.readouterr().err)
    finally:
        out.chmod(0o755)


def test_mnist_files_of_random_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(os.urandom(1024))
    out = tmp_path / "out"
    assert main(["train", *TINY, "--dp", "off", "--dataset", "mnist", "--data-root", str(tmp_path / "data"),
                 "--out", str(out), "--run-id", "r"]) == 2
    assert "mnist" in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_debug_shows_the_traceback(finished_plain_run: Path, tmp_path: Path) -> None:
    run = _copy(finished_plain_run, tmp_path / "r")
    (run / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(rundir.RunFolderError, match="checkpoint.pt"):
        main(["--debug", "train", "--resume", str(run), "--quiet"])


def test_report_summed_column_counts_the_clients_summed_not_last_stage_survivors() -> None:
    from secure_fed.report.html import round_row
    from secure_fed.report.load import summed

    # two clients dropped after uploading their masked input: still in the sum
    rec = {"kind": "round", "round": 1, "cohort": list(range(10)), "summed": list(range(10)),
           "survivors": {"masked": list(range(10)), "unmask": list(range(8))}}
    assert summed(rec) == 10
    assert "<td>10</td>" in round_row(rec) and "<td>8</td>" not in round_row(rec)
