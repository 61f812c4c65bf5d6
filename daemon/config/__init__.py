"""Profile YAML -> frozen, validated dataclasses.

- ``schema``: the dataclasses (``Profile``, ``Level``, ``Checks`` ...) and their field
  metadata; stdlib only.
- ``yaml_walk``: the generic walker over a composed YAML node tree, with ``FILE:LINE`` errors.
- ``games``: which game names envpool knows, asked in a child process.
- ``loader``: ``load_profile`` and the checks across fields.

Import from here; the submodules are an implementation detail.
"""

from daemon.config.errors import ProfileError
from daemon.config.games import envpool_task, envpool_task_ids
from daemon.config.loader import load_profile
from daemon.config.schema import (
    DEFAULT_PROFILE,
    DEFAULT_PROFILE_DIR,
    ENV_MIB,
    TRAINER_BASE_GIB,
    AutoscalerPolicy,
    Backoff,
    Checks,
    ControlSettings,
    CrashStorm,
    GameLogs,
    GameTarget,
    Level,
    Paths,
    PressurePolicy,
    Profile,
    documented_fields,
)
from daemon.config.yaml_walk import parse_duration

__all__ = [
    "DEFAULT_PROFILE",
    "DEFAULT_PROFILE_DIR",
    "ENV_MIB",
    "TRAINER_BASE_GIB",
    "AutoscalerPolicy",
    "Backoff",
    "Checks",
    "ControlSettings",
    "CrashStorm",
    "GameLogs",
    "GameTarget",
    "Level",
    "Paths",
    "PressurePolicy",
    "Profile",
    "ProfileError",
    "documented_fields",
    "envpool_task",
    "envpool_task_ids",
    "load_profile",
    "parse_duration",
]
