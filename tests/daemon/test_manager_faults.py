"""Process-manager faults (issue 16): a store that fails right after a spawn, an operator stop
during a level drain, a trainer that never writes a heartbeat, the restore wording. A fake clock
and a fake OS seam; the store is a real SQLite file, made to fail for real (another connection
holds its write lock past the busy timeout)."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.config import Profile, load_profile
from daemon.process import ProcessManager, State
from daemon.store import Store, StoreError
from tests.support.fake_os import FakeOs
from tests.support.profiles import MANAGER_PROFILE

PROFILE = MANAGER_PROFILE.text()


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE)
    return load_profile(path)


@contextlib.contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Another process's write transaction: every write of the daemon's store waits out its
    busy timeout and fails with 'database is locked'."""
    blocker = sqlite3.connect(db, isolation_level=None, timeout=5)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def spawned(fake: FakeOs, game: str) -> list[int]:
    return [p for p, argv in fake.argv.items() if argv[argv.index("--game") + 1] == game]


def test_a_failed_store_write_after_a_spawn_never_starts_a_second_trainer(
    tmp_path: Path, profile: Profile
) -> None:
    clock, fake = FakeClock(), FakeOs()
    store = Store.open(tmp_path / "atari.db", busy_timeout_s=0.05)
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs", "light")
    mgr.restore()
    with write_locked(tmp_path / "atari.db"):
        for _ in range(4):
            # The supervisor's loop logs a failing pass and runs the next one.
            with contextlib.suppress(StoreError):
                mgr.tick()
            clock.advance(1.0)
        by_game = {g: spawned(fake, g) for g in ("Pong", "Breakout", "CartPole-v1")}
        assert by_game == {"Pong": by_game["Pong"][:1], "Breakout": by_game["Breakout"][:1],
                           "CartPole-v1": []}, by_game  # fmt: skip
        # The processes are tracked: they are polled, signalled, and counted in the slots.
        for game in ("Pong", "Breakout"):
            g = mgr.games[game]
            assert g.proc is not None and g.proc.pid == by_game[game][0], (game, g.state)
            assert g.state in (State.STARTING, State.RUNNING)
    # Once the store takes writes again, the runs are recorded with the right pids, in order.
    mgr.tick()
    runs = {(r["game"], r["pid"]) for r in store.runs()}
    assert runs == {("Pong", by_game["Pong"][0]), ("Breakout", by_game["Breakout"][0])}
    assert store.games()["Pong"]["pid"] == by_game["Pong"][0]
    starts = [d for d in store.decisions(game="Pong") if d["to_state"] == "STARTING"]
    assert len(starts) == 1 and f"pid {by_game['Pong'][0]}" in starts[0]["reason"]


def test_an_exit_while_the_store_fails_is_recorded_once_it_works_again(
    tmp_path: Path, profile: Profile
) -> None:
    clock, fake = FakeClock(), FakeOs()
    store = Store.open(tmp_path / "atari.db", busy_timeout_s=0.05)
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs", "light")
    mgr.restore()
    mgr.tick()
    pong = mgr.games["Pong"].proc.pid
    with write_locked(tmp_path / "atari.db"):
        fake.exits[pong] = -signal.SIGKILL
        with contextlib.suppress(StoreError):
            mgr.tick()
        assert mgr.games["Pong"].state is State.BACKOFF
        clock.advance(10.0)
        with contextlib.suppress(StoreError):
            mgr.tick()  # the retry starts one new trainer, tracked while the store still fails
        assert len(spawned(fake, "Pong")) == 2 and mgr.games["Pong"].proc is not None
    mgr.tick()
    rows = store.runs("Pong")
    assert [(r["pid"], r["signal"], r["outcome"]) for r in rows] == [
        (pong, "SIGKILL", "crash"), (spawned(fake, "Pong")[1], None, None)]  # fmt: skip


def test_the_manager_refuses_a_second_live_process_for_one_game(
    tmp_path: Path, profile: Profile
) -> None:
    clock, fake = FakeClock(), FakeOs()
    store = Store.open(tmp_path / "atari.db")
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs", "light")
    mgr.restore()
    mgr.tick()
    g = mgr.games["Pong"]
    first = g.proc.pid
    # Whatever path asks for a spawn of a game that still has a process: it is refused.
    g.state = State.QUEUED
    mgr.tick()
    assert spawned(fake, "Pong") == [first] and g.proc.pid == first


@pytest.fixture
def env(tmp_path: Path, profile: Profile) -> tuple[ProcessManager, FakeOs, FakeClock, Store]:
    clock, fake = FakeClock(), FakeOs()
    store = Store.open(tmp_path / "atari.db")
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs", "light")
    mgr.restore()
    return mgr, fake, clock, store


@pytest.mark.parametrize("operator", ["stop", "stop then restart", "stop then start"])
def test_an_operator_stop_during_a_level_drain_starts_nothing_at_the_new_level(
    env, operator: str
) -> None:
    mgr, fake, _clock, _ = env
    mgr.tick()  # Pong and Breakout run at light (2 slots); CartPole waits
    pong, brk = mgr.games["Pong"].proc.pid, mgr.games["Breakout"].proc.pid
    mgr.change_level("medium", "test")
    mgr.stop(["Pong"])  # the operator stops a game that is draining
    if operator == "stop then restart":
        mgr.restart(["Pong"])
    elif operator == "stop then start":
        mgr.start(["Pong"])
    fake.exits[brk] = 0
    mgr.tick()
    # Pong's light trainer still checkpoints: no medium trainer may start beside it.
    live = sorted(g.name for g in mgr.games.values() if g.proc is not None)
    assert live == ["Pong"], {n: g.state.value for n, g in mgr.games.items()}
    fake.exits[pong] = 0
    mgr.tick()
    new = {n: g.proc.pid for n, g in mgr.games.items() if g.proc is not None}
    want = {"Breakout", "CartPole-v1"} | ({"Pong"} if operator != "stop" else set())
    assert set(new) == want
    for p in new.values():
        assert fake.argv[p][fake.argv[p].index("--num-envs") + 1] == "8"  # medium's settings
    if operator == "stop":
        assert mgr.games["Pong"].state is State.STOPPED


def test_a_trainer_that_never_writes_a_heartbeat_is_caught_as_frozen(env) -> None:
    mgr, _fake, clock, _store = env
    mgr.tick()
    clock.advance(5)
    mgr.tick()
    g = mgr.games["Pong"]
    assert g.state is State.RUNNING
    # A heartbeat of an earlier run (another pid) is no sign of life of this one.
    d = mgr.run_dir("Pong")
    d.mkdir(parents=True, exist_ok=True)
    (d / "progress.json").write_text(json.dumps({"pid": 1, "updated_at": clock.now() + 1e6}))
    clock.advance(95)  # 100 s after the start: exactly frozen_after is not yet frozen
    mgr.health()
    assert g.state is State.RUNNING
    clock.advance(1)
    mgr.health()
    assert g.state is State.STOPPING, g.reason
    assert g.reason.startswith("frozen: heartbeat 101s old (frozen_after=100s)")


def _checkpoint(run_dir: Path) -> None:
    from trainer.checkpoint import encode

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    payload = encode({"stats": {"episodes": 0, "window": []}, "time": 1.0})
    (run_dir / "checkpoints" / "ckpt-000000001.pt").write_bytes(payload)


def test_restore_says_a_game_with_a_checkpoint_resumes_also_at_episode_0(
    tmp_path: Path, profile: Profile
) -> None:
    store = Store.open(tmp_path / "atari.db")
    runs = tmp_path / "runs"
    _checkpoint(runs / "Pong")
    (runs / "Pong" / "progress.json").write_text(json.dumps({"episodes": 0, "pid": 1}))
    _checkpoint(runs / "Breakout")
    (runs / "Breakout" / "progress.json").write_text(json.dumps({"episodes": 7, "pid": 2}))
    mgr = ProcessManager(profile, store, FakeClock(), FakeOs(), runs, tmp_path / "logs", "light")
    mgr.restore()
    reasons = {n: g.reason for n, g in mgr.games.items()}
    assert "resumes from its checkpoint" in reasons["Pong"], reasons
    assert "not started" not in reasons["Pong"]
    assert "7/30 episodes" in reasons["Breakout"]
    assert "resumes from its checkpoint" in reasons["Breakout"]
    assert reasons["CartPole-v1"] == "restored: not started yet"


@pytest.mark.parametrize(
    "bad", ['{"episodes": "abc"}', '{"episodes": NaN}', '{"episodes": -5, "avg100": "x"}',
            '{"episodes": 1e400}', '["not", "an", "object"]', '{"episodes": ' + "9" * 5000 + "}"],
)  # fmt: skip
def test_a_malformed_progress_json_never_wedges_supervision(
    tmp_path: Path, profile: Profile, bad: str
) -> None:
    clock, fake = FakeClock(), FakeOs()
    store = Store.open(tmp_path / "atari.db")
    runs = tmp_path / "runs"
    (runs / "Pong").mkdir(parents=True)
    (runs / "Pong" / "progress.json").write_text(bad)
    mgr = ProcessManager(profile, store, clock, fake, runs, tmp_path / "logs", "light")
    mgr.restore()  # the same read at daemon start
    mgr.tick()
    pong, brk = mgr.games["Pong"].proc.pid, mgr.games["Breakout"].proc.pid
    (runs / "Pong" / "progress.json").write_text(bad)  # what the child left when it exited
    fake.exits[pong] = fake.exits[brk] = 1
    mgr.tick()  # Pong's exit is handled first; Breakout, after it, must be polled too
    mgr.health()
    assert mgr.games["Pong"].state is State.BACKOFF, mgr.games["Pong"].reason
    assert mgr.games["Breakout"].state is State.BACKOFF
    assert [r["outcome"] for r in store.runs("Breakout")] == ["crash"]
