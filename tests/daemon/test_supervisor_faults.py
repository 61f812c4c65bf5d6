"""Supervisor faults (issue 16): a reload that fails part-way, reload of targets and removed
games, requests that arrive as the loop exits. Real store, real autoscaler and scheduler jobs;
the OS seam is the fake one (the real daemon runs in test_daemon_faults.py)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.autoscaler import Autoscaler
from daemon.checks import Checks
from daemon.clock import FakeClock
from daemon.config import Profile, load_profile
from daemon.process import State
from daemon.supervisor import Shutdown, Supervisor
from tests.support.fake_os import FakeOs
from tests.support.profiles import MANAGER_PROFILE
from tests.support.supervised import wire

PROFILE = MANAGER_PROFILE.text()


def build(tmp_path: Path) -> tuple[Supervisor, Autoscaler, Checks, FakeOs, FakeClock]:
    """The daemon's parts, wired as daemon/app.py wires them."""
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE)
    profile = load_profile(path)
    sup, scaler, fake, clock = wire(tmp_path, profile)
    checks = Checks(profile.checks, sup.post)
    sup.on_reload.append(lambda p: checks.prepare_reschedule(p.checks))
    sup.loop_once()
    return sup, scaler, checks, fake, clock


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Supervisor, Autoscaler, Checks, FakeOs, FakeClock]]:
    built = build(tmp_path)
    yield built
    built[0].store.close()


def ask(s: Supervisor, cmd: str, **args: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(s.handle_request({"cmd": cmd, "args": args})))
    t.start()
    while t.is_alive():
        s.loop_once(timeout=0.05)
    return out


def what_each_part_runs(s: Supervisor, scaler: Autoscaler, checks: Checks) -> dict[str, Any]:
    return {
        "supervisor": s.profile,
        "manager": (s.manager.profile, sorted(s.manager.games)),
        "autoscaler": scaler.policy,
        "checks": checks.intervals,
    }


def broken(profile: Profile, part: str) -> Profile:
    """A profile that adds a game and changes every part, with one defect the loader would
    refuse; built in code, as a loader gap would let it through."""
    p = dataclasses.replace(
        profile,
        games=(*profile.games, dataclasses.replace(profile.games[0], name="Boxing")),
        gpu_cost_per_hour=9.0,
        checks=dataclasses.replace(profile.checks, report=600.0),
        autoscaler=dataclasses.replace(profile.autoscaler, promote_after=60.0),
    )
    if part == "autoscaler":
        return dataclasses.replace(
            p, autoscaler=dataclasses.replace(p.autoscaler, ladder=("light", "light"))
        )
    return dataclasses.replace(p, checks=dataclasses.replace(p.checks, health=1e15))


@pytest.mark.parametrize("part", ["autoscaler", "checks"])
def test_a_reload_that_fails_part_way_leaves_every_part_on_the_old_profile(
    parts, part: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, scaler, checks, _fake, clock = parts
    before = what_each_part_runs(s, scaler, checks)
    bad = broken(s.profile, part)
    monkeypatch.setattr("daemon.supervisor.load_profile", lambda _path: bad)
    reply = ask(s, "reload")
    assert reply["ok"] is False, reply
    assert what_each_part_runs(s, scaler, checks) == before
    # ...and the daemon goes on supervising on it: no pass fails, the games keep their slots.
    clock.advance(10)
    s.loop_once()
    assert sum(g.state in (State.STARTING, State.RUNNING) for g in s.manager.games.values()) == 2


def test_a_good_reload_moves_every_part_to_the_new_profile(parts, monkeypatch) -> None:
    s, scaler, checks, _fake, _clock = parts
    good = dataclasses.replace(
        broken(s.profile, "checks"), checks=dataclasses.replace(s.profile.checks, report=600.0)
    )
    monkeypatch.setattr("daemon.supervisor.load_profile", lambda _path: good)
    assert ask(s, "reload")["ok"] is True
    after = what_each_part_runs(s, scaler, checks)
    names = sorted(g.name for g in good.games)
    assert after == {"supervisor": good, "manager": (good, names),
                     "autoscaler": good.autoscaler, "checks": good.checks}  # fmt: skip


def test_reload_requeues_a_done_game_whose_target_was_raised_and_drops_a_removed_one(
    parts,
) -> None:
    s, _scaler, _checks, fake, _clock = parts
    brk = s.manager.games["Breakout"].proc.pid
    run_dir = s.manager.run_dir("Breakout")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "progress.json").write_text(json.dumps({"pid": brk, "status": "done",
                                                       "episodes": 30}))  # fmt: skip
    fake.exits[brk] = 0
    s.loop_once()
    assert s.manager.games["Breakout"].state is State.DONE
    pong = s.manager.games["Pong"].proc.pid
    text = PROFILE.replace("Breakout: 30", "Breakout: 40").replace("  Pong: 50\n", "")
    Path(s.profile.path).write_text(text)
    reply = ask(s, "reload")
    assert reply["ok"] is True, reply
    changes = reply["result"]["changes"]
    assert "Breakout target 30 -> 40" in changes and "removed Pong (stopped)" in changes
    assert s.manager.games["Breakout"].state in (State.QUEUED, State.STARTING)
    assert s.manager.games["Pong"].state is State.STOPPING  # graceful: it checkpoints first
    fake.exits[pong] = 0
    s.loop_once()
    status = ask(s, "status")["result"]
    assert [g["game"] for g in status["games"]] == ["CartPole-v1", "Breakout"]
    assert ask(s, "start", games=["Pong"])["code"] == "unknown_game"
    assert {g["game"]: g["state"] for g in status["games"]}["Breakout"] == "STARTING"


def test_a_request_that_arrives_as_the_loop_exits_is_answered_shutting_down(parts) -> None:
    s, _scaler, _checks, fake, _clock = parts
    run_id = s.store.daemon_started(1, "boot", 0.0)
    s.daemon_run_id = run_id
    late: dict[str, Any] = {}
    real = s.store.daemon_stopped

    def stopped_while_a_request_arrives(*args: Any, **kwargs: Any) -> None:
        # The last loop pass is finishing; a worker thread hands in a request right now.
        t = threading.Thread(target=lambda: late.update(
            s.handle_request({"cmd": "status", "args": {}}, timeout=3.0)))  # fmt: skip
        t.start()
        t.join(0.5)
        real(*args, **kwargs)
        late["thread"] = t

    s.store.daemon_stopped = stopped_while_a_request_arrives  # type: ignore[method-assign]
    for g in s.manager.games.values():
        if g.proc is not None:
            fake.exits[g.proc.pid] = 0
    s.post(Shutdown("test"))
    assert s.run(wake=0.01) == 0
    late["thread"].join(5)
    assert late.get("code") == "shutting_down", late
