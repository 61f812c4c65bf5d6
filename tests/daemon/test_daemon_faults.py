"""The real daemon and trainer under real faults (issue 16 items 1, 4, 14).

A full disk is a real full disk: the daemon's state dir is a small tmpfs mounted for the test
(its run dirs are bind-mounted back onto the test's disk, so only the database and the lock
fill). Filling it after a truncating WAL checkpoint makes every later SQLite commit fail with
"database or disk is full"; emptying it lets the daemon catch up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon.atarictl.client import Client, CtlError
from tests.daemon.harness import TRAINER_ARGS, Daemon

pytestmark = pytest.mark.slow

PROFILE = """\
games:
{games}
levels:
  light: {{games: 1, num_envs: 2, batch_size: 32, buffer_gb: 0.05}}
  medium: {{games: 1, num_envs: 4, batch_size: 32, buffer_gb: 0.05}}
start_level: light
autoscaler: {{ladder: {ladder}, promote_after: {promote_after}}}
checks: {{health: 1s, stability: 1h, telemetry: 5s, report: 1h}}
startsecs: 2s
stop_grace: 60s
frozen_after: 10m
backoff: {{initial: 1s, factor: 2, max: 10s, reset_after: 10m, storm_crashes: 50,
          storm_window: 10m}}
checkpoint_every: 600s
device: cpu
gpu_cost_per_hour: {cost}
trainer_args: {trainer_args}
"""


def write_profile(path: Path, games: dict[str, int], *, ladder: str = "[light]",
                  promote_after: str = "1h", cost: float = 1.0) -> Path:  # fmt: skip
    text = PROFILE.format(
        games="\n".join(f"  {g}: {n}" for g, n in games.items()), ladder=ladder,
        promote_after=promote_after, cost=cost, trainer_args=TRAINER_ARGS,
    )  # fmt: skip
    path.write_text(text)
    return path


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


class TmpfsDaemon(Daemon):
    """``python -m daemon`` whose state dir is a ``size_mib`` tmpfs."""

    def __init__(self, tmp: Path, profile: Path, size_mib: int = 16) -> None:
        super().__init__(tmp, profile)
        self.size_mib = size_mib
        self.disk_runs = tmp / "runs-on-disk"
        self.socket = self.state / "run" / "atarictl.sock"
        self.mounts: list[Path] = []

    def mount(self) -> str | None:
        """Mount the tmpfs; the reason when this machine cannot."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.disk_runs.mkdir(parents=True, exist_ok=True)
        out = _mount("-t", "tmpfs", "-o", f"size={self.size_mib}m,mode=0755", "tmpfs",
                     str(self.state))  # fmt: skip
        if out.returncode != 0:
            return f"cannot mount a tmpfs: {(out.stderr or out.stdout).strip()}"
        self.mounts.append(self.state)
        (self.state / "runs").mkdir()
        out = _mount("--bind", str(self.disk_runs), str(self.state / "runs"))
        if out.returncode != 0:
            return f"cannot bind-mount the run dirs: {(out.stderr or out.stdout).strip()}"
        self.mounts.append(self.state / "runs")
        return None

    def cleanup(self) -> None:
        super().cleanup()
        for m in reversed(self.mounts):
            _umount(m)
        self.mounts.clear()

    def fill_disk(self) -> None:
        """Checkpoint the WAL into the database file and truncate it, then fill the tmpfs: the
        next commit must grow the WAL and cannot."""
        conn = sqlite3.connect(self.state / "atari.db", timeout=30)
        try:
            for _ in range(100):
                busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy == 0:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the WAL never became free to checkpoint")
        finally:
            conn.close()
        fd = os.open(self.state / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in (1 << 20, 4096, 512):
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * chunk):
                        pass
        finally:
            os.close(fd)
        with pytest.raises(OSError) as full:
            (self.state / "probe").write_bytes(b"x" * 8192)
        assert full.value.errno == errno.ENOSPC

    def free_disk(self) -> None:
        for name in ("filler", "probe"):
            with contextlib.suppress(FileNotFoundError):
                (self.state / name).unlink()


@pytest.fixture
def tmpfs_daemon(tmp_path: Path):
    started: list[TmpfsDaemon] = []

    def make(profile: Path) -> TmpfsDaemon:
        d = TmpfsDaemon(tmp_path, profile)
        started.append(d)
        why = d.mount()
        if why is not None:
            if os.environ.get("CI"):
                pytest.fail(f"the full-disk tests must run in CI: {why}")
            pytest.skip(why)
        d.start()
        return d

    yield make
    for d in started:
        d.cleanup()


def test_a_full_disk_after_a_spawn_never_starts_a_second_trainer(tmp_path, tmpfs_daemon) -> None:
    d = tmpfs_daemon(write_profile(tmp_path / "p.yaml", {"CartPole-v1": 1_000_000}))
    first = d.wait_states({"CartPole-v1": "RUNNING"})["CartPole-v1"]["pid"]
    d.fill_disk()
    os.kill(first, signal.SIGKILL)  # a crash: the daemon restarts it after backoff.initial=1s
    seen: set[int] = set()
    deadline = time.monotonic() + 20.0
    try:
        while time.monotonic() < deadline and len(seen) < 2:
            seen |= d.trainer_pids() - {first}
            time.sleep(0.05)
    finally:
        d.free_disk()
    assert len(seen) == 1, f"{len(seen)} trainers started for one game while the disk was full"
    (second,) = seen
    # Once the disk has room, what happened meanwhile is written: the crash and the new run.
    d.wait_for(
        "the new run recorded",
        lambda: d.query("SELECT * FROM runs WHERE pid = ? AND ended_at IS NULL", second),
    )
    killed = d.query("SELECT signal, outcome FROM runs WHERE pid = ?", first)
    assert [(r["signal"], r["outcome"]) for r in killed] == [("SIGKILL", "crash")]
    assert d.wait_states({"CartPole-v1": "RUNNING"})["CartPole-v1"]["pid"] == second
    assert psutil.pid_exists(second) and d.trainer_pids() == {second}
    assert d.stop(signal.SIGTERM) == 0


def test_a_reload_while_the_disk_is_full_moves_every_part_or_none(tmp_path, tmpfs_daemon) -> None:
    path = write_profile(tmp_path / "p.yaml", {"CartPole-v1": 1_000_000})
    d = tmpfs_daemon(path)
    d.wait_states({"CartPole-v1": "RUNNING"})
    client = Client(d.socket, timeout=60)

    def parts() -> dict[str, Any]:
        status, level = client.call("status"), client.call("level")
        return {
            "supervisor": status["gpu_cost_per_hour"],
            "manager": sorted(g["game"] for g in status["games"]),
            "autoscaler": level["ladder"],
        }

    old = parts()
    assert old == {"supervisor": 1.0, "manager": ["CartPole-v1"], "autoscaler": ["light"]}
    new = {"supervisor": 3.0, "manager": ["CartPole-v1", "Pong"], "autoscaler": ["light", "medium"]}
    d.fill_disk()
    try:
        write_profile(path, {"CartPole-v1": 1_000_000, "Pong": 5}, ladder="[light, medium]",
                      promote_after="2h", cost=3.0)  # fmt: skip
        try:
            reply: Any = client.call("reload")
        except CtlError as e:
            reply = e
        now = parts()
        assert now in (old, new), f"reload answered {reply!r} and left a mix: {now}"
    finally:
        d.free_disk()
    # The daemon goes on, and what it decided while the disk was full reaches the database.
    assert client.call("status")["games"]
    if now == new:
        sql = "SELECT * FROM decisions WHERE reason LIKE 'reload:%'"
        d.wait_for("the reload recorded", lambda: d.query(sql))
    assert d.stop(signal.SIGTERM) == 0


def test_requests_queued_as_the_loop_exits_get_shutting_down_at_once(tmp_path: Path) -> None:
    from tests.daemon.harness import write_profile as harness_profile

    d = Daemon(tmp_path, harness_profile(tmp_path / "p.yaml", {"CartPole-v1": 1_000_000}))
    try:
        d.start()
        d.wait_states({"CartPole-v1": "RUNNING"})
        sock = d.state / "run" / "atarictl.sock"
        replies: list[dict[str, Any]] = []
        done = threading.Event()

        def flood() -> None:
            client = Client(sock, timeout=60)
            while not done.is_set():
                try:
                    replies.append(client.raw({"cmd": "status", "args": {}}))
                except CtlError:
                    return  # the socket is gone: the daemon has exited
                except OSError:
                    return

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        Client(sock, timeout=60).call("shutdown")
        assert d.proc is not None and d.proc.wait(120) == 0
        done.set()
        for t in threads:
            t.join(60)
        codes = {r.get("code") for r in replies if not r["ok"]}
        assert replies and codes <= {"shutting_down"}, codes
    finally:
        d.cleanup()
