"""Every atarictl command against ONE real daemon (module-scoped) on a tiny CPU profile, through
the socket and through the `atarictl` process. Tests run in file order; the last one shuts the
daemon down."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ctl_daemon import Daemon, write_profile

from daemon.atarictl.client import Client, UnknownGame
from tests.support.attacks import assert_answers_within_a_second, attack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("ctl-daemon")
    d = Daemon(root / "state", write_profile(root / "profile.yaml")).start()
    try:
        d.wait_running()
        yield d
    finally:
        d.stop()


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1, stderr
    return stderr.strip()


def test_status_through_the_socket_and_the_process(daemon: Daemon) -> None:
    raw = daemon.status()
    assert raw["level"] == "light"
    assert {g["game"]: g["state"] for g in raw["games"]} == {
        "CartPole-v1": "RUNNING",
        "Pong": "QUEUED",
    }
    out = daemon.ctl("status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("level light for ") and "not pinned" in lines[0]
    assert "reboots in last hour: " in lines[0]
    assert lines[1].startswith("next decision: promote to medium if stable and loaded in ")
    assert lines[2] in ("gpu: no GPU",) or "util" in lines[2]
    header = next(i for i, x in enumerate(lines) if x.startswith("GAME"))
    cart = lines[header + 1].split()
    pid = next(g["pid"] for g in raw["games"] if g["game"] == "CartPole-v1")
    assert cart[:3] == ["CartPole-v1", "RUNNING", str(pid)]
    assert cart[4].endswith("/1000000")
    assert lines[header + 2].split()[:3] == ["Pong", "QUEUED", "-"]
    # Pong has no rate yet, so an honest total ETA (and cost) is unknown.
    assert lines[-1] == "total ETA - · projected cost -"
    # Its stdout is a plain file, not journald: every line says when it was written.
    logged = [x for x in daemon.log.read_text().splitlines() if x.strip()]
    assert logged and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", x) for x in logged)


def test_status_json_and_game_filter(daemon: Daemon) -> None:
    out = daemon.ctl("status", "--json", "CartPole-v1")
    data = json.loads(out.stdout)
    assert data["source"] == "daemon" and data["level"] == "light"
    assert [g["game"] for g in data["games"]] == ["CartPole-v1"]
    g = data["games"][0]
    assert g["state"] == "RUNNING" and g["episodes"] >= 0 and g["target"] == 1_000_000
    assert data["gpu_cost_per_hour"] == 2.5
    # The total covers every game, filtered or not; queued Pong has never run, so no rate.
    assert data["total_eta_s"] is None and data["projected_cost"] is None
    assert set(data) >= {"boots_last_hour", "next_decision", "gpu", "pinned", "total_eta_s"}


@pytest.mark.parametrize(
    "args",
    [("status", "Nope"), ("stop", "Nope"), ("start", "Nope"), ("restart", "CartPole-v1", "Nope"),
     ("tail", "Nope")],
)  # fmt: skip
def test_unknown_game_exit_5_one_line(daemon: Daemon, args: tuple[str, ...]) -> None:
    out = daemon.ctl(*args)
    assert out.returncode == 5, out
    assert "unknown game" in one_line(out.stderr) and "Nope" in out.stderr
    with pytest.raises(UnknownGame):
        daemon.client.call("stop", {"games": ["Nope"]})


def test_stop_is_graceful_start_and_restart_resume(daemon: Daemon) -> None:
    # Keep Pong from taking CartPole's slot while it is stopped (and the CPU with it).
    assert daemon.ctl("stop", "Pong").returncode == 0
    assert daemon.game("Pong")["state"] == "STOPPED"
    out = daemon.ctl("stop", "CartPole-v1")
    assert out.returncode == 0 and out.stdout.startswith("CartPole-v1: "), out
    daemon.wait_for("STOPPED", lambda: daemon.game("CartPole-v1")["state"] == "STOPPED")
    progress = daemon.progress("CartPole-v1")
    assert progress["status"] == "stopped"  # SIGTERM: the trainer checkpointed and said so
    stopped_at = progress["episodes"]
    out = daemon.ctl("start", "CartPole-v1")
    assert out.returncode == 0, out
    daemon.wait_running(checkpoint=False)
    first_pid = daemon.game("CartPole-v1")["pid"]
    daemon.wait_for("progress", lambda: daemon.progress("CartPole-v1")["pid"] == first_pid)
    out = daemon.ctl("restart", "CartPole-v1", "--json")
    assert out.returncode == 0 and isinstance(json.loads(out.stdout), dict)
    daemon.wait_for(
        "a new pid",
        lambda: (g := daemon.game("CartPole-v1"))["state"] == "RUNNING" and g["pid"] != first_pid,
    )
    # Resumed from the checkpoint: the episode counter never goes back.
    assert daemon.game("CartPole-v1")["episodes"] >= stopped_at


def test_total_eta_and_cost_once_every_planned_game_has_a_rate(daemon: Daemon) -> None:
    # Pong is STOPPED (previous test), so only CartPole-v1 is planned; wait for its rate.
    data = daemon.wait_for(
        "a rate",
        lambda: (d := json.loads(daemon.ctl("status", "--json").stdout))["total_eta_s"] and d,
    )
    cart = next(g for g in data["games"] if g["game"] == "CartPole-v1")
    assert data["total_eta_s"] == pytest.approx(cart["work_left_s"])
    assert data["projected_cost"] == pytest.approx(data["total_eta_s"] / 3600 * 2.5)
    assert "· projected cost $" in daemon.ctl("status").stdout.splitlines()[-1]


def test_level_pin_and_unpin(daemon: Daemon) -> None:
    out = daemon.ctl("level")
    assert out.returncode == 0 and out.stdout.startswith("level light for "), out
    out = daemon.ctl("level", "pin", "light")
    assert out.returncode == 0 and "pinned light" in out.stdout, out
    assert "pinned (light)" in daemon.ctl("status").stdout
    assert json.loads(daemon.ctl("level", "--json").stdout)["pinned"] == "light"
    out = daemon.ctl("level", "pin", "heavy")
    assert out.returncode == 1 and "heavy" in one_line(out.stderr)
    out = daemon.ctl("level", "unpin", "--json")
    assert out.returncode == 0 and "unpin" in json.dumps(json.loads(out.stdout))
    assert json.loads(daemon.ctl("level", "--json").stdout)["pinned"] is None
    assert "not pinned" in daemon.ctl("status").stdout.splitlines()[0]


def test_history_lists_runs_and_decisions(daemon: Daemon) -> None:
    out = daemon.ctl("history", "--json", "--since", "1h")
    events = json.loads(out.stdout)["events"]
    kinds = {e["kind"] for e in events}
    assert {"boot", "run", "process", "level", "operator"} <= kinds
    assert any(e["kind"] == "operator" and "pin" in (e["reason"] or "") for e in events)
    out = daemon.ctl("history", "--kind", "runs")
    assert "daemon running" in out.stdout.splitlines()[0]
    assert all(" run " in line for line in out.stdout.splitlines()[2:])


def test_reload_rejects_an_invalid_profile_and_keeps_running(daemon: Daemon) -> None:
    good = daemon.profile.read_text()
    try:
        daemon.profile.write_text(good.replace("stop_grace: 20s", "stop_grace: -3s"))
        out = daemon.ctl("reload")
        assert out.returncode == 1
        assert f"{daemon.profile}:" in one_line(out.stderr) and "stop_grace" in out.stderr
        assert daemon.game("CartPole-v1")["state"] == "RUNNING"
    finally:
        daemon.profile.write_text(good)
    out = daemon.ctl("reload")
    assert out.returncode == 0 and out.stdout.startswith("reloaded "), out


def test_sighup_reloads_the_profile(daemon: Daemon) -> None:
    # systemd's ExecReload (and a shell's `kill -HUP`) is the same reload as `atarictl reload`.
    assert daemon.proc is not None
    good = daemon.profile.read_text()
    assert "  Pong: 5\n" in good
    try:
        daemon.profile.write_text(good.replace("  Pong: 5\n", "  Pong: 7\n"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("Pong's target 7 after SIGHUP", lambda: daemon.game("Pong")["target"] == 7)
        # The state dir keeps a copy of the profile in effect: the reloaded one.
        assert "  Pong: 7\n" in (daemon.state / "profile-in-effect.yaml").read_text()
    finally:
        daemon.profile.write_text(good)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("Pong's target 5 again", lambda: daemon.game("Pong")["target"] == 5)
    assert daemon.proc.poll() is None  # a reload, not a stop


def _ctrl_c_delivered() -> None:
    # As on a terminal. A runner started in the background (`cmd &` in a script, as CI may do)
    # passes SIGINT down as ignored, and Python then never turns it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_tail_and_follow(daemon: Daemon) -> None:
    # The trainer logs a line per checkpoint (every 2 s); run alone, this test may come early.
    game_log = daemon.state / "logs" / "CartPole-v1.log"
    daemon.wait_for("3 lines in the game log", lambda: len(game_log.read_text().splitlines()) >= 3)
    out = daemon.ctl("tail", "-n", "3", "CartPole-v1")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(daemon.state), "tail", "-f",
         "-n", "0", "CartPole-v1"],
        stdout=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_delivered,
    )  # fmt: skip
    try:
        # The trainer checkpoints every 2 s and logs it: a new line must arrive.
        line = proc.stdout.readline() if proc.stdout else ""
        assert "trainer[" in line
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_status_watch_refreshes(daemon: Daemon) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(daemon.state), "status",
         "--watch", "0.3", "--json"],
        stdout=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_delivered,
    )  # fmt: skip
    try:
        frames = [json.loads(proc.stdout.readline()) for _ in range(3)] if proc.stdout else []
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    assert len(frames) == 3 and frames[0]["now"] < frames[1]["now"] < frames[2]["now"]


def test_models(daemon: Daemon) -> None:
    rows = json.loads(daemon.ctl("models", "--json").stdout)["models"]
    kinds = {(r["game"], r["kind"]) for r in rows}
    assert ("CartPole-v1", "latest") in kinds
    latest = next(r for r in rows if r["kind"] == "latest")
    assert Path(latest["path"]).name.startswith("ckpt-")


def test_responsive_under_attack(daemon: Daemon) -> None:
    client = Client(daemon.socket, timeout=5)
    with attack(daemon.socket):
        assert_answers_within_a_second(lambda: client.call("status"))
        out = daemon.ctl("status")
        assert out.returncode == 0, out.stderr
    # The daemon's own checks kept running: the health job refreshed the heartbeat.
    g = daemon.game("CartPole-v1")
    assert g["state"] == "RUNNING" and g["checkpoint_age_s"] < 30


@contextlib.contextmanager
def system_user() -> Iterator[str]:
    name = f"atarictl-t{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], capture_output=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a test user needs root")
@pytest.mark.skipif(
    not (shutil.which("useradd") and shutil.which("setpriv")),
    reason="needs useradd and setpriv (util-linux) to run atarictl as another user",
)
def test_socket_refuses_a_user_outside_its_group(daemon: Daemon) -> None:
    st = daemon.socket.stat()
    assert oct(st.st_mode & 0o777) == "0o660"
    with system_user() as user:
        # CAP_DAC_READ_SEARCH only lets the user walk pytest's 0700 tmp dirs; connecting still
        # needs write permission on the socket itself, which the cap does not grant.
        base = ["setpriv", f"--reuid={user}", f"--regid={user}",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]  # fmt: skip
        cmd = [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(daemon.state), "status"]
        out = subprocess.run([*base, "--clear-groups", *cmd], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert out.returncode == 4, out
        assert "permission denied" in one_line(out.stderr) and "group" in out.stderr
        # The same user, made a member of the socket's group, gets through.
        out = subprocess.run([*base, f"--groups={st.st_gid}", *cmd], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr


def test_backup_while_training_restores_and_resumes(daemon: Daemon, tmp_path: Path) -> None:
    daemon.wait_running()
    archive = tmp_path / "live.tar.gz"
    out = daemon.ctl("backup", str(archive), "--with-logs", "--json")
    assert out.returncode == 0, out.stderr
    assert daemon.game("CartPole-v1")["state"] == "RUNNING"  # training never paused
    import tarfile

    with tarfile.open(archive) as tar:
        f = tar.extractfile("runs/CartPole-v1/progress.json")
        backed_up = json.loads(f.read()) if f else {}
        # What produced this state comes along: the profile in effect, and (asked) the logs.
        f = tar.extractfile("profile-in-effect.yaml")
        assert f is not None and f.read() == daemon.profile.read_bytes()
        f = tar.extractfile("logs/CartPole-v1.log")
        assert f is not None and f.read()
    assert json.loads(out.stdout)["logs"] >= 1
    # Restoring onto the running daemon's own state dir is refused.
    out = daemon.ctl("restore", str(archive))
    assert out.returncode == 6 and "daemon runs" in one_line(out.stderr)

    fresh = tmp_path / "restored"
    out = subprocess.run(
        [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(fresh), "restore",
         str(archive)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    second = Daemon(fresh, daemon.profile).start()
    try:
        second.wait_running(checkpoint=False)
        g = second.game("CartPole-v1")
        # Counters intact: it resumed from the backed-up checkpoint, not from zero.
        assert g["episodes"] >= backed_up["episodes"] > 0
        runs = json.loads(second.ctl("history", "--kind", "runs", "--json").stdout)["events"]
        assert len(runs) >= 2  # the original daemon's runs came along in the database
    finally:
        second.stop()


def test_shutdown_then_offline_status(daemon: Daemon) -> None:
    out = daemon.ctl("shutdown")
    assert out.returncode == 0 and out.stdout.strip() == "daemon shut down", out
    assert daemon.proc is not None and daemon.proc.wait(60) == 0
    assert not daemon.socket.exists()
    assert daemon.progress("CartPole-v1")["status"] == "stopped"
    out = daemon.ctl("status")
    assert out.returncode == 3
    assert out.stdout.startswith("daemon DOWN") and "read-only view" in out.stdout
    data = json.loads(daemon.ctl("status", "--json").stdout)
    assert data["source"] == "database" and data["daemon"]["clean_shutdown"] is True
    out = daemon.ctl("stop", "all")
    assert out.returncode == 3 and "daemon not reachable" in one_line(out.stderr)
