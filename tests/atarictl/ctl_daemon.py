"""A real atari-supervisord in a temporary directory, for the atarictl tests."""

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

import psutil

from daemon.atarictl.client import Client, CtlError

PROFILE = """\
games:
  CartPole-v1: 1000000
  Pong: 5
levels:
  light: {{games: 1, num_envs: 2, batch_size: 16, buffer_gb: 0.05}}
  medium: {{games: 1, num_envs: 2, batch_size: 32, buffer_gb: 0.05}}
start_level: light
checks: {{health: 1s, stability: 30s, telemetry: 5s, report: 60s}}
stop_grace: 20s
startsecs: 1s
checkpoint_every: 2s
device: cpu
gpu_cost_per_hour: {cost}
"""


def write_profile(path: Path, cost: float = 2.5) -> Path:
    path.write_text(PROFILE.format(cost=cost))
    return path


class Daemon:
    def __init__(self, state: Path, profile: Path) -> None:
        self.state = state
        self.profile = profile
        self.socket = state / "run" / "atarictl.sock"
        self.client = Client(self.socket, timeout=15)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state.parent / f"{state.name}-daemon.log"

    def start(self) -> Daemon:
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--profile", str(self.profile),
                 "--state-dir", str(self.state)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(self.state), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, Any]:
        return self.client.call("status")

    def game(self, name: str) -> dict[str, Any]:
        return next(g for g in self.status()["games"] if g["game"] == name)

    def wait_for(self, what: str, cond: Any, limit: float = 180.0) -> Any:
        deadline = time.monotonic() + limit
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.tail_log()}")
            try:
                last = cond()
            except CtlError as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last: {last}\n{self.tail_log()}")

    def wait_running(self, game: str = "CartPole-v1", *, checkpoint: bool = True) -> None:
        def ok() -> bool:
            g = self.game(game)
            return g["state"] == "RUNNING" and (not checkpoint or g["checkpoint_age_s"] is not None)

        self.wait_for(f"{game} RUNNING", ok)

    def tail_log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-3000:]
        return ""

    def progress(self, game: str) -> dict[str, Any]:
        return json.loads((self.state / "runs" / game / "progress.json").read_text())

    def stop(self) -> None:
        """Graceful stop, then make sure nothing of ours is left: the daemon's group and every
        trainer whose command line names this state dir (trainers run in their own groups)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        kill_trainers_of(self.state)


def kill_trainers_of(state: Path) -> None:
    marker = str(state)
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if marker not in cmd or p.pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # Only a group this process leads (daemon, trainer): never the test runner's own.
            if os.getpgid(p.pid) == p.pid and p.pid != os.getpgid(0):
                os.killpg(p.pid, signal.SIGKILL)
            else:
                os.kill(p.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                p.wait(10)
