"""Which games exist: envpool's task ids, asked without loading envpool into the daemon."""

from __future__ import annotations

import difflib
import functools
import json
import os
import subprocess
import sys


@functools.cache
def envpool_task_ids() -> frozenset[str]:
    """envpool's task ids. Asked in a child process unless envpool is already loaded: importing
    envpool costs ~120 MB of RSS, which the long-lived daemon should not carry for a name list."""
    if "envpool" in sys.modules:
        return frozenset(sys.modules["envpool"].list_all_envs())
    code = "import envpool, json; print(json.dumps(envpool.list_all_envs()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"cannot list envpool's games ({last}); is envpool installed?")
    return frozenset(json.loads(out.stdout))


def envpool_task(game: str) -> str | None:
    """The envpool task id for a profile game name, or None if envpool has no such game."""
    ids = envpool_task_ids()
    if game in ids:
        return game
    if f"{game}-v5" in ids:
        return f"{game}-v5"
    return None


def unknown_game_hint(game: str) -> str:
    """The fix part of an unknown-game error: the closest envpool names, or where to look."""
    names = sorted({t.removesuffix("-v5") for t in envpool_task_ids()})
    close = difflib.get_close_matches(game, names, n=3)
    return f"did you mean {', '.join(close)}?" if close else "see envpool.list_all_envs()"
