"""The frame replay rebuilds exactly the stacks and n-step transitions envpool produced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.args import Args
from trainer.envs import EpisodeTracker, env_spec, make_envs
from trainer.replay import SLOT_OVERHEAD, Replay, capacity_for, frame_bytes


def _key(obs: np.ndarray) -> bytes:
    return np.ascontiguousarray(obs).tobytes()


@pytest.mark.parametrize(("game", "n_step"), [("Breakout", 3), ("CartPole-v1", 1)])
def test_samples_are_real_transitions(game: str, n_step: int) -> None:
    gamma = 0.9
    args = Args(game=game, episodes=1, run_dir=Path(), num_envs=2, seed=3)
    envs = make_envs(args)
    spec = env_spec(envs)
    replay = Replay(spec, 2, capacity=2 * 150, n_step=n_step, gamma=gamma)  # wraps around
    rng = np.random.default_rng(0)
    obs, _ = envs.reset()
    replay.start(np.arange(2), obs)
    history: list[list[tuple[np.ndarray, int, float, bool, bool, bool]]] = [[], []]
    pseudo = np.zeros(2, dtype=bool)
    ends = 0
    for _ in range(400):
        action = rng.integers(0, spec.num_actions, size=2).astype(np.int32)
        nxt, rew, term, trunc, _ = envs.step(action)
        replay.add(action, rew, term, trunc, nxt, pseudo)
        for i in range(2):
            # (obs before, action, reward, terminated, ended, this step was a pseudo-reset)
            history[i].append((obs[i], int(action[i]), float(rew[i]), bool(term[i]),
                               bool(term[i] or trunc[i]), bool(pseudo[i])))  # fmt: skip
        ends += int(np.logical_or(term, trunc).sum())
        pseudo = np.logical_or(term, trunc)
        obs = nxt
    final_obs = obs
    assert ends >= 2, "the test needs episode ends inside the window"
    expected = set()
    for i in range(2):
        h = history[i]
        obs_after = [step[0] for step in h[1:]] + [final_obs[i]]
        for t, (o, a, _, _, _, ps) in enumerate(h):
            if ps:
                continue  # a pseudo-reset step is no transition
            ret, k, ended, terminal = 0.0, 0, False, False
            for j in range(min(n_step, len(h) - t)):
                ret += gamma**j * h[t + j][2]
                k = j + 1
                if h[t + j][4]:
                    ended, terminal = True, h[t + j][3]
                    break
            if k < n_step and not ended:
                continue  # its n-step window is not complete yet
            discount = 0.0 if terminal else gamma**k
            expected.add((_key(o), a, round(ret, 4), _key(obs_after[t + k - 1]),
                          round(discount, 4)))  # fmt: skip
    batch = replay.sample(512, np.random.default_rng(1))
    assert len(replay) == int(replay.ready.sum()) <= len(expected)
    assert len(replay) > 100
    for b in range(512):
        got = (_key(batch["obs"][b]), int(batch["action"][b]), round(float(batch["return"][b]), 4),
               _key(batch["next_obs"][b]), round(float(batch["discount"][b]), 4))  # fmt: skip
        assert got in expected, f"sample {b} is not a real transition"
    envs.close()


def test_one_million_atari_frames_cost_about_7_gb() -> None:
    gb = (84 * 84 + SLOT_OVERHEAD) / 1000  # bytes per slot, so 1e6 slots = this many GB
    args = Args(game="Pong", episodes=1, run_dir=Path(), num_envs=8, buffer_gb=gb,
                learning_starts=0)  # fmt: skip
    envs = make_envs(args, num_envs=1)
    spec = env_spec(envs)
    envs.close()
    assert frame_bytes(spec) == 84 * 84
    assert capacity_for(args, spec, 8) == 1_000_000


def test_real_episodes_are_game_overs_not_lives() -> None:
    args = Args(game="Breakout", episodes=1, run_dir=Path(), num_envs=4, seed=5)
    envs = make_envs(args)
    envs.reset()
    tracker = EpisodeTracker(4)
    rng = np.random.default_rng(0)
    life_losses, games, raw_total, counted_total = 0, 0, 0.0, 0.0
    for _ in range(1500):
        _, rew, term, trunc, info = envs.step(rng.integers(0, 4, size=4).astype(np.int32))
        finished = tracker.step(rew, term, trunc, info)
        raw_total += float(info["reward"].sum())
        life_losses += int((term & (info["lives"] > 0)).sum())
        # A counted episode ends exactly where the game is over (no lives left).
        assert len(finished) == int((term & (info["lives"] == 0)).sum() + trunc.sum())
        games += len(finished)
        counted_total += sum(r for r, _ in finished)
    assert games >= 1 and life_losses >= 4 * games
    assert counted_total <= raw_total + 1e-6
    envs.close()
