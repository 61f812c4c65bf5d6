"""Checkpoints survive SIGKILL mid-write, corruption and a full disk."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_testlib import PONG_TINY, env, kill_group, start, wait_for

from trainer import checkpoint


def _state(i: int) -> dict[str, object]:
    return {"counters": {"env_steps": i}, "w": torch.full((1000,), float(i))}


def test_corrupt_newest_falls_back_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(1, 4):
        checkpoint.save(tmp_path, _state(i), keep=3)
    newest = checkpoint.list_checkpoints(tmp_path)[0][1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the payload
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        got = checkpoint.load_newest(tmp_path)
    assert got is not None
    state, path = got
    assert path.name == "ckpt-000000002.pt" and state["counters"]["env_steps"] == 2
    assert "checksum mismatch" in caplog.text and newest.name in caplog.text
    # A truncated (half-written) file is rejected the same way.
    second = tmp_path / "ckpt-000000002.pt"
    second.write_bytes(second.read_bytes()[:1000])
    state, path = checkpoint.load_newest(tmp_path) or ({}, None)
    assert path == tmp_path / "ckpt-000000001.pt" and state["counters"]["env_steps"] == 1


def test_keeps_newest_k(tmp_path: Path) -> None:
    for i in range(1, 7):
        checkpoint.save(tmp_path, _state(i), keep=2)
    names = [p.name for _, p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt-000000006.pt", "ckpt-000000005.pt"]


def test_disk_full_at_the_write_seam_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, _state(1), keep=3)

    def full_disk(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 3])
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(tmp_path, _state(2), keep=3, write=full_disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000001.pt"]
    state, _ = checkpoint.load_newest(tmp_path) or ({}, None)
    assert state["counters"]["env_steps"] == 1


def _writing(ckpt_dir: Path, pid: int) -> bool:
    # Only this trainer's temp file: a killed predecessor's may still lie around.
    return any(p.name.endswith(f".tmp{pid}") for p in ckpt_dir.iterdir())


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_20_times(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    # Checkpoint on every loop pass, so the trainer spends most of its time writing one.
    argv = [*PONG_TINY, "--episodes", "1000", "--num-envs", "8", "--run-dir", str(run_dir),
            "--checkpoint-every", "0.001", "--learning-starts", "20000", "--buffer-gb", "0.2",
            "--keep-checkpoints", "2"]  # fmt: skip
    rng = np.random.default_rng(2024)
    newest_seq = 0
    mid_write = 0
    for i in range(20):
        proc = start(argv, tmp_path / "trainer.log")
        try:

            def advanced(floor: int = newest_seq) -> bool:
                found = checkpoint.list_checkpoints(ckpt_dir)
                return bool(found) and found[0][0] > floor

            wait_for(advanced, proc, 60, "a new checkpoint")
            if i % 2:
                # Every other kill aims inside a write: wait for a temp file, then a random
                # few milliseconds into it (a write of ~14 MB plus fsync).
                wait_for(
                    lambda pid=proc.pid: _writing(ckpt_dir, pid), proc, 30, "a checkpoint write"
                )
                time.sleep(float(rng.uniform(0.0, 0.005)))
            else:
                time.sleep(float(rng.uniform(0.0, 0.4)))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            kill_group(proc)
        mid_write += _writing(ckpt_dir, proc.pid)
        files = checkpoint.list_checkpoints(ckpt_dir)
        # Renames are atomic: every named checkpoint is complete, so the newest one loads.
        for _, path in files:
            checkpoint.decode(path.read_bytes(), path)
        got = checkpoint.load_newest(ckpt_dir)
        assert got is not None and got[1] == files[0][1]
        assert files[0][0] > newest_seq
        newest_seq = files[0][0]
    print(f"{mid_write}/20 SIGKILLs landed inside a checkpoint write")
    # The kills must really land inside writes, or this test proves nothing.
    assert mid_write >= 5, f"only {mid_write}/20 kills hit a checkpoint write"


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare to mount a tiny tmpfs in a private mount namespace",
)
def test_disk_full_on_a_real_tiny_tmpfs(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    # CartPole with a wide MLP: one checkpoint (~17 MB) fits in 24 MB, a second one does not.
    trainer = [sys.executable, "-m", "trainer", "--game", "CartPole-v1", "--episodes", "100000",
               "--run-dir", str(run_dir), "--hidden", "1024", "--buffer-gb", "0.01",
               "--learning-starts", "64", "--checkpoint-every", "1", "--max-seconds", "6",
               "--threads", "1"]  # fmt: skip
    verify = [sys.executable, "-m", "trainer.checkpoint", str(ckpt_dir)]
    script = (
        f"mount -t tmpfs -o size=24m tmpfs {ckpt_dir} || exit 99\n"
        f"{subprocess.list2cmdline(trainer)}\necho trainer-rc=$?\n"
        f"{subprocess.list2cmdline(verify)}\n"
    )
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, env=env(), timeout=120)  # fmt: skip
    out = r.stdout + r.stderr
    if "exit 99" in out or r.returncode == 99:
        pytest.skip(f"cannot mount tmpfs here: {out[-300:]}")
    failures = out.count("checkpoint failed, previous checkpoint kept")
    assert "No space left on device" in out
    assert failures >= 2, out[-3000:]  # it kept training and tried again
    assert "--max-seconds 6.0 reached" in out
    # The final checkpoint could not be written either: exit 1, so the daemon backs off.
    assert "trainer-rc=1" in out
    assert "ckpt-000000001.pt env_steps=" in out
