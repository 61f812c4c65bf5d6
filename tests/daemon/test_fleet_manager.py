"""Fleet mode's decisions in the process manager (daemon/fleet.py, docs/fleet.md): two boxes'
managers on one real store (an SQLite file here; tests/daemon/test_fleet_daemons.py runs real
daemons on PostgreSQL), one shared runs dir, the fake OS seam and one fake clock (NTP-synced
boxes). What is checked: claims fill the slots, most work first, and each start is fenced; a
game lost to another box is stopped here and its shared row left to the new holder; a trainer
that finds itself superseded drops the game; a finished game leaves the queue; queued games
beyond the slots go back to the fleet."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.config import Profile
from daemon.fleet import Fleet
from daemon.process import ProcessManager, State
from daemon.store import Store, dialect
from tests.support.fake_os import FakeOs, pid, states, write_progress
from tests.support.profiles import MANAGER_PROFILE

LEASE = 30.0  # s; the profile's startsecs is 5 s


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    return MANAGER_PROFILE.load(tmp_path / "p.yaml")


class Box:
    def __init__(self, tmp_path: Path, profile: Profile, name: str, clock: FakeClock) -> None:
        self.fake = FakeOs()
        self.fake.next_pid = {"a": 1000, "b": 2000}[name]
        self.store = Store.open(tmp_path / "atari.db", box=name)
        self.mgr = ProcessManager(profile, self.store, clock, self.fake, tmp_path / "runs",
                                  tmp_path / f"logs-{name}", "light")  # fmt: skip
        self.mgr.games = {}
        self.mgr.restore()
        fleet = Fleet(self.store, LEASE, clock, [g.name for g in profile.games])
        fleet.start({g.name: float(self.mgr.work_left(g.name, g.target)) for g in profile.games})
        self.mgr.fleet = fleet

    def argv(self, game: str) -> list[str]:
        return self.fake.argv[pid(self.mgr, game)]


def _boxes(tmp_path: Path, profile: Profile) -> tuple[Box, Box, FakeClock]:
    clock = FakeClock()
    return Box(tmp_path, profile, "a", clock), Box(tmp_path, profile, "b", clock), clock


def _token(argv: list[str]) -> int:
    return int(argv[argv.index("--fence-token") + 1])


def test_claims_fill_the_slots_most_work_first_and_each_start_is_fenced(
    tmp_path: Path, profile: Profile
) -> None:
    a, b, _clock = _boxes(tmp_path, profile)
    a.mgr.tick()  # light: 2 slots; Pong (50) and Breakout (30) have the most work left
    assert states(a.mgr) == {"Pong": "STARTING", "Breakout": "STARTING"}
    b.mgr.tick()
    assert states(b.mgr) == {"CartPole-v1": "STARTING"}
    for box in (a, b):
        for game in box.mgr.games:
            token = _token(box.argv(game))
            assert (tmp_path / "runs" / game / "fence").read_text().strip() == str(token)
    assert {r["game"]: r["box"] for r in a.store.runs()} == {
        "Pong": "a", "Breakout": "a", "CartPole-v1": "b"}  # fmt: skip


def test_a_game_lost_to_another_box_is_stopped_and_its_row_left_to_the_new_holder(
    tmp_path: Path, profile: Profile
) -> None:
    a, b, clock = _boxes(tmp_path, profile)
    a.mgr.tick()
    b.mgr.tick()
    stale = pid(a.mgr, "Pong")
    # Box a stops renewing (paused); b, its two slots free after CartPole's end, claims both.
    b.fake.exits[pid(b.mgr, "CartPole-v1")] = 0
    write_progress(b.mgr, "CartPole-v1", episodes=20, status="done", target_episodes=20)
    clock.advance(LEASE + 1)
    b.mgr.health()  # b renews its own; a's leases are past their expiry
    b.mgr.tick()
    assert states(b.mgr) == {"CartPole-v1": "DONE", "Pong": "STARTING", "Breakout": "STARTING"}
    new_token = _token(b.argv("Pong"))
    assert (tmp_path / "runs" / "Pong" / "fence").read_text().strip() == str(new_token)
    # a comes back: its renewal tells it Pong is gone; its trainer gets SIGTERM (it is fenced).
    a.mgr.health()
    assert a.fake.sent(stale) == [signal.SIGTERM, signal.SIGCONT]
    assert a.mgr.fleet.held == {}
    b.mgr.tick()
    clock.advance(6)
    b.mgr.tick()  # b's Pong is RUNNING now, in the shared games row
    assert a.store.games()["Pong"]["state"] == "RUNNING"
    a.fake.exits[stale] = 8  # the stale trainer read the new fence and wrote nothing
    a.fake.exits[pid(a.mgr, "Breakout")] = 8
    a.mgr.tick()
    assert a.mgr.games == {}
    assert a.store.games()["Pong"]["state"] == "RUNNING"  # b's row, not overwritten by a
    ended = [r for r in a.store.runs("Pong") if r["box"] == "a"]
    assert ended[0]["exit_code"] == 8 and "lease lost" in ended[0]["reason"]


def test_a_trainer_that_finds_itself_superseded_drops_the_game_not_fatal(
    tmp_path: Path, profile: Profile
) -> None:
    a, _b, clock = _boxes(tmp_path, profile)
    a.mgr.tick()
    clock.advance(6)
    a.mgr.tick()
    assert a.mgr.games["Pong"].state is State.RUNNING
    # Before a's next renewal, the trainer itself exits 8 (the fence moved on).
    a.fake.exits[pid(a.mgr, "Pong")] = 8
    a.mgr.tick()
    assert "Pong" not in a.mgr.games and "Pong" not in a.mgr.fleet.held
    assert a.store.games()["Pong"]["state"] == "RUNNING"  # no FATAL written over the row


def test_a_finished_game_leaves_the_queue(tmp_path: Path, profile: Profile) -> None:
    a, b, _clock = _boxes(tmp_path, profile)
    a.mgr.tick()
    write_progress(a.mgr, "Pong", episodes=50, status="done", target_episodes=50)
    a.fake.exits[pid(a.mgr, "Pong")] = 0
    a.mgr.tick()
    assert a.mgr.games["Pong"].state is State.DONE
    b.mgr.tick()
    assert set(b.mgr.games) == {"CartPole-v1"}  # not Pong: no work left
    holders = a.mgr.fleet.leases.holders(0.0)
    assert holders["Pong"] is None


def test_queued_games_beyond_the_slots_go_back_to_the_fleet(
    tmp_path: Path, profile: Profile
) -> None:
    a, b, _clock = _boxes(tmp_path, profile)
    a.mgr.tick()
    assert len(a.mgr.games) == 2
    # Pressure at the bottom rung pauses one trainer: it checkpoints and queues, its slot is
    # taken away, so the game goes back to the queue and b runs it.
    paused = a.mgr.pause_newest("memory pressure")
    assert paused is not None
    a.fake.exits[pid(a.mgr, paused)] = 0
    a.mgr.tick()
    assert paused not in a.mgr.games and paused not in a.mgr.fleet.held
    b.mgr.tick()
    assert paused in b.mgr.games and b.mgr.games[paused].state is State.STARTING


def test_a_game_stopped_in_the_queue_is_claimed_stopped_and_started_by_its_holder(
    tmp_path: Path, profile: Profile
) -> None:
    a, b, _clock = _boxes(tmp_path, profile)
    a.mgr.tick()  # Pong, Breakout
    _cid, done = a.mgr.fleet.commands.send("CartPole-v1", "stop", 0.0, "atarictl@ops")
    assert done is not None  # nobody held CartPole: stopped in its shared row
    b.mgr.tick()
    assert states(b.mgr) == {"CartPole-v1": "STOPPED"}  # claimed, held, not started
    assert b.fake.argv == {}
    assert "CartPole-v1" in b.mgr.fleet.held
    # Now it has a holder: a start waits for b, which carries it out on its own manager.
    _cid, done = a.mgr.fleet.commands.send("CartPole-v1", "start", 1.0, "atarictl@ops")
    assert done is None
    (row,) = b.mgr.fleet.due_commands()
    b.mgr.start([row.game])
    assert states(b.mgr) == {"CartPole-v1": "STARTING"}
    assert _token(b.argv("CartPole-v1")) == b.mgr.fleet.token("CartPole-v1")


def test_a_reload_offers_new_games_to_the_fleet_and_releases_removed_ones(
    tmp_path: Path, profile: Profile
) -> None:
    a, b, clock = _boxes(tmp_path, profile)
    a.mgr.tick()  # Pong, Breakout
    b.mgr.tick()  # CartPole-v1
    clock.advance(1.0)  # past each box's claim throttle (one claim pass a second)
    bigger = MANAGER_PROFILE.add_game("Qbert", 100).drop_game("Breakout")
    a.mgr.set_profile(bigger.load(tmp_path / "a2.yaml"))
    b.mgr.set_profile(bigger.load(tmp_path / "b2.yaml"))
    a.fake.exits[pid(a.mgr, "Breakout")] = 0  # the removed game's trainer checkpointed
    b.mgr.tick()  # b's free slot takes Qbert
    a.mgr.tick()
    holders = {g: (h.box if h else None) for g, h in a.mgr.fleet.leases.holders(0.0).items()}
    assert holders["Breakout"] is None  # released, nobody's
    assert holders["Qbert"] == "b" and b.mgr.games["Qbert"].state is State.STARTING
    assert "Breakout" not in a.mgr.games


def test_claims_back_off_while_the_store_refuses_and_resume_after(
    tmp_path: Path, profile: Profile
) -> None:
    clock = FakeClock()
    a = Box(tmp_path, profile, "a", clock)
    a.store.engine.dispose()  # the same file, with a short busy timeout: a refusal is quick
    a.store.engine, _ = dialect.open_engine(tmp_path / "atari.db", 0.05)
    paced = a.mgr.fleet.claims
    blocker = sqlite3.connect(tmp_path / "atari.db", isolation_level=None, timeout=5)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file: every claim fails
    try:
        a.mgr.tick()
        assert (paced.failures, a.mgr.games) == (1, {})
        clock.advance(1.0)
        a.mgr.tick()  # 2 s after the first failure: not tried yet
        assert paced.failures == 1
        clock.advance(1.5)
        a.mgr.tick()
        assert paced.failures == 2  # tried and refused: now 4 s until the next try
        clock.advance(3.0)
        a.mgr.tick()
        assert paced.failures == 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    clock.advance(1.5)
    a.mgr.tick()
    assert paced.failures == 0 and states(a.mgr) == {"Pong": "STARTING", "Breakout": "STARTING"}


def test_a_game_whose_fence_cannot_be_written_goes_back_to_the_fleet(
    tmp_path: Path, profile: Profile
) -> None:
    a, b, clock = _boxes(tmp_path, profile)
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "runs" / "Pong").write_text("not a directory")  # the shared storage refuses
    a.mgr.tick()
    assert states(a.mgr) == {"Breakout": "STARTING"} and "Pong" not in a.mgr.fleet.held
    (tmp_path / "runs" / "Pong").unlink()
    clock.advance(2.0)  # past a's claim backoff
    b.mgr.tick()
    assert b.mgr.games["Pong"].state is State.STARTING  # another box runs it
