"""A week in the life: scripted events on the fake clock, the expected state after each one.

Each row is ``(event, expected state)``. Events: ``wait 2h`` (time passes, with a stability
check every 15 min as the scheduler would run it), ``reboots N every 15m`` (the box reboots,
the daemon restarts, records the boot and checks), ``crashes N every 1m``, ``pin X``, ``unpin``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.support.autoscaler_box import Box

CHECK_EVERY = 15 * 60.0
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0}


def parse_duration(text: str) -> float:
    """'3h45m' -> 13500.0 (the tables read better with compound durations)."""
    parts = re.findall(r"(\d+)([dhm])", text)
    assert "".join(n + u for n, u in parts) == text, f"bad duration {text!r} in a table"
    return sum(int(n) * _UNITS[u] for n, u in parts)


FLAPPING_HARDWARE = [
    # Bad RAM: the box reboots every 12 minutes whatever the level.
    ("wait 30m", "light"),
    ("reboots 4 every 12m", "fallback"),  # light itself is unstable
    ("reboots 10 every 12m", "fallback"),  # every reboot restarts the cooldown
    ("wait 1h45m", "fallback"),
    ("reboots 5 every 12m", "fallback"),
    # The RAM is replaced: two quiet hours end the cooldown, one more promotes.
    ("wait 1h45m", "fallback"),
    ("wait 15m", "light"),
    ("wait 45m", "light"),
    ("wait 15m", "medium"),
    ("wait 5d", "medium"),
]

STABLE_BOX = [
    ("wait 45m", "light"),
    ("wait 15m", "medium"),
    ("wait 2d", "medium"),
    ("reboots 1 every 1m", "medium"),  # a kernel update: one reboot is not a storm
    ("wait 2d", "medium"),
    ("reboots 3 every 10m", "medium"),  # three in an hour is still not more than max_reboots
    ("wait 2d", "medium"),
    ("crashes 4 every 1m", "medium"),  # one short of a crash storm
    ("wait 23h", "medium"),
]

STABLE_ONLY_AT_LIGHT = [
    # medium reboots the box every 15 minutes; light never does.
    ("wait 1h", "medium"),
    ("reboots 4 every 15m", "fallback"),  # 1st failed promotion: cooldown 2 h
    ("wait 2h", "light"),
    ("wait 1h", "medium"),
    ("reboots 4 every 15m", "fallback"),  # 2nd: 4 h
    ("wait 3h45m", "fallback"),
    ("wait 15m", "light"),
    ("wait 1h", "medium"),
    ("reboots 4 every 15m", "fallback"),  # 3rd: 8 h
    ("wait 7h45m", "fallback"),
    ("wait 15m", "light"),
    ("wait 1h", "medium"),
    ("reboots 4 every 15m", "fallback"),  # 4th: 16 h, the cap
    ("wait 15h45m", "fallback"),
    ("wait 15m", "light"),
    ("wait 1h", "medium"),
    ("reboots 4 every 15m", "fallback"),  # 5th: still 16 h
    ("wait 15h45m", "fallback"),
    ("wait 15m", "light"),
    # The operator has seen enough and pins light; the machine stops trying.
    ("pin light", "light"),
    ("wait 3d", "light"),
]


def play(box: Box, script: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Run the script; return (event, state) pairs so a failure shows the whole story."""
    story = []
    for event, _expected in script:
        verb, *args = event.split()
        if verb == "wait":
            box.elapse(parse_duration(args[0]), every=CHECK_EVERY)
        elif verb in ("reboots", "crashes"):
            count, gap = int(args[0]), parse_duration(args[2])
            for _ in range(count):
                box.clock.advance(gap)
                if verb == "reboots":
                    box.reboot()
                else:
                    box.crash()
                    box.check()
        elif verb == "pin":
            box.scaler.pin(args[0])
        elif verb == "unpin":
            box.scaler.unpin()
        else:  # pragma: no cover - a typo in a table above
            raise AssertionError(f"unknown event {event!r}")
        story.append((event, box.state))
    return story


@pytest.mark.parametrize(
    "script",
    [FLAPPING_HARDWARE, STABLE_BOX, STABLE_ONLY_AT_LIGHT],
    ids=["flapping-hardware", "stable-box", "stable-only-at-light"],
)
def test_week_in_the_life(make_box: Callable[..., Box], script: list[tuple[str, str]]) -> None:
    box = make_box()
    assert play(box, script) == script


def test_stable_only_at_light_cooldowns_double_to_the_cap(make_box: Callable[..., Box]) -> None:
    box = make_box()
    play(box, STABLE_ONLY_AT_LIGHT)
    cooldowns = [
        d.reason.split("; cooldown ")[1].split(" (")[0]
        for d in box.decisions
        if d.trigger == "fall_back"
    ]
    assert cooldowns == ["2 h", "4 h", "8 h", "16 h", "16 h"]
