"""What a reload compares: the parts of a new profile that must exist before anything moves, and
whether the running level's trainer settings changed (its games then restart)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from daemon.config import Profile


def trainer_settings(profile: Profile, level: str) -> tuple[Any, ...]:
    """What a trainer of ``level`` is started with (``trainer_argv``), but the game's own. The
    level's slot count is not among them: more slots just fill (fewer restart the games)."""
    lv = profile.level(level)
    return (replace(lv, games=1), tuple(profile.trainer_args), profile.device, profile.seed,
            profile.checkpoint_every)  # fmt: skip


def check_levels(profile: Profile) -> None:
    """The level names a reload's parts will look up exist in the new profile (the loader
    checks this too; a profile built in code is checked here before any part moves)."""
    names = set(profile.level_names)
    for field_name, wanted in (("start_level", (profile.start_level,)),
                               ("autoscaler.ladder", profile.autoscaler.ladder)):  # fmt: skip
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ValueError(f"{field_name}: no level named {', '.join(missing)}; "
                             f"levels are {', '.join(sorted(names))}")  # fmt: skip


def settings_changed(old: Profile, new: Profile, level: str) -> bool:
    """The running ``level``'s games must restart: a trainer setting changed, or fewer slots
    (a lowered ``games`` would leave too many running)."""
    fewer = new.level(level).games < old.level(level).games
    return trainer_settings(old, level) != trainer_settings(new, level) or fewer
