"""The CUDA path of the trainer (marker ``gpu``: skipped with a reason where
torch.cuda.is_available() is False, as in CI; a GPU box runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.trainer_testlib import run

pytestmark = pytest.mark.gpu


def test_the_trainer_trains_and_checkpoints_on_cuda(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    r = run(["--game", "CartPole-v1", "--episodes", "5", "--run-dir", str(run_dir),
             "--device", "cuda", "--num-envs", "4", "--batch-size", "32",
             "--learning-starts", "64", "--buffer-gb", "0.01"], timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["episodes"] >= 5
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))
