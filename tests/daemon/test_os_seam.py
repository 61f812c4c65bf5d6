"""The real OS seam: spawn in a new session without NOTIFY_SOCKET, group signals, log rotation,
and the pid-reuse guard used for leftover trainers."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from daemon.process.os_seam import RealOs, find_leftover, is_same_process, rotate_log

CHILD = (
    "import os, sys, time, subprocess\n"
    "print('notify=' + str(os.environ.get('NOTIFY_SOCKET')), flush=True)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "time.sleep(120)\n"
)


def test_spawn_runs_in_its_own_group_without_notify_socket(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    seam = RealOs()
    log = tmp_path / "logs" / "Game.log"
    proc = seam.spawn([sys.executable, "-c", CHILD], tmp_path / "run", log)
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert seam.poll(proc) is None
        deadline = time.monotonic() + 60
        while "notify=" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "notify=None" in log.read_text()
        assert is_same_process(proc.pid, proc.create_time)
        assert not is_same_process(proc.pid, (proc.create_time or 0) - 100)  # a reused pid
        seam.signal_group(proc, signal.SIGTERM)
        assert seam.wait(proc, 30) == -signal.SIGTERM
        # The grandchild in the same group got the signal too: nothing is left in the group.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        seam.wait(proc, 30)


def test_find_leftover_accepts_only_a_trainer_on_that_run_dir(tmp_path: Path) -> None:
    seam = RealOs()
    run_dir = tmp_path / "runs" / "Pong"
    fake_trainer = [sys.executable, "-c", "import time; time.sleep(120)", "trainer",
                    "--run-dir", str(run_dir)]  # fmt: skip
    proc = seam.spawn(fake_trainer, tmp_path, tmp_path / "x.log")
    other = seam.spawn([sys.executable, "-c", "import time; time.sleep(120)"], tmp_path,
                       tmp_path / "y.log")  # fmt: skip
    try:
        found = find_leftover(proc.pid, proc.create_time, run_dir)
        assert found is not None and found.pid == proc.pid
        assert find_leftover(proc.pid, proc.create_time, tmp_path / "runs" / "Breakout") is None
        assert find_leftover(other.pid, other.create_time, run_dir) is None
        assert find_leftover(proc.pid, (proc.create_time or 0) - 100, run_dir) is None
    finally:
        for p in (proc, other):
            seam.signal_group(p, signal.SIGKILL)
            seam.wait(p, 30)


def test_rotate_log_keeps_backups_and_truncates_in_place(tmp_path: Path) -> None:
    log = tmp_path / "Pong.log"
    with open(log, "ab") as writer:  # a child's O_APPEND handle survives the rotation
        for i in range(3):
            writer.write(f"round {i} ".encode() * 200)
            writer.flush()
            assert rotate_log(log, max_bytes=1024, backups=2)
        writer.write(b"after")
        writer.flush()
    assert log.read_bytes() == b"after"
    assert (tmp_path / "Pong.log.1").read_text().startswith("round 2")
    assert (tmp_path / "Pong.log.2").read_text().startswith("round 1")
    assert not (tmp_path / "Pong.log.3").exists()
    assert not rotate_log(log, max_bytes=1024, backups=2)


# Renames itself to a comm with spaces and ')' (as any process may), then waits.
ODD_COMM = (
    "import ctypes, time\n"
    "ctypes.CDLL(None).prctl(15, b'x) y (z', 0, 0, 0)\n"  # PR_SET_NAME
    "print('renamed', flush=True)\n"
    "time.sleep(120)\n"
)


def test_start_time_is_the_kernels_start_tick_not_wall_clock_arithmetic(tmp_path: Path) -> None:
    """The identity of a leftover trainer rests on its start time. psutil's create_time() adds
    /proc/stat's btime, which moves with the wall clock; ours is the kernel's start tick after
    boot, read from /proc/PID/stat even when the process name holds spaces and ')'."""
    import psutil

    seam = RealOs()
    log = tmp_path / "odd.log"
    proc = seam.spawn([sys.executable, "-c", ODD_COMM, "trainer", "--run-dir", str(tmp_path)],
                      tmp_path, log)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "renamed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert psutil.Process(proc.pid).name() == "x) y (z"
        assert proc.create_time is not None
        # Seconds after boot: agrees with psutil's wall-clock figure minus btime to a second.
        since_boot = psutil.Process(proc.pid).create_time() - psutil.boot_time()
        assert abs(proc.create_time - since_boot) < 1.0
        assert is_same_process(proc.pid, proc.create_time)
        assert not is_same_process(proc.pid, proc.create_time + 0.5)  # half a second later
        found = find_leftover(proc.pid, proc.create_time, tmp_path)
        assert found is not None and found.create_time == proc.create_time
    finally:
        seam.signal_group(proc, signal.SIGKILL)
        seam.wait(proc, 30)
