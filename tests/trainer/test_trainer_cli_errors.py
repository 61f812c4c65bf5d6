"""Bad input: one line on stderr naming the field, and the contract's exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_testlib import run


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_unknown_game_suggests_close_names(tmp_path: Path) -> None:
    r = run(["--game", "Pongg", "--episodes", "5", "--run-dir", str(tmp_path / "r")])
    assert r.returncode == 3
    line = _one_line(r.stderr)
    assert "unknown game 'Pongg'" in line and "did you mean Pong" in line


@pytest.mark.parametrize(
    ("flag", "value", "text"),
    [
        ("--num-envs", "0", "--num-envs must be >= 1, got 0"),
        ("--episodes", "-3", "--episodes must be >= 1, got -3"),
        ("--gamma", "1.5", "--gamma must be in (0, 1], got 1.5"),
        ("--max-grad-norm", "-1", "--max-grad-norm must be > 0, got -1.0"),
        ("--adam-eps", "-0.0001", "--adam-eps must be > 0, got -0.0001"),
    ],
)
def test_bad_numbers_exit_2(tmp_path: Path, flag: str, value: str, text: str) -> None:
    argv = ["--game", "Pong", "--episodes", "5", "--run-dir", str(tmp_path / "r"), flag, value]
    r = run(argv)
    assert r.returncode == 2
    assert text in _one_line(r.stderr)


def test_non_number_is_argparse_style_exit_2(tmp_path: Path) -> None:
    r = run(["--game", "Pong", "--episodes", "many", "--run-dir", str(tmp_path / "r")])
    assert r.returncode == 2
    assert "argument --episodes: invalid int value: 'many'" in _one_line(r.stderr)


def test_batch_larger_than_buffer_exit_2(tmp_path: Path) -> None:
    argv = ["--game", "Pong", "--episodes", "5", "--run-dir", str(tmp_path / "r"),
            "--buffer-gb", "0.001", "--batch-size", "512", "--learning-starts", "0"]  # fmt: skip
    r = run(argv)
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert "--batch-size 512" in line and "larger than the replay buffer" in line
    assert "raise --buffer-gb" in line


def test_unwritable_run_dir_exit_4(tmp_path: Path) -> None:
    # A regular file in the path: unwritable even for root, unlike chmod.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run(["--game", "Pong", "--episodes", "5", "--run-dir", str(blocker / "run")])
    assert r.returncode == 4
    line = _one_line(r.stderr)
    assert f"run dir {blocker / 'run'} is not writable" in line and "--run-dir" in line


def test_run_dir_of_another_game_exit_2(tmp_path: Path) -> None:
    from trainer import checkpoint

    run_dir = tmp_path / "r"
    checkpoint.save(run_dir / "checkpoints", {"config": {"game": "CartPole-v1"}}, keep=3)
    r = run(["--game", "Pong", "--episodes", "5", "--run-dir", str(run_dir)])
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert "holds checkpoints of 'CartPole-v1', not 'Pong'" in line
