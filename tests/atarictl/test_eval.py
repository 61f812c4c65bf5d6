"""`atarictl eval`: real trainer runs, the real evaluator subprocess, real envpool, a real store.

- Pong from a short run: the score is a Pong score, the human-normalized value is the paper's
  formula, the result is in the store's evals table, and the MP4 decodes (with imageio, the
  library that wrote it) to one frame per agent step plus the reset frame, at 210x160.
- CartPole trained to its target: the eval mean of best.pt is >= 475 and within EVAL_TOLERANCE
  of the training avg100 (docs/cli.md says why that tolerance).
- Bad input: unknown game (5), no model yet (10), corrupt model (11), each one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.scores import REFERENCE_SCORES, human_normalized
from daemon.store.store import Store

ROOT = Path(__file__).resolve().parents[2]
EVAL_TOLERANCE = 25.0  # CartPole points: 5 % of the 500 cap (eval eps 0.05 vs training 0.01)
CARTPOLE = ["--game", "CartPole-v1", "--episodes", "100000", "--num-envs", "8",
            "--batch-size", "128", "--replay-ratio", "8", "--lr", "5e-4", "--n-step", "3",
            "--target-update", "2000", "--learning-starts", "1000", "--eps-decay-steps", "20000",
            "--eps-end", "0.01", "--buffer-gb", "0.01", "--threads", "1", "--env-threads", "1",
            "--stop-avg100", "475", "--max-env-steps", "300000"]  # fmt: skip


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def trainer(args: list[str], timeout: float) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", *args], capture_output=True, text=True, env=_env(),
        timeout=timeout, start_new_session=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def ctl(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(state), *args],
        capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def test_human_normalized_is_the_papers_formula() -> None:
    assert len(REFERENCE_SCORES) == 10
    assert human_normalized("Pong", -20.7) == pytest.approx(0.0)
    assert human_normalized("Pong", 9.3) == pytest.approx(100.0)
    assert human_normalized("Breakout", 1.7 + 30.1 / 2) == pytest.approx(50.0)
    assert human_normalized("CartPole-v1", 500.0) is None


@pytest.fixture(scope="module")
def pong_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("pong-state")
    (state / "runs").mkdir()
    trainer(["--game", "Pong", "--episodes", "1", "--num-envs", "4", "--batch-size", "32",
             "--buffer-gb", "0.05", "--learning-starts", "400", "--threads", "1",
             "--checkpoint-every", "5", "--max-seconds", "12",
             "--run-dir", str(state / "runs" / "Pong")], timeout=300)  # fmt: skip
    Store.open(state / "atari.db").close()  # a state dir a daemon has used: it has a database
    return state


@pytest.mark.slow
def test_pong_eval_end_to_end_with_video(pong_state: Path, tmp_path: Path) -> None:
    video = tmp_path / "pong.mp4"
    got = ctl(pong_state, "eval", "Pong", "--model", "latest", "--episodes", "2",
              "--video", str(video), "--json")  # fmt: skip
    assert got.returncode == 0, got.stderr
    r = json.loads(got.stdout)
    assert r["episodes"] == 2 and all(-21 <= s <= 21 for s in r["scores"])
    assert r["human_normalized"] == pytest.approx(100 * (r["mean"] + 20.7) / 30.0)
    assert r["protocol"]["noop_max"] == 30 and r["protocol"]["max_frames"] == 108_000
    rows = Store.open(pong_state / "atari.db").evals(game="Pong")
    assert rows[-1]["id"] == r["eval_id"] and rows[-1]["model_sha256"] == r["model"]["sha256"]
    assert rows[-1]["mean"] == pytest.approx(r["mean"])

    import imageio.v3 as iio

    frames = iio.imread(video, index=None)
    assert frames.shape == (r["lengths"][0] + 1, 210, 160, 3)  # reset frame + one per step
    assert r["video"]["frames"] == frames.shape[0]
    assert frames.std() > 10  # full colour game screens, not a blank stream


def test_unknown_game_no_model_and_corrupt_model(pong_state: Path, tmp_path: Path) -> None:
    got = ctl(pong_state, "eval", "Breakout")
    assert got.returncode == 5 and "unknown game 'Breakout'" in got.stderr
    assert got.stderr.count("\n") == 1
    got = ctl(pong_state, "eval", "Pong")  # a 12 s run has no best.pt yet
    assert got.returncode == 10 and "no best model for Pong" in got.stderr
    bad = tmp_path / "best.pt"
    good = sorted((pong_state / "runs" / "Pong" / "checkpoints").glob("ckpt-*.pt"))[-1]
    bad.write_bytes(good.read_bytes()[:-1000])  # a half-written copy
    got = ctl(pong_state, "eval", "Pong", "--model", str(bad))
    assert got.returncode == 11 and "corrupt" in got.stderr and got.stderr.count("\n") == 1


@pytest.mark.slow
def test_cartpole_best_eval_matches_training(cartpole_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "CartPole-v1"
    shutil.copytree(cartpole_model, run)  # the session's one trained model (conftest.py)
    avg100 = json.loads((run / "progress.json").read_text())["avg100"]
    got = ctl(tmp_path, "eval", "CartPole-v1", "--episodes", "20", "--json")
    assert got.returncode == 0, got.stderr
    r = json.loads(got.stdout)
    print(f"training avg100 {avg100}, eval mean {r['mean']} std {r['std']} min {r['min']}")
    assert r["mean"] >= 475
    assert abs(r["mean"] - avg100) <= EVAL_TOLERANCE
