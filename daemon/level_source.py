"""Where the supervisor's level comes from: the ``LevelSource`` protocol, answered by the
autoscaler (``daemon/autoscaler``) and by ``FixedLevel`` (a profile run without autoscaling,
tests, benches). Stdlib only besides the profile type."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.config import Profile

Command = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Load:
    """What the games ask of the box now, as the supervisor knows it: the autoscaler's fact for
    "did the level carry its load" (issue 12, item 1)."""

    slots: Mapping[str, int] = field(default_factory=dict)  # level -> its parallel games
    wanting: int = 0  # games that want a slot: not DONE, FATAL or STOPPED by the operator
    idle: str = ""  # why the others do not, e.g. "2 DONE, 1 STOPPED"

    def demand(self, level: str) -> int:
        """Trainers ``level`` runs when loaded: its slots, or as many games as remain."""
        return min(self.slots.get(level, 0), self.wanting)


class LevelDecision(Protocol):
    trigger: str


class LevelSource(Protocol):
    """Where the level comes from: ``FixedLevel`` or the autoscaler, the same verbs."""

    # Set by the supervisor once it exists: the load now (None before, e.g. at start).
    load: Callable[[], Load | None]

    def current_level(self) -> str: ...

    def check(self, now: float) -> LevelDecision | None:
        """The stability check: may move the level (the loop then carries it out)."""

    def status(self, now: float) -> dict[str, Any]:
        """At least ``state``, ``entered_at``, ``pinned``, ``ladder`` and ``next_decision``:
        ``{"what", "at"}``, ``at`` the time a move becomes due (the supervisor rounds it up to
        a stability check) or None with ``what`` saying why there is none."""

    def prepare_reload(self, profile: Profile) -> tuple[Callable[[], None], list[str]]:
        """Check a reloaded profile (``ValueError`` refuses it); return (commit, changes)."""

    def commands(self) -> dict[str, Command]:
        """Control commands it answers (the autoscaler: ``level``, ``pin``, ``unpin``)."""


class FixedLevel:
    """The profile's ``start_level``, never moved by load: tests, benches, and a profile run
    without autoscaling answer the same verbs as the autoscaler."""

    def __init__(self, name: str, started_at: float = 0.0) -> None:
        self.name, self.started_at = name, started_at
        self.load: Callable[[], Load | None] = lambda: None  # a fixed level does not look

    def current_level(self) -> str:
        return self.name

    def check(self, now: float) -> None:
        return None

    def status(self, now: float) -> dict[str, Any]:
        return {"state": self.name, "level": self.name, "ladder": [], "pinned": None,
                "entered_at": self.started_at, "next_decision_at": None,
                "next_decision": {"what": f"none: fixed level {self.name} (no autoscaler)",
                                  "at": None}}  # fmt: skip

    def prepare_reload(self, profile: Profile) -> tuple[Callable[[], None], list[str]]:
        new = profile.start_level
        if new == self.name:
            return (lambda: None), []

        def commit() -> None:
            self.name = new

        return commit, [f"start_level {self.name} -> {new}"]

    def commands(self) -> dict[str, Command]:
        return {"level": lambda _args: {"level": self.name, "autoscaler": None}}
