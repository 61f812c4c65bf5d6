"""Replay of single frames (uint8 for Atari): stacks are rebuilt at sample time.

Each env owns a ring of slots. A slot holds one frame plus the transition taken from the
observation that ends at it (action, clipped reward, terminal flags). An episode begins by
writing every frame of its first stacked observation, so a stack never reaches into the previous
episode and the oldest frames of an episode are exact. The pseudo-reset step of envpool (the
step right after a done) never creates a transition: it only begins the next episode.
"""

from __future__ import annotations

import numpy as np

from trainer.args import Args, UsageError
from trainer.contract import replay_budget_bytes
from trainer.envs import EnvSpec

# Per slot besides the frame: action (int64), reward (float32) and three flags.
SLOT_OVERHEAD = 8 + 4 + 3


def frame_bytes(spec: EnvSpec) -> int:
    per_obs = int(np.prod(spec.obs_shape)) * spec.obs_dtype.itemsize
    return per_obs // spec.stack


def slot_bytes(spec: EnvSpec) -> int:
    return frame_bytes(spec) + SLOT_OVERHEAD


def capacity_for(args: Args, spec: EnvSpec, num_envs: int) -> int:
    """Frames that fit in --buffer-gb (the contract's ``replay_budget_bytes``, which the daemon's
    profile validator counts too); refuses budgets too small for one batch or learning-starts.

    Each episode also holds slots that are never sampled (the first frames of its first stack,
    its last frame), so a buffer barely above --learning-starts may never hold that many
    sampleable transitions: the learner then starts once the buffer is full (``Replay.full``)."""
    total = replay_budget_bytes(args.buffer_gb) // slot_bytes(spec)
    per_env = total // num_envs
    # A slot is sampleable only with its stack behind it and its n-step window ahead of it.
    usable = num_envs * max(0, per_env - spec.stack - args.n_step - 1)
    if usable < args.batch_size or usable < args.learning_starts:
        need = max(args.batch_size, args.learning_starts)
        gb = (need * 1.1 + num_envs * 16) * slot_bytes(spec) / 1e9
        raise UsageError(
            f"atari-trainer: error: --batch-size {args.batch_size} / --learning-starts "
            f"{args.learning_starts} larger than the replay buffer ({usable} transitions in "
            f"--buffer-gb {args.buffer_gb}); raise --buffer-gb to at least {gb:.3g}"
        )
    return per_env * num_envs


class Replay:
    def __init__(self, spec: EnvSpec, num_envs: int, capacity: int, n_step: int, gamma: float):
        self.spec = spec
        self.num_envs = num_envs
        self.cap = capacity // num_envs
        self.n_step = n_step
        self.gamma = gamma
        frame_shape = spec.obs_shape[1:] if spec.stack > 1 else spec.obs_shape
        e, c = num_envs, self.cap
        self.frames = np.zeros((e, c, *frame_shape), dtype=spec.obs_dtype)
        self.actions = np.zeros((e, c), dtype=np.int64)
        self.rewards = np.zeros((e, c), dtype=np.float32)
        self.term = np.zeros((e, c), dtype=bool)
        self.end = np.zeros((e, c), dtype=bool)
        self.ready = np.zeros((e, c), dtype=bool)
        self.pos = np.zeros(e, dtype=np.int64)  # next slot to write
        self.filled = np.zeros(e, dtype=np.int64)
        self.cur = np.full(e, -1, dtype=np.int64)  # slot of the current observation
        self.ep_trans = np.zeros(e, dtype=np.int64)  # transitions in the current episode
        self.env_range = np.arange(e)
        self.size = 0  # ready slots, kept exact so len() never scans the buffer

    def __len__(self) -> int:
        return self.size

    @property
    def full(self) -> bool:
        """Every env's ring is written all round: the buffer will not get any fuller."""
        return bool((self.filled == self.cap).all())

    def _set_ready(self, envs: np.ndarray, slots: np.ndarray, value: bool) -> None:
        # (env, slot) pairs are unique within one call: each env appears at most once.
        self.size += int((self.ready[envs, slots] != value).sum()) * (1 if value else -1)
        self.ready[envs, slots] = value

    def _write_frames(self, envs: np.ndarray, frames: np.ndarray) -> None:
        slots = self.pos[envs]
        # Overwriting the oldest slot breaks the stacks of the slots that reach back into it.
        for k in range(self.spec.stack):
            self._set_ready(envs, (slots + k) % self.cap, False)
        self.frames[envs, slots] = frames
        self.cur[envs] = slots
        self.pos[envs] = (slots + 1) % self.cap
        self.filled[envs] = np.minimum(self.filled[envs] + 1, self.cap)

    def start(self, envs: np.ndarray, obs: np.ndarray) -> None:
        """Begin episodes in `envs` from their (reset) observations `obs[envs]`."""
        envs = np.asarray(envs, dtype=np.int64)
        if envs.size == 0:
            return
        if self.spec.stack == 1:
            self._write_frames(envs, obs[envs])
        else:
            for k in range(self.spec.stack):
                self._write_frames(envs, obs[envs, k])
        self.ep_trans[envs] = 0

    def add(
        self,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
        pseudo: np.ndarray,
    ) -> None:
        """Record one vector step. `pseudo[i]`: env i only reset; it yields no transition."""
        envs = self.env_range[~pseudo]
        if envs.size:
            s = self.cur[envs]
            end = np.logical_or(terminated[envs], truncated[envs])
            self.actions[envs, s] = action[envs]
            self.rewards[envs, s] = reward[envs]
            self.term[envs, s] = terminated[envs]
            self.end[envs, s] = end
            nxt = next_obs[envs, -1] if self.spec.stack > 1 else next_obs[envs]
            self._write_frames(envs, nxt)
            self.ep_trans[envs] += 1
            # A slot becomes sampleable once its n-step window is complete or its episode ended.
            n = self.n_step
            full = self.ep_trans[envs] >= n
            self._set_ready(envs[full], (s[full] - (n - 1)) % self.cap, True)
            for j in range(n - 1):
                m = end & (self.ep_trans[envs] > j)
                self._set_ready(envs[m], (s[m] - j) % self.cap, True)
        self.start(self.env_range[pseudo], next_obs)

    def _stack(self, env: np.ndarray, slot: np.ndarray) -> np.ndarray:
        if self.spec.stack == 1:
            return self.frames[env, slot]
        offs = np.arange(-self.spec.stack + 1, 1)
        return self.frames[env[:, None], (slot[:, None] + offs) % self.cap]

    def sample(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        envs_out: list[np.ndarray] = []
        slots_out: list[np.ndarray] = []
        got = 0
        while got < batch:
            # Uniform over written slots; rejection keeps it uniform over the ready ones.
            env = rng.integers(0, self.num_envs, size=2 * batch)
            env = env[self.filled[env] > 0]
            slot = (rng.random(env.size) * self.filled[env]).astype(np.int64)
            ok = self.ready[env, slot]
            envs_out.append(env[ok])
            slots_out.append(slot[ok])
            got += int(ok.sum())
        env = np.concatenate(envs_out)[:batch]
        slot = np.concatenate(slots_out)[:batch]
        ret = np.zeros(batch, dtype=np.float32)
        alive = np.ones(batch, dtype=bool)
        bootstrap = np.ones(batch, dtype=bool)
        k = np.full(batch, self.n_step, dtype=np.int64)
        for j in range(self.n_step):
            s = (slot + j) % self.cap
            ret += alive * (self.gamma**j) * self.rewards[env, s]
            ends = alive & self.end[env, s]
            bootstrap &= ~(alive & self.term[env, s])
            k[ends] = j + 1
            alive &= ~ends
        return {
            "obs": self._stack(env, slot),
            "action": self.actions[env, slot],
            "return": ret,
            "next_obs": self._stack(env, (slot + k) % self.cap),
            "discount": (bootstrap * self.gamma**k).astype(np.float32),
        }
