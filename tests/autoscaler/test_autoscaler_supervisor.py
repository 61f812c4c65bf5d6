"""The autoscaler plugged into the real supervisor: commands over ``handle_request`` and the
stability event. The OS seam is the process manager's fake (the real one has its own tests)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.autoscaler import Autoscaler
from daemon.clock import FakeClock
from daemon.process import State
from daemon.supervisor import Check, Supervisor
from tests.support.fake_os import FakeOs
from tests.support.profiles import MANAGER_PROFILE
from tests.support.supervised import wire


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[tuple[Supervisor, Autoscaler, FakeOs, FakeClock]]:
    profile = MANAGER_PROFILE.load(tmp_path / "p.yaml")
    s, scaler, fake, clock = wire(tmp_path, profile)
    s.loop_once()
    clock.advance(profile.startsecs)
    s.loop_once()
    yield s, scaler, fake, clock
    s.store.close()


def ask(s: Supervisor, cmd: str, **args: object) -> dict[str, Any]:
    """A request from another thread, answered by the loop (as the control socket does)."""
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(s.handle_request({"cmd": cmd, "args": args})))
    t.start()
    while t.is_alive():
        s.loop_once(timeout=0.05)
    return out


def running_pids(s: Supervisor) -> set[int]:
    return {g.proc.pid for g in s.manager.games.values()
            if g.state is State.RUNNING and g.proc is not None}  # fmt: skip


def test_level_pin_and_unpin_commands(sup: Any) -> None:
    s, scaler, fake, _ = sup
    shown = ask(s, "level")
    assert shown["ok"] and shown["result"]["level"] == "light"
    assert shown["result"]["pinned"] is None
    assert shown["result"]["recent"][-1]["reason"].startswith("start:")
    before = running_pids(s)
    assert len(before) == 2
    reply = ask(s, "pin", level="medium")
    assert reply["ok"], reply
    result = reply["result"]
    assert (result["level"], result["pinned"], result["level_changed"]) == (
        "medium",
        "medium",
        True,
    )
    assert result["message"].startswith("pin: operator pinned medium")
    # The supervisor carried the change out: graceful stop of the running games first.
    assert s.manager.level == "medium"
    assert {(p, signal.SIGTERM) for p in before} <= set(fake.signals)
    assert ask(s, "unpin")["result"]["pinned"] is None
    assert scaler.state == "medium"


def test_bad_pins_get_one_line_errors(sup: Any) -> None:
    s, _, _, _ = sup
    reply = ask(s, "pin", level="huge")
    assert (reply["ok"], reply["code"]) == (False, "bad_request")
    assert reply["error"] == "pin: unknown level 'huge'; choose one of light, medium, fallback"
    assert ask(s, "pin")["code"] == "bad_request"
    assert s.manager.level == "light"


def test_stability_event_promotes_and_the_games_restart_at_medium(sup: Any) -> None:
    s, scaler, fake, clock = sup
    before = running_pids(s)
    clock.advance(59 * 60)
    s.post(Check("stability"))
    s.loop_once()
    assert s.manager.level == "light" and not any(p in before for p, _ in fake.signals)
    clock.advance(60)
    s.post(Check("stability"))
    s.loop_once()
    assert scaler.state == "medium" and s.manager.level == "medium"
    assert {(p, signal.SIGTERM) for p in before} <= set(fake.signals)
    for pid in before:
        fake.exits[pid] = 0
    s.loop_once()
    spawned = [argv for pid, argv in fake.argv.items() if pid not in before]
    assert spawned and all(a[a.index("--num-envs") + 1] == "8" for a in spawned)
    status = ask(s, "status")["result"]
    assert (status["level"], status["level_state"]) == ("medium", "medium")
    # One story: the autoscaler's row says why, the supervisor's says which games restarted.
    rows = [r for r in s.store.decisions() if r["game"] is None and r["to_state"] == "medium"]
    assert [r["kind"] for r in rows] == ["level", "process"]
    assert rows[0]["reason"].startswith("promote: ")
    assert rows[1]["reason"].startswith("level change light -> medium (autoscaler promote): ")
    machine_rows = [r["reason"] for r in s.store.decisions() if r["game"] is None]
    assert len(set(machine_rows)) == len(machine_rows)  # nothing told twice


def test_the_crash_guard_counts_what_the_process_manager_calls_a_crash(sup: Any) -> None:
    s, scaler, fake, clock = sup
    pong, breakout = s.manager.games["Pong"].proc.pid, s.manager.games["Breakout"].proc.pid
    fake.exits[pong] = -signal.SIGSEGV  # died on its own
    assert ask(s, "stop", games=["Breakout"])["ok"]
    fake.exits[breakout] = -signal.SIGKILL  # the operator's stop, ended by a kill
    s.loop_once()
    crashes = scaler.repo.crash_times(0.0)
    assert crashes == (clock.now(),)
    outcomes = {r["pid"]: r["outcome"] for r in s.store.runs()}
    assert (outcomes[pong], outcomes[breakout]) == ("crash", "stopped")


def test_reload_hands_the_new_policy_to_the_autoscaler(sup: Any) -> None:
    s, scaler, _, clock = sup
    MANAGER_PROFILE.section("autoscaler", promote_after="10m").write(Path(s.profile.path))
    assert ask(s, "reload")["ok"]
    assert scaler.policy.promote_after == 600
    clock.advance(10 * 60)
    s.post(Check("stability"))
    s.loop_once()
    assert s.manager.level == "medium"
