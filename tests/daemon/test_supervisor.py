"""The supervisor's loop and control commands, with a fake clock and a fake OS seam."""

from __future__ import annotations

import io
import signal
import threading
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.level_source import FixedLevel
from daemon.logging import configure_logging
from daemon.process import ProcessManager, State
from daemon.store import Store, StoreError
from daemon.supervisor import Check, Shutdown, Supervisor
from tests.support.fake_os import FakeOs
from tests.support.profiles import MANAGER_PROFILE


class SwitchableLevel(FixedLevel):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.checks = 0

    def check(self, now: float) -> None:
        self.checks += 1
        self.name = "medium"


@pytest.fixture
def sup(tmp_path: Path) -> tuple[Supervisor, FakeOs, FakeClock]:
    profile = MANAGER_PROFILE.load(tmp_path / "p.yaml")
    clock, fake = FakeClock(), FakeOs()
    store = Store.open(tmp_path / "atari.db")
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs", "light")
    mgr.restore()
    s = Supervisor(profile, store, clock, mgr, FixedLevel("light"))
    s.loop_once()
    return s, fake, clock


def ask(s: Supervisor, cmd: str, **args: object) -> dict:
    """A request from another thread, answered by the loop (as the control socket does)."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(s.handle_request({"cmd": cmd, "args": args})))
    t.start()
    while t.is_alive():
        s.loop_once(timeout=0.05)
    return out


def test_status_lists_every_game(sup) -> None:
    s, _, _ = sup
    reply = ask(s, "status")
    assert reply["ok"] is True
    result = reply["result"]
    assert result["level"] == "light"
    assert {g["game"]: g["state"] for g in result["games"]} == {
        "CartPole-v1": "QUEUED", "Pong": "STARTING", "Breakout": "STARTING"}  # fmt: skip
    assert result["summary"] == "light · 2 running · 1 queued · 0 fatal"
    assert result["gpu"] == {"available": False, "reason": "no GPU", "gpus": []}


def test_unknown_game_and_bad_requests_get_one_line_errors(sup) -> None:
    s, _, _ = sup
    reply = ask(s, "stop", games=["Pongg"])
    assert reply["ok"] is False and reply["code"] == "unknown_game" and "Pongg" in reply["error"]
    assert ask(s, "stop")["code"] == "bad_request"
    assert ask(s, "frobnicate")["code"] == "unknown_command"
    assert s.handle_request({"cmd": 3})["code"] == "bad_request"


def test_stop_and_start_through_requests(sup) -> None:
    s, fake, _ = sup
    pong = s.manager.games["Pong"].proc.pid
    assert ask(s, "stop", games=["Pong"])["result"]["games"] == {"Pong": "STOPPING"}
    assert (pong, signal.SIGTERM) in fake.signals
    fake.exits[pong] = 0
    s.loop_once()
    assert s.manager.games["Pong"].state is State.STOPPED
    assert s.manager.games["CartPole-v1"].state is State.STARTING
    assert ask(s, "start", games=["Pong"])["result"]["games"] == {"Pong": "QUEUED"}


def test_start_of_a_stopping_game_takes_effect_once_it_has_stopped(sup) -> None:
    s, fake, clock = sup
    pong = s.manager.games["Pong"].proc.pid
    assert ask(s, "stop", games=["Pong"])["result"]["games"] == {"Pong": "STOPPING"}
    # supervisorctl semantics: the stop is not interrupted (the trainer is checkpointing)...
    assert ask(s, "start", games=["Pong"])["result"]["games"] == {"Pong": "STOPPING"}
    assert [sig for p, sig in fake.signals if p == pong] == [signal.SIGTERM, signal.SIGCONT]
    row = next(r for r in ask(s, "status")["result"]["games"] if r["game"] == "Pong")
    assert row["state"] == "STOPPING" and "queued once stopped" in row["reason"]
    # ...it ends in SIGKILL after stop_grace (30s) here, and only then does the start apply.
    clock.advance(29.9)
    s.loop_once()
    assert s.manager.games["Pong"].state is State.STOPPING
    clock.advance(0.1)
    s.loop_once()
    assert (pong, signal.SIGKILL) in fake.signals
    fake.exits[pong] = -signal.SIGKILL
    s.loop_once()
    g = s.manager.games["Pong"]
    # Pong has the longest target, so it takes its freed slot back ahead of CartPole.
    assert g.state is State.STARTING and g.proc.pid != pong
    assert s.manager.games["CartPole-v1"].state is State.QUEUED
    rows = s.store.decisions(game="Pong")
    pending = [r for r in rows if "queued once stopped" in r["reason"]]
    assert pending and pending[0]["kind"] == "operator"
    assert [r["to_state"] for r in rows[rows.index(pending[0]) :]] == [
        "STOPPING", "QUEUED", "STARTING"]  # fmt: skip


def test_stop_after_a_pending_start_wins_and_restart_also_waits(sup) -> None:
    s, fake, _ = sup
    pong, brk = (s.manager.games[n].proc.pid for n in ("Pong", "Breakout"))
    ask(s, "stop", games=["Pong", "Breakout"])
    ask(s, "start", games=["Pong"])
    ask(s, "stop", games=["Pong"])  # the last word is the operator's: stay stopped
    assert ask(s, "restart", games=["Breakout"])["result"]["games"] == {"Breakout": "STOPPING"}
    fake.exits[pong] = fake.exits[brk] = 0
    s.loop_once()
    assert s.manager.games["Pong"].state is State.STOPPED
    assert s.manager.games["Breakout"].state is State.STARTING


def test_registered_command_runs_in_the_loop(sup) -> None:
    s, _, _ = sup
    seen: list[str] = []
    s.register_command("hello", lambda args: {"thread": threading.current_thread().name,
                                              "echo": args["x"]})  # fmt: skip
    reply = ask(s, "hello", x=1)
    seen.append(reply["result"]["thread"])
    assert reply == {"ok": True, "result": {"thread": threading.main_thread().name, "echo": 1}}


def test_reload_with_a_broken_profile_keeps_the_running_one(sup) -> None:
    s, _, _ = sup
    before = s.profile
    MANAGER_PROFILE.but(startsecs="-5s").write(Path(s.profile.path))
    reply = ask(s, "reload")
    assert reply["ok"] is False and reply["code"] == "bad_profile"
    assert "startsecs: must be >= 0" in reply["error"]
    assert s.profile is before
    MANAGER_PROFILE.add_game("Boxing", 10).write(Path(s.profile.path))
    reply = ask(s, "reload")
    assert reply["ok"] is True and reply["result"]["changes"] == ["added Boxing"]
    assert s.manager.games["Boxing"].state is State.QUEUED


def test_stability_check_changes_the_level_with_a_graceful_restart(sup) -> None:
    s, fake, _ = sup
    source = SwitchableLevel("light")
    s.level_source = source
    old = {n: g.proc.pid for n, g in s.manager.games.items() if g.proc is not None}
    s.post(Check("stability"))
    s.loop_once()
    assert source.checks == 1 and s.manager.level == "medium"
    assert {p for p, sig in fake.signals if sig is signal.SIGTERM} == set(old.values())
    for pid in old.values():
        fake.exits[pid] = 0
    s.loop_once()
    assert all(g.state is State.STARTING for g in s.manager.games.values())
    # The level source decided; the supervisor records only the restart of the games.
    rows = [r for r in s.store.decisions() if r["game"] is None and r["to_state"] == "medium"]
    assert [(r["kind"], r["from_state"]) for r in rows] == [("process", "light")]
    assert rows[0]["reason"] == (
        "level change light -> medium (autoscaler decision): graceful stop of 2 running games; "
        "games restart with medium's settings (games=3, num_envs=8, batch_size=64)"
    )


def test_reload_applies_a_changed_start_level_with_a_fixed_level(sup) -> None:
    s, fake, _ = sup
    old = {g.proc.pid for g in s.manager.games.values() if g.proc is not None}
    MANAGER_PROFILE.but(start_level="medium").write(Path(s.profile.path))
    reply = ask(s, "reload")
    assert reply["ok"] is True and reply["result"]["changes"] == ["start_level light -> medium"]
    assert s.level_source.current_level() == s.manager.level == "medium"
    assert {p for p, sig in fake.signals if sig is signal.SIGTERM} == old
    for pid in old:
        fake.exits[pid] = 0
    s.loop_once()
    argv = [fake.argv[g.proc.pid] for g in s.manager.games.values() if g.proc is not None]
    assert len(argv) == 3 and all(a[a.index("--num-envs") + 1] == "8" for a in argv)
    rows = [(r["kind"], r["reason"].split(":")[0]) for r in s.store.decisions() if not r["game"]]
    assert rows[-2:] == [
        ("process", "level change light -> medium (reload)"),
        ("operator", "reload"),
    ]
    last = [r for r in s.store.decisions() if not r["game"]][-1]
    assert last["reason"] == "reload: start_level light -> medium"


def test_status_counts_reboots_not_the_first_boot(sup) -> None:
    s, _, clock = sup
    now = clock.now()
    s.store.record_boot("boot-1", now - 60, reason="first", previous_boot_id=None)
    assert ask(s, "status")["result"]["boots_last_hour"] == 0  # first boot seen: no reboot
    s.store.record_boot("boot-2", now - 30, reason="reboot", previous_boot_id="boot-1")
    # Over an hour ago: not counted.
    s.store.record_boot("boot-3", now - 3700, reason="reboot", previous_boot_id="boot-0")
    assert ask(s, "status")["result"]["boots_last_hour"] == 1


def test_shutdown_waits_for_every_child_and_marks_a_clean_stop(sup, tmp_path: Path) -> None:
    s, fake, _ = sup
    run_id = s.store.daemon_started(1, "boot", 0.0)
    s.daemon_run_id = run_id
    s.post(Shutdown("test"))
    s.loop_once()
    assert s.stopping and not s.stopped
    for g in s.manager.games.values():
        if g.proc is not None:
            fake.exits[g.proc.pid] = 0
    s.loop_once()
    assert s.stopped
    assert s.store.last_daemon_run()["clean_shutdown"] is True
    assert ask(s, "status")["code"] == "shutting_down"


def test_a_failing_event_is_logged_and_the_loop_goes_on(sup) -> None:
    s, _, _ = sup
    buf = io.StringIO()
    configure_logging(buf, tty=False, journal=True)
    s.post(object())
    s.post(Check("nonexistent"))
    s.loop_once()
    assert "<3>event handling failed" in buf.getvalue()
    assert ask(s, "status")["ok"] is True


def test_a_failing_loop_pass_does_not_kill_the_daemon(sup) -> None:
    s, fake, _ = sup
    buf = io.StringIO()
    configure_logging(buf, tty=False, journal=True)
    real_tick, calls = s.manager.tick, []

    def flaky_tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("atari.db: database is locked by another process")
        real_tick()

    s.manager.tick = flaky_tick  # type: ignore[method-assign]
    for g in s.manager.games.values():
        if g.proc is not None:
            fake.exits[g.proc.pid] = 0
    s.post(Shutdown("test"))
    assert s.run(wake=0.01) == 0
    assert len(calls) >= 2 and s.stopped
    assert "<3>main loop pass failed; retrying" in buf.getvalue()


def test_reload_of_the_current_levels_settings_restarts_the_running_games(sup) -> None:
    s, fake, _ = sup
    old = {g.proc.pid for g in s.manager.games.values() if g.proc is not None}
    MANAGER_PROFILE.level("light", games=1, num_envs=6).write(Path(s.profile.path))
    reply = ask(s, "reload")
    assert reply["ok"] is True
    assert reply["result"]["changes"] == ["level light settings changed: 2 running games restart"]
    assert {p for p, sig in fake.signals if sig is signal.SIGTERM} == old
    for pid in old:
        fake.exits[pid] = 0
    s.loop_once()
    argv = [fake.argv[g.proc.pid] for g in s.manager.games.values() if g.proc is not None]
    assert len(argv) == 1 and argv[0][argv[0].index("--num-envs") + 1] == "6"
    # An unchanged profile restarts nothing, nor does a raised slot count: the slot just fills.
    assert ask(s, "reload")["result"]["changes"] == []
    signals = len(fake.signals)
    MANAGER_PROFILE.level("light", games=2, num_envs=6).write(Path(s.profile.path))
    assert ask(s, "reload")["result"]["changes"] == []
    assert len(fake.signals) == signals
    assert sum(g.proc is not None for g in s.manager.games.values()) == 2


def test_the_telemetry_job_stores_pressure_and_status_shows_it(sup) -> None:
    from sqlalchemy import select

    from daemon.store import schema

    s, _, clock = sup
    s.post(Check("telemetry"))
    s.loop_once(timeout=0.05)
    with s.store.engine.connect() as conn:
        rows = conn.execute(select(schema.telemetry.c.kind, schema.telemetry.c.payload)).all()
    stored = {kind: payload for kind, payload in rows}
    # This machine's real /proc: its PSI files when the kernel has them, always MemAvailable.
    assert stored["pressure"]["mem_total_mb"] > 0
    result = ask(s, "status")["result"]
    assert result["pressure"] == stored["pressure"]
    # Stored bounded like the rest: retention prunes it.
    clock.advance(s.profile.telemetry_retention + 1)
    s.post(Check("telemetry"))
    s.loop_once(timeout=0.05)
    with s.store.engine.connect() as conn:
        assert len(conn.execute(select(schema.telemetry.c.at)
                                .where(schema.telemetry.c.kind == "pressure")).all()) == 1
