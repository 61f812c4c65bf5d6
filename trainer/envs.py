"""Vectorized envpool environments and the bookkeeping of real (not per-life) episodes."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.args import Args


@dataclass(frozen=True)
class EnvSpec:
    obs_shape: tuple[int, ...]  # one stacked observation, e.g. (4, 84, 84) or (4,)
    obs_dtype: np.dtype
    stack: int  # frames per observation along axis 0 (1 for vector observations)
    num_actions: int


def make_envs(args: Args, num_envs: int | None = None, seed: int | None = None) -> Any:
    import envpool

    # gymnasium warns about float64 bounds of classic-control spaces on every make().
    warnings.filterwarnings("ignore", message=".*precision lowered.*")
    n = args.num_envs if num_envs is None else num_envs
    threads = args.env_threads or min(n, os.cpu_count() or 1)
    kwargs: dict[str, Any] = {
        "env_type": "gymnasium",
        "num_envs": n,
        "batch_size": n,
        "num_threads": threads,
        "seed": args.seed if seed is None else seed,
    }
    if args.is_atari:
        # Life loss ends a learning episode and rewards are clipped for the loss; the real
        # game-over and unclipped reward come back in info["terminated"] and info["reward"].
        kwargs.update(episodic_life=True, reward_clip=True, stack_num=4, noop_max=30)
    return envpool.make(args.env_id, **kwargs)


def env_spec(envs: Any) -> EnvSpec:
    space = envs.observation_space
    shape = tuple(space.shape)
    stack = shape[0] if len(shape) == 3 else 1
    return EnvSpec(shape, np.dtype(space.dtype), stack, int(envs.action_space.n))


class EpisodeTracker:
    """Sums unclipped rewards per env and reports real episodes (game over or time limit)."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self._just_reset = np.zeros(num_envs, dtype=bool)

    def step(
        self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, info: dict
    ) -> list[tuple[float, int]]:
        raw = info.get("reward", reward)
        real_end = info["terminated"].astype(bool) if "terminated" in info else terminated
        real_end = np.logical_or(real_end, truncated)
        self.returns += raw
        # The step after a real end only delivers the reset observation; it is no game step.
        self.lengths += ~self._just_reset
        self._just_reset = real_end
        finished = []
        for i in np.flatnonzero(real_end):
            finished.append((float(self.returns[i]), int(self.lengths[i])))
            self.returns[i] = 0.0
            self.lengths[i] = 0
        return finished
