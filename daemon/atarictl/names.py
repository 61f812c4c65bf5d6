"""Game and command names as a user types them: case-insensitive, one "did you mean".

Every command that takes a game name (status, start, stop, restart, tail, models, eval) calls
resolve_game(s) so an unknown game reads the same everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from daemon.atarictl.client import UnknownGame


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The single closest choice (case-insensitive), or None when nothing is close."""
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    hit = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    if hit:
        return by_lower[hit[0]]
    # "pong" for "Pong-v5"-style names: a unique prefix is as good as a close match.
    prefixed = [c for low, c in by_lower.items() if low.startswith(word.lower())]
    return prefixed[0] if len(prefixed) == 1 else None


def unknown_game(name: str, known: Iterable[str]) -> UnknownGame:
    """The one wording for an unknown game: `unknown game 'pongg'; did you mean 'Pong'? ...`."""
    known = sorted(set(known))
    hint = suggest(name, known)
    did = f"; did you mean {hint!r}?" if hint else ""
    listing = f" known games: {', '.join(known)}" if known else " no games known yet"
    return UnknownGame(
        f"unknown game {name!r}{did}{';' if not hint else ''}{listing} (names as in the "
        "profile's games:)",
        "unknown_game",
    )


def resolve_game(name: str, known: Iterable[str]) -> str:
    """The profile's spelling of `name` (case-insensitive), or raise the one UnknownGame."""
    known = list(known)
    if name in known:
        return name
    folded = [k for k in known if k.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise unknown_game(name, known)


def resolve_games(names: Iterable[str], known: Iterable[str], allow_all: bool = False) -> list[str]:
    known = list(known)
    return [n if allow_all and n == "all" else resolve_game(n, known) for n in names]
