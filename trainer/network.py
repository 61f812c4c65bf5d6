"""Q-networks: the Nature CNN for Atari frames and a small MLP for vector observations."""

from __future__ import annotations

import torch
from torch import nn

from trainer.envs import EnvSpec


class NatureQNetwork(nn.Module):
    def __init__(self, stack: int, num_actions: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(stack, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, num_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # Frames stay uint8 in the buffer and on the wire; scale on the device.
        return self.net(obs.float() / 255.0)


class MlpQNetwork(nn.Module):
    def __init__(self, obs_dim: int, num_actions: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float())


def make_qnetwork(spec: EnvSpec, hidden: int) -> nn.Module:
    if len(spec.obs_shape) == 3:
        return NatureQNetwork(spec.stack, spec.num_actions)
    return MlpQNetwork(int(spec.obs_shape[0]), spec.num_actions, hidden)
