"""The real daemon with the real trainer (CartPole-v1 and Atari via envpool) in tmp_path.

Each test starts ``python -m daemon`` as a subprocess and watches its SQLite file; the trainer
settings are tiny (tests/daemon/harness.py) so that two trainers fit on a 2-core CI box.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.daemon.harness import Daemon, alive_in_groups, write_profile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"


@pytest.fixture
def daemons(tmp_path: Path):
    started: list[Daemon] = []

    def make(profile: Path, name: str = "daemon") -> Daemon:
        d = Daemon(tmp_path, profile, name)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.cleanup()


def decisions(d: Daemon, game: str) -> list[tuple[int, str | None, str | None, str]]:
    rows = d.query("SELECT id, from_state, to_state, reason FROM decisions WHERE game = ? "
                   "ORDER BY id", game)  # fmt: skip
    return [(r["id"], r["from_state"], r["to_state"], r["reason"]) for r in rows]


@pytest.mark.slow
def test_queue_done_crash_restart_graceful_stop_and_resume(tmp_path: Path, daemons) -> None:
    # Longest target first: CartPole (40) and Pong (30) take the two slots, Freeway (20) waits.
    # Pong and Freeway episodes are thousands of steps long: they never reach their targets here.
    profile = write_profile(tmp_path / "p.yaml", {"CartPole-v1": 40, "Pong": 30, "Freeway": 20})
    d = daemons(profile)

    # A tiny target reaches DONE, and the queued game takes the slot.
    d.wait_states({"CartPole-v1": "DONE", "Pong": "RUNNING", "Freeway": "RUNNING"})
    cart, fwy = decisions(d, "CartPole-v1"), decisions(d, "Freeway")
    done_id = next(i for i, _, to, _ in cart if to == "DONE")
    assert any(to == "RUNNING" for _, _, to, _ in cart)
    first_start = next(i for i, _, to, _ in fwy if to == "STARTING")
    assert first_start > done_id, "Freeway must wait in the queue until a slot frees"
    assert d.progress("CartPole-v1")["episodes"] == 40

    # The model registry holds the real trainer's final checkpoint and best export, read from
    # the files themselves, and atarictl lists them from the store.
    final = d.progress("CartPole-v1")
    models = {r["kind"]: r for r in d.query("SELECT * FROM models WHERE game = 'CartPole-v1'")}
    latest, best = models["latest"], models["best"]
    assert (latest["episode"], latest["return_"]) == (40, final["avg100"])
    assert Path(latest["path"]).parent == d.state / "runs" / "CartPole-v1" / "checkpoints"
    assert latest["at"] == pytest.approx(final["last_checkpoint_time"], abs=5)
    assert (best["episode"], best["return_"]) == (40, final["best_return"])
    assert best["path"] == str(d.state / "runs" / "CartPole-v1" / "best.pt")
    ctl = [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(d.state), "models", "--json"]
    out = subprocess.run(ctl, capture_output=True, text=True, timeout=120)
    listed = {(r["game"], r["kind"]): r for r in json.loads(out.stdout)["models"]}
    assert listed[("CartPole-v1", "latest")]["source"] == "registry"
    assert listed[("CartPole-v1", "latest")]["path"] == latest["path"]

    # kill -9 of one trainer: BACKOFF, then a restart, recorded with the signal.
    victim = d.games()["Pong"]["pid"]
    os.kill(victim, signal.SIGKILL)
    d.wait_for(
        "the kill recorded",
        lambda: d.query("SELECT * FROM runs WHERE pid = ? AND signal = 'SIGKILL'", victim),
    )
    games = d.wait_for(
        "Pong running again",
        lambda: (g := d.games())["Pong"]["state"] == "RUNNING" and g["Pong"]["pid"] != victim and g,
    )
    assert games["Pong"]["pid"] != victim
    backoff = [r for _, _, to, r in decisions(d, "Pong") if to == "BACKOFF"]
    assert backoff and "killed by SIGKILL" in backoff[0] and "restart in 1s" in backoff[0]

    # SIGTERM to the daemon: every trainer checkpoints and exits, the daemon exits 0.
    live = {g: r["pid"] for g, r in d.games().items() if r["state"] == "RUNNING"}
    d.wait_for(
        "trainers writing progress",
        lambda: all(d.progress(g).get("pid") == pid for g, pid in live.items()),
    )
    assert d.stop(signal.SIGTERM) == 0
    assert alive_in_groups(d.seen_pids | {d.pid}) == []  # no orphans in any trainer's group
    before = {}
    for game in live:
        prog = d.progress(game)
        assert prog["status"] == "stopped", prog
        assert list((d.state / "runs" / game / "checkpoints").glob("*"))
        before[game] = prog
    assert not d.query("SELECT * FROM runs WHERE ended_at IS NULL")
    assert d.query("SELECT clean_shutdown FROM daemon_runs")[-1]["clean_shutdown"] == 1

    # A restart resumes every unfinished game with its counters intact; DONE stays DONE.
    d2 = daemons(profile, "daemon2")
    d2.wait_states({"CartPole-v1": "DONE", "Pong": "RUNNING", "Freeway": "RUNNING"})
    for game, prog in before.items():
        pid = d2.games()[game]["pid"]
        now = d2.wait_for(
            f"{game} resumed",
            lambda g=game, p=pid: (
                (pr := d2.progress(g)).get("pid") == p and pr.get("status") == "running" and pr
            ),
        )
        assert now["episodes"] >= prog["episodes"]
        assert now["env_steps"] >= prog["env_steps"] > 0
    restored = [r for _, _, to, r in decisions(d2, "Pong") if to == "QUEUED"]
    assert any("resumes from its checkpoint" in r or "not started" in r for r in restored)
    assert d2.stop(signal.SIGTERM) == 0


@pytest.mark.slow
def test_daemon_sigkill_then_new_daemon_neither_duplicates_nor_loses_progress(
    tmp_path: Path, daemons
) -> None:
    # frozen_after: generous, since a healthy trainer writes progress.json every second but may
    # take many seconds to import torch on a loaded 2-core box before its first one.
    profile = write_profile(tmp_path / "p.yaml", {"CartPole-v1": 100000, "Pong": 100000},
                            frozen_after="30s")  # fmt: skip
    d = daemons(profile)
    games = d.wait_states({"CartPole-v1": "RUNNING", "Pong": "RUNNING"})
    old = {g: r["pid"] for g, r in games.items()}
    d.wait_for(
        "trainers writing progress",
        lambda: all(
            d.progress(g).get("pid") == pid and d.progress(g).get("env_steps", 0) > 0
            for g, pid in old.items()
        ),
    )

    # A second daemon on the same state dir is refused (it would start every game twice).
    second = subprocess.run(
        [sys.executable, "-m", "daemon", "--profile", str(profile), "--state-dir", str(d.state)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert second.returncode == 1
    assert "another atari-supervisord" in second.stdout + second.stderr

    os.kill(d.pid, signal.SIGKILL)
    assert d.proc is not None and d.proc.wait(30) == -signal.SIGKILL
    assert all(psutil.pid_exists(p) for p in old.values()), "trainers outlive the daemon"

    d2 = daemons(profile, "daemon2")
    peak = 0

    def running_again() -> bool:
        nonlocal peak
        peak = max(peak, len(d2.trainer_pids()))
        g = d2.games()
        return all(g[n]["state"] == "RUNNING" and g[n]["pid"] not in old.values() for n in old)

    d2.wait_for("new trainers running", running_again)
    assert peak <= 2, f"{peak} trainer processes on 2 games: duplicated"
    assert not any(
        psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in old.values()
    )
    # The leftovers were stopped with SIGTERM, so they checkpointed; the new runs go on from there.
    for game in old:
        stopped = [r for _, _, _, r in decisions(d2, game) if "leftover trainer" in r]
        assert stopped, decisions(d2, game)
    for game in old:
        pid = d2.games()[game]["pid"]
        prog = d2.wait_for(
            f"{game} resumed",
            lambda g=game, p=pid: (
                (pr := d2.progress(g)).get("pid") == p and pr.get("status") == "running" and pr
            ),
        )
        ckpts = d2.query("SELECT reason FROM runs WHERE game = ? ORDER BY id", game)
        assert "leftover" in ckpts[0]["reason"]
        assert prog["env_steps"] > 0
    assert len(d2.trainer_pids()) == 2

    # A frozen trainer: SIGSTOP keeps the process alive while its heartbeat goes stale. After
    # frozen_after the daemon restarts it gracefully: SIGTERM then SIGCONT (as systemd does), so
    # the stopped trainer wakes up, checkpoints and exits 0 well before stop_grace (60s).
    frozen = d2.games()["CartPole-v1"]["pid"]
    episodes = d2.progress("CartPole-v1")["episodes"]
    os.killpg(frozen, signal.SIGSTOP)
    run = d2.wait_for(
        "the frozen run recorded",
        lambda: d2.query("SELECT * FROM runs WHERE pid = ? AND ended_at IS NOT NULL", frozen),
        timeout=180,
    )[0]
    assert run["reason"].startswith("frozen: heartbeat"), run["reason"]
    assert "frozen_after=30s" in run["reason"] and "graceful restart" in run["reason"]
    assert (run["exit_code"], run["signal"], run["outcome"]) == (0, None, "stopped")
    assert d2.progress("CartPole-v1")["status"] == "stopped"  # it checkpointed on the way out
    stops = [(f, to) for _, f, to, r in decisions(d2, "CartPole-v1") if r.startswith("frozen:")]
    assert stops[:2] == [("RUNNING", "STOPPING"), ("STOPPING", "QUEUED")], stops
    d2.wait_for(
        "CartPole-v1 running again",
        lambda: (g := d2.games()["CartPole-v1"])["state"] == "RUNNING" and g["pid"] != frozen,
    )
    prog = d2.wait_for(
        "the restarted trainer resumed",
        lambda: (
            (pr := d2.progress("CartPole-v1")).get("status") == "running"
            and pr.get("pid") != frozen
            and pr
        ),
    )
    assert prog["episodes"] >= episodes
    assert d2.stop(signal.SIGTERM) == 0


def test_invalid_profile_refuses_to_start_with_file_and_line(tmp_path: Path) -> None:
    bad = FIXTURES / "unknown-game.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "--profile", str(bad), "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"{bad}:3: games.Pongg: unknown game" in out.stdout
    assert not (tmp_path / "atari.db").exists()  # nothing else happened


def test_corrupt_database_refuses_to_start_and_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "atari.db"
    junk = b"definitely not a sqlite database " * 100
    db.write_bytes(junk)
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "--profile", str(FIXTURES / "valid-minimal.yaml"),
         "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert "database is corrupt" in out.stdout and str(db) in out.stdout
    assert db.read_bytes() == junk  # never silently replaced by an empty database
    assert not (tmp_path / "runs" / "Pong").exists()  # and no trainer started
