"""State names and ladder helpers for the autoscaler (no I/O; only the profile schema's name).

The machine's states are the profile's ladder rungs plus ``fallback``. Fallback is a state of its
own, not a level: it runs the profile's ``fallback_level`` settings, but while in it the machine may
only leave by recovering to the bottom rung once the cooldown has passed.
"""

from __future__ import annotations

from collections.abc import Sequence

# Defined by the profile schema, whose loader refuses a level of this name.
from daemon.config.schema import FALLBACK_STATE as FALLBACK


def validate_ladder(ladder: Sequence[str]) -> tuple[str, ...]:
    """Return the ladder as a tuple, refusing shapes the machine cannot represent."""
    rungs = tuple(ladder)
    if not rungs:
        raise ValueError("autoscaler.ladder: empty ladder; list at least one level, e.g. [light]")
    if FALLBACK in rungs:
        raise ValueError(
            f"autoscaler.ladder: '{FALLBACK}' is the autoscaler's own state, not a level; "
            "rename that level"
        )
    if len(set(rungs)) != len(rungs):
        raise ValueError(f"autoscaler.ladder: {list(rungs)} repeats a level; list each once")
    return rungs


def state_names(ladder: Sequence[str]) -> tuple[str, ...]:
    """All machine states, bottom rung first, fallback last (the diagram keeps this order)."""
    return (*validate_ladder(ladder), FALLBACK)


def next_rung(ladder: Sequence[str], state: str) -> str | None:
    """The rung above ``state``, or None at the top of the ladder or in fallback."""
    rungs = tuple(ladder)
    if state not in rungs:
        return None
    i = rungs.index(state)
    return rungs[i + 1] if i + 1 < len(rungs) else None


def level_of(state: str, fallback_level: str) -> str:
    """The profile level whose settings the daemon runs while the machine is in ``state``."""
    return fallback_level if state == FALLBACK else state


def is_upward(ladder: Sequence[str], source: str, dest: str) -> bool:
    """Whether moving from ``source`` to ``dest`` is a climb (fallback sits below every rung)."""
    rungs = tuple(ladder)

    def height(s: str) -> int:
        return -1 if s == FALLBACK else rungs.index(s)

    return height(dest) > height(source)
