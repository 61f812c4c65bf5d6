"""Pong end to end: SIGTERM stops within the bound; a resume with other sizes continues."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from trainer_testlib import PONG_TINY, kill_group, read_progress, start, wait_for

from trainer import checkpoint
from trainer.args import Args
from trainer.train import epsilon

STOP_BOUND_S = 10.0  # docs/trainer.md: Pong, 8 envs, CPU, checkpoint included


def _stop(proc, log: Path) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    took = time.monotonic() - t0
    assert rc == 0, log.read_text()[-2000:]
    return took


@pytest.mark.slow
def test_sigterm_then_resume_with_other_sizes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    # Replay ratio 1 keeps updates cheap, so a real Pong game ends within seconds.
    first = [*PONG_TINY, "--episodes", "50", "--run-dir", str(run_dir), "--num-envs", "8",
             "--batch-size", "32", "--replay-ratio", "1", "--eps-decay-steps", "50000"]  # fmt: skip
    proc = start(first, log1)
    try:
        p = wait_for(
            lambda: (q := read_progress(run_dir)) and q["episodes"] >= 1 and q["updates"] > 0 and q,
            proc, 240, "one real Pong game and some updates",
        )  # fmt: skip
        assert p["status"] == "running" and p["num_envs"] == 8 and p["game"] == "Pong"
        # Signals arriving twice must not matter: the handler only records them.
        proc.send_signal(signal.SIGTERM)
        took = _stop(proc, log1)
    finally:
        kill_group(proc)
    print(f"SIGTERM (twice) -> exit 0 in {took:.2f} s")
    assert took < STOP_BOUND_S, f"stop took {took:.1f} s"
    final = read_progress(run_dir)
    assert final is not None and final["status"] == "stopped"
    assert final["last_checkpoint_time"] is not None
    got = checkpoint.load_newest(run_dir / "checkpoints")
    assert got is not None
    s1, path1 = got
    c1 = s1["counters"]
    assert final["episodes"] == s1["stats"]["episodes"] >= 1
    assert final["env_steps"] == c1["env_steps"] and final["updates"] == c1["updates"] > 0
    lines = [json.loads(ln) for ln in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert [e["episode"] for e in lines] == list(range(1, final["episodes"] + 1))
    assert all(-21 <= e["return"] <= 21 and e["length"] > 0 for e in lines)

    # Other num_envs/batch; learning-starts beyond the run, so the weights must stay loaded ones.
    second = [*PONG_TINY, "--episodes", "50", "--run-dir", str(run_dir), "--num-envs", "4",
              "--batch-size", "16", "--replay-ratio", "1", "--eps-decay-steps", "50000",
              "--learning-starts", "20000", "--buffer-gb", "0.2"]  # fmt: skip
    proc = start(second, log2)
    try:
        wait_for(
            lambda: (q := read_progress(run_dir)) and q["env_steps"] >= c1["env_steps"] + 200,
            proc, 120, "the resumed run to step",
        )  # fmt: skip
        _stop(proc, log2)
    finally:
        kill_group(proc)
    text = log2.read_text()
    m = re.search(r"resumed from (\S+): episodes=(\d+) env_steps=(\d+) updates=(\d+)", text)
    assert m, text[-2000:]
    assert m.group(1) == path1.name
    assert (int(m.group(2)), int(m.group(3)), int(m.group(4))) == (
        s1["stats"]["episodes"], c1["env_steps"], c1["updates"],
    )  # fmt: skip
    s2, path2 = checkpoint.load_newest(run_dir / "checkpoints") or ({}, None)
    assert path2 is not None and path2.name > path1.name
    c2 = s2["counters"]
    assert c2["env_steps"] >= c1["env_steps"] + 200
    assert s2["stats"]["episodes"] >= s1["stats"]["episodes"]
    assert c2["updates"] == c1["updates"]  # the refill phase trains nothing
    for name in ("q", "target"):
        for k, v in s1[name].items():
            assert torch.equal(v, s2[name][k]), f"{name}.{k} differs from the checkpoint"
    args2 = Args(game="Pong", episodes=50, run_dir=run_dir, eps_decay_steps=50000)
    assert s2["epsilon"] == pytest.approx(epsilon(args2, c2["env_steps"]))
    assert s2["epsilon"] < s1["epsilon"] < 1.0
    assert s2["config"]["num_envs"] == 4 and s2["config"]["batch_size"] == 16
    p2 = read_progress(run_dir)
    assert p2 is not None and p2["status"] == "stopped" and p2["num_envs"] == 4
    assert p2["replay_size"] < 20000


def _catches_sigterm(pid: int) -> bool:
    # SigCgt is the mask of signals with a handler; SIGTERM is bit 15 (1-based).
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_sigterm_during_startup_is_a_graceful_stop(tmp_path: Path) -> None:
    """A level change can SIGTERM a trainer that has not started training yet: that is a graceful
    stop (exit 0, status stopped), not death by signal 15. The CLI installs the handler before
    importing torch, which shrinks the window where SIGTERM kills to interpreter start-up."""
    run_dir = tmp_path / "run"
    log = tmp_path / "trainer.log"
    proc = start([*PONG_TINY, "--episodes", "5", "--run-dir", str(run_dir), "--num-envs", "2",
                  "--batch-size", "16"], log)  # fmt: skip
    try:
        wait_for(lambda: _catches_sigterm(proc.pid), proc, 60, "the SIGTERM handler")
        assert read_progress(run_dir) is None, "the signal should land before training starts"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
        progress = read_progress(run_dir)
        assert progress is not None and progress["status"] == "stopped"
        assert progress["episodes"] == 0
    finally:
        kill_group(proc)
