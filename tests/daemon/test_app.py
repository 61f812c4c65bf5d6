"""Wiring details: directory precedence and the single-instance lock."""

from __future__ import annotations

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
