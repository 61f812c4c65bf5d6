"""Wiring details: directory precedence and the single-instance lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import load_profile
from daemon.paths import lock_state_dir, resolve_dirs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"


def test_dirs_flag_then_systemd_env_then_profile_then_defaults(tmp_path: Path) -> None:
    text = (FIXTURES / "valid-minimal.yaml").read_text()
    prof = tmp_path / "p.yaml"
    prof.write_text(text + f"paths: {{state_dir: {tmp_path / 'from-profile'}}}\n")
    profile = load_profile(prof)
    env = {"STATE_DIRECTORY": f"{tmp_path / 'sd'}:{tmp_path / 'other'}",
           "RUNTIME_DIRECTORY": str(tmp_path / "rt")}  # fmt: skip
    d = resolve_dirs(str(tmp_path / "flag"), profile=profile.paths, env=env)
    # an explicit --state-dir means that daemon: its own run/ (daemon/paths.py)
    assert d.state_dir == tmp_path / "flag" and d.runtime_dir == tmp_path / "flag" / "run"
    assert d.logs_dir == tmp_path / "flag" / "logs"
    assert resolve_dirs(profile=profile.paths, env=env).state_dir == tmp_path / "sd"
    assert resolve_dirs(profile=profile.paths, env={}).state_dir == tmp_path / "from-profile"


def test_one_daemon_per_state_dir(tmp_path: Path) -> None:
    first = lock_state_dir(tmp_path, "atari-supervisord")
    try:
        with pytest.raises(RuntimeError, match="another atari-supervisord"):
            lock_state_dir(tmp_path, "atari-supervisord")
    finally:
        first.close()
    lock_state_dir(tmp_path, "atari-supervisord").close()  # free again once the holder is gone


def _daemon_start(profile: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "--profile", str(profile), "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("where", "mode", "owner"),
    [("state", 0o777, None), ("state", 0o770, None), ("runs", 0o757, None),
     ("run", 0o1777, None), ("state", 0o750, 12345)],
)  # fmt: skip
def test_the_daemon_refuses_a_state_or_runtime_dir_others_can_write(
    tmp_path: Path, where: str, mode: int, owner: int | None
) -> None:
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    (state / "run").mkdir()
    target = state if where == "state" else state / where
    target.chmod(mode)
    if owner is not None:
        os.chown(target, owner, -1)
    profile = tmp_path / "p.yaml"
    profile.write_text((FIXTURES / "valid-minimal.yaml").read_text())
    res = _daemon_start(profile, state)
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "cannot start" in ln]
    assert len(lines) == 1, res.stdout + res.stderr
    fix = f"chown {os.geteuid()} {target}" if owner is not None else f"chmod go-w {target}"
    assert str(target) in lines[0] and fix in lines[0], lines[0]
    assert not (state / "atari.db").exists()  # nothing was read or created there


def test_check_trusted_accepts_the_daemons_own_private_dirs(tmp_path: Path) -> None:
    from daemon.paths import check_trusted

    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True, mode=0o750)
    state.chmod(0o750)
    check_trusted(resolve_dirs(str(state), env={}))
    os.chown(state, 4242, -1)  # a service user's own dir (not root's) is trusted by that user
    check_trusted(resolve_dirs(str(state), env={}), euid=4242)
    with pytest.raises(RuntimeError, match="owned by uid 4242"):
        check_trusted(resolve_dirs(str(state), env={}), euid=4243)
