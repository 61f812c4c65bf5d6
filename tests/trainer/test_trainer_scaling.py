"""The scaling rule (trainer/scaling.py) and how a run gets it (trainer/runtime.py: start): the
reference shape gets the tuned values, a larger batch keeps lr x updates-per-env-step, the lr cap
moves the rest to the replay ratio, an explicitly given value wins, and on resume a rule value
follows the new shape while a value the user once gave stays."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trainer import checkpoint, scaling
from trainer.args import parse_given
from trainer.rundir import RunFiles
from trainer.runtime import start
from trainer.scaling import CLASSIC, LR_CAP_FACTOR, PQN_CLASSIC, resolve, scale


def step_per_env_step(lr: float, ratio: float, batch: int) -> float:
    return lr * ratio / batch


def test_reference_shape_gets_the_tuned_values() -> None:
    s = scale(CLASSIC, CLASSIC.num_envs, CLASSIC.batch_size)
    assert (s["lr"], s["replay_ratio"], s["target_update"]) == (CLASSIC.lr, 8.0, 2000)
    assert (s["eps_decay_steps"], s["learning_starts"], s["n_step"]) == (20_000, 1_000, 3)


@pytest.mark.parametrize("algo", ["dqn", "pqn"])
@pytest.mark.parametrize(("envs", "batch"), [(32, 512), (64, 1024), (256, 2048), (256, 8192)])
def test_larger_batch_conserves_lr_times_updates_per_env_step(
    algo: str, envs: int, batch: int
) -> None:
    ref = CLASSIC if algo == "dqn" else PQN_CLASSIC
    s = scale(ref, envs, batch, algo)
    want = step_per_env_step(ref.lr, ref.replay_ratio, ref.batch_size)
    assert math.isclose(step_per_env_step(s["lr"], s["replay_ratio"], batch), want, rel_tol=1e-3)
    assert ref.lr < s["lr"] <= ref.lr * LR_CAP_FACTOR
    if algo == "dqn":
        assert s["learning_starts"] >= 2 * batch
    else:
        assert "target_update" not in s and "n_step" not in s


def test_light_shape_values() -> None:
    s = scale(CLASSIC, 32, 512)
    assert (s["lr"], s["replay_ratio"]) == (1e-3, 16.0)


@pytest.mark.parametrize(("envs", "batch", "steps"), [(8, 128, 32), (32, 512, 32), (256, 2048, 16),
                                                      (1, 4096, 128), (4096, 32, 1)])  # fmt: skip
def test_pqn_rollout_splits_into_the_same_number_of_minibatches(
    envs: int, batch: int, steps: int
) -> None:
    assert scaling.rollout_steps(envs, batch) == steps


def test_given_values_win() -> None:
    v = resolve(False, 32, 512, {"lr": 7e-4, "n_step": None, "batch_size": 3})
    assert v["lr"] == 7e-4 and v["n_step"] == 3 and "batch_size" not in v
    assert v["replay_ratio"] == 16.0


def test_bad_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="num_envs and batch_size"):
        scale(CLASSIC, 0, 512)


BASE = ["--game", "CartPole-v1", "--episodes", "10"]


def test_a_run_without_the_flags_gets_the_rule_and_a_given_flag_wins(tmp_path: Path) -> None:
    args, given = parse_given([*BASE, "--run-dir", str(tmp_path), "--num-envs", "32",
                               "--batch-size", "512", "--n-step", "5"])  # fmt: skip
    with RunFiles.locked(tmp_path) as files:
        begin = start(args, files, given)
    rule = scale(CLASSIC, 32, 512)
    assert begin.args.lr == rule["lr"] and begin.args.replay_ratio == rule["replay_ratio"]
    assert begin.args.target_update == 2000 and begin.args.n_step == 5
    assert "n_step" not in begin.scaled and "lr" in begin.scaled
    # A direct caller of train.main (given=None) built its Args on purpose: no rule.
    with RunFiles.locked(tmp_path) as files:
        assert start(args, files, None).args == args


def test_resume_at_a_new_shape_rescales_rule_values_and_keeps_given_ones(tmp_path: Path) -> None:
    args, given = parse_given([*BASE, "--run-dir", str(tmp_path), "--num-envs", "8",
                               "--batch-size", "128", "--lr", "7e-4"])  # fmt: skip
    with RunFiles.locked(tmp_path) as files:
        first = start(args, files, given)
        assert first.args.lr == 7e-4 and first.args.replay_ratio == 8.0
        checkpoint.save(files.ckpt_dir, {"config": first.args.to_dict(),
                                         "scaled": list(first.scaled)}, 3)  # fmt: skip
    # The daemon moves the game to 64x1024 and gives only the shape: lr 7e-4 was the user's
    # choice and stays; the replay ratio was the rule's and follows the new batch.
    args2, given2 = parse_given([*BASE, "--run-dir", str(tmp_path), "--num-envs", "64",
                                 "--batch-size", "1024"])  # fmt: skip
    with RunFiles.locked(tmp_path) as files:
        second = start(args2, files, given2)
    assert second.args.lr == 7e-4
    assert second.args.replay_ratio == scale(CLASSIC, 64, 1024)["replay_ratio"]
    assert second.args.learning_starts == 2048 and "lr" not in second.scaled
