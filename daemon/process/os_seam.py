"""The one narrow seam between the process manager and the operating system.

``RealOs`` spawns trainers in their own session/process group (so a signal to the group reaches
the trainer and any helpers, and a ``kill -9`` of the daemon leaves them alive to be found), with
systemd's ``NOTIFY_SOCKET`` removed, stdout/stderr appended to the game's log file. Tests of the
decision logic use a fake with the same four methods; the real one is exercised by the
integration tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from daemon.sdnotify import child_environment


@dataclass
class Proc:
    pid: int
    create_time: float | None
    popen: subprocess.Popen[bytes] | None = None  # None for a process we did not spawn


class OsSeam(Protocol):
    def spawn(self, argv: list[str], cwd: Path, log_path: Path) -> Proc: ...

    def poll(self, proc: Proc) -> int | None:
        """None while alive; else the Popen-style return code (negative = killed by signal)."""
        ...

    def signal_group(self, proc: Proc, sig: signal.Signals) -> None: ...

    def wait(self, proc: Proc, timeout: float) -> int | None: ...


class RealOs:
    def spawn(self, argv: list[str], cwd: Path, log_path: Path) -> Proc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        # O_APPEND: the daemon can rotate by copy+truncate while the child keeps writing.
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(),
                start_new_session=True,
                close_fds=True,
            )
        return Proc(popen.pid, _create_time(popen.pid), popen)

    def poll(self, proc: Proc) -> int | None:
        if proc.popen is not None:
            return proc.popen.poll()
        # Not our child (a leftover of a previous daemon): it is reaped by init, we only watch.
        return None if is_same_process(proc.pid, proc.create_time) else 0

    def signal_group(self, proc: Proc, sig: signal.Signals) -> None:
        # The trainer leads its own session, so its pgid is its pid. Signal the group only
        # while the leader is verifiably the process we started (pid reuse guard).
        if proc.popen is not None and proc.popen.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # helpers left in the group after the leader died
            return
        if proc.popen is None and not is_same_process(proc.pid, proc.create_time):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def wait(self, proc: Proc, timeout: float) -> int | None:
        if proc.popen is not None:
            try:
                return proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        # Not our child: poll. A zombie counts as exited, since its parent (init or a
        # container's PID 1) may be slow to reap it, or never do so.
        deadline = time.monotonic() + timeout
        while is_same_process(proc.pid, proc.create_time):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
        return 0


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_same_process(pid: int, create_time: float | None) -> bool:
    """True when ``pid`` is alive and is the process that had ``create_time`` (not a reuse)."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(p.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def rotate_log(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy-truncate rotation (the child holds the file open with O_APPEND); True if rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups == 0:
        os.truncate(path, 0)
        return True
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def find_leftover(pid: int, create_time: float | None, run_dir: Path) -> Proc | None:
    """A live trainer of ``run_dir`` at ``pid`` left by a previous daemon, or None.

    The pid must be alive, match the recorded start time when known, and its command line must
    be a trainer on this run dir: a reused pid of an unrelated process is never signalled.
    """
    if pid == os.getpid() or not is_same_process(pid, create_time):
        return None
    try:
        p = psutil.Process(pid)
        cmd = p.cmdline()
        ctime = p.create_time()
    except psutil.Error:
        return None
    if "trainer" not in cmd or str(run_dir) not in cmd:
        return None
    return Proc(pid, ctime)
