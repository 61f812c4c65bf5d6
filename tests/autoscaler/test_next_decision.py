"""`status`'s next decision never goes stale (issue 12, item 2): always a time in the future, or
a plain reason why there is none. Real supervisor, autoscaler and store; fake clock and OS seam;
the scheduler's next stability run is a stub that keeps its 5-minute rhythm."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.autoscaler import Autoscaler
from daemon.clock import FakeClock
from daemon.status import decision_time
from daemon.supervisor import Check, Supervisor
from tests.support.profiles import MANAGER_PROFILE
from tests.support.supervised import wire

MIN, HOUR = 60.0, 3600.0
EVERY = 5 * MIN  # MANAGER_PROFILE's checks.stability (the default)


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[tuple[Supervisor, Autoscaler, FakeClock]]:
    profile = MANAGER_PROFILE.load(tmp_path / "p.yaml")
    s, scaler, _fake, clock = wire(tmp_path, profile)
    first = clock.now() + EVERY
    # APScheduler's next_run_time for an interval job: the next multiple after now.
    s.next_run = lambda _job: first + (int((clock.now() - first) // EVERY) + 1) * EVERY
    s.loop_once()
    clock.advance(profile.startsecs)
    s.loop_once()
    yield s, scaler, clock
    s.store.close()


def run_checks(s: Supervisor, clock: FakeClock, seconds: float) -> None:
    for _ in range(int(seconds // EVERY)):
        clock.advance(EVERY)
        s.post(Check("stability"))
        s.loop_once()


def next_decision(s: Supervisor) -> dict[str, Any]:
    st = s.cmd_status({})
    return {**st["next_decision"], "now": st["now"]}


def test_the_promotion_time_is_a_future_stability_check(sup: Any) -> None:
    s, _scaler, clock = sup
    clock.advance(7 * MIN)
    nd = next_decision(s)
    assert nd["what"] == "promote to medium if stable and loaded"
    assert nd["at"] > nd["now"]
    # Due 60 min after the games started; made at the first 5-minute check at or after that.
    assert nd["at"] - s.started_at >= HOUR and nd["at"] - s.started_at < HOUR + EVERY


def test_at_the_top_of_the_ladder_the_time_keeps_moving(sup: Any) -> None:
    s, scaler, clock = sup
    run_checks(s, clock, 65 * MIN)
    assert scaler.state == "medium"
    for _ in range(4):  # the clock: 14 minutes later it still said 05:01:13
        run_checks(s, clock, 15 * MIN)
        clock.advance(MIN)
        nd = next_decision(s)
        assert nd["at"] is not None and 0 < nd["at"] - nd["now"] <= EVERY, nd
        assert nd["what"] == "stability check (top of the ladder: falls back only if unstable)"


def test_pinned_says_why_there_is_no_time(sup: Any) -> None:
    s, scaler, clock = sup
    scaler.pin("light")
    clock.advance(2 * HOUR)
    nd = next_decision(s)
    assert nd["at"] is None
    assert nd["what"] == "none: pinned at light (atarictl level unpin to resume)"


def test_decision_time_rounds_up_to_a_check_and_never_lies_in_the_past() -> None:
    assert decision_time(None, 100.0, 130.0, 300.0) is None
    assert decision_time(50.0, 100.0, 130.0, 300.0) == 130.0  # overdue: the next check
    assert decision_time(500.0, 100.0, 130.0, 300.0) == 730.0
    assert decision_time(730.0, 100.0, 130.0, 300.0) == 730.0
    assert decision_time(500.0, 100.0, 90.0, 300.0) == 690.0  # a check running right now
    assert decision_time(50.0, 100.0, None, 300.0) is None  # no scheduler: no false time
