"""The scaling rule (trainer/scaling.py): the reference shape gets the tuned values, a larger
batch keeps lr x updates-per-env-step, the lr cap moves the rest to the replay ratio, and an
explicitly given value wins."""

from __future__ import annotations

import math

import pytest

from trainer.scaling import CLASSIC, LR_CAP_FACTOR, resolve, scale


def step_per_env_step(lr: float, ratio: float, batch: int) -> float:
    return lr * ratio / batch


def test_reference_shape_gets_the_tuned_values() -> None:
    s = scale(CLASSIC, CLASSIC.num_envs, CLASSIC.batch_size)
    assert (s.lr, s.replay_ratio, s.target_update) == (CLASSIC.lr, CLASSIC.replay_ratio, 2000)
    assert (s.eps_decay_steps, s.learning_starts, s.n_step) == (20_000, 1_000, 3)


@pytest.mark.parametrize(("envs", "batch"), [(32, 512), (64, 1024), (256, 2048), (256, 8192)])
def test_larger_batch_conserves_lr_times_updates_per_env_step(envs: int, batch: int) -> None:
    s = scale(CLASSIC, envs, batch)
    ref = step_per_env_step(CLASSIC.lr, CLASSIC.replay_ratio, CLASSIC.batch_size)
    assert math.isclose(step_per_env_step(s.lr, s.replay_ratio, batch), ref, rel_tol=1e-3)
    assert CLASSIC.lr < s.lr <= CLASSIC.lr * LR_CAP_FACTOR
    assert s.learning_starts >= 2 * batch


def test_light_shape_values() -> None:
    s = scale(CLASSIC, 32, 512)
    assert (s.lr, s.replay_ratio) == (1e-3, 16.0)


def test_given_values_win() -> None:
    v = resolve(False, 32, 512, {"lr": 7e-4, "n_step": None, "batch_size": 3})
    assert v["lr"] == 7e-4 and v["n_step"] == 3 and "batch_size" not in v
    assert v["replay_ratio"] == 16.0


def test_bad_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="num_envs and batch_size"):
        scale(CLASSIC, 0, 512)
