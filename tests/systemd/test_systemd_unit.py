"""The unit file and install-service without booting systemd: rendering, `systemd-analyze
verify`, the unit's timeouts against the shipped profiles, and the one-line refusals."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.atarictl.service import (
    TEMPLATE_PYTHON,
    UNIT_TEMPLATE,
    ServiceError,
    render_unit,
    unreachable_by,
)
from daemon.config import load_profile
from tests.support.prereq import need

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def _seconds(value: str) -> float:
    units = {"s": 1, "min": 60, "h": 3600}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


UNIT = _directives(UNIT_TEMPLATE.read_text())


def test_render_fills_in_the_interpreter_and_user() -> None:
    text = render_unit(UNIT_TEMPLATE.read_text(), "/srv/venv/bin/python", user="trainer")
    rendered = _directives(text)
    assert rendered["ExecStart"] == [
        "/srv/venv/bin/python -m daemon --profile /etc/atari-supervisor/profile.yaml"
    ]
    assert rendered["User"] == ["trainer"]
    assert TEMPLATE_PYTHON not in text
    assert "User" not in _directives(render_unit(UNIT_TEMPLATE.read_text(), "/srv/p"))


def test_render_refuses_an_interpreter_path_with_spaces() -> None:
    with pytest.raises(ServiceError, match="contains spaces"):
        render_unit(UNIT_TEMPLATE.read_text(), "/home/me/my venv/bin/python")


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    need(shutil.which("systemd-analyze") is not None, "needs systemd-analyze on PATH")
    unit = tmp_path / UNIT_TEMPLATE.name
    unit.write_text(render_unit(UNIT_TEMPLATE.read_text(), sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_notify_watchdog_restart_and_install_settings() -> None:
    assert UNIT["Type"] == ["notify"]
    assert UNIT["NotifyAccess"] == ["main"]
    assert UNIT["Restart"] == ["on-failure"]
    assert UNIT["KillMode"] == ["control-group"]
    # The watchdog signal reaches the trainers too; only SIGTERM lets them checkpoint.
    assert UNIT["WatchdogSignal"] == ["SIGTERM"]
    assert UNIT["WantedBy"] == ["multi-user.target"]
    for key in ("StateDirectory", "RuntimeDirectory", "LogsDirectory"):
        assert UNIT[key] == ["atari-supervisor"]
    # PrivateDevices hides /dev/nvidia*; a device allow-list would block them too.
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        assert key not in UNIT, key


def test_oom_policy_and_start_limit() -> None:
    # A trainer OOM-killed by the kernel is one crashed game (backoff), not the whole service:
    # the default OOMPolicy=stop would stop every other game's training too.
    assert UNIT["OOMPolicy"] == ["continue"]
    # A daemon that keeps failing at start gives up ("failed") instead of cycling for days:
    # a few tries, each RestartSec apart, within the interval.
    assert UNIT["StartLimitBurst"] == ["5"]
    assert UNIT["StartLimitIntervalSec"] == ["30min"]
    tries = int(UNIT["StartLimitBurst"][0])
    assert tries * _seconds(UNIT["RestartSec"][0]) < _seconds(UNIT["StartLimitIntervalSec"][0])
    # The limit must sit in [Unit]: systemd ignores StartLimit* under [Service] (with a warning).
    unit_section = UNIT_TEMPLATE.read_text().split("[Service]")[0]
    assert "StartLimitBurst=" in unit_section and "StartLimitIntervalSec=" in unit_section


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_timeouts_fit_every_shipped_profile(profile: Path) -> None:
    # The RAM check is about the host a profile runs on, not about this unit.
    loaded = load_profile(profile, host_memory_bytes=1 << 50)
    # A stop must outlast the daemon's own grace, or systemd SIGKILLs checkpointing trainers.
    assert _seconds(UNIT["TimeoutStopSec"][0]) >= loaded.stop_grace + 30
    # At least three health beats per watchdog period, so one slow beat is not a restart.
    assert _seconds(UNIT["WatchdogSec"][0]) >= 3 * loaded.checks.health


def _run_install(env: dict[str, str], *prefix: str) -> subprocess.CompletedProcess[str]:
    code = (
        "from daemon.atarictl.service import install_service\n"
        "raise SystemExit(install_service(None, None))"
    )
    return subprocess.run(
        [*prefix, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_install_refuses_without_root_in_one_line() -> None:
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv")
    result = _run_install(
        {"PATH": os.environ["PATH"]},
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "must run as root" in lines[0] and "sudo" in lines[0]


def test_install_refuses_without_systemctl_in_one_line(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "needs root: the systemctl check comes after the root check")
    result = _run_install({"PATH": str(tmp_path)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "systemctl not found" in lines[0]


def test_unreachable_by_names_the_blocking_directory(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    python = locked / "python"
    python.write_text("")
    python.chmod(0o755)
    reason = unreachable_by(nobody, python)
    assert reason is not None and "mode 0700" in reason
    env = Path(shutil.which("env") or "/usr/bin/env")
    assert unreachable_by(nobody, env) is None
    assert unreachable_by(pwd.getpwnam("root"), python) is None


@pytest.mark.skipif(
    Path("/run/systemd/system").is_dir(), reason="systemd runs here (this checks a host without)"
)
def test_install_refuses_where_systemd_is_not_running() -> None:
    need(os.geteuid() == 0 and shutil.which("systemctl") is not None, "needs root and systemctl")
    result = _run_install({"PATH": os.environ["PATH"]})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "systemd is not running here" in lines[0]
