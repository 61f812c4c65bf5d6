"""Runs the real daemon (``python -m daemon``) on a test profile in tmp_path, and reads its
SQLite file read-only to wait for states. Teardown kills whatever is left, by process group."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

# Tiny trainer settings: no learning before 5000 transitions keeps trainers cheap on 2 cores.
TRAINER_ARGS = '["--learning-starts", "5000", "--threads", "1", "--progress-every", "1"]'


def write_profile(
    path: Path, games: dict[str, int], *, slots: int = 2, frozen_after: str = "10m", extra: str = ""
) -> Path:
    lines = ["games:"] + [f"  {g}: {n}" for g, n in games.items()]
    lines += [
        "levels:",
        f"  light: {{games: {slots}, num_envs: 2, batch_size: 32, buffer_gb: 0.05}}",
        "start_level: light",
        "autoscaler: {ladder: [light]}",
        "checks: {health: 1s, stability: 1h, telemetry: 5s, report: 1h}",
        "startsecs: 2s",
        "stop_grace: 60s",
        f"frozen_after: {frozen_after}",
        "backoff: {initial: 1s, factor: 2, max: 10s, reset_after: 10m, storm_crashes: 5,"
        " storm_window: 10m}",
        "checkpoint_every: 600s",
        "device: cpu",
        f"trainer_args: {TRAINER_ARGS}",
        extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    def __init__(self, tmp: Path, profile: Path, name: str = "daemon") -> None:
        self.tmp, self.profile = tmp, profile
        self.state = tmp / "state"
        self.out = tmp / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    def start(self) -> Daemon:
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--profile", str(self.profile),
                 "--state-dir", str(self.state)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        db = self.state / "atari.db"
        if not db.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        except sqlite3.OperationalError:
            return []
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []  # tables not created yet
        finally:
            conn.close()

    def games(self) -> dict[str, sqlite3.Row]:
        rows = {r["name"]: r for r in self.query("SELECT * FROM games")}
        self.seen_pids |= {r["pid"] for r in rows.values() if r["pid"]}
        return rows

    def progress(self, game: str) -> dict[str, Any]:
        import json

        try:
            return json.loads((self.state / "runs" / game / "progress.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_for(self, what: str, cond: Any, timeout: float = 240.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) while waiting for "
                                     f"{what}:\n{self.output()[-3000:]}")  # fmt: skip
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-3000:]}")

    def wait_states(self, want: dict[str, str], timeout: float = 240.0) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            games = self.games()
            good = all(g in games and games[g]["state"] == s for g, s in want.items())
            return games if good else None

        return self.wait_for(f"states {want}", ok, timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 120.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def trainer_pids(self) -> set[int]:
        """Every trainer process (any daemon's) running on this state dir's run dirs."""
        runs = str(self.state / "runs")
        out = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if "trainer" in cmd and any(a.startswith(runs) for a in cmd):
                out.add(p.info["pid"])
        return out

    def cleanup(self) -> None:
        pids = self.trainer_pids() | self.seen_pids
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(30)


def alive_in_groups(pgids: set[int]) -> list[int]:
    """Processes still alive (not zombies) in any of these process groups."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.info["pid"]) in pgids:
                out.append(p.info["pid"])
        except (ProcessLookupError, PermissionError):
            continue
    return out
