"""The guards and ladder helpers as pure functions: plain numbers in, booleans and reasons out."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.autoscaler import policy as g
from daemon.autoscaler.policy import Facts
from daemon.autoscaler.states import FALLBACK, level_of, next_rung, state_names, validate_ladder
from daemon.config import CrashStorm
from tests.support.autoscaler_box import HOUR, MIN, policy

P = policy()


def busy(state: str, entered_at: float, **kw: Any) -> Facts:
    """A level whose one slot has held a trainer since before it was entered."""
    return Facts(state, entered_at, demand=1, runs=((entered_at - HOUR, None),), **kw)


def test_promotion_needs_a_full_stable_window() -> None:
    facts = busy("light", entered_at=0.0)
    assert not g.has_been_stable(facts, P, 59 * MIN)
    assert g.has_been_stable(facts, P, 60 * MIN)


def test_a_reboot_restarts_the_stability_clock() -> None:
    facts = busy("light", entered_at=0.0, reboots=(30 * MIN,))
    assert g.stable_since(facts, P, 60 * MIN) == 30 * MIN
    assert not g.has_been_stable(facts, P, 89 * MIN)
    assert g.has_been_stable(facts, P, 90 * MIN)


def test_more_than_max_reboots_in_the_window_is_unstable() -> None:
    three = Facts("medium", 0.0, reboots=(10 * MIN, 20 * MIN, 30 * MIN))
    four = Facts("medium", 0.0, reboots=(10 * MIN, 20 * MIN, 30 * MIN, 40 * MIN))
    assert not g.is_unstable(three, P, 45 * MIN)
    assert g.is_unstable(four, P, 45 * MIN)
    # The oldest reboot leaves the 60-minute window: three left, stable enough again.
    assert not g.is_unstable(four, P, 70 * MIN + 1)


def test_reboots_before_entering_the_state_do_not_count_against_it() -> None:
    facts = Facts("light", entered_at=35 * MIN, reboots=(10 * MIN, 20 * MIN, 30 * MIN, 40 * MIN))
    assert g.recent_reboots(facts, P, 45 * MIN) == [40 * MIN]
    assert not g.is_unstable(facts, P, 45 * MIN)


def test_crash_storm_counts_crashes_in_its_own_window() -> None:
    pol = policy(crash_storm=CrashStorm(crashes=3, window=10 * MIN))
    two = Facts("medium", 0.0, crashes=(60.0, 120.0))
    three = Facts("medium", 0.0, crashes=(60.0, 120.0, 180.0))
    spread = Facts("medium", 0.0, crashes=(60.0, 20 * MIN, 40 * MIN))
    assert not g.has_crash_storm(two, pol, 200.0)
    assert g.has_crash_storm(three, pol, 200.0)
    assert not g.has_crash_storm(spread, pol, 41 * MIN)
    assert g.last_crash_storm_at(three, pol, 30 * MIN) == 180.0
    assert g.last_crash_storm_at(spread, pol, 41 * MIN) is None
    assert g.stable_since(three, pol, 30 * MIN) == 180.0
    assert g.reason_fall_back(three, pol, 200.0) == (
        "fallback: 3 trainer crashes in 10 min >= crash_storm.crashes=3"
    )


def test_fallback_reason_names_the_setting() -> None:
    facts = Facts("medium", 0.0, reboots=(10 * MIN, 20 * MIN, 30 * MIN, 40 * MIN))
    assert g.reason_fall_back(facts, P, 45 * MIN) == (
        "fallback: 4 reboots in 60 min > max_reboots=3"
    )


def test_cooldown_counts_stable_time_in_fallback() -> None:
    facts = Facts(FALLBACK, entered_at=0.0, cooldown_s=2 * HOUR)
    assert not g.has_cooldown_elapsed(facts, P, 2 * HOUR - 1)
    assert g.has_cooldown_elapsed(facts, P, 2 * HOUR)
    rebooted = Facts(FALLBACK, entered_at=0.0, cooldown_s=2 * HOUR, reboots=(HOUR,))
    assert not g.has_cooldown_elapsed(rebooted, P, 2 * HOUR)
    assert g.has_cooldown_elapsed(rebooted, P, 3 * HOUR)
    assert not g.has_cooldown_elapsed(Facts("light", 0.0, cooldown_s=1.0), P, 3 * HOUR)


def test_cooldown_doubles_per_failed_promotion_up_to_the_cap() -> None:
    seen = []
    failed = 0
    for _ in range(6):
        cooldown, failed = g.next_cooldown(Facts("medium", 0.0, failed_promotions=failed), P)
        seen.append(cooldown / HOUR)
    assert seen == [2, 4, 8, 16, 16, 16]
    assert failed == 6


def test_cooldown_reset_needs_a_long_stable_run_on_a_rung() -> None:
    facts = Facts("medium", entered_at=0.0, failed_promotions=2)
    assert not g.is_due_for_cooldown_reset(facts, P, 24 * HOUR - 1)
    assert g.is_due_for_cooldown_reset(facts, P, 24 * HOUR)
    assert not g.is_due_for_cooldown_reset(Facts("medium", 0.0), P, 48 * HOUR)
    in_fallback = Facts(FALLBACK, 0.0, failed_promotions=2)
    assert not g.is_due_for_cooldown_reset(in_fallback, P, 48 * HOUR)


def test_next_review_for_status() -> None:
    def review(facts: Facts, now: float, up: str | None = "medium") -> tuple[str, float | None]:
        return g.next_review(facts, P, now, up, "light")

    assert review(busy("light", 100.0), 200.0) == ("promote to medium if stable and loaded",
                                                    100.0 + HOUR)  # fmt: skip
    assert review(Facts(FALLBACK, 100.0, cooldown_s=50.0), 120.0) == (
        "recover to light once the cooldown has passed", 150.0)  # fmt: skip
    # No time, and a plain reason why (the old line read "none while pinned at light in 9s").
    assert review(busy("light", 100.0, pinned="light"), 120.0) == (
        "none: pinned at light (atarictl level unpin to resume)", None)  # fmt: skip
    assert review(Facts("light", 0.0, demand=0, idle="2 DONE"), 10.0) == (
        "none: nothing left to train (2 DONE); the level stays at light", None)  # fmt: skip
    what, at = review(Facts("light", 0.0, demand=2, runs=((0.0, None),)), 20 * MIN)
    assert at is None and what == (
        "none yet: promotion to medium counts only time with 2 trainers running "
        "(1 now; 0 s of 60 min so far)"
    )
    # At the top there is no promotion: the due time is now (a check may still fall back).
    assert review(busy("medium", 0.0), 2 * HOUR, up=None) == (
        "stability check (top of the ladder: falls back only if unstable)", 2 * HOUR)  # fmt: skip


def test_loaded_time_counts_only_time_with_the_demand_met() -> None:
    runs = ((0.0, 30 * MIN), (10 * MIN, None), (50 * MIN, 70 * MIN))
    two = Facts("light", 0.0, demand=2, runs=runs)
    # Two trainers from 10 to 30 min and from 50 to 70 min: 40 of the 90 minutes.
    assert g.loaded_time(two, 0.0, 90 * MIN) == 40 * MIN
    assert g.loaded_time(two, 20 * MIN, 60 * MIN) == 20 * MIN
    one = Facts("light", 0.0, demand=1, runs=runs)
    assert g.loaded_time(one, 0.0, 90 * MIN) == 90 * MIN
    # A hand-over at one instant gets no credit for a moment with nobody running, and the
    # demand itself decides: none (nothing to train) or unknown never counts as loaded.
    handover = Facts("light", 0.0, demand=1, runs=((0.0, 10 * MIN), (10 * MIN, 20 * MIN)))
    assert g.loaded_time(handover, 0.0, 20 * MIN) == 20 * MIN
    assert g.loaded_time(Facts("light", 0.0, demand=0, runs=runs), 0.0, HOUR) == 0.0
    assert g.loaded_time(Facts("light", 0.0, runs=runs), 0.0, HOUR) == 0.0
    assert g.running_at(two, 60 * MIN) == 2 and g.running_at(two, 70 * MIN) == 1


def test_promotion_counts_only_loaded_time_and_says_so() -> None:
    gaps = Facts("light", 0.0, demand=1, runs=((0.0, 30 * MIN), (50 * MIN, None)))
    assert not g.has_been_stable(gaps, P, 79 * MIN)
    assert g.has_been_stable(gaps, P, 80 * MIN)
    assert g.reason_promote(gaps, P, 80 * MIN, "medium") == (
        "promote: stable and loaded 60 min at light (1 trainers running, of 80 min stable) "
        ">= promote_after=60 min; moving to medium"
    )
    idle = Facts("light", 0.0, demand=0)
    assert not g.has_been_stable(idle, P, 10 * HOUR)


def test_ladder_helpers() -> None:
    assert state_names(["light", "medium", "heavy"]) == ("light", "medium", "heavy", FALLBACK)
    assert next_rung(("light", "medium"), "light") == "medium"
    assert next_rung(("light", "medium"), "medium") is None
    assert next_rung(("light", "medium"), FALLBACK) is None
    assert level_of(FALLBACK, "light") == "light"
    assert level_of("medium", "light") == "medium"


@pytest.mark.parametrize(
    ("ladder", "message"),
    [
        ([], "empty ladder"),
        (["light", "fallback"], "'fallback' is the autoscaler's own state"),
        (["light", "light"], "repeats a level"),
    ],
)
def test_bad_ladders_are_refused_with_one_line(ladder: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        validate_ladder(ladder)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("autoscaler.ladder:")


def test_durations_in_reasons() -> None:
    assert g.fmt_duration(3600) == "60 min"
    assert g.fmt_duration(7200) == "2 h"
    assert g.fmt_duration(90) == "1.5 min"
    assert g.fmt_duration(5) == "5 s"
