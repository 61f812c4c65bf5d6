"""Process-manager decisions with a fake clock and a fake OS seam (no sleeps, no processes).

The real seam (spawn, signals, wait) is exercised by tests/daemon/test_integration.py.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from daemon.config import Profile
from daemon.process import ProcessManager, State
from tests.support.fake_os import FakeOs, ManagerParts, build_manager, pid, states, write_progress
from tests.support.profiles import MANAGER_PROFILE


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    return MANAGER_PROFILE.load(tmp_path / "p.yaml")


@pytest.fixture
def env(tmp_path: Path, profile: Profile) -> ManagerParts:
    return build_manager(tmp_path, profile)


def test_queue_runs_longest_target_first_in_the_level_slots(env) -> None:
    mgr, fake, clock, _ = env
    mgr.tick()
    assert states(mgr) == {"Pong": "STARTING", "Breakout": "STARTING", "CartPole-v1": "QUEUED"}
    argv = fake.argv[pid(mgr, "Pong")]
    assert argv[argv.index("--num-envs") + 1] == "4" and "--buffer-gb" in argv
    clock.advance(4.9)
    mgr.tick()
    assert mgr.games["Pong"].state is State.STARTING
    clock.advance(0.1)
    mgr.tick()
    assert mgr.games["Pong"].state is State.RUNNING  # stayed up startsecs


def test_crash_backs_off_exponentially_with_a_cap_and_records_the_signal(env) -> None:
    mgr, fake, clock, store = env
    mgr.tick()
    clock.advance(5)
    mgr.tick()
    waits = []
    for _ in range(2):
        fake.exits[pid(mgr, "Pong")] = -signal.SIGKILL
        mgr.tick()
        g = mgr.games["Pong"]
        assert g.state is State.BACKOFF
        waits.append(g.retry_at - clock.monotonic())
        clock.advance(waits[-1] - 0.1)
        mgr.tick()
        assert g.state is State.BACKOFF
        clock.advance(0.1)
        mgr.tick()
        assert g.state is State.STARTING
    assert waits == [10.0, 20.0]
    run = store.runs("Pong")[0]
    assert run["signal"] == "SIGKILL" and run["exit_code"] is None
    assert "killed by SIGKILL" in run["reason"] and run["outcome"] == "crash"
    # The CartPole game did not take Pong's slot while Pong was backing off.
    assert mgr.games["CartPole-v1"].state is State.QUEUED


def test_backoff_is_capped_at_max(env) -> None:
    mgr, fake, clock, _ = env
    mgr.policy = dataclasses.replace(mgr.policy, storm_crashes=100)  # no FATAL in this test
    mgr.tick()
    waits = []
    for _ in range(5):
        fake.exits[pid(mgr, "Pong")] = 1
        mgr.tick()
        waits.append(mgr.games["Pong"].retry_at - clock.monotonic())
        clock.advance(waits[-1])
        mgr.tick()
    assert waits == [10.0, 20.0, 40.0, 40.0, 40.0]


def test_backoff_resets_after_healthy_running(env) -> None:
    mgr, fake, clock, _ = env
    mgr.tick()
    fake.exits[pid(mgr, "Pong")] = 1
    mgr.tick()
    clock.advance(10)
    mgr.tick()
    assert mgr.games["Pong"].delay == 20.0
    clock.advance(600)
    write_progress(mgr, "Pong", pid=pid(mgr, "Pong"), status="running", updated_at=clock.now())
    mgr.tick()
    mgr.health()
    assert mgr.games["Pong"].state is State.RUNNING
    assert mgr.games["Pong"].delay is None
    fake.exits[pid(mgr, "Pong")] = 1
    mgr.tick()
    assert mgr.games["Pong"].retry_at - clock.monotonic() == 10.0


def test_crash_storm_ends_in_fatal_naming_the_setting_and_start_clears_it(env) -> None:
    mgr, fake, clock, store = env
    mgr.tick()
    for _ in range(3):
        fake.exits[pid(mgr, "Pong")] = 1
        mgr.tick()
        clock.advance(40)
        mgr.tick()
    g = mgr.games["Pong"]
    assert g.state is State.FATAL
    assert "too many crashes (storm_crashes=3 in storm_window=600s)" in g.reason
    assert store.games()["Pong"]["state"] == "FATAL"
    # The slot went to the next game in the queue.
    assert mgr.games["CartPole-v1"].state in (State.STARTING, State.RUNNING)
    assert mgr.start(["Pong"]) == {"Pong": "QUEUED"}
    assert any(d["kind"] == "operator" for d in store.decisions(game="Pong"))


def test_crashes_spread_out_do_not_storm(env) -> None:
    mgr, fake, clock, _ = env
    mgr.tick()
    for _ in range(5):
        fake.exits[pid(mgr, "Pong")] = 1
        mgr.tick()
        clock.advance(700)  # longer than storm_window
        mgr.tick()
    assert mgr.games["Pong"].state is State.STARTING


@pytest.mark.parametrize("code", [2, 3, 4])
def test_config_error_exit_is_fatal_at_once(env, code: int) -> None:
    mgr, fake, _, _ = env
    mgr.tick()
    fake.exits[pid(mgr, "Pong")] = code
    mgr.tick()
    g = mgr.games["Pong"]
    assert g.state is State.FATAL and f"exit code {code}" in g.reason


def test_frozen_heartbeat_means_graceful_restart(env) -> None:
    mgr, fake, clock, store = env
    mgr.tick()
    clock.advance(5)
    mgr.tick()
    old = pid(mgr, "Pong")
    write_progress(mgr, "Pong", pid=old, status="running", episodes=3, updated_at=clock.now())
    clock.advance(100)
    mgr.health()
    assert mgr.games["Pong"].state is State.RUNNING  # exactly frozen_after is not yet frozen
    clock.advance(1)
    mgr.health()
    assert mgr.games["Pong"].state is State.STOPPING
    # SIGCONT right after SIGTERM: a SIGSTOPped trainer wakes up to act on it and checkpoint.
    assert fake.signals[-2:] == [(old, signal.SIGTERM), (old, signal.SIGCONT)]
    fake.exits[old] = 0
    mgr.tick()
    assert mgr.games["Pong"].state is State.STARTING and pid(mgr, "Pong") != old
    assert any(
        "frozen: heartbeat 101s old (frozen_after=100s)" in d["reason"]
        for d in store.decisions(game="Pong")
    )
    run = store.runs("Pong")[0]
    assert run["reason"].startswith("frozen: heartbeat") and run["outcome"] == "stopped"


def test_target_reached_is_done_and_the_next_game_starts(env) -> None:
    mgr, fake, _clock, store = env
    mgr.tick()
    write_progress(mgr, "Breakout", pid=pid(mgr, "Breakout"), status="done", episodes=30)
    fake.exits[pid(mgr, "Breakout")] = 0
    mgr.tick()
    assert mgr.games["Breakout"].state is State.DONE
    assert mgr.games["CartPole-v1"].state is State.STARTING
    assert store.games()["Breakout"]["episodes"] == 30


def test_graceful_stop_is_parallel_then_sigkill_after_stop_grace(env) -> None:
    mgr, fake, clock, _ = env
    mgr.tick()
    pids = {pid(mgr, "Pong"), pid(mgr, "Breakout")}
    assert mgr.shutdown("daemon shutdown") == 2
    assert {p for p, s in fake.signals if s is signal.SIGTERM} == pids  # both before any wait
    clock.advance(29)
    mgr.tick()
    assert not [s for _, s in fake.signals if s is signal.SIGKILL]
    fake.exits[pid(mgr, "Pong")] = 0
    clock.advance(1)
    mgr.tick()
    assert [p for p, s in fake.signals if s is signal.SIGKILL] == [pid(mgr, "Breakout")]
    fake.exits[pid(mgr, "Breakout")] = -signal.SIGKILL
    mgr.tick()
    assert not mgr.any_live()
    assert states(mgr) == {"Pong": "QUEUED", "Breakout": "QUEUED", "CartPole-v1": "QUEUED"}


def test_level_change_restarts_games_with_the_new_settings(env) -> None:
    mgr, fake, _clock, _ = env
    mgr.tick()
    old = pid(mgr, "Pong")
    mgr.change_level("medium", "stable")
    mgr.tick()
    assert mgr.games["CartPole-v1"].state is State.QUEUED  # nothing starts while draining
    fake.exits[old] = 0
    fake.exits[pid(mgr, "Breakout")] = 0
    mgr.tick()
    assert all(g.state is State.STARTING for g in mgr.games.values())
    argv = fake.argv[pid(mgr, "Pong")]
    assert argv[argv.index("--num-envs") + 1] == "8"


def test_operator_stop_and_unknown_game(env) -> None:
    mgr, fake, _, _ = env
    mgr.tick()
    assert mgr.unknown(["Pong", "Pongg"]) == ["Pongg"]
    mgr.stop(["Pong"])
    fake.exits[pid(mgr, "Pong")] = 0
    mgr.tick()
    assert mgr.games["Pong"].state is State.STOPPED
    assert mgr.games["CartPole-v1"].state is State.STARTING  # the freed slot is used


def test_restore_keeps_done_and_stopped_and_requeues_the_rest(tmp_path, profile, env) -> None:
    mgr, _fake, clock, store = env
    mgr.tick()
    mgr.stop(["Breakout"])
    write_progress(mgr, "Pong", pid=1, status="done", episodes=50)
    fresh = ProcessManager(
        profile, store, clock, FakeOs(), tmp_path / "runs", tmp_path / "logs", "light"
    )
    fresh.restore()
    assert fresh.games["Pong"].state is State.DONE
    assert fresh.games["Breakout"].state is State.QUEUED  # it was still STOPPING, not STOPPED
    assert fresh.games["CartPole-v1"].state is State.QUEUED


def test_level_change_drain_starts_no_backoff_retry_or_pending_restart(env) -> None:
    mgr, fake, clock, _ = env
    mgr.tick()
    clock.advance(5)
    mgr.tick()
    fake.exits[pid(mgr, "Pong")] = 1  # Pong crashes: BACKOFF, retry in 10 s
    mgr.tick()
    assert mgr.games["Pong"].state is State.BACKOFF
    mgr.restart(["Breakout"])  # STOPPING, to start again at once once it exits
    old_breakout = pid(mgr, "Breakout")
    mgr.change_level("medium", "stable")
    clock.advance(11)
    mgr.tick()  # Pong's backoff is over, but the old level is still draining
    assert mgr.games["Pong"].state is State.QUEUED
    assert mgr.games["CartPole-v1"].state is State.QUEUED
    fake.exits[old_breakout] = 0
    mgr.tick()  # the drain is over: every game starts with the new level's settings
    assert all(g.state is State.STARTING for g in mgr.games.values())
    assert len(mgr.games["Pong"].crashes) == 1  # the crash history is kept
    for name in mgr.games:
        argv = fake.argv[pid(mgr, name)]
        assert argv[argv.index("--num-envs") + 1] == "8"


def test_the_health_job_rotates_a_game_log_past_max_bytes(env) -> None:
    mgr, _fake, _clock, _ = env
    mgr.tick()  # Pong and Breakout start: their logs are opened
    limits = mgr.profile.game_logs
    log_path = mgr.log_path("Pong")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_bytes(b"x" * (limits.max_bytes + 1))
    small = mgr.log_path("Breakout")
    small.write_bytes(b"y" * 10)
    mgr.health()
    rotated = log_path.with_name(log_path.name + ".1")
    assert rotated.stat().st_size == limits.max_bytes + 1 and log_path.stat().st_size == 0
    assert small.read_bytes() == b"y" * 10  # under the limit: left alone
    assert not small.with_name(small.name + ".1").exists()


def _crash_far_apart(mgr: ProcessManager, fake: FakeOs, clock, game: str, episodes: int) -> None:
    """One crash of ``game`` with ``episodes`` in its heartbeat, then the backoff wait, and more
    than storm_window later (the time-window storm rule never sees two of these together)."""
    write_progress(mgr, game, pid=pid(mgr, game), status="running", episodes=episodes,
                   updated_at=clock.now())  # fmt: skip
    fake.exits[pid(mgr, game)] = 1
    mgr.tick()
    clock.advance(700)
    mgr.tick()


def test_restarts_without_episode_progress_end_in_fatal_naming_the_setting(tmp_path) -> None:
    profile = MANAGER_PROFILE.section("backoff", max_no_progress_restarts=3).load(
        tmp_path / "p.yaml"
    )
    mgr, fake, clock, store = build_manager(tmp_path, profile)
    mgr.tick()
    # The first run got from episode 0 to 7 (progress); the next three add nothing.
    for _ in range(3):
        _crash_far_apart(mgr, fake, clock, "Pong", episodes=7)
        assert mgr.games["Pong"].state is State.STARTING
    _crash_far_apart(mgr, fake, clock, "Pong", episodes=7)
    g = mgr.games["Pong"]
    assert g.state is State.FATAL
    assert "max_no_progress_restarts=3" in g.reason and "episode 7" in g.reason
    assert "\n" not in g.reason
    assert store.games()["Pong"]["state"] == "FATAL"
    # An operator start clears the count with the FATAL.
    mgr.start(["Pong"])
    assert mgr.games["Pong"].no_progress_restarts == 0


def test_crashes_with_progress_keep_the_normal_backoff(tmp_path) -> None:
    profile = MANAGER_PROFILE.section("backoff", max_no_progress_restarts=2).load(
        tmp_path / "p.yaml"
    )
    mgr, fake, clock, _ = build_manager(tmp_path, profile)
    mgr.tick()
    for episodes in range(1, 7):
        _crash_far_apart(mgr, fake, clock, "Pong", episodes=episodes * 5)
        assert mgr.games["Pong"].state is State.STARTING, mgr.games["Pong"].reason
    assert mgr.games["Pong"].no_progress_restarts == 0


def test_frozen_restarts_without_progress_count_too(tmp_path) -> None:
    profile = MANAGER_PROFILE.section("backoff", max_no_progress_restarts=2).load(
        tmp_path / "p.yaml"
    )
    mgr, fake, clock, _ = build_manager(tmp_path, profile)
    mgr.tick()
    for i in range(3):  # the first run got to episode 4; the next two add nothing
        if i == 2:
            assert mgr.games["Pong"].no_progress_restarts == 1
        old = pid(mgr, "Pong")
        clock.advance(5)
        mgr.tick()
        write_progress(mgr, "Pong", pid=old, episodes=4, updated_at=clock.now())
        clock.advance(101)
        mgr.health()
        assert mgr.games["Pong"].state is State.STOPPING
        fake.exits[old] = 0
        mgr.tick()
    g = mgr.games["Pong"]
    assert g.state is State.FATAL and "max_no_progress_restarts=2" in g.reason
