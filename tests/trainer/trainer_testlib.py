"""Shared helpers: run the real trainer as a subprocess in its own process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Small replay/learning settings so Pong runs take seconds on 2 shared cores.
PONG_TINY = [
    "--game", "Pong", "--buffer-gb", "0.05", "--learning-starts", "400", "--threads", "1",
    "--progress-every", "0.5",
]  # fmt: skip


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return e


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "trainer", *args],
            stdout=f, stderr=subprocess.STDOUT, env=env(), start_new_session=True,
        )  # fmt: skip


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        capture_output=True, text=True, env=env(), timeout=timeout, start_new_session=True,
    )  # fmt: skip


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The whole group, even when the leader is gone: nothing may outlive a test.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(cond: Any, proc: subprocess.Popen[bytes], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
