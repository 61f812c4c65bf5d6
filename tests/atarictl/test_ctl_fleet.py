"""`atarictl --fleet` where it cannot work: one line each, with the fix (its working paths run
against three real daemons in tests/daemon/test_fleet_daemons.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.atarictl", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


def test_fleet_with_a_command_it_does_not_cover_is_a_usage_error() -> None:
    out = ctl("--fleet", "history")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--fleet works with status, start, stop and restart" \
        in out.stderr  # fmt: skip


def test_fleet_without_a_store_says_how_to_name_one(tmp_path: Path) -> None:
    out = ctl("--state-dir", str(tmp_path), "--fleet", "status")
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "--store-url postgresql+psycopg://" in out.stderr


def test_fleet_status_of_an_unreachable_server_is_one_line_without_the_password() -> None:
    url = "postgresql+psycopg://atari:SECRET@127.0.0.1:1/atari"
    out = ctl("--fleet", "status", "--store-url", url)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "cannot reach PostgreSQL" in out.stderr and "SECRET" not in out.stderr
