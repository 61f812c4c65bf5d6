"""`atarictl install-service` / `uninstall-service`: put the systemd unit and a profile in place.

The checked-in unit (systemd/atari-supervisor.service) names a default interpreter,
/opt/atari-supervisor/.venv/bin/python; installing renders it with the interpreter atarictl
runs under, so the service runs the same code as the atarictl that installed it. Training data
(/var/lib/atari-supervisor, /var/log/atari-supervisor) is never touched by either command.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from daemon.resources import shipped_dir

UNIT_NAME = "atari-supervisor.service"
GROUP = "atari-supervisor"
UNIT_TEMPLATE = shipped_dir("systemd") / UNIT_NAME  # the package's copy, or the checkout's
TEMPLATE_PYTHON = "/opt/atari-supervisor/.venv/bin/python"
UNIT_DIR = Path("/etc/systemd/system")
CONFIG_DIR = Path("/etc/atari-supervisor")
PROFILE_NAME = "profile.yaml"
SYSTEMD_RUNNING = Path("/run/systemd/system")
DATA_DIRS = ("/var/lib/atari-supervisor", "/var/log/atari-supervisor")


class ServiceError(Exception):
    """A one-line, actionable reason why (un)installing cannot go on."""


@dataclass(frozen=True)
class Installed:
    unit: Path
    profile: Path
    profile_source: Path | None  # None: the installed profile was kept
    group_created: bool
    restarted: bool  # it was running already, and now runs the new unit and profile


def render_unit(template: str, python: str, user: str | None = None) -> str:
    """The unit text with the real interpreter (and an optional User=) filled in."""
    if TEMPLATE_PYTHON not in template:
        raise ServiceError(f"{UNIT_TEMPLATE}: no ExecStart with {TEMPLATE_PYTHON} to replace")
    if any(ch.isspace() or ch in "\"'\\" for ch in python):
        # systemd splits ExecStart on whitespace; quoting is possible but a venv path with spaces
        # is far more likely a mistake than a wish.
        raise ServiceError(
            f"interpreter path {python!r} contains spaces or quotes; use a venv "
            "at a plain path such as /opt/atari-supervisor/.venv"
        )
    text = template.replace(TEMPLATE_PYTHON, python)
    if user is not None:
        # Right after Group=, so the service runs as USER with the socket group as its group.
        text = text.replace(f"\nGroup={GROUP}\n", f"\nGroup={GROUP}\nUser={user}\n", 1)
        if f"\nUser={user}\n" not in text:
            raise ServiceError(f"{UNIT_TEMPLATE}: no 'Group={GROUP}' line to put User= after")
    return text


def _require_root_and_systemctl(command: str) -> str:
    if os.geteuid() != 0:
        raise ServiceError(
            f"{command} must run as root (it writes {UNIT_DIR} and runs "
            "systemctl); rerun it with sudo"
        )
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise ServiceError(
            f"{command}: systemctl not found; this host does not run systemd, so "
            "run atari-supervisord directly (see README.md)"
        )
    if not SYSTEMD_RUNNING.is_dir():
        # sd_booted(3)'s test: systemctl exists, but systemd is not PID 1 (e.g. a container).
        raise ServiceError(
            f"{command}: systemd is not running here (no {SYSTEMD_RUNNING}); run "
            "atari-supervisord directly (see README.md)"
        )
    return systemctl


def _systemctl(systemctl: str, *args: str, hint: str = "") -> None:
    result = subprocess.run([systemctl, *args], capture_output=True, text=True)
    if result.returncode != 0:
        # The line that says what failed, not "Created symlink ..." progress or the pointer to
        # status/journalctl that follows it.
        lines = [
            line
            for line in (result.stderr or result.stdout).strip().splitlines()
            if not line.startswith(("Created symlink", "Removed ", "See "))
        ]
        detail = lines[0] if lines else f"exit status {result.returncode}"
        raise ServiceError(f"systemctl {' '.join(args)} failed: {detail}{hint}")


def _source_profile(profile: Path | None) -> Path | None:
    """The profile to copy, validated; None means keep the installed one."""
    from daemon.config import DEFAULT_PROFILE, DEFAULT_PROFILE_DIR, ProfileError, load_profile

    installed = CONFIG_DIR / PROFILE_NAME
    if profile is None:
        if installed.exists():
            return None
        profile = DEFAULT_PROFILE
    if not profile.is_file():
        raise ServiceError(
            f"--profile {profile}: no such file; pass a profile YAML such as "
            f"{DEFAULT_PROFILE_DIR / 'gpu-box.yaml'}"
        )
    try:
        load_profile(profile)
    except ProfileError as exc:
        raise ServiceError(str(exc)) from None
    return profile


def _ensure_group() -> bool:
    try:
        grp.getgrnam(GROUP)
        return False
    except KeyError:
        pass
    groupadd = shutil.which("groupadd")
    if groupadd is None:
        raise ServiceError(f"groupadd not found; create the group {GROUP!r} yourself and rerun")
    result = subprocess.run([groupadd, "--system", GROUP], capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"groupadd --system {GROUP} failed: {result.stderr.strip()}")
    return True


def unreachable_by(user: pwd.struct_passwd, path: Path) -> str | None:
    """Why USER cannot execute PATH (a directory on the way it may not search, or a file it may
    not run), or None. Checked up front because systemd would only say "203/EXEC"."""
    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    with contextlib.suppress(KeyError):
        gids.add(grp.getgrnam(GROUP).gr_gid)  # the unit's Group=

    def allowed(st: os.stat_result) -> bool:
        if user.pw_uid == 0:
            return True
        if st.st_uid == user.pw_uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in gids:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)

    # Both the path as written (a venv's bin/python is a symlink) and where it leads.
    for target in (path, path.resolve()):
        for step in (*reversed(target.parents), target):
            try:
                st = step.stat()
            except OSError as exc:
                return f"{step}: {exc.strerror}"
            if not allowed(st):
                owner = pwd.getpwuid(st.st_uid).pw_name if st.st_uid != 0 else "root"
                return f"{step} is mode {stat.S_IMODE(st.st_mode):04o}, owned by {owner}"
    return None


def install(profile: Path | None, user: str | None, python: str = sys.executable) -> Installed:
    systemctl = _require_root_and_systemctl("install-service")
    if user is not None:
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            raise ServiceError(
                f"--user {user}: no such user; create it (useradd --system "
                f"{user}) or leave --user out to run as root"
            ) from None
        blocker = unreachable_by(account, Path(python))
        if blocker is not None:
            raise ServiceError(
                f"--user {user} could not run {python}: {blocker}; put the venv where {user} "
                "can read it (e.g. /opt/atari-supervisor/.venv) or leave --user out"
            )
    if not UNIT_TEMPLATE.is_file():
        raise ServiceError(
            f"unit template {UNIT_TEMPLATE} is missing; install-service needs a "
            "source checkout installed with pip install -e ."
        )
    unit_text = render_unit(UNIT_TEMPLATE.read_text(), python, user)
    source = _source_profile(profile)

    group_created = _ensure_group()
    gid = grp.getgrnam(GROUP).gr_gid
    CONFIG_DIR.mkdir(mode=0o750, parents=True, exist_ok=True)
    os.chown(CONFIG_DIR, 0, gid)
    installed_profile = CONFIG_DIR / PROFILE_NAME
    if source is not None:
        _write(installed_profile, source.read_bytes(), 0o640, gid)
    unit = UNIT_DIR / UNIT_NAME
    _write(unit, unit_text.encode(), 0o644, 0)
    _systemctl(systemctl, "daemon-reload")
    was_running = _is_active(systemctl)
    hint = (
        " (the unit is installed and enabled; see why with: "
        "journalctl -u atari-supervisor -b -p warning)"
    )
    _systemctl(systemctl, "enable", "--now", UNIT_NAME, hint=hint)
    if was_running:
        # `enable --now` leaves a running daemon alone: restart it (gracefully, trainers
        # checkpoint) so the new unit and profile take effect.
        _systemctl(systemctl, "restart", UNIT_NAME, hint=hint)
    return Installed(unit, installed_profile, source, group_created, was_running)


def _is_active(systemctl: str) -> bool:
    result = subprocess.run([systemctl, "is-active", "--quiet", UNIT_NAME])
    return result.returncode == 0


def _write(path: Path, data: bytes, mode: int, gid: int) -> None:
    # Write aside and rename, so a crash never leaves systemd a half-written unit.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.chown(tmp, 0, gid)
    os.replace(tmp, path)


def uninstall() -> list[Path]:
    """Stop, disable and remove the unit and the installed profile; returns what was removed."""
    systemctl = _require_root_and_systemctl("uninstall-service")
    unit = UNIT_DIR / UNIT_NAME
    removed: list[Path] = []
    if unit.exists():
        _systemctl(systemctl, "disable", "--now", UNIT_NAME)
        unit.unlink()
        removed.append(unit)
    profile = CONFIG_DIR / PROFILE_NAME
    if profile.exists():
        profile.unlink()
        removed.append(profile)
    if CONFIG_DIR.is_dir() and not any(CONFIG_DIR.iterdir()):
        CONFIG_DIR.rmdir()
    _systemctl(systemctl, "daemon-reload")
    return removed


def install_service(profile: Path | None, user: str | None) -> int:
    """Entry point for `atarictl install-service`; prints what it did, or one error line."""
    try:
        done = install(profile, user)
    except ServiceError as exc:
        print(f"atarictl: {exc}", file=sys.stderr)  # the one error format
        return 1
    if done.group_created:
        print(f"created group {GROUP} (members may use atarictl and read state and logs)")
    print(f"installed {done.unit} (python {sys.executable})")
    if done.profile_source is None:
        print(f"kept the installed profile {done.profile}")
    else:
        print(f"profile: {done.profile} (copied from {done.profile_source})")
    started = "restarted (every trainer checkpointed)" if done.restarted else "started"
    print(f"enabled and {started} {UNIT_NAME}; follow it: journalctl -u atari-supervisor -f")
    return 0


def uninstall_service() -> int:
    """Entry point for `atarictl uninstall-service`."""
    try:
        removed = uninstall()
    except ServiceError as exc:
        print(f"atarictl: {exc}", file=sys.stderr)  # the one error format
        return 1
    if not removed:
        print(f"{UNIT_NAME} was not installed; nothing to remove")
    for path in removed:
        print(f"removed {path}")
    print(f"kept training data in {' and '.join(DATA_DIRS)} and the group {GROUP}")
    return 0
