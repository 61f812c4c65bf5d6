"""TensorBoard curves (trainer/tb.py) from the real trainer, read back with tensorboard's own
EventAccumulator: one return point per episode, steps monotonic across a SIGTERM and a resume
(DQN), no duplicates after a SIGKILL beyond the last checkpoint (PQN), and an unwritable or full
``tb/`` costs one error line, never the run."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_testlib import env, kill_group, read_progress, run, start, wait_for

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator

CARTPOLE = ["--game", "CartPole-v1", "--hidden", "32", "--threads", "1", "--env-threads", "1",
            "--num-envs", "4", "--batch-size", "32", "--progress-every", "0.2"]  # fmt: skip
DQN = [*CARTPOLE, "--learning-starts", "200", "--buffer-gb", "0.01"]
PQN = [*CARTPOLE, "--algo", "pqn"]


def curves(run_dir: Path, axis: str) -> dict[str, list[tuple[int, float]]]:
    # purge_orphaned_data off: the test must see duplicates if the files held any.
    ea = EventAccumulator(str(run_dir / "tb" / axis), size_guidance={"scalars": 0, "tensors": 0},
                          purge_orphaned_data=False)  # fmt: skip
    ea.Reload()
    out = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    out.update({t: [(e.step, 0.0) for e in ea.Tensors(t)] for t in ea.Tags()["tensors"]})
    return out


def episodes_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]


def assert_monotonic(points: list[tuple[int, float]], strict: bool = False) -> None:
    steps = [s for s, _ in points]
    pairs = list(itertools.pairwise(steps))
    assert all(a < b if strict else a <= b for a, b in pairs), steps


def test_curves_follow_episodes_across_sigterm_and_resume(tmp_path: Path) -> None:
    rd = tmp_path / "run"
    args = [*DQN, "--episodes", "150", "--run-dir", str(rd), "--checkpoint-every", "1"]
    proc = start(args, tmp_path / "first.log")
    try:
        wait_for(lambda: (read_progress(rd) or {}).get("episodes", 0) >= 40, proc, 120,
                 "40 episodes")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        kill_group(proc)
    first = curves(rd, "env")["episode/return"]
    assert len(first) == len(episodes_log(rd))  # the graceful stop wrote every point

    # A resume at another shape: the curves go on from the checkpoint, at the new level.
    resumed = run([*args, "--num-envs", "8"], timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    env_axis, learner = curves(rd, "env"), curves(rd, "learner")
    log = episodes_log(rd)
    returns = env_axis["episode/return"]
    # >= 150: envs that finish an episode in the same step as the 150th all count (vectorized).
    assert len(returns) == len(log) >= 150
    assert read_progress(rd)["episodes"] == len(log)
    assert [v for _, v in returns] == pytest.approx([r["return"] for r in log])
    assert [s for s, _ in returns] == [r["env_steps"] for r in log]
    assert returns[len(first)][0] > first[-1][0]  # not back to step 0 after the resume
    for tag in ("episode/return", "episode/length", "episode/avg100", "level/num_envs"):
        assert_monotonic(env_axis[tag])
    assert env_axis["episode/avg100"][-1][1] == pytest.approx(
        sum(r["return"] for r in log[-100:]) / 100
    )
    # The level change shows on the curve and in the text.
    assert {v for _, v in env_axis["level/num_envs"]} == {4.0, 8.0}
    assert len(env_axis["level/text_summary"]) == 2
    for tag in ("learner/loss", "learner/q_mean", "learner/grad_norm", "learner/epsilon",
                "learner/lr"):  # fmt: skip
        assert learner[tag], tag
        assert_monotonic(learner[tag], strict=True)
    assert learner["learner/loss"][-1][0] <= read_progress(rd)["updates"]
    assert env_axis["speed/env_steps_per_s"] and env_axis["speed/replay_fill"]


def test_no_duplicate_points_after_a_sigkill_beyond_the_checkpoint(tmp_path: Path) -> None:
    rd = tmp_path / "run"
    args = [*PQN, "--episodes", "100000", "--run-dir", str(rd), "--checkpoint-every", "1"]
    proc = start(args, tmp_path / "killed.log")
    try:
        ckpt = wait_for(lambda: (read_progress(rd) or {}).get("last_checkpoint_time"), proc, 120,
                        "a checkpoint")  # fmt: skip

        def beyond() -> bool:  # episodes written after that checkpoint, not yet in a later one
            p = read_progress(rd) or {}
            return p.get("last_checkpoint_time") == ckpt and p["updated_at"] > ckpt + 0.3
        wait_for(beyond, proc, 60, "episodes beyond the checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc)
    lines_killed = len(episodes_log(rd))
    done = run([*args, "--max-env-steps", str(read_progress(rd)["env_steps"] + 2000)], 180)
    assert done.returncode == 0, done.stderr[-2000:]
    env_axis, learner = curves(rd, "env"), curves(rd, "learner")
    returns = env_axis["episode/return"]
    episodes = read_progress(rd)["episodes"]
    # episodes.jsonl kept the killed run's lines beyond its checkpoint; the curve did not.
    assert len(episodes_log(rd)) > episodes
    assert lines_killed > 0
    assert len(returns) == episodes
    for tag, points in [*env_axis.items(), *learner.items()]:
        assert_monotonic(points, strict=tag.startswith("learner/"))


@pytest.fixture
def tb_is_a_file(tmp_path: Path) -> Path:
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "tb").write_text("not a directory\n")
    return rd


def test_unwritable_tb_logs_one_error_and_training_goes_on(tb_is_a_file: Path) -> None:
    rd = tb_is_a_file
    done = run([*PQN, "--episodes", "60", "--run-dir", str(rd), "--checkpoint-every", "0.5"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_progress(rd)["status"] == "done"
    assert len(episodes_log(rd)) == 60
    errors = [ln for ln in done.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "tensorboard curves stop" in errors[0], errors


def test_full_disk_under_tb_logs_one_error_and_training_goes_on(tmp_path: Path) -> None:
    if not shutil.which("unshare") or subprocess.run(
        ["unshare", "-m", "true"], capture_output=True
    ).returncode:
        pytest.skip("no private mount namespace here (needs root and unshare -m)")
    rd = tmp_path / "run"
    (rd / "tb").mkdir(parents=True)
    # A 4 KiB tmpfs on tb/ only, in a private mount namespace that ends with the trainer.
    script = ('mount -t tmpfs -o size=4k tmpfs "$1/tb" && shift && exec "$@"')
    argv = ["unshare", "-m", "sh", "-c", script, "sh", str(rd), sys.executable, "-m",
            "trainer", *PQN, "--episodes", "200", "--run-dir", str(rd),
            "--checkpoint-every", "0.5"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_progress(rd)["status"] == "done"
    errors = [ln for ln in done.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "No space left" in errors[0], errors


def test_no_tensorboard_writes_no_event_files(tmp_path: Path) -> None:
    rd = tmp_path / "run"
    done = run([*PQN, "--episodes", "20", "--run-dir", str(rd), "--no-tensorboard"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(episodes_log(rd)) == 20
    assert not (rd / "tb").exists()
