"""Stability means the box carried the level's load (issue 12, item 1): the promotion window
counts only time with the level's slots filled (or as many trainers as games remain), an idle
box is never promoted, and with nothing left to train the level stays put and says why.

A real SQLite store holds the runs (as the process manager writes them); the clock is fake."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.autoscaler import Autoscaler
from daemon.clock import FakeClock
from daemon.level_source import Load
from daemon.store.schema import Outcome
from daemon.supervisor import Check, Supervisor
from tests.support.autoscaler_box import HOUR, MIN, Box
from tests.support.fake_os import FakeOs
from tests.support.profiles import MANAGER_PROFILE
from tests.support.supervised import wire

MakeBox = Callable[..., Box]


def test_an_idle_box_is_never_promoted(make_box: MakeBox) -> None:
    box = make_box()
    box.idle()  # nothing runs, yet two games wait for a slot
    assert box.elapse(3 * HOUR) == []
    assert box.state == "light"


def test_an_idle_box_says_why_it_waits(make_box: MakeBox) -> None:
    box = make_box()
    box.idle()
    box.elapse(2 * HOUR)
    nd = box.scaler.status()["next_decision"]
    assert nd["at"] is None
    assert nd["what"] == ("none yet: promotion to medium counts only time with 2 trainers "
                          "running (0 now; 0 s of 60 min so far)")  # fmt: skip


def test_half_filled_slots_do_not_count_and_full_ones_do(make_box: MakeBox) -> None:
    box = make_box()
    box.run(1)  # one of light's two slots holds a trainer
    assert box.elapse(2 * HOUR) == []
    box.fill()
    assert box.elapse(55 * MIN, every=MIN) == []
    [decision] = box.elapse(5 * MIN, every=MIN)
    assert (decision.trigger, decision.to_state) == ("promote", "medium")
    assert decision.reason.startswith(
        "promote: stable and loaded 60 min at light (2 trainers running, of 3 h stable) "
    )


def test_fewer_games_than_slots_fill_the_level(make_box: MakeBox) -> None:
    box = make_box()
    box.wanting = 1  # one game left unfinished: one trainer is the level's whole load
    box.fill()
    [decision] = box.elapse(HOUR)
    assert decision.to_state == "medium"
    assert "(1 trainers running, of 60 min stable)" in decision.reason


def test_with_nothing_left_to_train_the_level_stays_and_says_why(make_box: MakeBox) -> None:
    box = make_box()
    box.wanting = 0
    box.fill()  # nothing to start
    box.scaler.load = lambda: Load({"light": 2, "medium": 2}, 0, "2 DONE")
    assert box.elapse(5 * HOUR) == []
    assert box.state == "light"
    assert box.scaler.status()["next_decision"] == {
        "what": "none: nothing left to train (2 DONE); the level stays at light", "at": None}


def test_an_unknown_load_never_promotes(make_box: MakeBox) -> None:
    # The check at daemon start runs before the supervisor exists: no load fact yet.
    box = make_box()
    box.scaler.load = lambda: None
    assert box.elapse(3 * HOUR) == []


def test_runs_that_ended_while_the_daemon_was_down_prove_no_load(make_box: MakeBox) -> None:
    box = make_box()
    box.elapse(50 * MIN)
    box.restart_daemon()  # same boot: the box's trainers end as the manager ends leftovers
    # ... but if the old ones' end is unknown they count for nothing: 50 min are lost.
    for run in box.store.runs():
        if run["ended_at"] is not None:
            box.store.run_ended(run["id"], run["ended_at"], exit_code=None, signal=None,
                                reason="ended while the daemon was down",
                                outcome=Outcome.UNKNOWN)  # fmt: skip
    assert box.elapse(50 * MIN) == []
    [decision] = box.elapse(10 * MIN)
    assert decision.to_state == "medium"


# -- the supervisor tells the load (real supervisor and store, the manager's fake OS seam) ------


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[tuple[Supervisor, Autoscaler, FakeOs, FakeClock]]:
    profile = MANAGER_PROFILE.load(tmp_path / "p.yaml")  # light: 2 slots, three games
    s, scaler, fake, clock = wire(tmp_path, profile)
    s.loop_once()
    clock.advance(profile.startsecs)
    s.loop_once()
    yield s, scaler, fake, clock
    s.store.close()


def stability(s: Supervisor, clock: FakeClock, seconds: float) -> None:
    for _ in range(int(seconds // (5 * MIN))):
        clock.advance(5 * MIN)
        s.post(Check("stability"))
        s.loop_once()


def test_the_supervisor_reports_its_games_as_the_load(sup: Any) -> None:
    s, _scaler, _fake, _clock = sup
    load = s.load()
    assert (load.demand("light"), load.demand("medium"), load.wanting) == (2, 3, 3)
    s.manager.stop(["Pong", "Breakout"])  # operator stops: those games want no slot
    assert s.load().wanting == 1 and s.load().idle == "2 STOPPED"


def test_operator_stopped_games_leave_an_idle_box_at_its_level(sup: Any) -> None:
    s, scaler, fake, clock = sup
    s.manager.stop(["all"])
    for g in s.manager.games.values():
        if g.proc is not None:
            fake.exits[g.proc.pid] = 0
    s.loop_once()
    stability(s, clock, 3 * HOUR)
    assert scaler.state == "light" and s.manager.level == "light"
    nd = s.cmd_status({})["next_decision"]
    assert nd == {"what": "none: nothing left to train (3 STOPPED); the level stays at light",
                  "at": None}  # fmt: skip
    s.manager.start(["all"])
    s.loop_once()
    stability(s, clock, 55 * MIN)
    assert scaler.state == "light"
    stability(s, clock, 5 * MIN)
    assert scaler.state == "medium"
