"""The scaling rule: DQN hyper-parameters for a level shape (num_envs x batch) from one reference.

Standard library only (the daemon may call it to show what a level will run with).

Why a rule: at a fixed replay ratio the number of updates per env step is ratio / batch, so a
level with a 4x batch takes 4x fewer gradient steps per env step. With the learning rate held
fixed, learning per env step falls with the batch (measured: CartPole at 8x128 reaches avg100
475 at ~187K env steps; 32x512 never in 300K, final 368; 64x1024 ends at 89).

The rule, with k = batch / reference batch:

- the product lr x (updates per env step) is conserved, i.e. the total step length per env step
  stays the reference's;
- the factor k is split evenly between the two: lr x sqrt(k) and replay ratio x sqrt(k). So
  updates per env step fall only as 1/sqrt(k) and sample reuse (compute per env step) grows as
  sqrt(k) rather than k. Square-root lr scaling is the usual safe choice for Adam; linear
  scaling makes the bootstrapped targets unstable at the large shapes.
- lr is capped at ``LR_CAP_FACTOR`` x the reference lr, so 256x2048 does not take a 4x step;
- target sync, epsilon decay and n-step stay in env steps: the target then lags the same
  amount of experience at every shape, and exploration ends after the same amount of data;
- learning starts holds at least two batches, so the first updates do not resample a handful of
  transitions.

An explicit flag always wins over the rule; the run records the values it used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

LR_CAP_FACTOR = 4.0


@dataclass(frozen=True)
class Reference:
    """A tuned configuration at one shape: the rule's starting point."""

    num_envs: int
    batch_size: int
    lr: float
    replay_ratio: float
    target_update: int
    eps_decay_steps: int
    learning_starts: int
    n_step: int


# Tuned on CartPole-v1 at 8x128 (docs/trainer.md, "CartPole: learning proven in the suite").
CLASSIC = Reference(8, 128, 5e-4, 8.0, 2_000, 20_000, 1_000, 3)
# The trainer's Atari defaults, read as the values for batch 32 (classic DQN: batch 32 every
# 4 env steps = replay ratio 8). Unmeasured for learning on this CPU: see docs/trainer.md.
ATARI = Reference(8, 32, 1e-4, 8.0, 32_000, 1_000_000, 80_000, 3)


@dataclass(frozen=True)
class Scaled:
    lr: float
    replay_ratio: float
    target_update: int
    eps_decay_steps: int
    learning_starts: int
    n_step: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def reference_for(is_atari: bool) -> Reference:
    return ATARI if is_atari else CLASSIC


def scale(ref: Reference, num_envs: int, batch_size: int) -> Scaled:
    """The rule's values for a shape. ``num_envs`` only enters through learning starts (every env
    holds some transitions before the first update); the rest follows from the batch."""
    if num_envs < 1 or batch_size < 1:
        raise ValueError(f"num_envs and batch_size must be >= 1, got {num_envs}, {batch_size}")
    root = math.sqrt(batch_size / ref.batch_size)
    lr_factor = min(root, LR_CAP_FACTOR)
    # Whatever the lr cap takes away goes to the replay ratio, so lr x updates/env step holds.
    ratio = ref.replay_ratio * (batch_size / ref.batch_size) / lr_factor
    return Scaled(
        lr=float(f"{ref.lr * lr_factor:.4g}"),
        replay_ratio=float(f"{ratio:.4g}"),
        target_update=ref.target_update,
        eps_decay_steps=ref.eps_decay_steps,
        learning_starts=max(ref.learning_starts, 2 * batch_size, 4 * num_envs),
        n_step=ref.n_step,
    )


def resolve(
    is_atari: bool, num_envs: int, batch_size: int, given: dict[str, float | int]
) -> dict[str, float | int]:
    """The values a run uses: the rule's, with every explicitly given value winning."""
    values = scale(reference_for(is_atari), num_envs, batch_size).as_dict()
    values.update({k: v for k, v in given.items() if k in values and v is not None})
    return values
