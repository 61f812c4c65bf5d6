"""One directory rule for the daemon and atarictl, and one state-dir lock (daemon/paths.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.paths import StateDirLocked, lock_state_dir, resolve_dirs, state_dir_locked


@dataclass(frozen=True)
class _ProfilePaths:
    state_dir: str | None = None
    runtime_dir: str | None = None
    logs_dir: str | None = None


def _system(tmp: Path, installed: bool) -> tuple[Path, Path, Path]:
    s, r, lg = tmp / "var-lib", tmp / "run-sys", tmp / "var-log"
    if installed:
        for d in (s, r, lg):
            d.mkdir()
    return s, r, lg


def test_flag_then_systemd_env_then_profile_then_system_then_default(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": f"{tmp_path / 'sd'}:{tmp_path / 'other'}",
           "RUNTIME_DIRECTORY": str(tmp_path / "rt"),
           "LOGS_DIRECTORY": str(tmp_path / "lg")}  # fmt: skip
    prof = _ProfilePaths(str(tmp_path / "pf"), str(tmp_path / "pf-rt"), None)
    system = _system(tmp_path, installed=True)
    d = resolve_dirs(env=env, profile=prof, system=system)
    assert (d.state_dir, d.runtime_dir, d.logs_dir) == (tmp_path / "sd", tmp_path / "rt",
                                                        tmp_path / "lg")  # fmt: skip
    assert d.socket == tmp_path / "rt" / "atarictl.sock"
    d = resolve_dirs(env={}, profile=prof, system=system)
    assert (d.state_dir, d.runtime_dir, d.logs_dir) == (tmp_path / "pf", tmp_path / "pf-rt",
                                                        tmp_path / "pf" / "logs")  # fmt: skip
    d = resolve_dirs(env={}, system=system)
    assert (d.state_dir, d.runtime_dir, d.logs_dir) == system
    d = resolve_dirs(env={}, system=_system(tmp_path / "none", installed=False))
    assert d.state_dir == Path("state").absolute()
    assert d.socket == Path("state").absolute() / "run" / "atarictl.sock"
    assert d.db == d.state_dir / "atari.db" and d.runs_dir == d.state_dir / "runs"
    assert resolve_dirs(socket=tmp_path / "s.sock", env={}).socket == tmp_path / "s.sock"


def test_an_explicit_state_dir_means_that_daemon_even_inside_systemd(tmp_path: Path) -> None:
    """The daemon used $RUNTIME_DIRECTORY with --state-dir X while atarictl --state-dir X looked in
    X/run: the same flags must find the same socket, whoever resolves them."""
    env = {"STATE_DIRECTORY": str(tmp_path / "sd"), "RUNTIME_DIRECTORY": str(tmp_path / "rt"),
           "LOGS_DIRECTORY": str(tmp_path / "lg")}  # fmt: skip
    system = _system(tmp_path, installed=True)
    prof = _ProfilePaths(None, str(tmp_path / "pf-rt"), str(tmp_path / "pf-lg"))
    d = resolve_dirs(tmp_path / "x", env=env, profile=prof, system=system)
    assert d.socket == tmp_path / "x" / "run" / "atarictl.sock"
    assert d.logs_dir == tmp_path / "x" / "logs"
    # its own flags still win
    d = resolve_dirs(tmp_path / "x", tmp_path / "r", tmp_path / "l", env=env, system=system)
    assert (d.runtime_dir, d.logs_dir) == (tmp_path / "r", tmp_path / "l")
    # a state dir from $STATE_DIRECTORY takes systemd's runtime dir, not the profile's
    d = resolve_dirs(env=env, profile=prof, system=system)
    assert d.runtime_dir == tmp_path / "rt"


def test_one_holder_per_state_dir_names_the_other_holder(tmp_path: Path) -> None:
    first = lock_state_dir(tmp_path, "atari-supervisord")
    try:
        with pytest.raises(StateDirLocked, match=rf"another atari-supervisord \(pid {os.getpid()}"):
            lock_state_dir(tmp_path, "atarictl restore")
    finally:
        first.close()
    with (
        state_dir_locked(tmp_path, "atarictl restore"),
        pytest.raises(StateDirLocked, match=r"another atarictl restore .*wait for the restore"),
    ):
        lock_state_dir(tmp_path, "atari-supervisord")
    lock_state_dir(tmp_path, "atari-supervisord").close()  # free again once the holder is gone


def test_the_lock_file_is_never_followed_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "daemon.lock").symlink_to(victim)
    with pytest.raises(OSError, match="is a symlink"):
        lock_state_dir(state, "atari-supervisord")
    assert victim.read_text() == "precious\n"
