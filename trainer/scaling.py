"""The scaling rule: hyper-parameters for a level shape (num_envs x batch) from one reference.

Standard library and ``trainer/contract.py`` only, which holds the one piece the daemon needs
(PQN's rollout length, which sizes the memory the profile validator counts).

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

PQN (``trainer/pqn.py``) follows the same rule for lr and passes per rollout (its replay ratio:
every rollout sample is trained ``replay_ratio`` times), with its own references. Its rollout
length follows the batch: ``rollout_steps`` x num_envs = 2 x batch (``ROLLOUT_BATCHES`` in
trainer/contract.py), so every rollout splits into the same number of minibatches at every shape
(clamped to 1..128 steps).
Its lr decays linearly to a tenth over ``lr_decay_steps`` env steps and is then held: with no
replay the data is only ever the current policy's, and at a constant rate every CartPole seed
that solved the task fell away again within 300K steps. It has no target network, replay buffer
or n-step, so those values do not apply.

An explicit flag always wins over the rule; the run records the values it used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.contract import pqn_rollout_steps as rollout_steps

LR_CAP_FACTOR = 4.0


@dataclass(frozen=True)
class Reference:
    """A tuned configuration at one shape: the rule's starting point."""

    num_envs: int
    batch_size: int
    lr: float
    replay_ratio: float
    eps_decay_steps: int
    eps_end: float = 0.01
    # dqn only
    target_update: int = 0
    learning_starts: int = 0
    n_step: int = 0
    # pqn only
    q_lambda: float = 0.0
    lr_decay_steps: int = 0


# Tuned on CartPole-v1 at 8x128 (docs/trainer.md, "CartPole: learning proven in the suite").
CLASSIC = Reference(8, 128, 5e-4, 8.0, 20_000, target_update=2_000, learning_starts=1_000,
                    n_step=3)  # fmt: skip
# The trainer's Atari defaults, read as the values for batch 32 (classic DQN: batch 32 every
# 4 env steps = replay ratio 8). Unmeasured for learning on this CPU: see docs/trainer.md.
ATARI = Reference(8, 32, 1e-4, 8.0, 1_000_000, target_update=32_000, learning_starts=80_000,
                  n_step=3)  # fmt: skip
# PQN, tuned on CartPole-v1 and Acrobot-v1 at 8x128 with seeds 1-3 (docs/trainer.md, "PQN").
# Without the lr decay every seed that solved CartPole fell away again within 300K steps; with
# epsilon down to 0.01 after 20K steps it never found Acrobot's goal (no replay keeps the rare
# early successes), so exploration lasts 50K steps and ends at 0.05.
PQN_CLASSIC = Reference(8, 128, 1e-3, 4.0, 50_000, eps_end=0.05, q_lambda=0.65,
                        lr_decay_steps=200_000)  # fmt: skip
# PQN on Atari: the paper's / CleanRL's pqn_atari values (lr 2.5e-4 at minibatch 256, 2 passes,
# lambda 0.65), read at batch 256, decay over 10M env steps. Not measured for learning here.
PQN_ATARI = Reference(128, 256, 2.5e-4, 2.0, 1_000_000, q_lambda=0.65, lr_decay_steps=10_000_000)

DQN_FIELDS = ("lr", "replay_ratio", "target_update", "eps_decay_steps", "eps_end",
              "learning_starts", "n_step")  # fmt: skip
PQN_FIELDS = ("lr", "replay_ratio", "eps_decay_steps", "eps_end", "q_lambda", "rollout_steps",
              "lr_decay_steps")  # fmt: skip


def reference_for(is_atari: bool, algo: str = "dqn") -> Reference:
    if algo == "pqn":
        return PQN_ATARI if is_atari else PQN_CLASSIC
    return ATARI if is_atari else CLASSIC


def scale(ref: Reference, num_envs: int, batch_size: int, algo: str = "dqn") -> dict[str, float]:
    """The rule's values for a shape. ``num_envs`` only enters through learning starts (every env
    holds some transitions before the first update) and PQN's rollout length; the rest follows
    from the batch."""
    if num_envs < 1 or batch_size < 1:
        raise ValueError(f"num_envs and batch_size must be >= 1, got {num_envs}, {batch_size}")
    root = math.sqrt(batch_size / ref.batch_size)
    lr_factor = min(root, LR_CAP_FACTOR)
    # Whatever the lr cap takes away goes to the replay ratio, so lr x updates/env step holds.
    ratio = ref.replay_ratio * (batch_size / ref.batch_size) / lr_factor
    common = {"lr": float(f"{ref.lr * lr_factor:.4g}"), "replay_ratio": float(f"{ratio:.4g}"),
              "eps_decay_steps": ref.eps_decay_steps, "eps_end": ref.eps_end}  # fmt: skip
    if algo == "pqn":
        return {**common, "q_lambda": ref.q_lambda, "lr_decay_steps": ref.lr_decay_steps,
                "rollout_steps": rollout_steps(num_envs, batch_size)}  # fmt: skip
    return {**common, "target_update": ref.target_update,
            "learning_starts": max(ref.learning_starts, 2 * batch_size, 4 * num_envs),
            "n_step": ref.n_step}  # fmt: skip


def resolve(
    is_atari: bool,
    num_envs: int,
    batch_size: int,
    given: dict[str, float | int | None],
    algo: str = "dqn",
) -> dict[str, float | int]:
    """The values a run uses: the rule's, with every explicitly given value winning."""
    values = scale(reference_for(is_atari, algo), num_envs, batch_size, algo)
    values.update({k: v for k, v in given.items() if k in values and v is not None})
    return values
