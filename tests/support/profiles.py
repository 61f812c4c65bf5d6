"""One profile builder for every test that needs a profile file.

A ``ProfileSpec`` is the profile as data; every change returns a new spec, so a preset is never
modified by the test that uses it::

    MANAGER_PROFILE.but(startsecs="-5s").write(tmp_path / "p.yaml")
    MANAGER_PROFILE.add_game("Boxing", 10).level("light", games=1, num_envs=6)
    daemon_profile({"CartPole-v1": 40, "Pong": 30}).load(tmp_path / "p.yaml")

``text()`` renders YAML the way a person writes it (games one per line, each level and each other
mapping in flow style on one line), so a test that needs a deliberately broken profile can still
edit the text. The profiles that must fail to load live in tests/fixtures/profiles/.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from daemon.config import Profile, load_profile

# The real trainer on tiny settings: no learning before 5000 transitions keeps two trainers
# cheap on a 2-core box; a heartbeat every second lets tests wait on it.
TINY_TRAINER_ARGS = ("--learning-starts", "5000", "--threads", "1", "--progress-every", "1")

_DROP = object()


class ProfileSpec:
    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = _copy(dict(fields))

    # ------------------------------------------------------------------ changes (all pure)

    def but(self, **changes: Any) -> ProfileSpec:
        """Top-level fields replaced; ``None`` removes a field (its default applies)."""
        out = _copy(self._fields)
        for key, value in changes.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return ProfileSpec(out)

    def level(self, name: str, **settings: Any) -> ProfileSpec:
        """Level ``name`` with ``settings`` merged in (created when it is new)."""
        out = _copy(self._fields)
        levels = out.setdefault("levels", {})
        levels[name] = {**levels.get(name, {}), **settings}
        return ProfileSpec(out)

    def section(self, name: str, **settings: Any) -> ProfileSpec:
        """A mapping field (``checks``, ``autoscaler``, ``backoff``, ``paths`` ...) with
        ``settings`` merged in."""
        out = _copy(self._fields)
        out[name] = {**out.get(name, {}), **settings}
        return ProfileSpec(out)

    def add_game(self, game: str, target: int) -> ProfileSpec:
        return self.target(game, target)

    def target(self, game: str, target: int) -> ProfileSpec:
        out = _copy(self._fields)
        out.setdefault("games", {})[game] = target
        return ProfileSpec(out)

    def drop_game(self, game: str) -> ProfileSpec:
        out = _copy(self._fields)
        del out["games"][game]
        return ProfileSpec(out)

    # ------------------------------------------------------------------ views

    def __getitem__(self, key: str) -> Any:
        return _copy(self._fields[key])

    @property
    def games(self) -> dict[str, int]:
        return dict(self._fields.get("games", {}))

    def text(self) -> str:
        lines = []
        for key, value in self._fields.items():
            if key in ("games", "levels") and isinstance(value, Mapping):
                lines.append(f"{key}:")
                lines += [f"  {_scalar(k)}: {_flow(v)}" for k, v in value.items()]
            else:
                lines.append(f"{key}: {_flow(value)}")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.text())
        return path

    def load(self, path: Path, **kwargs: Any) -> Profile:
        """Written to ``path`` and loaded by the daemon's own loader (its validation applies)."""
        return load_profile(self.write(path), **kwargs)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def _flow(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        # Plain when YAML reads it back as the same string (5s, CartPole-v1, light), else JSON,
        # which YAML reads as a quoted string ("--threads", "5000", paths with odd characters).
        plain = bool(value) and value[0] not in "!&*?|>'\"%@`:" and not set(value) & set(",[]{}#")
        try:
            same = plain and yaml.safe_load(f"k: {value}") == {"k": value}
        except yaml.YAMLError:
            same = False
        return value if same else json.dumps(value)
    raise TypeError(f"no YAML for {value!r}")


# ---------------------------------------------------------------------------- presets

# The decision-logic tests (fake clock, fake OS seam): three games, two levels, short timers.
MANAGER_PROFILE = ProfileSpec(
    {
        "games": {"CartPole-v1": 20, "Pong": 50, "Breakout": 30},
        "levels": {
            "light": {"games": 2, "num_envs": 4, "batch_size": 32, "buffer_gb": 0.05},
            "medium": {"games": 3, "num_envs": 8, "batch_size": 64, "buffer_gb": 0.05},
        },
        "start_level": "light",
        "autoscaler": {"ladder": ["light", "medium"]},
        "startsecs": "5s",
        "stop_grace": "30s",
        "frozen_after": "100s",
        "backoff": {
            "initial": "10s",
            "factor": 2,
            "max": "40s",
            "reset_after": "600s",
            "storm_crashes": 3,
            "storm_window": "600s",
        },
    }
)


def daemon_profile(
    games: Mapping[str, int], *, slots: int = 2, frozen_after: str = "10m"
) -> ProfileSpec:
    """A real daemon with the real trainer on tiny CPU settings: one level (``light``, ``slots``
    games of 2 envs), a 1 s health check, no promotion, checkpoints only at a stop."""
    return ProfileSpec(
        {
            "games": dict(games),
            "levels": {
                "light": {"games": slots, "num_envs": 2, "batch_size": 32, "buffer_gb": 0.05}
            },
            "start_level": "light",
            "autoscaler": {"ladder": ["light"]},
            "checks": {"health": "1s", "stability": "1h", "telemetry": "5s", "report": "1h"},
            "startsecs": "2s",
            "stop_grace": "60s",
            "frozen_after": frozen_after,
            "backoff": {
                "initial": "1s",
                "factor": 2,
                "max": "10s",
                "reset_after": "10m",
                "storm_crashes": 5,
                "storm_window": "10m",
            },
            "checkpoint_every": "600s",
            "device": "cpu",
            "trainer_args": list(TINY_TRAINER_ARGS),
        }
    )
