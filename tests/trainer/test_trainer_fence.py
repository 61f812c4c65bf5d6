"""Fleet mode's fencing token in the trainer: a trainer whose ``--fence-token`` is older than the
run dir's ``fence`` file writes nothing more (no progress, checkpoint, best or episode line) and
exits 8 (superseded); without the flag, or with its own token there, nothing changes."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest

from tests.trainer.trainer_testlib import kill_group, read_progress, run, start, wait_for
from trainer import contract, rundir
from trainer.args import UsageError

CARTPOLE = ["--game", "CartPole-v1", "--episodes", "100000", "--buffer-gb", "0.01",
            "--learning-starts", "64", "--threads", "1", "--progress-every", "0.3",
            "--checkpoint-every", "1"]  # fmt: skip


@pytest.fixture
def fenced(tmp_path: Path):
    rundir.set_fence(tmp_path, 3)
    try:
        yield tmp_path
    finally:
        rundir.set_fence(tmp_path, None)


def test_write_atomic_obeys_the_fence(fenced: Path) -> None:
    target = fenced / "progress.json"
    rundir.write_atomic(target, b"1")  # no fence file: no fencing
    (fenced / contract.FENCE_FILE).write_text("3\n")  # our own token
    rundir.write_atomic(target, b"2")
    assert target.read_bytes() == b"2"
    for newer in ("4\n", "not a token"):
        (fenced / contract.FENCE_FILE).write_text(newer)
        with pytest.raises(UsageError, match="superseded") as info:
            rundir.write_atomic(target, b"stale")
        assert info.value.code == contract.ExitCode.SUPERSEDED == 8
        assert target.read_bytes() == b"2"
    assert sorted(p.name for p in fenced.iterdir()) == [contract.FENCE_FILE, "progress.json"]


def test_a_trainer_superseded_before_it_starts_touches_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / contract.FENCE_FILE).write_text("5\n")
    r = run([*CARTPOLE, "--run-dir", str(run_dir), "--fence-token", "4"])
    assert r.returncode == 8, r.stderr[-2000:]
    assert "superseded" in r.stderr and "\n" not in r.stderr.strip()
    assert sorted(p.name for p in run_dir.iterdir()) == [contract.FENCE_FILE]


def _hashes(run_dir: Path) -> dict[str, str]:
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "trainer.lock"]
    return {p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}  # fmt: skip


def test_a_paused_stale_holder_stops_without_writing_over_the_new_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / contract.FENCE_FILE).write_text("1\n")
    proc = start([*CARTPOLE, "--run-dir", str(run_dir), "--fence-token", "1"], tmp_path / "log")
    try:
        wait_for(lambda: (p := read_progress(run_dir)) and p.get("pid") == proc.pid
                 and p.get("last_checkpoint_time") and (run_dir / "best.pt").exists(),
                 proc, 180, "the first holder's checkpoint and best.pt")  # fmt: skip
        proc.send_signal(signal.SIGSTOP)  # paused past its lease: the game moves on
        (run_dir / contract.FENCE_FILE).write_text("2\n")
        # The new holder's files (what its trainer would have written meanwhile).
        (run_dir / "progress.json").write_text('{"holder": "new", "episodes": 12345}\n')
        (run_dir / "checkpoints" / "ckpt-999999999.pt").write_bytes(b"new holder's checkpoint")
        before = _hashes(run_dir)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=60) == 8
    finally:
        kill_group(proc)
    assert _hashes(run_dir) == before  # nothing of the stale holder landed
    assert "superseded" in (tmp_path / "log").read_text()
