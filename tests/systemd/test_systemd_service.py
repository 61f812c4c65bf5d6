"""The real daemon as a systemd service, in a sandbox booted for this module: installed with
`atarictl install-service`, then started, killed, stalled, stopped and uninstalled, in order.
The tests share one service on purpose (each start costs a torch import per process); each
test leaves it running for the next, except the last two."""

from __future__ import annotations

import sys
import time

import pytest
from atari_service import GAMES, PROFILE, STALL_FILE, UNIT, Service
from systemd_sandbox import wait_for

pytestmark = [pytest.mark.systemd, pytest.mark.slow]


def _sigkills(service: Service) -> list[str]:
    """systemd's own lines about SIGKILL/SIGABRT, other than the kill a test asked for."""
    return [
        e["MESSAGE"]
        for e in service.journal_json()
        if e.get("_PID") == "1"
        and ("SIGKILL" in e["MESSAGE"] or "SIGABRT" in e["MESSAGE"])
        and "on client request" not in e["MESSAGE"]
    ]


def test_refused_installs_leave_nothing_behind(service: Service) -> None:
    result = service.atarictl("install-service", "--user", "no-such-user-atari")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--user no-such-user-atari: no such user" in result.stderr
    # A user who cannot reach the interpreter: systemd would only say 203/EXEC later.
    locked = service.box.root / "locked"
    locked.mkdir(mode=0o700)
    code = (
        "from daemon.atarictl.service import ServiceError, install\n"
        "try:\n"
        f"    install(None, 'nobody', python='{locked}/python')\n"
        "except ServiceError as exc:\n"
        "    print(exc)\n"
    )
    refused = service.box.run(sys.executable, "-c", code, timeout=120).stdout
    assert f"--user nobody could not run {locked}/python" in refused
    assert "mode 0700" in refused
    root = service.box.root
    assert not (root / "etc/systemd/system" / UNIT).exists()
    assert not (root / "etc/atari-supervisor").exists()
    assert service.box.run("getent", "group", "atari-supervisor", check=False).returncode == 2
    result = service.atarictl("uninstall-service")
    assert result.returncode == 0
    assert "was not installed" in result.stdout


def test_install_service_starts_it_after_ready(service: Service) -> None:
    result = service.atarictl("install-service", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr + result.stdout
    root = service.box.root
    assert (root / "etc/systemd/system" / UNIT).is_file()
    assert (root / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    assert (root / "etc/atari-supervisor/profile.yaml").read_text() == PROFILE.read_text()
    assert service.box.run("getent", "group", "atari-supervisor").stdout.startswith(
        "atari-supervisor:"
    )
    # `enable --now` of a Type=notify unit returns once READY arrived. Recovery happened while
    # the unit was still "activating": after it left "inactive", before it entered "active".
    assert service.is_active()
    activating = service.timestamp("InactiveExitTimestamp")
    active = service.timestamp("ActiveEnterTimestamp")
    (detected_at,) = service.query(
        "SELECT detected_at FROM boots WHERE boot_id = ?", service.box.boot_id
    )[0]
    (daemon_started,) = service.query("SELECT started_at FROM daemon_runs")[0]
    assert activating <= daemon_started <= active
    assert activating <= detected_at <= active
    status = service.box.systemctl("status", UNIT, check=False).stdout
    assert "active (running)" in status
    assert 'Status: "light · ' in status
    service.wait_training()
    wait_for(
        lambda: "2 running" in service.props("StatusText")["StatusText"],
        60,
        "STATUS= never showed the two running games",
    )


def test_journal_has_daemon_lines_and_filters_by_priority(service: Service) -> None:
    # A trainer killed behind the daemon's back is a crash: the daemon logs it as a warning.
    before = service.trainers()
    victim = before["CartPole-v1"][0]
    service.box.run("kill", "-KILL", str(victim))
    # Until the replacement runs, the victim may still look alive (dying, or not yet reaped).
    wait_for(
        lambda: (p := service.progress("CartPole-v1")) is not None and p["pid"] != victim,
        240,
        "the killed trainer was never replaced",
    )
    service.wait_training()
    entries = service.journal_json()
    daemon_lines = [e for e in entries if e.get("_PID") != "1"]
    assert daemon_lines, "no daemon lines in the journal"
    # journald parsed the <N> prefixes: no message keeps one, and priorities vary.
    assert not any(e["MESSAGE"].startswith("<") for e in daemon_lines if "MESSAGE" in e)
    priorities = {int(e["PRIORITY"]) for e in daemon_lines}
    assert 6 in priorities and priorities & {3, 4}, priorities
    warnings = service.journal_json("-p", "warning")
    assert warnings and all(int(e["PRIORITY"]) <= 4 for e in warnings)
    assert any("CartPole-v1" in e["MESSAGE"] for e in warnings if e.get("_PID") != "1")
    for game in GAMES:
        assert (service.logs_dir / f"{game}.log").is_file()


def test_kill_of_the_main_process_restarts_without_duplicates(service: Service) -> None:
    before = service.wait_training(min_episodes=1)
    old_pids = {game: p["pid"] for game, p in before.items()}
    restarts = service.restarts()
    service.box.systemctl("kill", "--kill-whom=main", "--signal=KILL", UNIT)
    service.wait_restarted(restarts)
    after = service.wait_training()
    for game in GAMES:
        # One trainer per game (wait_training counted them), a new one, with counters intact.
        assert after[game]["pid"] != old_pids[game]
        assert after[game]["episodes"] >= before[game]["episodes"]
        assert after[game]["env_steps"] >= before[game]["env_steps"]
    # KillMode=control-group: the orphaned trainers got SIGTERM (a checkpoint), not SIGKILL.
    assert _sigkills(service) == []


def test_watchdog_stall_makes_systemd_restart_it(service: Service) -> None:
    service.wait_training()
    restarts = service.restarts()
    service.box.run("touch", STALL_FILE)
    try:
        wait_for(
            lambda: "Watchdog timeout" in service.journal(),
            120,
            "the stalled health job never tripped the watchdog",
        )
    finally:
        # Gone before the restarted daemon's first health job, or it would stall again.
        service.box.run("rm", "-f", STALL_FILE)
    service.wait_restarted(restarts)
    assert service.props("Result")["Result"] in ("success", "watchdog")
    service.wait_training()
    assert _sigkills(service) == []


def test_reinstall_keeps_the_profile_and_restarts_gracefully(service: Service) -> None:
    service.wait_training()
    main_pid = service.props("MainPID")["MainPID"]
    result = service.atarictl("install-service")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "kept the installed profile" in result.stdout
    assert "restarted" in result.stdout
    assert service.props("MainPID")["MainPID"] != main_pid
    assert (service.box.root / "etc/atari-supervisor/profile.yaml").read_text() == (
        PROFILE.read_text()
    )
    service.wait_training()
    assert _sigkills(service) == []


def test_stop_waits_for_every_trainer_to_checkpoint(service: Service) -> None:
    service.wait_training()
    stop_started = time.time()
    service.box.systemctl("stop", UNIT, timeout=300)
    assert service.props("ActiveState")["ActiveState"] == "inactive"
    assert service.trainers() == {game: [] for game in GAMES}
    for game in GAMES:
        progress = service.progress(game)
        assert progress is not None
        assert progress["status"] == "stopped", progress
        # checkpoint_every is an hour: this checkpoint was written by the stop itself.
        assert progress["last_checkpoint_time"] >= stop_started, progress
        checkpoints = (service.state_dir / "runs" / game / "checkpoints").iterdir()
        assert max(path.stat().st_mtime for path in checkpoints) >= stop_started
    assert _sigkills(service) == []
    # The trainers' own lines went to their per-game files, never to the journal.
    for game in GAMES:
        assert "checkpointing and stopping" in (service.logs_dir / f"{game}.log").read_text()
    assert not any("trainer[" in e.get("MESSAGE", "") for e in service.journal_json())
    last_run = service.query("SELECT clean_shutdown FROM daemon_runs ORDER BY id DESC LIMIT 1")
    assert last_run == [(1,)]


def test_uninstall_service_keeps_training_data(service: Service) -> None:
    result = service.atarictl("uninstall-service")
    assert result.returncode == 0, result.stderr + result.stdout
    root = service.box.root
    assert not (root / "etc/systemd/system" / UNIT).exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants" / UNIT).exists()
    assert not (root / "etc/atari-supervisor/profile.yaml").exists()
    assert service.props("LoadState")["LoadState"] == "not-found"
    assert (service.state_dir / "atari.db").is_file()
    for game in GAMES:
        assert (service.state_dir / "runs" / game / "progress.json").is_file()
