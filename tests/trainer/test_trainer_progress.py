"""episodes.jsonl: a failed append (disk full) is logged, not fatal, and later lines still land."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from trainer.rundir import RunFiles


def test_failed_episode_append_is_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = RunFiles(tmp_path)
    files.episodes_path.mkdir()  # open() fails, as a full or broken disk would
    with caplog.at_level(logging.ERROR, logger="trainer"):
        files.append_episode({"episode": 1})
    assert "could not append to" in caplog.text
    files.episodes_path.rmdir()
    files.append_episode({"episode": 2})
    files.close()
    lines = files.episodes_path.read_text().splitlines()
    assert [json.loads(ln)["episode"] for ln in lines] == [2]


def test_resume_reexports_a_stale_best(tmp_path: Path) -> None:
    """A kill between the checkpoint rename and the best.pt export (or a failed export) leaves
    best.pt older than the checkpoint's best_weights; the resumed run must write it again."""
    import torch

    from trainer import checkpoint
    from trainer.args import Args
    from trainer.signals import StopFlag
    from trainer.train import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # Random CartPole play (no learning): > 100 short episodes, so a best avg100 exists.
    common = dict(game="CartPole-v1", episodes=100_000, run_dir=run_dir, num_envs=8,
                  buffer_gb=0.01, learning_starts=50_000, threads=1, seed=4)  # fmt: skip
    assert main(Args(**common, max_env_steps=4000), stop=StopFlag()) == 0  # type: ignore[arg-type]
    state, _ = checkpoint.load_newest(run_dir / "checkpoints") or ({}, None)
    assert state["best_weights"] is not None
    stale = {k: torch.zeros_like(v) for k, v in state["best_weights"].items()}
    (run_dir / "best.pt").write_bytes(checkpoint.encode({"q": stale, "avg100": -1.0}))
    assert main(Args(**common, max_env_steps=4016), stop=StopFlag()) == 0  # type: ignore[arg-type]
    state, _ = checkpoint.load_newest(run_dir / "checkpoints") or ({}, None)
    best = checkpoint.decode((run_dir / "best.pt").read_bytes(), run_dir / "best.pt")
    assert best["avg100"] == state["stats"]["best"]
    for k, v in state["best_weights"].items():
        assert torch.equal(best["q"][k], v), k
