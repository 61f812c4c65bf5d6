"""atarictl without a daemon: read-only status/history/level/models, tail, paths, doctor."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import pytest

from daemon.atarictl import formatting as fmt
from daemon.atarictl.logs import follow, last_lines
from daemon.atarictl.offline import history, models, offline_status
from daemon.paths import resolve_dirs as resolve
from tests.support.state import atarictl


def test_status_reads_the_database_when_the_daemon_is_down(state: Path) -> None:
    out = atarictl("--state-dir", str(state), "status")
    assert out.returncode == 3, out.stderr  # LSB: program is not running
    assert "daemon DOWN" in out.stdout and "read-only view" in out.stdout
    assert "level light" in out.stdout
    assert "reboots in last hour: 1" in out.stdout
    pong = next(line for line in out.stdout.splitlines() if line.startswith("Pong "))
    assert pong.split()[:5] == ["Pong", "STOPPED", "-", "-", "3/5"]


def test_status_json_offline_and_game_filter(state: Path) -> None:
    out = atarictl("--state-dir", str(state), "status", "--json", "CartPole-v1")
    data = json.loads(out.stdout)
    assert data["source"] == "database"
    assert data["daemon"]["running"] is False and data["daemon"]["clean_shutdown"] is True
    assert [g["game"] for g in data["games"]] == ["CartPole-v1"]
    assert data["games"][0]["episodes"] == 300 and data["games"][0]["state"] == "DONE"


def test_unknown_game_is_one_line_and_exit_5(state: Path) -> None:
    out = atarictl("--state-dir", str(state), "status", "Pongg")
    assert out.returncode == 5
    assert out.stderr.count("\n") == 1
    assert "unknown game 'Pongg'" in out.stderr and "CartPole-v1, Pong" in out.stderr


def test_no_daemon_and_no_database(tmp_path: Path) -> None:
    out = atarictl("--state-dir", str(tmp_path / "empty"), "status")
    assert out.returncode == 3
    assert "daemon not reachable" in out.stderr and "no database" in out.stderr
    out = atarictl("--state-dir", str(tmp_path / "empty"), "reload")
    assert out.returncode == 3 and "daemon not reachable" in out.stderr


def test_offline_reads_never_write(state: Path) -> None:
    db = state / "atari.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    offline_status(db, 0.0)
    history(db, 0.0, ("boots", "runs", "decisions"))
    # SQLite may create the empty -shm/-wal sidecars a WAL reader needs; the database is intact
    # and nothing waits in the write-ahead log to be checkpointed into it later.
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_history_kinds_and_since(state: Path) -> None:
    out = atarictl("--state-dir", str(state), "history", "--json")
    events = json.loads(out.stdout)["events"]
    assert [e["kind"] for e in events] == ["boot", "boot", "run", "level", "run", "process"]
    assert events[0]["reason"] == "first boot seen"
    assert events[1]["reason"] == "after b00tid-1, down 42s, unclean shutdown"
    # A run is two events at their own times: its start, then (after the level row) its end.
    start, end = events[2], events[4]
    assert start["what"] == "pid 4242 started: light envs=4 batch=32"
    assert end["what"] == "pid 4242 ended: exit 1" and end["reason"] == "crash"
    assert start["at"] < events[3]["at"] < end["at"]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    out = atarictl("--state-dir", str(state), "history", "--kind", "levels", "--since", "3h")
    lines = out.stdout.splitlines()
    assert "daemon DOWN" in lines[0]
    assert len(lines) == 3 and "light -> medium" in lines[2] and "stable for 10m" in lines[2]
    out = atarictl("--state-dir", str(state), "history", "--since", "soon")
    assert out.returncode == 2 and "not a duration" in out.stderr


def test_models_registry_and_run_dir_fallback(state: Path) -> None:
    rows = models(state / "atari.db", state / "runs")
    kinds = {(r["game"], r["kind"]): r for r in rows}
    assert set(kinds) == {
        ("CartPole-v1", "best"),
        ("CartPole-v1", "latest"),
        ("Pong", "best"),
        ("Pong", "latest"),
    }
    assert kinds[("Pong", "best")]["source"] == "registry"
    assert kinds[("Pong", "best")]["episode"] == 3
    assert kinds[("Pong", "latest")]["path"].endswith("ckpt-000000002.pt")
    out = atarictl("--state-dir", str(state), "models")
    assert out.returncode == 0 and out.stdout.splitlines()[0].split()[:3] == [
        "GAME",
        "KIND",
        "EPISODE",
    ]


def test_level_offline(state: Path) -> None:
    out = atarictl("--state-dir", str(state), "level", "--json")
    assert out.returncode == 3
    assert json.loads(out.stdout)["level"] == "light"


def test_tail_last_lines_and_unknown_game(state: Path) -> None:
    logs = state / "logs"
    logs.mkdir()
    (logs / "Pong.log").write_text("".join(f"line {i}\n" for i in range(100)))
    out = atarictl("--state-dir", str(state), "tail", "-n", "3", "Pong")
    assert out.stdout == "line 97\nline 98\nline 99\n"
    out = atarictl("--state-dir", str(state), "tail", "Breakout")
    assert out.returncode == 5 and "known games: CartPole-v1, Pong" in out.stderr
    out = atarictl("--state-dir", str(state), "tail", "../atari.db")
    assert out.returncode == 5


def test_follow_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "Pong.log"
    log.write_text("old 1\nold 2\n")
    lines, offset = last_lines(log, 1)
    assert lines == ["old 2\n"]
    buf = io.StringIO()
    stop = threading.Event()
    t = threading.Thread(
        target=follow, args=(log, offset, buf), kwargs={"poll": 0.01, "should_stop": stop.is_set}
    )
    t.start()
    try:
        with open(log, "a") as f:
            f.write("new 1\npart")
        _wait_for(lambda: "new 1\n" in buf.getvalue())
        os.rename(log, tmp_path / "Pong.log.1")
        log.write_text("rotated 1\n")
        _wait_for(lambda: "rotated 1\n" in buf.getvalue())
    finally:
        stop.set()
        t.join(5)
    assert buf.getvalue() == "new 1\nrotated 1\n"


def _wait_for(cond, limit: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_paths_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "rt"))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "st"))
    p = resolve()
    assert p.socket == tmp_path / "rt" / "atarictl.sock"
    assert p.db == tmp_path / "st" / "atari.db"
    # An explicit --state-dir means that daemon: its own run/ and logs/ dirs.
    p = resolve(state_dir=tmp_path / "x")
    assert p.socket == tmp_path / "x" / "run" / "atarictl.sock"
    assert p.logs_dir == tmp_path / "x" / "logs"
    assert resolve(socket=tmp_path / "s.sock").socket == tmp_path / "s.sock"


@pytest.mark.parametrize(
    "seconds,text", [(5, "5s"), (125, "2m05s"), (7260, "2h01m"), (90000, "1d01h"), (None, "-")]
)
def test_duration_format(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


@pytest.mark.slow  # two doctor runs: torch import and one envpool env each
def test_doctor_fails_on_a_bad_profile_and_passes_on_cpu_tiny(tmp_path: Path) -> None:
    bad = Path(__file__).parents[1] / "fixtures" / "profiles" / "unknown-level.yaml"
    out = atarictl("--state-dir", str(tmp_path / "st"), "doctor", "--profile", str(bad))
    assert out.returncode == 1
    line = next(x for x in out.stdout.splitlines() if x.startswith("FAIL") and "profile" in x)
    assert "unknown-level.yaml:" in line and "fix:" in line
    out = atarictl("--state-dir", str(tmp_path / "st"), "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert out.returncode == 0, out.stdout
    assert checks["envpool"]["status"] == "OK" and "made" in checks["envpool"]["detail"]
    assert checks["profile"]["status"] == "OK"
    assert set(checks) >= {"python", "torch", "nvml", "ram", "disk", "state-dir", "runtime-dir"}


def test_service_subcommands_call_the_service_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the argparse wiring is tested here; tests/systemd runs the real installer.
    from daemon.atarictl import cli, service

    calls: list[tuple] = []
    monkeypatch.setattr(service, "install_service", lambda p, u: calls.append((p, u)) or 7)
    monkeypatch.setattr(service, "uninstall_service", lambda: calls.append(("un",)) or 0)
    assert cli.main(["install-service", "--profile", "/x.yaml", "--user", "trainer"]) == 7
    assert cli.main(["install-service"]) == 7
    assert cli.main(["uninstall-service"]) == 0
    assert calls == [(Path("/x.yaml"), "trainer"), (None, None), ("un",)]


def test_status_says_when_a_live_daemon_does_not_answer(state: Path) -> None:
    from daemon.store import Store

    store = Store.open(state / "atari.db")
    try:
        # A run with no recorded stop whose pid is alive (this test process stands in for it).
        store.daemon_started(pid=os.getpid(), boot_id="b00tid-2", at=1.0)
    finally:
        store.close()
    out = atarictl("--state-dir", str(state), "status")
    assert out.returncode == 3
    assert out.stdout.startswith(f"daemon NOT ANSWERING (pid {os.getpid()} alive")


def test_offline_reads_of_a_fleet_box_show_its_own_level_boots_and_daemon(tmp_path: Path) -> None:
    """Two boxes' rows in one store: the state dir's profile copy names its box, and offline
    status, top and the report show that box's level, reboots, daemon run and telemetry."""
    import time

    from daemon.reporting.report import gather
    from daemon.store import Store

    state = tmp_path / "state"
    state.mkdir()
    (state / "profile-in-effect.yaml").write_text("box: b\n")
    now = time.time()
    a, b = Store.open(state / "atari.db", box="a"), Store.open(state / "atari.db", box="b")
    a.save_level_state(state="medium", entered_at=now - 100)
    b.save_level_state(state="light", entered_at=now - 50)
    a.record_boot("a-1", now - 90, reason="first")
    a.record_boot("a-2", now - 80, reason="reboot", previous_boot_id="a-1")
    b.record_boot("b-1", now - 70, reason="first")
    a.daemon_started(111, "a-2", now - 60)
    b.daemon_started(222, "b-1", now - 40)
    a.add_telemetry(now - 5, "host", {"load1": 9.0})
    b.add_telemetry(now - 10, "host", {"load1": 1.0})
    b.upsert_game("Pong", state="RUNNING", target=10)
    a.close(), b.close()
    st = offline_status(state / "atari.db", now)
    assert (st["level"], st["boots_last_hour"], st["daemon"]["pid"]) == ("light", 0, 222)
    top = json.loads(atarictl("--state-dir", str(state), "top", "--json").stdout)
    assert top["host"]["load1"] == 1.0  # b's sample, though a's is newer
    report = gather(state, now, now - 3600)
    assert report["level"]["state"] == "light" and report["reboots"] == []
    # History is the fleet's, with a BOX column once more than one box wrote it.
    text = atarictl("--state-dir", str(state), "history").stdout
    head, *lines = text.splitlines()[1:]
    assert head.split()[:3] == ["TIME", "BOX", "KIND"]
    assert {ln.split()[3] for ln in lines if ln} == {"a", "b"}, text
