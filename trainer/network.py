"""Q-networks: the Nature CNN for Atari frames and a small MLP for vector observations.

``layer_norm=True`` (PQN) puts a LayerNorm before every hidden ReLU: it is what keeps PQN's
bootstrapped targets stable without a target network or replay (Gallici et al., 2025)."""

from __future__ import annotations

import torch
from torch import nn

from trainer.envs import EnvSpec


def _norm(shape: list[int], on: bool) -> list[nn.Module]:
    # Nothing at all without it: DQN's state_dict keys (net.0, net.2, ...) stay those of every
    # checkpoint and best.pt written before PQN existed.
    return [nn.LayerNorm(shape)] if on else []


class NatureQNetwork(nn.Module):
    def __init__(self, stack: int, num_actions: int, layer_norm: bool = False) -> None:
        super().__init__()
        ln = layer_norm
        self.net = nn.Sequential(
            nn.Conv2d(stack, 32, 8, stride=4),
            *_norm([32, 20, 20], ln),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            *_norm([64, 9, 9], ln),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            *_norm([64, 7, 7], ln),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            *_norm([512], ln),
            nn.ReLU(),
            nn.Linear(512, num_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # Frames stay uint8 in the buffer and on the wire; scale on the device.
        return self.net(obs.float() / 255.0)


class MlpQNetwork(nn.Module):
    def __init__(
        self, obs_dim: int, num_actions: int, hidden: int, layer_norm: bool = False
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            *_norm([hidden], layer_norm),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            *_norm([hidden], layer_norm),
            nn.ReLU(),
            nn.Linear(hidden, num_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float())


def make_qnetwork(spec: EnvSpec, hidden: int, layer_norm: bool = False) -> nn.Module:
    if len(spec.obs_shape) == 3:
        return NatureQNetwork(spec.stack, spec.num_actions, layer_norm)
    return MlpQNetwork(int(spec.obs_shape[0]), spec.num_actions, hidden, layer_norm)
