"""Wiring details: directory precedence and the single-instance lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.app import acquire_lock, resolve_dirs
from daemon.config import load_profile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"


def test_dirs_flag_then_systemd_env_then_profile_then_defaults(tmp_path: Path) -> None:
    text = (FIXTURES / "valid-minimal.yaml").read_text()
    prof = tmp_path / "p.yaml"
    prof.write_text(text + f"paths: {{state_dir: {tmp_path / 'from-profile'}}}\n")
    profile = load_profile(prof)
    env = {"STATE_DIRECTORY": f"{tmp_path / 'sd'}:{tmp_path / 'other'}",
           "RUNTIME_DIRECTORY": str(tmp_path / "rt")}  # fmt: skip
    d = resolve_dirs(profile, str(tmp_path / "flag"), env=env)
    assert d.state == tmp_path / "flag" and d.runtime == tmp_path / "rt"
    assert d.logs == tmp_path / "flag" / "logs"
    assert resolve_dirs(profile, env=env).state == tmp_path / "sd"
    assert resolve_dirs(profile, env={}).state == tmp_path / "from-profile"
    d = resolve_dirs(None, env={})
    assert d.state == Path("state").resolve() and d.socket == d.state / "run" / "atarictl.sock"


def test_one_daemon_per_state_dir(tmp_path: Path) -> None:
    first = acquire_lock(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="another atari-supervisord"):
            acquire_lock(tmp_path)
    finally:
        first.close()
    acquire_lock(tmp_path).close()  # free again once the holder is gone
